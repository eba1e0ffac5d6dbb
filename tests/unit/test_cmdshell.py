"""The persistent shell's framing and the kill script, run against local processes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.transport.cmdshell import ENV_MARK, StreamCut, command_wrapper, kill_script


def cut(status: bool = True, sink=None) -> StreamCut:
    return StreamCut("stdout", "t0k", status, sink)


def test_stream_cut_drops_bytes_before_begin_and_after_end():
    c = cut()
    c.feed(b"late output of an earlier command\nKVMH_B_t0k\nhello\nworldKVMH_E_t0k 3\nmore")
    assert (c.data(), c.status, c.done) == (b"hello\nworld", 3, True)
    c.feed(b"ignored")
    assert c.data() == b"hello\nworld"


def test_stream_cut_byte_by_byte_never_streams_marker_text():
    seen: list[str] = []
    c = cut(sink=lambda name, text: seen.append(text))
    payload = b"x" * 100 + "é\n".encode() + b"y" * 10
    for byte in b"noiseKVMH_B_t0k\n" + payload + b"KVMH_E_t0k 0\n":
        c.feed(bytes([byte]))
    assert c.done and c.status == 0 and c.data() == payload
    assert "".join(seen) == payload.decode()
    assert not any("KVMH" in text for text in seen)


def test_stream_cut_passes_short_lines_at_once():
    c = cut()
    c.feed(b"KVMH_B_t0k\ntick1\n")
    assert c.data() == b"tick1\n"


def test_stream_cut_holds_back_only_a_possible_marker_start():
    c = cut(status=False)
    c.feed(b"KVMH_B_t0k\npartial outputKVMH_")
    assert c.data() == b"partial output"  # "KVMH_" may start the end marker
    c.feed(b"X")
    assert c.data() == b"partial outputKVMH_X"
    c.feed(b"KVMH_E_t0")
    c.flush()
    assert c.data() == b"partial outputKVMH_XKVMH_E_t0" and not c.done


def run_wrapper(command: str) -> tuple[bytes, bytes]:
    token = secrets.token_hex(8)
    proc = subprocess.run(["sh"], input=command_wrapper(token, command).encode(), capture_output=True, timeout=30)
    return proc.stdout.replace(token.encode(), b"TOK"), proc.stderr.replace(token.encode(), b"TOK")


def test_wrapper_frames_both_streams_with_status_and_token_in_env():
    out, err = run_wrapper(f"echo out; echo err >&2; echo ${ENV_MARK}; exit 4")
    assert out == b"KVMH_B_TOK\nout\nTOK\nKVMH_E_TOK 4\n"
    assert err == b"KVMH_B_TOK\nerr\nKVMH_E_TOK\n"


def test_wrapper_keeps_quotes_newlines_and_missing_final_newline():
    out, _ = run_wrapper("printf '%s' \"it's\"\nprintf ' two'")
    assert out == b"KVMH_B_TOK\nit's twoKVMH_E_TOK 0\n"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _marked(token: str) -> set[int]:
    """Live processes whose environment carries the token."""
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"{ENV_MARK}={token}".encode() in environ.read_bytes():
                found.add(int(environ.parent.name))
        except OSError:
            continue
    return {pid for pid in found if _alive(pid)}


def _wait_for_descendants(pid: int, count: int) -> set[int]:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        found = {p for p in _descendants(pid) if _alive(p)}
        if len(found) >= count:
            return found
        time.sleep(0.05)
    pytest.fail(f"process {pid} did not start {count} children")


def test_kill_script_kills_a_marked_command_and_its_forked_subshells():
    token = secrets.token_hex(8)
    env = dict(os.environ, **{ENV_MARK: token})
    # A forked subshell (no exec, so no token in its /proc environ) and an orphaned sleep.
    proc = subprocess.Popen(["sh", "-c", "(sleep 301 &); ( while :; do sleep 302; done ) & sleep 303"],
                            env=env, start_new_session=True)
    try:
        victims = _wait_for_descendants(proc.pid, 2) | {proc.pid}
        end = time.monotonic() + 10
        while not _marked(token) and time.monotonic() < end:
            time.sleep(0.05)
        orphans = _marked(token) - victims
        assert orphans, "the orphaned sleep did not start"
        result = subprocess.run(["sh", "-c", kill_script(token)], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.2)
        assert not [pid for pid in victims | orphans if _alive(pid)]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_script_kills_the_children_of_a_parent_shell_but_not_the_shell():
    # The "persistent shell": its child subshell carries no token at all.
    server = subprocess.Popen(["sh", "-c", "( while :; do sleep 304; done ); echo server-continues"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        children = _wait_for_descendants(server.pid, 2)
        result = subprocess.run(["sh", "-c", kill_script(secrets.token_hex(8), server.pid)],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert server.stdout.readline().strip() == "server-continues"
        server.wait(timeout=10)
        assert server.returncode == 0
        assert not [pid for pid in children if _alive(pid)]
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_script_with_nothing_to_kill_exits_zero():
    result = subprocess.run(["sh", "-c", kill_script(secrets.token_hex(8))], capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stderr == b""
