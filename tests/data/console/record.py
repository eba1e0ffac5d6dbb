"""Re-record the console logs in this directory by booting the real s390x guest under QEMU.

Run ``python tests/data/console/record.py`` (takes about a minute); see README.md for what each file is.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from harness.errors import HarnessError
from harness.targets.qemu import QemuTarget
from harness.targets.spec import TargetOptions

HERE = Path(__file__).resolve().parent

CASES = {
    # name: (extra kernel command line, silence timeout)
    "s390x-tcg-boot-clean.log": ("", 60.0),
    "s390x-tcg-panic-rdinit-nonexistent.log": ("rdinit=/nonexistent", 60.0),
    "s390x-tcg-silence-loglevel0-init-sleep.log": ("loglevel=0 rdinit=/usr/bin/busybox -- sleep 3600", 10.0),
}


def record(name: str, extra: str, silence: float) -> None:
    with tempfile.TemporaryDirectory(prefix="kvmh-record-") as tmp:
        options = TargetOptions(artifacts_dir=Path(tmp), accel="tcg", extra_cmdline=extra, boot_timeout=120)
        target = QemuTarget("s390x", options, silence_timeout=silence)
        try:
            target.start()
            print(f"{name}: booted")
        except HarnessError as err:
            print(f"{name}: {type(err).__name__}: {err}")
        finally:
            target.close()
        shutil.copyfile(Path(tmp) / "console.log", HERE / name)


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    wanted = sys.argv[1:] or list(CASES)
    for name in wanted:
        record(name, *CASES[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
