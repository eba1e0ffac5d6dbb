"""Install a kernel on a host over SSH and boot it once (kexec) or persistently (zipl, s390x).

Order of work, so that a failure leaves nothing half-installed:

1. checks (``checks.check_prerequisites``): architecture of the image, root or passwordless sudo,
   kexec present and allowed (or zipl), no foreign ``/lib/modules/<release>``, free space;
2. a previous install recorded on the host is undone;
3. the record ``/var/lib/kvmh/installed.json`` is written first (status ``copying``), then the image
   and initramfs go to ``/boot/kvmh/<release>/`` and the modules, streamed as a tarball, to
   ``/lib/modules/<release>/``; any failure up to the reboot removes all of it again;
4. kexec: ``kexec -l`` then ``systemctl kexec`` (systemd) or ``sync; kexec -e``, started detached so
   the SSH command returns. The boot configuration is untouched, so an IPL or a hard reset brings the
   host back with its default kernel. zipl: a ``[kvmh]`` section (or BLS entry) becomes the default
   and the host reboots;
5. the host must answer SSH again before the deadline with a new boot id, the built release,
   the image's ``uname -v`` and ``kvmh.boot=<token>`` in ``/proc/cmdline``.

The initramfs, in order of preference: the ``initrd`` the caller passes (uploaded as is); when the
host runs from its initramfs (root filesystem rootfs/tmpfs, as the harness's own guests do) the
running root is repacked on the host, so host keys, authorized keys, the new modules and the record
survive the kexec; otherwise ``dracut`` or ``mkinitramfs`` on the host, after the modules are in place.
"""

from __future__ import annotations

import datetime
import io
import logging
import posixpath
import secrets
import shlex
import tarfile
import time
from pathlib import Path
from typing import Optional

from ..hashing import file_sha256
from ..errors import HarnessError, InfrastructureError, UsageError
from ..targets.base import Target
from . import zipl as zipl_conf
from .boot import (
    TOKEN_PARAM,
    _NotBack,
    _SameBoot,
    compose_cmdline,
    image_uts_version,
    kexec_load_command,
    read_boot_state,
    start_boot,
    wait_for_new_boot,
)
from .checks import (
    INITRAMFS_DRACUT,
    INITRAMFS_EXPLICIT,
    INITRAMFS_MKINITRAMFS,
    INITRAMFS_REPACK,
    CheckReport,
    LocalKernel,
    check_prerequisites,
    tree_size_kb,
)
from .record import HostLayout, InstallRecord, ZiplChange
from .restore import undo_record
from .shell import HostShell

log = logging.getLogger(__name__)

REPACK_SCRIPT = Path(__file__).with_name("repack_root.py")
METHODS = ("kexec", "zipl")


def local_kernel(image: Path, modules_dir: Optional[Path], initrd: Optional[Path] = None) -> LocalKernel:
    """Describe the kernel to install from the local files (no host involved)."""
    from guest_images.kernels import kernel_arch_of, kernel_release_of
    from guest_images.modules import find_release_dir

    image = Path(image).expanduser()
    if not image.is_file():
        raise UsageError(f"kernel image {image} does not exist: pass the built image with --kernel")
    if initrd is not None and not Path(initrd).is_file():
        raise UsageError(f"initramfs {initrd} does not exist")
    arch = kernel_arch_of(image) or ""
    release = kernel_release_of(image, arch) if arch else None
    release_dir = find_release_dir(Path(modules_dir).expanduser()) if modules_dir is not None else None
    if release_dir is not None:
        if release and release != release_dir.name:
            raise UsageError(f"kernel {image} is release {release} but the modules in {release_dir} are "
                             f"{release_dir.name}: pass the modules built with this kernel")
        release = release_dir.name
    return LocalKernel(image=image, arch=arch, release=release or "unknown", modules_dir=release_dir,
                       modules_kb=tree_size_kb(release_dir) if release_dir is not None else 0,
                       initrd=Path(initrd) if initrd is not None else None)


