"""The benchmarks that run on this machine, for real and small: the local VM-close curve and QEMU's teardown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.bench.local_vm_close import LocalCloseConfig, run_local_close
from harness.bench.qemu_flags import detect_flavour
from harness.bench.qemu_teardown import QemuTeardownConfig, run_qemu_teardown
from harness.targets.local import LocalTarget
from tests.ci import need
from tests.integration.conftest import require_qemu

pytestmark = pytest.mark.integration


def _kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


def test_local_vm_close_curve_measures_and_agrees_with_the_model(tmp_path: Path) -> None:
    need(_kvm_usable(), "no usable /dev/kvm on this machine")
    target = LocalTarget()
    target.start()
    try:
        report = run_local_close(target, LocalCloseConfig(sizes_gib=[0.25, 0.5], repeats=2, settle_s=10))
    finally:
        target.close()
    assert [s["size_gib"] for s in report.samples] == [0.25, 0.5, 0.25, 0.5]
    assert not [s for s in report.samples if s.get("error")]
    for sample in report.samples:
        assert 0 < sample["close_s"] < 30 and sample["touch_s"] > 0
        assert sample["mem_used_mib"] is not None
    paths = report.write(tmp_path, "close")
    data = json.loads(paths["json"].read_text())
    assert data["machine"]["dev_kvm"] is True and len(data["summary"]) == 2
    assert "close VM (+ unmap) (ms)" in report.table()


@pytest.mark.parametrize("arch", ["s390x"])
def test_qemu_teardown_sync_and_async_for_real(arch: str, tmp_path: Path, s390x_guest_image) -> None:
    require_qemu(arch)
    flavour = detect_flavour("qemu-system-s390x")
    config = QemuTeardownConfig(arch=arch, sizes_gib=[1], repeats=1, fill_fraction=0.5, artifacts=tmp_path / "a")
    report = run_qemu_teardown(config)
    assert not [s for s in report.samples if s.get("error")], report.samples
    variants = {s["variant"]: s for s in report.samples}
    assert set(variants) == ({"sync", "async"} if flavour else {"sync"})
    for sample in variants.values():
        assert sample["filled_mib"] >= 256
        assert sample["exit_s"] is not None and sample["exit_s"] < 30
        assert sample["qemu_anon_mib"] >= sample["filled_mib"]
    if flavour:
        assert variants["async"]["helpers"] >= 1 and variants["async"]["helper_exit_s"] is not None
        assert variants["sync"]["helpers"] == 0
    paths = report.write(tmp_path, "qemu")
    assert paths["json"].exists()
