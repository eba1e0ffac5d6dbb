"""Shared caches and local processes under concurrency, secret files, deadlines on host-side tools."""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from harness.errors import InfrastructureError
from harness.selftests import build as sb


def _entry(root: Path, name: str, built_at: float) -> Path:
    entry = root / name
    (entry / "out").mkdir(parents=True)
    manifest = entry / "manifest.json"
    manifest.write_text("{}")
    os.utime(manifest, (built_at, built_at))
    return entry


def _build_of(entry: Path) -> sb.SelftestBuild:
    return sb.SelftestBuild(arch="s390x", tree=Path("/t"), out_dir=entry / "out", programs=("p",), timeout_s=1.0,
                            key=entry.name, compiler="gcc", tree_id="t")


HOLDER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from harness.selftests import build as sb
    entry = Path(sys.argv[1])
    sb.hold_build(sb.SelftestBuild(arch="s390x", tree=Path("/t"), out_dir=entry / "out", programs=("p",),
                                   timeout_s=1.0, key=entry.name, compiler="gcc", tree_id="t"))
    print("held", flush=True)
    time.sleep(60)
""")


def test_prune_never_removes_a_build_another_run_uses(tmp_path: Path) -> None:
    used = _entry(tmp_path, "s390x-used", 1000)
    idle = _entry(tmp_path, "s390x-idle", 2000)
    run = subprocess.Popen([sys.executable, "-c", HOLDER, str(used)], stdout=subprocess.PIPE, text=True,
                           cwd=Path(sb.__file__).parents[2])
    try:
        assert run.stdout.readline().strip() == "held"
        removed = sb.prune_cache(tmp_path, "s390x", keep=0)
        assert removed == [idle]
        assert (used / "manifest.json").is_file(), "the prune removed a build another run was using"
    finally:
        run.kill()
        run.wait()
    assert sb.prune_cache(tmp_path, "s390x", keep=0) == [used]  # free once that run is gone
    assert (tmp_path / "s390x-used.lock").exists()  # lock files are never unlinked


def test_prune_goes_by_last_use_not_by_build_time(tmp_path: Path) -> None:
    old_but_used = _entry(tmp_path, "s390x-old", 1000)
    new_unused = _entry(tmp_path, "s390x-new", 2000)
    sb.hold_build(_build_of(old_but_used))  # a cache hit marks it used now
    sb.release_build(_build_of(old_but_used))
    assert sb.prune_cache(tmp_path, "s390x", keep=1) == [new_unused]
    assert old_but_used.exists()


# ---------------------------------------------------------------- local QEMU leftovers


def test_a_qemu_left_by_a_killed_harness_is_reaped_and_only_that_one(tmp_path: Path) -> None:
    from harness.targets import qemu_registry as reg

    token, other = reg.new_token(), reg.new_token()
    leftover = subprocess.Popen(["sleep", "300"], env=dict(os.environ, KVMH_QEMU=token), start_new_session=True)
    stranger = subprocess.Popen(["sleep", "300"], env=dict(os.environ, KVMH_QEMU=other), start_new_session=True)
    held = subprocess.Popen(["sleep", "300"], env=dict(os.environ, KVMH_QEMU=other), start_new_session=True)
    try:
        # The killed harness's record: nobody holds its lock any more.
        (tmp_path / f"{token}.json").write_text(
            f'{{"pid": {leftover.pid}, "start": {reg.start_time(leftover.pid)}, "token": "{token}"}}\n')
        # A record naming a process that does not carry its token (the pid was reused).
        (tmp_path / "reused.json").write_text(
            f'{{"pid": {stranger.pid}, "start": {reg.start_time(stranger.pid)}, "token": "{token}"}}\n')
        live = reg.Registration(held.pid, other, tmp_path)  # a harness that still runs
        assert reg.reap_leftovers(tmp_path) == [leftover.pid]
        assert leftover.wait(5) == -signal.SIGKILL
        assert stranger.poll() is None and held.poll() is None
        assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{other}.json"]
        live.release()
        assert list(tmp_path.glob("*.json")) == []
    finally:
        for proc in (leftover, stranger, held):
            proc.kill()
            proc.wait()


def test_console_never_signals_a_group_after_its_leader_was_reaped(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.transport import console as console_mod

    con = console_mod.Console(["sh", "-c", "sleep 300 & echo started; exit 0"], tmp_path / "c.log")
    calls: list[tuple[int, bool]] = []
    real_killpg = os.killpg

    def spy(pid: int, sig: int) -> None:
        reaped = con._exit is not None
        calls.append((sig, reaped))
        real_killpg(pid, sig)

    monkeypatch.setattr(console_mod.os, "killpg", spy)  # before start: the leader may exit at once
    con.start()
    assert con.wait_exit(10)
    # The leader's background child was killed together with it, before the leader was reaped.
    assert (signal.SIGKILL, False) in calls
    calls.clear()
    con.terminate(1.0)
    con.kill_now()
    assert calls == [], "a process group was signalled after its leader was reaped (its pid may be reused)"


# ---------------------------------------------------------------- unpacking, secrets, deadlines


def test_source_tarballs_are_unpacked_with_the_data_filter(tmp_path: Path) -> None:
    from harness.kernel.source import safe_extract

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = b"owned\n"
        info = tarfile.TarInfo("../escaped")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InfrastructureError, match="refusing to unpack evil.tar"):
        safe_extract(evil, tmp_path / "dest")
    assert not (tmp_path / "escaped").exists()


def test_client_key_is_0600_from_its_first_byte_and_never_written_through_a_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from guest_images import keys

    victim = tmp_path / "victim"
    victim.write_text("not a key\n")
    path = tmp_path / "id_ed25519"
    path.symlink_to(victim)
    opened: list[tuple[int, int]] = []
    real_open = os.open

    def spy(file, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "id_ed25519" in str(file):
            opened.append((flags, mode))
        return real_open(file, flags, mode, *args, **kwargs)

    monkeypatch.setattr(keys.os, "open", spy)
    old = os.umask(0)
    try:
        keys.write_client_key(keys.generate_keys("test"), path)
    finally:
        os.umask(old)
    assert opened and all(mode == 0o600 and flags & os.O_EXCL for flags, mode in opened)
    assert victim.read_text() == "not a key\n"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_a_message_id_starting_with_a_dash_is_never_an_option_of_b4(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.kernel import series

    seen: list[list[str]] = []

    def fake_run(cmd, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 1, "", "no such message\n")

    monkeypatch.setattr(series.shutil, "which", lambda name: "/usr/bin/b4")
    monkeypatch.setattr(series.subprocess, "run", fake_run)
    with pytest.raises(series.KernelInputError):
        series.series_from_message_id("--use-local=x@y")
    argv = seen[0]
    assert argv[:2] == ["b4", "am"] and argv[-2:] == ["--", "--use-local=x@y"]


def _timeouts(monkeypatch: pytest.MonkeyPatch, module) -> list:  # type: ignore[no-untyped-def]
    seen: list = []

    def run(cmd, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("timeout"))
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout") or 0)

    monkeypatch.setattr(module.subprocess, "run", run)
    return seen


def test_host_side_tools_have_deadlines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from harness.kernel import build as kbuild
    from harness.kernel import worktree
    from harness.kvm import abi_check

    seen = _timeouts(monkeypatch, kbuild)
    with pytest.raises(InfrastructureError, match="did not finish within"):
        kbuild._make_out(tmp_path, tmp_path / "obj", ["-s", "kernelrelease"])
    seen += _timeouts(monkeypatch, worktree)
    with pytest.raises(InfrastructureError, match="did not finish within"):
        worktree._run_git(["status"])
    seen += _timeouts(monkeypatch, sb)
    monkeypatch.setattr(sb.shutil, "which", lambda name: "/usr/bin/gcc")
    with pytest.raises(InfrastructureError, match="did not finish within"):
        sb.find_toolchain("x86_64" if os.uname().machine == "x86_64" else "s390x")
    seen += _timeouts(monkeypatch, abi_check)
    monkeypatch.setattr(abi_check.ProbeToolchain, "missing", lambda self: None)
    with pytest.raises(InfrastructureError, match="ABI probe"):
        abi_check.build_probe("s390x", tmp_path, tmp_path / "out")
    assert seen and all(isinstance(t, (int, float)) and t > 0 for t in seen)


def test_a_staged_directory_replaces_its_destination_only_when_complete(tmp_path: Path) -> None:
    from harness.paths import staged_replacement

    dest = tmp_path / "tree"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_replacement(tmp_path / ".tree.stage1", dest) as staging:
            staging.mkdir()
            (staging / "half").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"] and (dest / "old").exists()
    with staged_replacement(tmp_path / ".tree.stage2", dest) as staging:
        staging.mkdir()
        (staging / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]
    assert [p.name for p in dest.iterdir()] == ["new"]
    shutil.rmtree(dest)
    dest.write_text("a broken leftover")  # not a directory: replaced all the same
    with staged_replacement(tmp_path / ".tree.stage3", dest) as staging:
        staging.mkdir()
    assert dest.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["tree"]
