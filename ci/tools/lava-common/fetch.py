#!/usr/bin/env python3
"""Fetch LAVA's job schema for the tests of ``kvmh ci emit lava``, whatever distribution this is.

Debian ships LAVA's schema as ``lava-common`` in bookworm but not in trixie, so the tests do not rely on the
host's packages: the two pure-Python packages pinned in ``lock.json`` (lava-common and the voluptuous it was
written for) are fetched from the Debian mirrors (``$KVMH_DEBIAN_MIRRORS``), checked by SHA256 and unpacked
with ``dpkg -x`` into ``<sys.prefix>/share/kvmh-tools/lava-common-<version>/``. Put its
``usr/lib/python3/dist-packages`` on ``PYTHONPATH`` to import ``lava_common.schemas``. Safe to run again.

Exit status: 0 installed or already there, 2 on any failure (one line on standard error says what to do).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP = ".kvmh-stamp"


def destination(lock: dict) -> Path:
    """Where this lock's packages are unpacked."""
    return Path(sys.prefix) / "share" / "kvmh-tools" / f"{lock['name']}-{lock['version']}"


def main() -> int:
    sys.path.insert(0, str(HERE.parents[2]))  # the project's harness package, when run from a checkout
    from harness.debian import unpack
    from harness.debian_pool import PinnedPackage, fetch, mirrors_from
    from harness.errors import HarnessError
    from harness.paths import cache_subdir, staged_replacement

    lock = json.loads((HERE / "lock.json").read_text())
    dest = destination(lock)
    stamp = json.dumps(lock["packages"], sort_keys=True)
    if (dest / STAMP).is_file() and (dest / STAMP).read_text() == stamp:
        print(f"[setup] lava-common {lock['version']} already in {dest}")
        return 0
    try:
        pins = [PinnedPackage(**entry) for entry in lock["packages"]]
        debs = [fetch(pin, cache_subdir("debs/tools"), mirrors_from(),
                      refresh_hint=f"a newer pin in {HERE / 'lock.json'}") for pin in pins]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with staged_replacement(Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent)), dest) as staging:
            for deb in debs:
                unpack(deb, staging)
            (staging / STAMP).write_text(stamp)
    except (HarnessError, OSError) as err:
        print(f"ci/tools/lava-common/fetch.py: {err}; check the network or KVMH_DEBIAN_MIRRORS and run it again",
              file=sys.stderr)
        return 2
    print(f"[setup] lava-common {lock['version']} unpacked into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
