"""What CI provides, and how a test that lacks it reacts: a skip with the reason here, a failure in CI.

CI (``CI=true``) runs ``ci/setup.sh`` first, which installs QEMU, the compilers and the Python extras, and
the tests fetch the pinned linux-source and build the guest images themselves. A test that finds one of
those missing in CI fails, naming the setup step, instead of skipping into a green run where nothing ran.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import pytest

# Skip reasons that mean "something CI was to provide is missing", with the step that provides it.
CI_PROVIDED = (
    (re.compile(r"qemu-system-\w+|qemu-s390x|qemu-user"), "ci/setup.sh (apt: qemu-system-misc, qemu-system-x86, "
                                                           "qemu-user)"),
    (re.compile(r"s390x-linux-gnu-gcc|gcc-s390x|libc6-dev-s390x-cross"),
     "ci/setup.sh (apt: gcc-s390x-linux-gnu, libc6-dev-s390x-cross)"),
    (re.compile(r"guest image|image built yet"), "the guest image build from guest_images/recipes/*.lock.json"),
    (re.compile(r"linux-source"), "kvmh source get (harness/kernel/linux-source.lock.json)"),
    (re.compile(r"/dev/kvm"), "the CI machine's /dev/kvm"),
    (re.compile(r"\b(cpio|ssh-keygen|junitparser|paramiko|gcc and make|GNU cpio|xz)\b"), "ci/setup.sh"),
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def provided_by(reason: str) -> Optional[str]:
    """The setup step that provides what a skip reason says is missing, or None for an ordinary skip."""
    for pattern, step in CI_PROVIDED:
        if pattern.search(reason):
            return step
    return None


def need(ok: bool, reason: str, step: str = "") -> None:
    """Skip with ``reason`` unless ``ok``; in CI, fail naming the setup step that should have provided it."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason}: CI provides this in {step or provided_by(reason) or 'ci/setup.sh'}", pytrace=False)
    pytest.skip(reason)


def source_tree() -> Path:
    """Debian's pinned linux-source tree: fetched in CI, taken from the cache (or skipped) elsewhere."""
    from harness.kernel.source import cached_tree, linux_source

    tree = cached_tree()
    if tree is not None:
        return tree
    if in_ci():
        return linux_source()
    pytest.skip("Debian linux-source is not in the cache yet (run 'kvmh source get')")
