"""``kvmh compare`` and ``kvmh splats``: the command-line ends of the JUnit comparison and the splat finder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..errors import EXIT_INFRA, EXIT_OK, EXIT_USAGE, HarnessError
from ..results.compare import compare_files, exit_status, format_comparison
from ..results.splats import find_splats


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> "None":  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> Optional[argparse.Namespace]:
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        raise _Stop(int(stop.code or 0)) from None


class _Stop(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def main(argv: list[str]) -> int:
    """``kvmh compare BASE.xml NEW.xml``: 0 no regression, 1 regressions or new splats, 3 bad input."""
    parser = _Parser(
        prog="kvmh compare",
        description="Compare two JUnit reports: regressions, fixes, new/vanished tests, new splats.",
    )
    parser.add_argument("base", type=Path, help="baseline JUnit XML")
    parser.add_argument("new", type=Path, help="new JUnit XML")
    try:
        args = _parse(parser, argv)
    except _Stop as stop:
        return stop.code
    try:
        comp = compare_files(args.base, args.new)
    except HarnessError as err:
        print(f"kvmh compare: {err}", file=sys.stderr)
        return err.exit_status
    print(format_comparison(comp))
    return exit_status(comp)


def splats_main(argv: list[str]) -> int:
    """``kvmh splats FILE``: list the kernel splats in a log (0), or a one-line error (2)."""
    parser = _Parser(prog="kvmh splats", description="List kernel splats (WARN, BUG, KASAN...) in a log file.")
    parser.add_argument("file", type=Path, help="dmesg, console or journal log")
    try:
        args = _parse(parser, argv)
    except _Stop as stop:
        return stop.code
    try:
        text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        print(f"kvmh splats: cannot read {args.file}: no such file", file=sys.stderr)
        return EXIT_INFRA
    except OSError as err:
        print(f"kvmh splats: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return EXIT_INFRA
    splats = find_splats(text)
    for num, splat in enumerate(splats, 1):
        print(f"{num}. {splat.kind}: {splat.first_line}")
        print(f"   fingerprint: {splat.fingerprint}")
    print(f"{len(splats)} splat(s) found in {args.file}" if splats else f"no splats found in {args.file}")
    return EXIT_OK
