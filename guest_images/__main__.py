"""``python -m guest_images [--arch s390x] [--kernel K --modules DIR] [--force]``: build and describe an image."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from harness.errors import HarnessError

from .builder import build_image


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guest_images", description=__doc__)
    parser.add_argument("--arch", default="s390x", help="s390x (default) or x86_64")
    parser.add_argument("--kernel", type=Path, help="use this kernel image instead of Debian's")
    parser.add_argument("--modules", type=Path, help="lib/modules/<release> tree of --kernel")
    parser.add_argument("--package", action="append", default=[], help="extra Debian package (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        image = build_image(args.arch, kernel=args.kernel, modules_dir=args.modules,
                            extra_packages=args.package, force=args.force)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    elapsed = time.monotonic() - started
    print(f"arch            {image.arch}")
    print(f"kernel          {image.kernel} ({image.kernel.stat().st_size / 2**20:.1f} MiB)")
    print(f"initrd          {image.initrd} ({image.initrd.stat().st_size / 2**20:.1f} MiB)")
    print(f"kernel release  {image.kernel_release}")
    print(f"ssh key         {image.ssh_key}")
    print(f"host key        {image.host_key_pub}")
    print(f"image hash      {image.image_hash}")
    print(f"root tree       {image.root}")
    print(f"took            {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
