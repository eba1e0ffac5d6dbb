"""``kvmh``: the command line of the harness.

Exit status: 0 all passed, 1 a test failed or regressed, 2 the infrastructure failed, 3 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import __version__
from .errors import EXIT_INFRA, EXIT_USAGE, HarnessError

log = logging.getLogger("kvmh")

DESCRIPTION = "kvmh: boot a kernel on a target, run the KVM selftests and async-teardown scenarios, report."
TARGET_HELP = "qemu:s390x (default), qemu:x86_64, local, model or ssh://user@host[:port]"


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="qemu:s390x", help=TARGET_HELP)
    p.add_argument("--kernel", type=Path, help="boot this kernel image instead of the guest image's")
    p.add_argument("--modules", type=Path, help="modules staging dir (INSTALL_MOD_PATH) matching --kernel")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"), help="QEMU accelerator")
    p.add_argument("--boot-timeout", type=float, default=300.0, help="seconds until the target must be up")
    p.add_argument("--ssh-key", type=Path, help="private key for ssh:// targets")
    p.add_argument("--known-hosts", type=Path, help="known_hosts file for ssh:// targets")
    p.add_argument("--accept-new-host-key", action="store_true", help="trust an ssh:// host key on first contact")


def _target_options(args: argparse.Namespace, artifacts: Optional[Path] = None):
    from .targets.spec import TargetOptions

    return TargetOptions(
        kernel=args.kernel,
        modules_dir=args.modules,
        artifacts_dir=artifacts,
        accel=args.accel,
        boot_timeout=args.boot_timeout,
        ssh_key=args.ssh_key,
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
    )


def _target_pytest_args(args: argparse.Namespace) -> list[str]:
    out = ["--kvm-target", args.target, "--kvm-accel", args.accel, "--kvm-boot-timeout", str(args.boot_timeout)]
    for flag, value in (("--kvm-kernel", args.kernel), ("--kvm-modules", args.modules),
                        ("--kvm-ssh-key", args.ssh_key), ("--kvm-known-hosts", args.known_hosts)):
        if value is not None:
            out += [flag, str(value)]
    if args.accept_new_host_key:
        out.append("--kvm-accept-new-host-key")
    return out


# ---------------------------------------------------------------- commands


def cmd_doctor(args: argparse.Namespace) -> int:
    from .workflows.doctor import run_doctor

    def out(line: str) -> None:
        if not (args.quiet and line.startswith("ok ")):
            print(line)

    return run_doctor(out, tree=args.tree)


def cmd_image_build(args: argparse.Namespace) -> int:
    from guest_images import build_image

    image = build_image(args.arch, force=args.force, mirrors=args.mirror)
    print(f"arch:           {image.arch}")
    print(f"kernel:         {image.kernel}")
    print(f"initrd:         {image.initrd}")
    print(f"kernel release: {image.kernel_release}")
    print(f"image hash:     {image.image_hash}")
    return 0


def cmd_image_lock(args: argparse.Namespace) -> int:
    from guest_images.locking import image_lock

    return image_lock(args.arch, update=args.update, mirrors=args.mirror)


def cmd_boot(args: argparse.Namespace) -> int:
    from .workflows.run import boot_and_run, dry_run

    if args.dry_run:
        return dry_run(args.target, _target_options(args, args.artifacts))
    return boot_and_run(args.target, _target_options(args, args.artifacts), args.run, args.timeout)


def cmd_test(args: argparse.Namespace) -> int:
    from .workflows.run import run_pytest

    extra = list(args.pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return run_pytest(["--pyargs", "harness.suites", *_target_pytest_args(args), *extra],
                      artifacts_root=args.artifacts, target=args.target, quiet=args.quiet)


def cmd_run(args: argparse.Namespace) -> int:
    from .parallel import xdist_args
    from .workflows.run import main_job

    extra = list(args.pytest_args)
    args.pytest_args = [*xdist_args(args.jobs, args.also_target), *(extra[1:] if extra[:1] == ["--"] else extra)]
    return main_job(args, _target_pytest_args)


def cmd_selftests(args: argparse.Namespace) -> int:
    from .workflows.run import run_pytest
    from .workflows.selftests import selftests_pytest_args

    extra = list(args.pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return run_pytest([*selftests_pytest_args(args), *_target_pytest_args(args), *extra],
                      artifacts_root=args.artifacts, target=args.target, quiet=args.quiet)


def cmd_source_get(args: argparse.Namespace) -> int:
    from .kernel.source import linux_source

    print(linux_source(args.package, mirrors=args.mirror))
    return 0


def cmd_source_lock(args: argparse.Namespace) -> int:
    from .kernel.source import relock_source

    return relock_source(args.update, mirrors=args.mirror)


def cmd_build(args: argparse.Namespace) -> int:
    from .workflows.build import build_main

    return build_main(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .workflows.compare import main

    return main([str(args.base), str(args.new)])


def cmd_splats(args: argparse.Namespace) -> int:
    from .workflows.compare import splats_main

    return splats_main([str(args.file)])


def cmd_host(args: argparse.Namespace) -> int:
    from .workflows.host import host_main

    return host_main(args)


def cmd_bisect(args: argparse.Namespace) -> int:
    from .workflows.bisect_cli import bisect_main

    return bisect_main(args)


def cmd_repro(args: argparse.Namespace) -> int:
    from .workflows.repro_cli import repro_main

    return repro_main(args)


# ---------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with status 3, like every other usage error of kvmh.

    Every command and subcommand takes ``-q/--quiet`` and ``-v/--verbose`` (before or after its name).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                          help="print only the result (the summary, or errors); the artifacts keep kvmh.log")
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                          help="show debug lines (the artifacts' kvmh.log always has them)")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kvmh", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"kvmh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("doctor", help="check this machine and name the package for each gap")
    p.add_argument("--tree", type=Path, help="kernel tree to try headers_install on (default: the cached one)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("image", help="guest images")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION")
    pb = isub.add_parser("build", help="assemble (or reuse) the guest image for an architecture")
    pb.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    pb.add_argument("--force", action="store_true", help="rebuild even when cached")
    pb.add_argument("--mirror", action="append", default=[], metavar="URL",
                    help="Debian mirror to fetch the locked packages from (repeatable; default $KVMH_DEBIAN_MIRRORS "
                         "or Debian's); {archive} in the URL stands for debian or debian-security")
    pb.set_defaults(func=cmd_image_build)
    pl = isub.add_parser("lock", help="check that the lock's files are served, or refresh it (--update)")
    pl.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    pl.add_argument("--update", action="store_true",
                    help="re-resolve against the index: newest version a mirror serves; rewrite the lock")
    pl.add_argument("--mirror", action="append", default=[], metavar="URL", help="as for image build")
    pl.set_defaults(func=cmd_image_lock)

    p = sub.add_parser("boot", help="boot a target; with --run, run one command over SSH and exit with its status")
    _add_target_args(p)
    p.add_argument("--run", metavar="CMD", help="command to run once the target is up")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --run may take")
    p.add_argument("--dry-run", action="store_true", help="print the QEMU command instead of booting")
    p.add_argument("--artifacts", type=Path, help="directory for the console log and QEMU command")
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("test", help="run the shipped suites against a target (extra args go to pytest)")
    _add_target_args(p)
    p.add_argument("--artifacts", type=Path, help="artifacts root (default ./kvmh-artifacts)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("run", help="the main job: [build a series,] boot, run every suite, report")
    _add_target_args(p)
    p.add_argument("--tree", type=Path, help="kernel tree (default: Debian's linux-source-6.12)")
    p.add_argument("--series", help="mbox, directory of .patch files, git range or message-id to apply")
    p.add_argument("--base", help="base commit for --series (default HEAD)")
    p.add_argument("--config", type=Path, help="start the kernel config from this .config")
    p.add_argument("--config-fragment", type=Path, action="append", default=[], help="extra kernel config")
    p.add_argument("--debug", action="store_true", help="add the debug config fragment (lockdep, kmemleak)")
    p.add_argument("--artifacts", type=Path, help="artifacts root (default ./kvmh-artifacts)")
    p.add_argument("--junitxml", type=Path, help="also write the JUnit file here")
    p.add_argument("-j", "--jobs", type=int, default=1, help="parallel guests: pytest-xdist workers, each its own")
    p.add_argument("--also-target", action="append", default=[], metavar="SPEC",
                   help="another target in the same run: each xdist worker takes one (needs -j >= targets)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("selftests", help="build (or reuse) and run the C KVM selftests on a target")
    _add_target_args(p)
    p.add_argument("--tree", type=Path, help="kernel tree (default: Debian's linux-source-6.12)")
    p.add_argument("--expectations", type=Path, help="per-host expectations file")
    p.add_argument("--write-expectations", type=Path, help="write an expectations file from this run")
    p.add_argument("--timeout-factor", type=float, help="scale each program's settings timeout")
    p.add_argument("--budget", type=float, help="time budget in seconds for the whole run")
    p.add_argument("--include", action="append", default=[], help="glob of programs to run")
    p.add_argument("--exclude", action="append", default=[], help="glob of programs to leave out")
    p.add_argument("--artifacts", type=Path, help="artifacts root (default ./kvmh-artifacts)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_selftests)

    p = sub.add_parser("source", help="kernel sources")
    ssub = p.add_subparsers(dest="source_command", metavar="ACTION")
    pg = ssub.add_parser("get", help="download Debian's linux-source (once) and print the tree's path")
    pg.add_argument("--package", default="linux-source-6.12")
    pg.add_argument("--mirror", action="append", default=[], metavar="URL", help="as for image build")
    pg.set_defaults(func=cmd_source_get)
    pl = ssub.add_parser("lock", help="check that the pinned linux-source file is served, or refresh it (--update)")
    pl.add_argument("--update", action="store_true", help="pin the newest version a mirror serves")
    pl.add_argument("--mirror", action="append", default=[], metavar="URL", help="as for image build")
    pl.set_defaults(func=cmd_source_lock)

    p = sub.add_parser("build", help="apply a series to a tree in a worktree and build the kernel")
    p.add_argument("--tree", type=Path, help="kernel tree (default: Debian's linux-source-6.12)")
    p.add_argument("--series", help="mbox, directory of .patch files, git range or message-id")
    p.add_argument("--base", help="base commit (default HEAD)")
    p.add_argument("--arch", default="s390x", choices=("s390x", "x86_64"))
    p.add_argument("--config", type=Path, help="start from this .config instead of the small default")
    p.add_argument("--config-fragment", type=Path, action="append", default=[], help="extra config fragment")
    p.add_argument("--debug", action="store_true", help="add the debug fragment (lockdep, kmemleak, LKDTM)")
    p.add_argument("--in-place", action="store_true",
                   help="build the tree as it is (refused when it has uncommitted changes; never with --series)")
    p.add_argument("--jobs", "-j", type=int, help="parallel make jobs (default: number of CPUs)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("compare", help="compare two JUnit files: regressions, fixes, new, vanished, new splats")
    p.add_argument("base", type=Path)
    p.add_argument("new", type=Path)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("splats", help="list the kernel splats in a log file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_splats)

    from .workflows.bisect_cli import add_bisect_parser
    from .workflows.repro_cli import add_repro_parser

    add_bisect_parser(sub, _add_target_args).set_defaults(func=cmd_bisect)
    add_repro_parser(sub, _add_target_args).set_defaults(func=cmd_repro)

    from .workflows.nightly_cli import add_fleet_parsers

    add_fleet_parsers(sub)  # nightly, history, ci emit

    p = sub.add_parser("host", help="install a kernel on an ssh:// host, or undo it")
    hsub = p.add_subparsers(dest="host_command", metavar="ACTION")
    for name, helptext in (("install", "install and boot a kernel, then verify it"),
                           ("restore", "remove what install left and return to the default kernel")):
        ph = hsub.add_parser(name, help=helptext)
        _add_target_args(ph)
        if name == "install":
            ph.add_argument("--kexec", dest="method", action="store_const", const="kexec", default="kexec",
                            help="boot the kernel once with kexec (default; a reset brings the old one back)")
            ph.add_argument("--zipl", dest="method", action="store_const", const="zipl",
                            help="make the kernel the default IPL entry (s390x, persistent)")
            ph.add_argument("--initrd", type=Path, help="initramfs to boot with (default: built on the host)")
            ph.add_argument("--append", default="", help="extra kernel command line")
        else:
            ph.add_argument("--no-reboot", action="store_true", help="remove the files but do not reboot")
        ph.set_defaults(func=cmd_host)

    from .bench.cli import add_bench_parser

    add_bench_parser(sub, _add_target_args, _target_options)
    return parser


def _setup_output(args: argparse.Namespace) -> None:
    """Console logging (warnings; debug with -v; errors only with -q) and the progress display."""
    from . import progress

    args.verbose = getattr(args, "verbose", 0) or 0
    args.quiet = bool(getattr(args, "quiet", False)) and not args.verbose
    level = logging.ERROR if args.quiet else logging.DEBUG if args.verbose else logging.WARNING
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)  # handlers choose; the artifacts' kvmh.log takes everything
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    progress.configure(progress.choose_mode(quiet=args.quiet))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not hasattr(args, "pytest_args"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.pytest_args = [*unknown, *args.pytest_args]
    _setup_output(args)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        if args.command is None:
            quiet, verbose = args.quiet, args.verbose
            args = parser.parse_args(["run"])
            args.quiet, args.verbose = quiet, verbose
            func = args.func
        else:
            parser.parse_args([args.command, "--help"])
            return EXIT_USAGE
    try:
        return func(args)
    except HarnessError as err:
        print(f"kvmh: error: {err}", file=sys.stderr)
        if err.details and args.verbose:
            print(err.details, file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("kvmh: interrupted", file=sys.stderr)
        return EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())
