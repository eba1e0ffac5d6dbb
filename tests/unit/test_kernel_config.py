"""Kernel config requests: fragments, merging, and verification of the final .config."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from harness.errors import EXIT_INFRA
from harness.kernel.config import (
    ConfigError,
    ConfigRequest,
    Fragment,
    harness_fragments,
    make_config,
    read_config_text,
    requested_options,
    unmet_options,
    verify,
)
from tests.ci import need, source_tree


def test_requested_options_parses_set_and_unset() -> None:
    text = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"str\"\nCONFIG_D=0x10\nnoise\nCONFIG_A=m\n"
    assert requested_options(text) == {"CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_C": '"str"', "CONFIG_D": "0x10"}


def test_unmet_options() -> None:
    final = {"CONFIG_A": "y", "CONFIG_C": "m"}
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "y", "CONFIG_D": "y"}
    assert unmet_options(wanted, final) == [("CONFIG_C", "y", "m"), ("CONFIG_D", "y", "n")]


def test_verify_names_missing_options(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_A=y\n# CONFIG_B is not set\n")
    verify({"CONFIG_A": "y", "CONFIG_B": "n"}, cfg, "s390x")
    with pytest.raises(ConfigError) as exc:
        verify({"CONFIG_A": "y", "CONFIG_KVM_INTEL": "y", "CONFIG_B": "y"}, cfg, "s390x")
    msg = str(exc.value)
    assert msg.startswith("config options not in the final .config for s390x: CONFIG_KVM_INTEL=y (got not set), "
                          "CONFIG_B=y (got not set)")
    assert "CONFIG_A" not in msg and "\n" not in msg
    assert exc.value.exit_status == EXIT_INFRA


@pytest.mark.parametrize("arch", ["s390x", "x86_64"])
def test_harness_fragments(arch: str) -> None:
    frags = harness_fragments(arch)
    names = [f.name for f in frags]
    assert names[:2] == ["harness:base.config", f"harness:{arch}.config"]
    wanted = ConfigRequest.for_arch(arch).requested()
    for option in ("CONFIG_DEVTMPFS", "CONFIG_UNIX98_PTYS", "CONFIG_FUTEX", "CONFIG_EPOLL", "CONFIG_VIRTIO_NET",
                   "CONFIG_KVM", "CONFIG_LKDTM", "CONFIG_IKCONFIG_PROC", "CONFIG_BUG", "CONFIG_BINFMT_SCRIPT"):
        assert wanted[option] == "y", option
    assert wanted["CONFIG_IPV6"] == "n"
    if arch == "s390x":
        assert wanted["CONFIG_SCLP_VT220_CONSOLE"] == "y" and wanted["CONFIG_S390_GUEST"] == "y"
        assert "CONFIG_KVM_INTEL" not in wanted
    else:
        assert wanted["CONFIG_SERIAL_8250_CONSOLE"] == "y" and wanted["CONFIG_VIRTIO_PCI"] == "y"


def test_debug_fragment_added_on_request() -> None:
    plain = ConfigRequest.for_arch("s390x").requested()
    debug = ConfigRequest.for_arch("s390x", debug=True).requested()
    assert "CONFIG_PROVE_LOCKING" not in plain
    assert debug["CONFIG_PROVE_LOCKING"] == "y" and debug["CONFIG_KASAN"] == "y"
    assert debug["CONFIG_SLUB_TINY"] == "n"


def test_user_fragment_overrides_and_changes_hash(tmp_path: Path) -> None:
    frag = tmp_path / "mine.config"
    frag.write_text("# CONFIG_LKDTM is not set\nCONFIG_KVM_S390_UCONTROL=y\n")
    base = ConfigRequest.for_arch("s390x")
    mine = ConfigRequest.for_arch("s390x", user_fragments=[frag])
    assert mine.requested()["CONFIG_LKDTM"] == "n"
    assert mine.hash != base.hash
    assert ConfigRequest.for_arch("s390x").hash == base.hash
    frag.write_text("CONFIG_KVM_S390_UCONTROL=y\n")
    assert ConfigRequest.for_arch("s390x", user_fragments=[frag]).hash != mine.hash


def test_bad_fragment_and_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config fragment .*nope.config does not exist"):
        Fragment.from_file(tmp_path / "nope.config")
    empty = tmp_path / "empty.config"
    empty.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"sets no CONFIG_ option"):
        Fragment.from_file(empty)
    with pytest.raises(ConfigError, match=r"starting config .*missing.config does not exist"):
        ConfigRequest.for_arch("s390x", start=str(tmp_path / "missing.config"))


def test_start_from_config_gz(tmp_path: Path) -> None:
    gz = tmp_path / "config.gz"
    gz.write_bytes(gzip.compress(b"CONFIG_X=y\n"))
    assert read_config_text(gz) == "CONFIG_X=y\n"
    req = ConfigRequest.for_arch("s390x", start=str(gz))
    assert req.start_text() == "CONFIG_X=y\n"
    gz.write_bytes(gzip.compress(b"CONFIG_X=m\n"))
    assert ConfigRequest.for_arch("s390x", start=str(gz)).hash != req.hash


def _make_prefix(arch: str) -> list[str]:
    from harness.kernel.build import detect_toolchain

    return detect_toolchain(arch).make_args()


@pytest.fixture
def kernel_source() -> Path:
    tree = source_tree()
    need(shutil.which("s390x-linux-gnu-gcc") is not None or os.uname().machine == "s390x",
         "s390x-linux-gnu-gcc missing (Debian package gcc-s390x-linux-gnu)")
    return tree


def test_make_config_on_real_tree(kernel_source: Path, tmp_path: Path) -> None:
    req = ConfigRequest.for_arch("s390x")
    cfg = make_config(kernel_source, tmp_path / "obj", req, _make_prefix("s390x"))
    final = requested_options(cfg.read_text())
    assert unmet_options(req.requested(), final) == []
    assert final["CONFIG_SCLP_VT220_CONSOLE"] == "y"
    assert final.get("CONFIG_IPV6", "n") == "n"  # tinyconfig semantics: options that became visible stay off
    stamp = cfg.stat().st_mtime_ns
    make_config(kernel_source, tmp_path / "obj", req, _make_prefix("s390x"))
    assert cfg.stat().st_mtime_ns == stamp, "an unchanged config must not be rewritten (keeps make incremental)"


def test_option_impossible_for_arch(kernel_source: Path, tmp_path: Path) -> None:
    frag = tmp_path / "x86-only.config"
    frag.write_text("CONFIG_KVM_INTEL=y\nCONFIG_X86_X2APIC=y\n")
    req = ConfigRequest.for_arch("s390x", user_fragments=[frag])
    with pytest.raises(ConfigError) as exc:
        make_config(kernel_source, tmp_path / "obj", req, _make_prefix("s390x"))
    assert str(exc.value).startswith("config options not in the final .config for s390x: "
                                     "CONFIG_KVM_INTEL=y (got not set), CONFIG_X86_X2APIC=y (got not set)")
    assert not (tmp_path / "obj/.config").exists()
    assert not (kernel_source / ".config").exists() and not (kernel_source / "include/generated").exists()


def test_defconfig_start_with_fragment(kernel_source: Path, tmp_path: Path) -> None:
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_LKDTM=y\n# CONFIG_IPV6 is not set\n")
    req = ConfigRequest.for_arch("s390x", start="defconfig", user_fragments=[frag], harness=False)
    cfg = make_config(kernel_source, tmp_path / "obj", req, _make_prefix("s390x"))
    final = requested_options(cfg.read_text())
    assert final["CONFIG_LKDTM"] == "y" and final.get("CONFIG_IPV6", "n") == "n"
    assert final.get("CONFIG_NET") == "y"  # from defconfig, not from the fragment


class FakeTarget:
    """Just enough of a Target for target_config: ``run`` returns a canned CommandResult."""

    spec = "fake:s390x"

    def __init__(self, status: int, stdout: str) -> None:
        self.status, self.stdout, self.commands = status, stdout, []

    def run(self, command: str, timeout: float = 60.0):
        from harness.targets.base import CommandResult

        self.commands.append(command)
        return CommandResult(command, self.status, self.stdout, "", 0.1)


def test_start_from_running_target(tmp_path: Path) -> None:
    from harness.kernel.config import target_config

    target = FakeTarget(0, "CONFIG_KVM=y\n# CONFIG_IPV6 is not set\n")
    dest = target_config(target, tmp_path / "target.config")
    assert target.commands == ["gzip -dc /proc/config.gz"]
    req = ConfigRequest.for_arch("s390x", start=str(dest))
    assert req.start_text() == "CONFIG_KVM=y\n# CONFIG_IPV6 is not set\n"
    with pytest.raises(ConfigError, match=r"^fake:s390x has no readable /proc/config.gz"):
        target_config(FakeTarget(1, ""), tmp_path / "other.config")
