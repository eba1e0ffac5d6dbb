"""SshClient pieces that need no SSH server: connect deadline, key parsing, fingerprints."""

from __future__ import annotations

import base64
import hashlib
import socket
import time

import pytest

from harness.errors import BootError, UsageError
from harness.transport.ssh import SshClient, fingerprint, parse_public_key

# An Ed25519 public key (32 zero bytes are not a valid point, but parsing only checks the framing).
KEY_BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
KEY_LINE = "ssh-ed25519 " + base64.b64encode(KEY_BLOB).decode() + " comment"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_retries_until_the_deadline_and_names_the_context():
    port = closed_port()
    client = SshClient("127.0.0.1", port)
    start = time.monotonic()
    with pytest.raises(BootError) as info:
        client.connect(time.monotonic() + 1.5, context=lambda: "last console lines: booting")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert 1.4 < elapsed < 10
    assert message.startswith(f"SSH on root@127.0.0.1:{port} not up within 1.")
    assert "attempts, last: " in message and message.endswith("; last console lines: booting")
    assert int(message.split("(")[1].split()[0]) > 1  # it retried


def test_connect_stops_when_the_check_raises():
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("guest died")

    with pytest.raises(RuntimeError, match="guest died"):
        SshClient("127.0.0.1", closed_port()).connect(time.monotonic() + 30, check=check)
    assert len(calls) == 3


def test_parse_public_key_and_fingerprint_match_openssh_format():
    key = parse_public_key(KEY_LINE)
    assert key.get_name() == "ssh-ed25519"
    expected = base64.b64encode(hashlib.sha256(KEY_BLOB).digest()).decode().rstrip("=")
    assert fingerprint(key) == "SHA256:" + expected


@pytest.mark.parametrize("line", ["", "ssh-ed25519", "ssh-ed25519 !!!notbase64"])
def test_parse_public_key_rejects_garbage(line):
    with pytest.raises(UsageError):
        parse_public_key(line)


def test_run_without_connection_is_an_error():
    from harness.transport.ssh import SshConnectionLost

    with pytest.raises(SshConnectionLost, match="no SSH connection to root@127.0.0.1:22"):
        SshClient("127.0.0.1").run("true")