def modules_tarball(release_dir: Path) -> bytes:
    """A gzip'd tar of ``lib/modules/<release>`` contents, without the build/source links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(release_dir.iterdir()):
            if path.name in ("build", "source") and path.is_symlink():
                continue
            tar.add(str(path), arcname=path.name)
    return buf.getvalue()


def install_kernel(target: Target, image: Path, modules_dir: Optional[Path] = None, method: str = "kexec",
                   cmdline: Optional[str] = None, deadline: Optional[float] = None, *,
                   initrd: Optional[Path] = None, extra_cmdline: str = "",
                   layout: Optional[HostLayout] = None, boot_timeout: float = 300.0) -> InstallRecord:
    """Install ``image`` (and modules) on ``target``, boot it and verify it; return the record.

    ``cmdline``: the new kernel's command line (default: the running one); ``extra_cmdline`` is
    appended, then ``kvmh.boot=<token>``. ``deadline`` (``time.monotonic()`` value) bounds the wait
    for the host after the reboot; default: ``boot_timeout`` seconds from the reboot.
    Raises InfrastructureError (exit 2) with one line on every failure; before the reboot, all
    copied files are removed again.
    """
    if method not in METHODS:
        raise UsageError(f"unknown install method {method!r}: use kexec or zipl")
    layout = layout or HostLayout()
    kernel = local_kernel(image, modules_dir, initrd)
    report = check_prerequisites(target, kernel, method, layout)
    shell, probe = report.shell, report.probe
    for line in report.info:
        log.info("%s: %s", target.spec, line)
    if report.previous is not None:
        log.info("%s: undoing the previous install of %s first", target.spec, report.previous.release)
        undo_record(shell, report.previous, layout)

    token = secrets.token_hex(8)
    record = InstallRecord(
        release=kernel.release, method=method, token=token,
        cmdline=compose_cmdline(cmdline if cmdline is not None else probe.cmdline, token, extra_cmdline),
        image_sha256=file_sha256(kernel.image), previous_release=probe.release,
        installed_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        initramfs=report.initramfs,
    )
    try:
        _copy_and_prepare(shell, report, kernel, record, layout)
    except (HarnessError, OSError) as err:
        removed = _rollback(shell, record, layout)
        message = str(err).rstrip(".")
        raise InfrastructureError(f"{message}; rolled back ({len(removed)} paths removed, "
                                  f"nothing left on {target.spec})", details=getattr(err, "details", "")) from None

    style = start_boot(shell, probe, method)
    if deadline is None:
        deadline = time.monotonic() + boot_timeout
    timeout = max(0.0, deadline - time.monotonic())
    try:
        wait_for_new_boot(target, probe.boot_id, deadline, style)
    except _SameBoot as err:
        _rollback(shell, record, layout)
        raise InfrastructureError(f"{err}: the reboot into {kernel.release} did not happen; "
                                  f"the installed files were removed") from None
    except _NotBack:
        raise InfrastructureError(_not_back_message(target.spec, kernel.release, method, timeout)) from None
    verify_boot(target, kernel, record)
    record.status = "booted"
    HostShell(target, shell.prefix).write_text(record.to_json(), layout.record_path, "updating the install record")
    log.info("%s now runs %s (token %s)", target.spec, kernel.release, token)
    return record


def _not_back_message(spec: str, release: str, method: str, timeout: float) -> str:
    if method == "kexec":
        return (f"{spec} did not answer SSH within {timeout:.0f} s of the kexec into {release}: an IPL of its "
                f"default entry (or a hard reset) brings it back with its installed default kernel, since kexec "
                f"did not change the boot configuration; then run kvmh host restore --target {spec}")
    return (f"{spec} did not answer SSH within {timeout:.0f} s of the reboot into {release}, which zipl made the "
            f"default: IPL it and pick the previous entry from the zipl menu, then run "
            f"kvmh host restore --target {spec}")


def _rollback(shell: HostShell, record: InstallRecord, layout: HostLayout) -> list[str]:
    try:
        return undo_record(shell, record, layout)
    except HarnessError as err:
        log.error("rollback on %s incomplete: %s", shell.target.spec, err)
        return []


def _copy_and_prepare(shell: HostShell, report: CheckReport, kernel: LocalKernel, record: InstallRecord,
                      layout: HostLayout) -> None:
    """Copy everything, build the initramfs and load/configure the boot; record first, then files."""
    kdir = layout.kernel_dir(kernel.release)
    record.paths.append(kdir)
    if kernel.modules_dir is not None:
        record.paths.append(layout.modules_dir(kernel.release))
    shell.write_text(record.to_json(), layout.record_path, f"writing the install record {layout.record_path}")

    remote_image = f"{kdir}/vmlinuz"
    remote_initrd = f"{kdir}/initrd.img"
    # Root only: a repacked initramfs holds the host's /etc/shadow and SSH host keys.
    kvmh_dir = shlex.quote(posixpath.dirname(kdir))
    shell.check(f"umask 077 && mkdir -p {shlex.quote(kdir)} && chmod 700 {kvmh_dir} {shlex.quote(kdir)}",
                f"creating {kdir}")
    shell.write_file(kernel.image, remote_image, f"copying the kernel to {remote_image}", mode=0o600)
    if kernel.initrd is not None:
        shell.write_file(kernel.initrd, remote_initrd, f"copying the initramfs to {remote_initrd}", mode=0o600)
    if kernel.modules_dir is not None:
        _copy_modules(shell, kernel, layout, report.probe.has("depmod"))
    record.status = "loaded"
    shell.write_text(record.to_json(), layout.record_path, f"writing the install record {layout.record_path}")
    _make_initramfs(shell, report.initramfs, kernel, remote_initrd, layout)
    if record.method == "kexec":
        shell.check(kexec_load_command(remote_image, remote_initrd, record.cmdline), "kexec -l", timeout=300)
    else:
        _configure_zipl(shell, report, kernel, record, remote_image, remote_initrd, layout)


def _copy_modules(shell: HostShell, kernel: LocalKernel, layout: HostLayout, depmod: bool) -> None:
    assert kernel.modules_dir is not None
    dest = layout.modules_dir(kernel.release)
    blob = modules_tarball(kernel.modules_dir)
    shell.check(f"mkdir -p {shlex.quote(dest)} && tar -xzf - -C {shlex.quote(dest)}",
                f"copying the modules to {dest}", timeout=900, stdin=blob)
    if depmod and layout.modules_root == "/lib/modules":
        shell.check(f"depmod -a {shlex.quote(kernel.release)}", f"depmod for {kernel.release}", timeout=600)


def _make_initramfs(shell: HostShell, strategy: str, kernel: LocalKernel, remote_initrd: str,
                    layout: HostLayout) -> None:
    quoted = shlex.quote(remote_initrd)
    release = shlex.quote(kernel.release)
    if strategy == INITRAMFS_EXPLICIT:
        return
    if strategy == INITRAMFS_REPACK:
        excluded = shlex.quote(f"{layout.boot_dir}/kvmh")
        shell.check(f"python3 - {quoted} {excluded}", f"repacking the running root into {remote_initrd}",
                    timeout=1200, stdin=REPACK_SCRIPT.read_bytes())
    elif strategy == INITRAMFS_DRACUT:
        shell.check(f"dracut --force {quoted} {release}", f"dracut for {kernel.release}", timeout=1200)
    elif strategy == INITRAMFS_MKINITRAMFS:
        shell.check(f"mkinitramfs -o {quoted} {release}", f"mkinitramfs for {kernel.release}", timeout=1200)
    else:
        raise InfrastructureError(f"unknown initramfs strategy {strategy!r}")


def _configure_zipl(shell: HostShell, report: CheckReport, kernel: LocalKernel, record: InstallRecord,
                    remote_image: str, remote_initrd: str, layout: HostLayout) -> None:
    """Back up zipl.conf, make the kvmh entry the default, run zipl."""
    original = shell.check(f"cat {shlex.quote(layout.zipl_conf)}", f"reading {layout.zipl_conf}")
    backup = f"{layout.state_dir}/zipl.conf.orig"
    shell.check(f"cp -p {shlex.quote(layout.zipl_conf)} {shlex.quote(backup)}", f"backing up {layout.zipl_conf}")
    record.paths.append(backup)
    entry = zipl_conf.BootEntry(image=remote_image, ramdisk=remote_initrd, parameters=record.cmdline,
                                release=kernel.release)
    change = ZiplChange(conf=layout.zipl_conf, backup=backup)
    if zipl_conf.uses_defaultauto(original) and report.probe.bls:
        snippet = f"{layout.bls_dir}/{zipl_conf.bls_title(kernel.release)}.conf"
        change.bls_entry = snippet
        record.paths.append(snippet)
        record.zipl = change
        shell.write_text(record.to_json(), layout.record_path, "writing the install record")
        shell.write_text(zipl_conf.bls_entry(entry), snippet, f"writing {snippet}")
        updated = zipl_conf.set_default(original, zipl_conf.bls_title(kernel.release))
    else:
        record.zipl = change
        shell.write_text(record.to_json(), layout.record_path, "writing the install record")
        updated = zipl_conf.add_section(original, entry)
    shell.write_text(updated, layout.zipl_conf, f"writing {layout.zipl_conf}")
    shell.check("zipl", "zipl", timeout=600)


def verify_boot(target: Target, kernel: LocalKernel, record: InstallRecord) -> None:
    """The running kernel must be the installed one, booted with this install's token."""
    release, version, cmdline, _boot_id = read_boot_state(target)
    token = f"{TOKEN_PARAM}={record.token}"
    if token not in cmdline.split():
        raise InfrastructureError(f"{target.spec} rebooted but not into the installed kernel ({token} is missing "
                                  f"from /proc/cmdline, running {release}): run kvmh host restore "
                                  f"--target {target.spec}")
    if release != kernel.release:
        raise InfrastructureError(f"{target.spec} runs release {release}, not the installed {kernel.release}: "
                                  f"run kvmh host restore --target {target.spec}")
    expected = image_uts_version(kernel.image)
    if expected and version and version != expected:
        raise InfrastructureError(f"{target.spec} runs {release} {version!r}, not the installed build "
                                  f"{expected!r}: run kvmh host restore --target {target.spec}")

