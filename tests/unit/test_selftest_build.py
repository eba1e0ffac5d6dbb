"""Unit tests for the KVM selftest build: command lines, cache keys, Makefile edits, and a fake-tree build."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.fakes import fake_kernel_tree

from harness.errors import InfrastructureError, UsageError
from harness.selftests import build as sb

MAKEFILE_612 = textwrap.dedent("""\
    TEST_GEN_PROGS_s390x = s390x/memop
    TEST_GEN_PROGS_s390x += kvm_create_max_vcpus

    TEST_PROGS += $(TEST_PROGS_$(ARCH_DIR))
    TEST_GEN_PROGS += $(TEST_GEN_PROGS_$(ARCH_DIR))
    TEST_GEN_PROGS_EXTENDED += $(TEST_GEN_PROGS_EXTENDED_$(ARCH_DIR))
    """)

MAKEFILE_KVM_NEW = textwrap.dedent("""\
    TEST_GEN_PROGS_s390 = $(TEST_GEN_PROGS_COMMON)
    TEST_GEN_PROGS_s390 += s390/memop

    TEST_PROGS += $(TEST_PROGS_$(ARCH))
    TEST_GEN_PROGS += $(TEST_GEN_PROGS_$(ARCH))
    include ../lib.mk
    include ../cgroup/lib/libcgroup.mk
    """)


def test_cross_prefix_depends_on_host_and_target():
    assert sb.cross_prefix("s390x", host="x86_64") == "s390x-linux-gnu-"
    assert sb.cross_prefix("x86_64", host="x86_64") == ""
    assert sb.cross_prefix("s390x", host="s390x") == ""
    assert sb.cross_prefix("x86_64", host="s390x") == "x86_64-linux-gnu-"
    assert sb.cross_prefix("amd64", host="x86_64") == ""


def test_unknown_arch_is_a_usage_error():
    with pytest.raises(UsageError, match="riscv"):
        sb.harness_arch("riscv")


def test_make_command_for_s390x_cross_build(tmp_path):
    cmd = sb.make_command(kvm_dir=tmp_path / "kvm", out_dir=tmp_path / "out", arch="s390x",
                          cross="s390x-linux-gnu-", headers=tmp_path / "hdr", jobs=2)
    assert cmd[0] == "make"
    assert "ARCH=s390" in cmd
    assert "CROSS_COMPILE=s390x-linux-gnu-" in cmd
    assert f"OUTPUT={tmp_path / 'out'}" in cmd
    assert f"KHDR_INCLUDES=-isystem {tmp_path / 'hdr'}" in cmd
    assert f"LINUX_HDR_PATH={tmp_path / 'hdr'}/" in cmd
    assert "-j2" in cmd
    assert cmd[cmd.index("-C") + 1] == str(tmp_path / "kvm")


def test_make_command_native_x86_has_no_cross_compile(tmp_path):
    cmd = sb.make_command(kvm_dir=tmp_path, out_dir=tmp_path / "o", arch="x86_64", cross="",
                          headers=tmp_path / "h", jobs=0, target="kvmh-list-programs")
    assert "ARCH=x86" in cmd
    assert not any(c.startswith("CROSS_COMPILE") for c in cmd)
    assert "-j1" in cmd
    assert cmd[-2:] == ["-s", "kvmh-list-programs"]


def test_cache_key_changes_with_every_input():
    base = dict(arch="s390x", compiler="gcc 12", tree_id="src-1", sources_hash="a", headers_hash="b",
                ours_hash="c")
    key = sb.cache_key(**base)
    assert key == sb.cache_key(**base)
    assert key.startswith("s390x-")
    for name in base:
        changed = dict(base, **{name: base[name] + "x"})
        assert sb.cache_key(**changed) != key, name


def test_settings_timeout(tmp_path):
    assert sb.settings_timeout(tmp_path) == sb.DEFAULT_TIMEOUT_S
    (tmp_path / "settings").write_text("# comment\ntimeout=120\n")
    assert sb.settings_timeout(tmp_path) == 120.0
    (tmp_path / "settings").write_text("timeout=soon\n")
    assert sb.settings_timeout(tmp_path) == sb.DEFAULT_TIMEOUT_S


def test_s390_dir_name_old_and_new(tmp_path):
    (tmp_path / "s390x").mkdir()
    assert sb.s390_dir_name(tmp_path) == "s390x"
    (tmp_path / "s390x").rename(tmp_path / "s390")
    assert sb.s390_dir_name(tmp_path) == "s390"
    shutil.rmtree(tmp_path / "s390")
    with pytest.raises(InfrastructureError):
        sb.s390_dir_name(tmp_path)


@pytest.mark.parametrize("text,var", [(MAKEFILE_612, "ARCH_DIR"), (MAKEFILE_KVM_NEW, "ARCH")])
def test_add_programs_goes_right_after_the_arch_list(tmp_path, text, var):
    mk = tmp_path / "Makefile"
    mk.write_text(text)
    sb.add_programs_to_makefile(mk, ["s390x/async_teardown_test"])
    lines = mk.read_text().splitlines()
    anchor = lines.index(f"TEST_GEN_PROGS += $(TEST_GEN_PROGS_$({var}))")
    assert lines[anchor + 1] == "TEST_GEN_PROGS += s390x/async_teardown_test"
    assert "kvmh-list-programs:" in lines
    assert lines.count(f"TEST_GEN_PROGS += $(TEST_GEN_PROGS_$({var}))") == 1


def test_add_programs_refuses_an_unknown_layout(tmp_path):
    mk = tmp_path / "Makefile"
    mk.write_text("all:\n")
    with pytest.raises(InfrastructureError, match="TEST_GEN_PROGS"):
        sb.add_programs_to_makefile(mk, ["x"])
    sb.add_programs_to_makefile(mk, [])  # nothing to add: only the list target
    assert "kvmh-list-programs:" in mk.read_text()


def test_first_errors_picks_compiler_errors():
    log = ("CC a.o\nin file included from x.h\nfoo.c:3:5: error: field 'region' has incomplete type\n"
           "make: *** [x] Error 1\n")
    text = sb.first_errors(log)
    assert text.splitlines()[0] == "foo.c:3:5: error: field 'region' has incomplete type"
    assert "Error 1" in text


def _listing(tree: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(tree))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed for the fake-tree build")
    headers = tmp_path / "headers/usr/include"
    (headers / "linux").mkdir(parents=True)
    (headers / "linux/kvm.h").write_text("/* installed */\n")
    monkeypatch.setattr(sb, "installed_headers", lambda tree, arch: headers)
    monkeypatch.setattr(sb, "find_toolchain", lambda arch: sb.Toolchain("", "gcc (fake) 1"))
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "async_teardown_test.c").write_text("int main(void) { return 4; }\n")
    monkeypatch.setattr(sb, "OUR_SOURCES_DIR", ours)
    return tmp_path


def test_fake_tree_build_is_out_of_tree_and_cached(fake_env):
    tree = fake_kernel_tree(fake_env)
    cache = fake_env / "cache"
    before = _listing(tree)
    first = sb.build_selftests(tree, "s390x", jobs=1, cache_root=cache)
    assert not first.cached
    assert set(first.programs) == {"s390x/memop", "kvm_create_max_vcpus", "s390x/async_teardown_test"}
    assert first.timeout_s == 7.0
    for program in first.programs:
        assert first.path(program).is_file()
    assert first.arch_dir == "s390x"
    assert _listing(tree) == before, "the build wrote into the user's tree"
    copied = cache / first.key / "src/tools/testing/selftests"
    assert not (copied / "net").exists(), "unrelated selftests were copied"
    assert (copied / "kvm/s390x/async_teardown_test.c").is_file()

    second = sb.build_selftests(tree, "s390x", jobs=1, cache_root=cache)
    assert second.cached and second.key == first.key
    assert second.programs == first.programs

    (tree / "tools/testing/selftests/kvm/s390x/memop.c").write_text("int main(void) { return 1; }\n")
    third = sb.build_selftests(tree, "s390x", jobs=1, cache_root=cache)
    assert not third.cached and third.key != first.key


def test_tree_without_async_teardown_leaves_our_test_out(fake_env):
    tree = fake_kernel_tree(fake_env)
    (tree / "include/uapi/linux/kvm.h").write_text("/* 6.1 */\n")
    result = sb.build_selftests(tree, "s390x", jobs=1, cache_root=fake_env / "cache")
    assert "s390x/async_teardown_test" not in result.programs
    assert "KVM_CAP_S390_PROTECTED_ASYNC_DISABLE" in result.omitted["async_teardown_test"]


def test_build_error_reports_the_first_compiler_errors(fake_env):
    tree = fake_kernel_tree(fake_env)
    (tree / "tools/testing/selftests/kvm/kvm_create_max_vcpus.c").write_text("int main(void) { return nope; }\n")
    with pytest.raises(InfrastructureError) as err:
        sb.build_selftests(tree, "s390x", jobs=1, cache_root=fake_env / "cache")
    assert "nope" in str(err.value) and "error" in str(err.value)
    assert not any(p.name.startswith("s390x-") and not p.name.endswith(".lock") and "partial" not in p.name
                   for p in (fake_env / "cache").iterdir()), "a failed build left a usable-looking entry"


def test_source_files_follow_makefile_includes(tmp_path):
    tree = fake_kernel_tree(tmp_path, makefile=MAKEFILE_KVM_NEW)
    (tree / "tools/testing/selftests/cgroup/lib").mkdir(parents=True)
    (tree / "tools/testing/selftests/cgroup/lib/libcgroup.mk").write_text("# cg\n")
    names = {str(p) for p in sb.source_files(tree)}
    assert "tools/testing/selftests/cgroup/lib/libcgroup.mk" in names
    assert "tools/testing/selftests/lib.mk" in names
    assert "scripts/subarch.include" in names
    assert not any(n.startswith("tools/testing/selftests/net/") for n in names)


def test_not_a_kvm_tree_is_a_usage_error(fake_env):
    tree = fake_kernel_tree(fake_env)
    (tree / "tools/testing/selftests/kvm/Makefile").unlink()
    with pytest.raises(UsageError, match="tools/testing/selftests/kvm"):
        sb.build_selftests(tree, "s390x", cache_root=fake_env / "cache")


def test_prune_keeps_the_newest_builds(tmp_path):
    for i, name in enumerate(["s390x-a", "s390x-b", "s390x-c", "x86_64-a"]):
        (tmp_path / name).mkdir()
        manifest = tmp_path / name / "manifest.json"
        manifest.write_text("{}")
        os.utime(manifest, (1000 + i, 1000 + i))
        (tmp_path / f"{name}.lock").write_text("")
    removed = sb.prune_cache(tmp_path, "s390x", keep=2)
    assert [p.name for p in removed] == ["s390x-a"]
    # Lock files stay: unlinking one would let two processes hold "the" lock at once.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s390x-a.lock", "s390x-a.use", "s390x-b", "s390x-b.lock", "s390x-c", "s390x-c.lock", "x86_64-a",
        "x86_64-a.lock"]
