"""Shared fixtures for tests that boot real guests: the s390x image and one booted s390x guest."""

from __future__ import annotations

import os
import shutil
import time
import types
from pathlib import Path
from typing import Iterator, Optional

import pytest

from harness.errors import HarnessError
from harness.targets.qemu import QemuTarget
from harness.targets.spec import TargetOptions
from tests.ci import need


def require_qemu(arch: str = "s390x") -> None:
    from harness.arch import get_arch

    spec = get_arch(arch)
    need(shutil.which(spec.qemu_binary) is not None,
         f"{spec.qemu_binary} not installed (Debian package {spec.qemu_package})")


def guest_image_or_skip(arch: str):
    """Build (or take from the cache) the guest image; skip when it cannot be had (no mirror), fail so in CI."""
    from guest_images import build_image

    try:
        return build_image(arch)
    except HarnessError as err:
        need(False, f"no {arch} guest image: {err}")


@pytest.fixture(scope="session")
def s390x_guest_image():
    require_qemu("s390x")
    return guest_image_or_skip("s390x")


@pytest.fixture(scope="session")
def x86_64_guest_image():
    require_qemu("x86_64")
    return guest_image_or_skip("x86_64")


@pytest.fixture(scope="session")
def qemu_guest(s390x_guest_image, tmp_path_factory) -> Iterator[QemuTarget]:
    """One s390x guest booted under QEMU for the whole session."""
    artifacts = tmp_path_factory.mktemp("qemu-s390x")
    target = QemuTarget("s390x", TargetOptions(artifacts_dir=artifacts, boot_timeout=300),
                        image=s390x_guest_image)
    target.start()
    try:
        yield target
    finally:
        target.close()
        assert pid_gone(qemu_pid(artifacts)), "QEMU of the session guest is still running"


def qemu_pid(artifacts: Path) -> Optional[int]:
    """The PID the target recorded for its QEMU (None when it never started one)."""
    path = Path(artifacts) / "qemu.pid"
    return int(path.read_text()) if path.exists() else None


def pid_gone(pid: Optional[int], wait: float = 10.0) -> bool:
    """True when ``pid`` does not exist (or is a zombie) within ``wait`` seconds."""
    if pid is None:
        return True
    end = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)


@pytest.fixture
def qemu_procs() -> types.SimpleNamespace:
    """``pid(artifacts_dir)`` and ``gone(pid, wait)`` for checking that no QEMU of a test is left."""
    return types.SimpleNamespace(pid=qemu_pid, gone=pid_gone)


@pytest.fixture(scope="session")
def harness_s390x_kernel():
    """The harness's default s390x kernel build (KEXEC, MEMORY_HOTPLUG, LKDTM, KALLSYMS); cached after the first."""
    for tool, package in (("qemu-system-s390x", "qemu-system-misc"), ("s390x-linux-gnu-gcc", "gcc-s390x-linux-gnu")):
        need(shutil.which(tool) is not None, f"{tool} is not installed (apt-get install {package})")
    from harness.kernel.build import build_kernel
    from harness.kernel.source import linux_source

    build = build_kernel(linux_source(), arch="s390x")
    config = build.config.read_text()
    for option in ("CONFIG_KEXEC=y", "CONFIG_MEMORY_HOTPLUG=y", "CONFIG_LKDTM=y"):
        assert option in config, f"the harness's s390x config lost {option}"
    return build
