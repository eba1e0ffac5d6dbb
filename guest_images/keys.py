"""SSH keys of an image: the client's ed25519 keypair and the guest's pinned ed25519 host key.

Dropbear stores an ed25519 host key in SSH wire format: ``string "ssh-ed25519"`` followed by
``string (32-byte private seed || 32-byte public key)``.
"""

from __future__ import annotations

import base64
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_TYPE = b"ssh-ed25519"


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def read_ssh_string(data: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">I", data, offset)
    start = offset + 4
    if start + length > len(data):
        raise ValueError("truncated SSH string")
    return data[start:start + length], start + length


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def openssh_public_line(key: Ed25519PublicKey, comment: str = "") -> str:
    """``ssh-ed25519 AAAA... comment`` for authorized_keys / known_hosts."""
    blob = ssh_string(KEY_TYPE) + ssh_string(_raw_public(key))
    line = f"{KEY_TYPE.decode()} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line


def dropbear_private_blob(key: Ed25519PrivateKey) -> bytes:
    """Encode a private key as dropbear's native ed25519 host key file."""
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return ssh_string(KEY_TYPE) + ssh_string(seed + _raw_public(key.public_key()))


def parse_dropbear_ed25519(blob: bytes) -> Ed25519PrivateKey:
    """Decode a dropbear ed25519 key file, checking that its public half matches the seed."""
    key_type, offset = read_ssh_string(blob, 0)
    if key_type != KEY_TYPE:
        raise ValueError(f"not an ed25519 dropbear key: {key_type!r}")
    material, offset = read_ssh_string(blob, offset)
    if len(material) != 64 or offset != len(blob):
        raise ValueError("malformed dropbear ed25519 key")
    key = Ed25519PrivateKey.from_private_bytes(material[:32])
    if _raw_public(key.public_key()) != material[32:]:
        raise ValueError("dropbear ed25519 key: public half does not match the seed")
    return key


@dataclass(frozen=True)
class ImageKeys:
    client_private_openssh: bytes
    client_public_line: str
    host_private_dropbear: bytes
    host_public_line: str


def generate_keys(comment: str) -> ImageKeys:
    """Make a fresh client keypair (OpenSSH private key format) and a dropbear host key."""
    client = Ed25519PrivateKey.generate()
    host = Ed25519PrivateKey.generate()
    client_pem = client.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption())
    return ImageKeys(
        client_private_openssh=client_pem,
        client_public_line=openssh_public_line(client.public_key(), comment),
        host_private_dropbear=dropbear_private_blob(host),
        host_public_line=openssh_public_line(host.public_key()),
    )


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (a new file, renamed over the old one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_client_key(keys: ImageKeys, path: Path) -> None:
    """Write the private key (mode 0600 from its first byte) and its ``.pub`` beside it."""
    write_secret(path, keys.client_private_openssh)
    path.with_name(path.name + ".pub").write_text(keys.client_public_line + "\n")
