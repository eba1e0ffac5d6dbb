"""Undo an install: remove the files it listed, put zipl's configuration back, optionally reboot."""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass, field
from typing import Optional

from ..errors import InfrastructureError
from ..targets.base import Target
from .boot import TOKEN_PARAM, read_boot_state, reboot_command, wait_for_new_boot
from .probe import probe_host
from .record import HostLayout, InstallRecord, read_record
from .shell import HostShell

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    """What restore found and did."""

    record: Optional[InstallRecord]
    removed: list[str] = field(default_factory=list)
    was_running_installed: bool = False
    rebooted: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return self.record is None


def undo_record(shell: HostShell, record: InstallRecord, layout: HostLayout) -> list[str]:
    """Remove everything ``record`` lists and revert its zipl change; return the removed paths.

    Best effort on the files (a missing file is fine); a failing zipl run is raised, since the
    boot configuration must not be left half-restored silently.
    """
    shell.run("command -v kexec >/dev/null 2>&1 && kexec -u", timeout=60)  # drop a loaded, unbooted kernel
    if record.zipl is not None:
        _revert_zipl(shell, record)
    removed = []
    for path in record.paths:
        if not _safe_to_remove(path, layout):
            log.warning("not removing %s: outside the install directories", path)
            continue
        result = shell.run(f"[ -e {shlex.quote(path)} ] || [ -L {shlex.quote(path)} ] || exit 3; "
                           f"rm -rf -- {shlex.quote(path)}", timeout=300)
        if result.exit_status == 0:
            removed.append(path)
        elif result.exit_status != 3:
            log.warning("could not remove %s: %s", path, result.stderr.strip())
    shell.run(f"rmdir {shlex.quote(layout.boot_dir + '/kvmh')} 2>/dev/null", timeout=60)
    shell.run(f"rm -f {shlex.quote(layout.record_path)}", timeout=60)
    return removed


def _safe_to_remove(path: str, layout: HostLayout) -> bool:
    """Only paths below the harness's own install directories are ever removed."""
    allowed = (layout.boot_dir + "/kvmh/", layout.modules_root + "/", layout.bls_dir + "/kvmh-",
               layout.state_dir + "/")
    return ".." not in path.split("/") and any(path.startswith(prefix) and len(path) > len(prefix)
                                                for prefix in allowed)


def _revert_zipl(shell: HostShell, record: InstallRecord) -> None:
    change = record.zipl
    assert change is not None
    conf = shlex.quote(change.conf)
    if change.backup:
        shell.check(f"cp -p {shlex.quote(change.backup)} {conf}", f"restoring {change.conf}")
    if change.bls_entry:
        shell.run(f"rm -f {shlex.quote(change.bls_entry)}", timeout=60)
    shell.check("zipl", "zipl (rewriting the original boot configuration)", timeout=600)


def restore(target: Target, layout: Optional[HostLayout] = None, *, reboot: bool = False,
            deadline: Optional[float] = None) -> RestoreResult:
    """Remove what ``install_kernel`` left on the host.

    With ``reboot=True`` and the installed kernel running, the host is rebooted into its default
    kernel (which an IPL/reset loads, since kexec never changed the boot configuration) and
    ``deadline`` (monotonic; default now + 600 s) bounds the wait for it.
    """
    layout = layout or HostLayout()
    shell = HostShell(target)
    record = read_record(target, layout)
    if record is None:
        log.info("%s: no install record at %s, nothing to restore", target.spec, layout.record_path)
        return RestoreResult(record=None)
    _release, _version, cmdline, boot_id = read_boot_state(target)
    running = f"{TOKEN_PARAM}={record.token}" in cmdline.split()
    result = RestoreResult(record=record, was_running_installed=running)
    result.removed = undo_record(shell, record, layout)
    if reboot and running:
        probe = probe_host(target, layout, record.release)
        shell.check(reboot_command(probe), "starting the reboot into the default kernel")
        deadline = deadline if deadline is not None else time.monotonic() + 600.0
        try:
            wait_for_new_boot(target, boot_id, deadline, "reboot")
        except InfrastructureError as err:
            raise InfrastructureError(f"{target.spec} did not come back after the reboot into its default kernel "
                                      f"({err}): IPL or reset it; the installed files are already removed") from None
        result.rebooted = True
    return result
