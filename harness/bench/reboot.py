"""Reboot and shutdown of a Secure Execution guest under QEMU on a PV host, with ``async_destroy`` on and off.

QEMU is the real client of asynchronous teardown: on a reboot of a protected guest larger than 2 GiB it
issues PREPARE and runs PERFORM in its ``async_cleanup`` thread.  For each ``async_destroy`` value (the
kvm module is reloaded when it differs; that needs a host without other VMs), size and repetition, a
guest boots, fills most of its memory, and reboots from inside (``reboot -f``): timed until SSH answers
again.  Then it powers off from inside (``poweroff -f``): timed until the QEMU process is gone.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import HarnessError
from ..kvm.caps import Capabilities
from ..kvm.probe import pv_skip_reason
from ..targets.base import Target
from ..targets.spec import TargetOptions
from .guest_fill import fill_guest
from .machine import machine_facts
from .output import DRY_RUN, MEASURED, BenchReport, Metric, Progress
from .se_guest import MIN_ASYNC_GUEST_MIB, SeGuestTarget, kvm_reload_command, pv_qemu_argv, se_image_command

log = logging.getLogger(__name__)

NO_HKD = ("no host-key document: pass --host-key-doc FILE (the PV host's host-key document, from IBM Resource "
          "Link); a Secure Execution image cannot be made without it")
METRICS = [
    Metric("reboot_s", "reboot -> SSH back", "s"),
    Metric("shutdown_s", "poweroff -> QEMU exit", "s"),
]


@dataclass
class RebootConfig:
    sizes_gib: Sequence[float] = (4, 8, 16)
    repeats: int = 3
    async_destroy_values: Sequence[int] = (1, 0)
    fill_fraction: float = 0.75
    host_key_doc: Optional[Path] = None
    boot_timeout: float = 600.0
    qemu_extra: List[str] = field(default_factory=list)


def reboot_skip_reason(caps: Capabilities, host_key_doc: Optional[Path]) -> Optional[str]:
    """Why the reboot benchmark cannot run (PV host first, then the host-key document), or None."""
    reason = pv_skip_reason(caps, "pv_host")
    if reason:
        return reason
    if host_key_doc is None:
        return NO_HKD
    if not Path(host_key_doc).is_file():
        return f"host-key document {host_key_doc} does not exist"
    return None


def dry_run_plan(config: RebootConfig, remote_dir: str = "$GUEST_DIR", tool: str = "pvimg") -> Dict[str, Any]:
    """The commands a run would issue on the host, per size (nothing is started)."""
    from ..arch import get_arch
    from ..targets.nested_qemu import nested_qemu_argv

    hkd = f"{remote_dir}/host-key.crt"
    plan: Dict[str, Any] = {
        "se_image": shlex.join(se_image_command(tool, f"{remote_dir}/vmlinuz", f"{remote_dir}/initrd.img",
                                                f"{remote_dir}/parmfile", hkd, f"{remote_dir}/se.img")),
        "parmfile": get_arch("s390x").kernel_cmdline(),
        "kvm_reload": {v: kvm_reload_command(v) for v in config.async_destroy_values},
        "guest_commands": {"fill": "tmpfs filled with dd (harness.bench.guest_fill)", "reboot": "reboot -f",
                           "shutdown": "poweroff -f"},
        "qemu": {},
        "notes": [],
    }
    for size in config.sizes_gib:
        options = TargetOptions(memory_mb=int(size * 1024))
        base = nested_qemu_argv("s390x", options, remote_dir, 2222, 4)
        plan["qemu"][f"{size:g}"] = shlex.join(pv_qemu_argv(base, f"{remote_dir}/se.img", config.qemu_extra))
        if size * 1024 < MIN_ASYNC_GUEST_MIB:
            plan["notes"].append(f"{size:g} GiB: QEMU does not try PREPARE for guests of at most 2 GiB")
    return plan


def _ensure_async_destroy(host: Target, value: int) -> Optional[str]:
    current = host.run("cat /sys/module/kvm/parameters/async_destroy", timeout=30).stdout.strip()
    wanted = "Y" if value else "N"
    if current in (wanted, str(value)):
        return None
    result = host.run(kvm_reload_command(value), timeout=120)
    if not result.ok:
        return (f"cannot reload kvm with async_destroy={value} (is a VM running?): "
                f"{(result.stderr or result.stdout).strip()[-200:]}")
    return None


def _time_reboot(guest: SeGuestTarget, boot_timeout: float) -> float:
    from ..targets.nested_qemu import ForwardedSshClient

    t0 = time.monotonic()
    try:
        guest.run("reboot -f", timeout=5)
    except HarnessError:
        pass  # the connection drops with the guest
    if guest.ssh is not None:
        guest.ssh.close()
    guest.ssh = ForwardedSshClient(guest.host, guest.port, Path(guest.image.ssh_key), guest.image.host_key_pub)
    guest.ssh.connect(time.monotonic() + boot_timeout)
    guest.run("true", timeout=60)
    return time.monotonic() - t0


def _time_shutdown(host: Target, guest: SeGuestTarget, timeout: float = 600.0) -> float:
    rtt_start = time.monotonic()
    host.run("true", timeout=30)
    rtt = time.monotonic() - rtt_start
    t0 = time.monotonic()
    try:
        guest.run("poweroff -f", timeout=5)
    except HarnessError:
        pass
    host.run(f"while kill -0 {guest.qemu_pid} 2>/dev/null; do sleep 0.01; done", timeout=timeout)
    return max(0.0, time.monotonic() - t0 - rtt)


def run_reboot(host: Target, config: RebootConfig, caps: Capabilities,
               progress: Optional[Progress] = None) -> BenchReport:
    """Measure reboot and shutdown of SE guests on ``host`` (an ``ssh://`` PV host)."""
    from guest_images import build_image

    report = BenchReport(bench="pv-reboot", title="Secure Execution guest under QEMU: reboot and shutdown",
                         metrics=METRICS, group_key="async_destroy", result_source=MEASURED,
                         machine=machine_facts(),
                         meta={"host": host.spec, "kernel_release": caps.kernel_release,
                               "async_destroy_at_start": caps.async_destroy, "capabilities": caps.summary()})
    reason = reboot_skip_reason(caps, config.host_key_doc)
    if reason:
        return report.skip(reason)
    image = build_image("s390x")
    progress = progress or Progress(len(config.async_destroy_values) * len(config.sizes_gib) * config.repeats)
    try:
        _measure_values(host, config, image, report, progress)
    finally:
        if caps.async_destroy is not None:
            problem = _ensure_async_destroy(host, caps.async_destroy)  # leave the host as it was found
            if problem:
                report.notes.append(f"could not restore async_destroy={caps.async_destroy}: {problem}")
    return report


def _measure_values(host: Target, config: RebootConfig, image: Any, report: BenchReport, progress: Progress) -> None:
    for value in config.async_destroy_values:
        problem = _ensure_async_destroy(host, value)
        if problem:
            report.notes.append(problem)
            continue
        for size in config.sizes_gib:
            for rep in range(config.repeats):
                sample: Dict[str, Any] = {"size_gib": size, "async_destroy": value, "rep": rep}
                options = TargetOptions(memory_mb=int(size * 1024), boot_timeout=config.boot_timeout)
                guest = SeGuestTarget(host, image, options, host_key_doc=config.host_key_doc,
                                      qemu_extra=config.qemu_extra)
                try:
                    guest.start()
                    sample["filled_mib"] = fill_guest(guest, int(size * 1024 * config.fill_fraction))
                    sample["reboot_s"] = _time_reboot(guest, config.boot_timeout)
                    sample["shutdown_s"] = _time_shutdown(host, guest)
                except Exception as err:  # noqa: BLE001 - the sample records it, the run goes on
                    sample["error"] = str(err)
                finally:
                    guest.close()
                report.add(sample)
                progress.step(f"SE {size:g} GiB async_destroy={value} #{rep + 1}: reboot {sample.get('reboot_s')}")


def dry_run_report(config: RebootConfig) -> BenchReport:
    """A report holding only the plan (labelled a dry run)."""
    report = BenchReport(bench="pv-reboot", title="Secure Execution reboot benchmark: the commands it would run",
                         metrics=METRICS, group_key="async_destroy", result_source=DRY_RUN)
    report.meta["plan"] = dry_run_plan(config)
    if config.host_key_doc is None:
        report.notes.append(NO_HKD)
    return report
