"""PV teardown and reboot orchestration up to the hardware boundary: model target, dry-run command lines."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.bench.output import MODEL
from harness.bench.pv_qemu import KillOutcome, parse_watch, watch_command
from harness.bench.reboot import NO_HKD, RebootConfig, dry_run_plan, reboot_skip_reason
from harness.bench.se_guest import TEARDOWN_THREAD, kvm_reload_command, pv_qemu_argv, se_image_command
from harness.bench.teardown import PvTeardownConfig, plan_sizes, run_pv_teardown, teardown_scenario
from harness.targets.nested_qemu import nested_qemu_argv
from harness.kvm.caps import Capabilities, model_host_caps
from harness.kvm.model import Model
from harness.targets.model import ModelTarget
from harness.targets.spec import TargetOptions


@pytest.mark.parametrize("variant", ["disable", "async"])
def test_teardown_scenarios_are_valid_agent_input(variant: str) -> None:
    scenario = teardown_scenario(variant, 8)
    steps = scenario.normalised_steps()  # the agent's own validation: raises on a bad op or key
    names = [s["name"] for s in steps]
    memslot = next(s for s in steps if s["op"] == "add_memslot")
    assert memslot["size_mb"] == memslot["touch_mb"] == 8192
    assert "mem_back" in names and names.index("mem_back") > names.index("close_vm")
    if variant == "async":
        assert names.index("prepare") < names.index("performer") < names.index("mem_back")
    with pytest.raises(ValueError, match="unknown teardown variant"):
        teardown_scenario("reboot", 4)


def test_pv_teardown_on_the_model_is_labelled_and_has_no_timings() -> None:
    report = run_pv_teardown(ModelTarget(), PvTeardownConfig(sizes_gib=[4, 8], repeats=2))
    assert report.result_source == MODEL
    assert len(report.samples) == 2 * 2 * 2
    assert all(s["agrees_with_model"] for s in report.samples)
    assert not any(k.endswith("_s") for s in report.samples for k in s)
    prepare = next(s for s in report.samples if s["variant"] == "async")["outcomes"]["prepare"]
    assert (prepare["ret"], prepare["rc"], prepare["rrc"]) == (0, 1, 42)
    assert report.meta["async_destroy"] == 1 and report.meta["kernel_release"] == "6.12.0-model"
    assert report.machine == {}


def test_pv_teardown_skips_with_the_probes_reason() -> None:
    off = ModelTarget(caps=model_host_caps(async_destroy=0))
    report = run_pv_teardown(off, PvTeardownConfig(sizes_gib=[4], repeats=1))
    assert not report.samples
    assert report.meta["skip_reason"] == "kvm.async_destroy=0: asynchronous teardown is disabled on this host"
    x86 = Capabilities(arch="x86_64", kernel_release="6.1.0", has_kvm=True)
    old = ModelTarget(caps=x86)
    assert "not an s390x host" in run_pv_teardown(old, PvTeardownConfig(sizes_gib=[4]), caps=x86).meta["skip_reason"]


def test_model_accepts_mem_watch_with_any_figures() -> None:
    steps = teardown_scenario("disable", 4).normalised_steps()
    expected = Model(model_host_caps()).expect(steps)[0]
    watch = next(r for r in expected if r["name"] == "mem_back")
    assert watch["ret"] == 0 and watch["sim"]["mem_back_ms"] == 0


def test_plan_sizes_caps_by_free_memory() -> None:
    assert plan_sizes([4, 8, 16, 32], 20.0) == ([4, 8, 16], [32])
    assert plan_sizes([4, 8], None) == ([4, 8], [])


def test_se_image_commands() -> None:
    assert se_image_command("pvimg", "k", "r", "p", "hkd", "o")[:2] == ["pvimg", "create"]
    genprot = se_image_command("genprotimg", "k", "r", "p", "hkd", "o")
    assert genprot == ["genprotimg", "-i", "k", "-r", "r", "-p", "p", "-k", "hkd", "-o", "o", "--no-verify"]
    verified = se_image_command("pvimg", "k", "r", "p", "hkd", "o", verify=True, certs=["ibm.crt"])
    assert "--no-verify" not in verified and verified[-2:] == ["-C", "ibm.crt"]
    with pytest.raises(Exception, match="unknown SE image tool"):
        se_image_command("mkimage", "k", "r", "p", "h", "o")


def test_pv_qemu_command_line_is_protected_and_reboots_in_place() -> None:
    base = nested_qemu_argv("s390x", TargetOptions(memory_mb=8192), "/g", 2222, 4)
    argv = pv_qemu_argv(base, "/g/se.img", ["-async-teardown"])
    line = shlex.join(argv)
    assert "-no-reboot" in base and "-no-reboot" not in argv
    assert argv[argv.index("-machine") + 1] == "s390-ccw-virtio,confidential-guest-support=pv0"
    assert argv[argv.index("-kernel") + 1] == "/g/se.img"
    assert "-initrd" not in argv and "-append" not in argv
    assert "-object s390-pv-guest,id=pv0" in line and argv[-1] == "-async-teardown"
    assert "virtio-net-ccw,netdev=n0,iommu_platform=on" in line and "virtio-rng-ccw,iommu_platform=on" in line
    assert "debug-threads=on" in argv[argv.index("-name") + 1]
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in line and "restrict=on" in line
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-m") + 1] == "8192"
    with pytest.raises(ValueError):
        pv_qemu_argv(["qemu-system-s390x"], "/se.img")


def test_reboot_dry_run_plan_and_skip_reasons(tmp_path: Path) -> None:
    plan = dry_run_plan(RebootConfig(sizes_gib=[2, 4], async_destroy_values=[1, 0]))
    assert plan["se_image"].startswith("pvimg create ") and "--no-verify" in plan["se_image"]
    assert set(plan["qemu"]) == {"2", "4"} and "confidential-guest-support=pv0" in plan["qemu"]["4"]
    assert plan["kvm_reload"][0] == kvm_reload_command(0) == "modprobe -r kvm && modprobe kvm async_destroy=0"
    assert any("2 GiB" in n and "PREPARE" in n for n in plan["notes"])
    caps = model_host_caps()
    assert reboot_skip_reason(caps, None) == NO_HKD
    assert "does not exist" in reboot_skip_reason(caps, tmp_path / "missing.crt")
    hkd = tmp_path / "hkd.crt"
    hkd.write_text("-----BEGIN CERTIFICATE-----\n")
    assert reboot_skip_reason(caps, hkd) is None
    assert "prot_virt_host is 0" in reboot_skip_reason(model_host_caps(prot_virt_host=0), hkd)


def test_watcher_kills_the_process_while_its_teardown_thread_runs() -> None:
    """The host-side watcher, run here against a stand-in for QEMU that starts a named thread."""
    stand_in = ("import ctypes, threading, time\n"
                "def teardown():\n"
                f"    ctypes.CDLL(None).prctl(15, b'{TEARDOWN_THREAD}', 0, 0, 0); time.sleep(30)\n"
                "time.sleep(0.3); threading.Thread(target=teardown).start(); time.sleep(30)\n")
    qemu = subprocess.Popen([sys.executable, "-c", stand_in])
    try:
        argv = shlex.split(watch_command(qemu.pid, delay_ms=20, timeout_s=10))
        argv[0] = sys.executable
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        qemu.wait(timeout=10)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    result = parse_watch(out)
    assert qemu.returncode == -signal.SIGKILL
    assert result["found"] and result["thread_alive_at_kill"]
    assert 0.02 <= result["killed_after_thread_s"] < 1.0
    outcome = KillOutcome(watch=result, memory_back_s=1.0, next_guest_ok=True)
    assert outcome.interrupted and outcome.ok and "while it ran" in outcome.notes()[0]


def test_watcher_reports_a_thread_that_never_appears() -> None:
    quiet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        argv = shlex.split(watch_command(quiet.pid, delay_ms=0, timeout_s=0.3))
        argv[0] = sys.executable
        started = time.monotonic()
        result = parse_watch(subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout)
        assert time.monotonic() - started < 10
        assert quiet.poll() is None  # not killed
    finally:
        quiet.kill()
        quiet.wait()
    assert result["found"] is False
    outcome = KillOutcome(watch=result)
    assert not outcome.interrupted and not outcome.ok and "never appeared" in outcome.notes()[0]
    assert parse_watch("garbage")["found"] is False
    assert json.loads(json.dumps(KillOutcome(watch={"found": True, "thread_alive_at_kill": False}).notes()))[0] \
        .startswith("PERFORM finished before the SIGKILL landed")


class _FakeHost:
    """A PV host that records commands: async_destroy reads as the module parameter last set."""

    spec = "ssh://root@lpar:22"

    def __init__(self, async_destroy: str = "Y") -> None:
        self.param = async_destroy
        self.commands: list = []

    def run(self, command: str, timeout: float = 60.0):
        from harness.targets.base import CommandResult

        self.commands.append(command)
        out = ""
        if command.startswith("cat /sys/module/kvm/parameters/async_destroy"):
            out = self.param + "\n"
        elif command.startswith("modprobe -r kvm"):
            self.param = "Y" if command.endswith("=1") else "N"
        return CommandResult(command, 0, out, "", 0.0)


def test_reboot_orchestration_switches_async_destroy_and_restores_it(tmp_path: Path, monkeypatch) -> None:
    from harness.bench import reboot

    booted: list = []

    class FakeGuest:
        def __init__(self, host, image, options, **kw) -> None:
            self.options, self.qemu_pid, self.kw = options, 4242, kw
            booted.append(self)

        def start(self) -> None:
            pass

        def run(self, command: str, timeout: float = 60.0):
            from harness.errors import InfrastructureError

            assert command == "poweroff -f", "the fill and reboot are faked here"
            raise InfrastructureError("SSH connection lost")  # the guest went down under the command

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(reboot, "SeGuestTarget", FakeGuest)
    monkeypatch.setattr(reboot, "fill_guest", lambda guest, mib: mib)
    monkeypatch.setattr(reboot, "_time_reboot", lambda guest, timeout: 1.5)
    monkeypatch.setattr("guest_images.build_image", lambda arch: object())
    hkd = tmp_path / "hkd.crt"
    hkd.write_text("x")
    host = _FakeHost("Y")
    config = RebootConfig(sizes_gib=[4], repeats=2, async_destroy_values=[1, 0], host_key_doc=hkd)
    report = reboot.run_reboot(host, config, model_host_caps())
    assert [(s["async_destroy"], s["rep"]) for s in report.samples] == [(1, 0), (1, 1), (0, 0), (0, 1)]
    assert all(s["reboot_s"] == 1.5 and s["shutdown_s"] >= 0 and s["filled_mib"] == 3072 for s in report.samples)
    reloads = [c for c in host.commands if c.startswith("modprobe")]
    assert reloads == [kvm_reload_command(0), kvm_reload_command(1)]  # switched off, then restored
    assert host.param == "Y"
    assert any(c.startswith("while kill -0 4242 ") for c in host.commands)
    assert all(g.options.memory_mb == 4096 and getattr(g, "closed", False) for g in booted)


def test_reboot_reports_a_reload_that_fails(tmp_path: Path, monkeypatch) -> None:
    from harness.bench import reboot
    from harness.targets.base import CommandResult

    class BusyHost(_FakeHost):
        def run(self, command: str, timeout: float = 60.0):
            if command.startswith("modprobe"):
                self.commands.append(command)
                return CommandResult(command, 1, "", "modprobe: FATAL: Module kvm is in use.", 0.0)
            return super().run(command, timeout)

    monkeypatch.setattr("guest_images.build_image", lambda arch: object())
    hkd = tmp_path / "hkd.crt"
    hkd.write_text("x")
    report = reboot.run_reboot(BusyHost("Y"), RebootConfig(sizes_gib=[4], async_destroy_values=[0],
                                                           host_key_doc=hkd), model_host_caps())
    assert not report.samples
    assert any("Module kvm is in use" in n and "async_destroy=0" in n for n in report.notes)
