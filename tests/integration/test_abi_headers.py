"""harness.kvm.uapi against real uapi headers: a C probe compiled per architecture prints every number.

s390x: ``s390x-linux-gnu-gcc -static`` against Debian linux-source-6.12's s390 uapi headers, run under
``qemu-s390x``; x86_64: the host ``gcc``.  Every size, offset, ioctl number, capability and enum value
must agree with the Python side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.kvm import abi_check, uapi

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kernel_tree() -> Path:
    from harness.kernel.source import linux_source

    try:
        return linux_source()
    except HarnessError as err:
        pytest.skip(f"Debian linux-source-6.12 unavailable: {err}")


@pytest.mark.parametrize("arch", ["s390x", "x86_64"])
def test_python_abi_matches_the_kernel_headers(arch: str, kernel_tree: Path, tmp_path: Path) -> None:
    from harness.kernel.headers import installed_headers

    try:
        chain = abi_check.toolchain(arch)
    except HarnessError as err:
        pytest.skip(str(err))
    missing = chain.missing()
    if missing:
        pytest.skip(missing)
    include = installed_headers(kernel_tree, arch)
    binary = abi_check.build_probe(arch, include, tmp_path)
    headers = abi_check.run_probe(arch, binary)
    python = uapi.abi_values(arch)
    problems = abi_check.compare_abi(python, headers)
    assert not problems, f"{arch} ABI differs from {include}:\n" + "\n".join(problems)
    # the comparison covered the numbers the scenarios depend on
    assert headers["KVM_CAP_S390_PROTECTED_ASYNC_DISABLE"] == 224
    if arch == "s390x":
        assert headers["KVM_S390_PV_COMMAND"] == 0xC020AEC5
        assert headers["sizeof.kvm_pv_cmd"] == 32
        assert headers["KVM_PV_ASYNC_CLEANUP_PERFORM"] == 10
    assert len(headers) == len(python)
