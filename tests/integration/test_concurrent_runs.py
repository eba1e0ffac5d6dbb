"""Two ``kvmh run`` started at once on an empty cache both succeed and leave one consistent cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
NETWORK_HINTS = ("cannot fetch", "not served", "Temporary failure in name resolution", "Network is unreachable")


def test_two_runs_at_once_on_an_empty_cache(tmp_path: Path) -> None:
    for tool in ("qemu-system-s390x", "s390x-linux-gnu-gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    cache = tmp_path / "cache"
    env = dict(os.environ, KVMH_CACHE=str(cache))
    runs = [subprocess.Popen([sys.executable, "-c", CLI, "run", "--target", "qemu:s390x",
                              "--artifacts", str(tmp_path / f"artifacts-{i}")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
            for i in (1, 2)]
    outputs = []
    try:
        for run in runs:
            outputs.append(run.communicate(timeout=3 * 3600)[0])
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    if all(run.returncode == 2 for run in runs) and all(any(h in out for h in NETWORK_HINTS) for out in outputs):
        pytest.skip("no Debian mirror reachable to fill an empty cache")
    for run, out in zip(runs, outputs):
        assert run.returncode == 0, out[-4000:]

    # One consistent cache: no staging or partial leftovers, one complete entry of each kind.
    leftovers = [str(p.relative_to(cache)) for p in cache.rglob("*")
                 if ".partial" in p.name or p.name.startswith((".build-", ".tmp")) and p.is_dir()]
    assert leftovers == []
    images = [d for d in (cache / "images").iterdir() if d.is_dir() and d.name.startswith("s390x-")]
    assert len(images) == 1 and (images[0] / "initrd.img").is_file() and (images[0] / "vmlinuz").is_file()
    builds = [d for d in (cache / "selftests").iterdir() if d.is_dir() and d.name.startswith("s390x-")]
    assert len(builds) == 1 and (builds[0] / "manifest.json").is_file()
    trees = [d for d in (cache / "src").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(trees) == 1 and (trees[0] / ".kvmh-complete").is_file()
