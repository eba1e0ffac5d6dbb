"""``kvmh host install|restore``: put a kernel on an ssh:// host and boot it, or undo that."""

from __future__ import annotations

import argparse
import logging
import time

from ..errors import EXIT_OK, EXIT_USAGE, UsageError
from ..targets.spec import TargetOptions, parse_target_spec

log = logging.getLogger(__name__)


def _options(args: argparse.Namespace) -> TargetOptions:
    return TargetOptions(
        kernel=getattr(args, "kernel", None),
        modules_dir=getattr(args, "modules", None),
        boot_timeout=getattr(args, "boot_timeout", 300.0),
        ssh_key=getattr(args, "ssh_key", None),
        known_hosts=getattr(args, "known_hosts", None),
        accept_new_host_key=bool(getattr(args, "accept_new_host_key", False)),
    )


def host_main(args: argparse.Namespace) -> int:
    """Entry point of ``kvmh host``; returns the exit status (errors are raised as HarnessError)."""
    from ..targets.ssh_host import SshHostTarget

    action = getattr(args, "host_command", None)
    if action not in ("install", "restore"):
        print("usage: kvmh host {install,restore} --target ssh://user@host[:port] ...")
        return EXIT_USAGE
    spec = parse_target_spec(args.target)
    if spec.kind != "ssh":
        raise UsageError(f"kvmh host {action} needs an ssh:// target, not {args.target!r}")
    options = _options(args)
    if action == "install" and options.kernel is None:
        raise UsageError("kvmh host install needs --kernel (the built image, e.g. arch/s390/boot/bzImage)")
    target = SshHostTarget(spec, options)
    try:
        target.start()
        if action == "install":
            return _install(target, args, options)
        return _restore(target, options, reboot=not getattr(args, "no_reboot", False))
    finally:
        target.close()


def _install(target, args: argparse.Namespace, options: TargetOptions) -> int:
    from ..hostops import install_kernel

    method = getattr(args, "method", "kexec") or "kexec"
    started = time.monotonic()
    # --initrd and --append are read when the parser offers them (optional arguments of `host install`).
    record = install_kernel(target, options.kernel, options.modules_dir, method=method,
                            initrd=getattr(args, "initrd", None), extra_cmdline=getattr(args, "append", "") or "",
                            boot_timeout=options.boot_timeout)
    print(f"host:       {target.spec}")
    print(f"running:    {record.release} (was {record.previous_release})")
    print(f"method:     {record.method}")
    print(f"cmdline:    {record.cmdline}")
    print(f"initramfs:  {record.initramfs}")
    print(f"installed:  {', '.join(record.paths)}")
    print(f"took:       {time.monotonic() - started:.0f} s")
    print(f"undo with:  kvmh host restore --target {target.spec}")
    return EXIT_OK


def _restore(target, options: TargetOptions, reboot: bool = True) -> int:
    from ..hostops import restore

    result = restore(target, reboot=reboot, deadline=time.monotonic() + options.boot_timeout)
    if result.nothing_to_do:
        print(f"{target.spec}: nothing installed by kvmh, nothing to restore")
        return EXIT_OK
    assert result.record is not None
    print(f"host:      {target.spec}")
    print(f"removed:   {', '.join(result.removed) or '(files already gone)'}")
    if result.record.zipl is not None:
        print(f"zipl:      {result.record.zipl.conf} restored and zipl run")
    if result.rebooted:
        print("rebooted:  back to the default kernel")
    elif result.was_running_installed:
        print("note:      the installed kernel is still running until the next reboot")
    return EXIT_OK
