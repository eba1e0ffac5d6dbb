"""Locked Debian package files: fetched from mirrors on 127.0.0.1, refused on a wrong SHA256, re-resolved."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path
from typing import Iterator

import pytest

from guest_images import locking
from harness.debian_lock import KernelPattern, Lock, diff_locks, dump_lock, load_lock, relock, write_lock
from harness.debian_pool import NotServed, PinnedPackage, archive_root, fetch, mirrors_from
from harness.errors import UsageError

PAYLOAD = b"!<arch>\nnot really a deb, but bytes with a known hash\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP mirror on 127.0.0.1 serving ``tmp_path/www``; yields (URL, its root) and counts requests."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{archive}}", root
    finally:
        server.shutdown()
        server.server_close()


def _pin(data: bytes = PAYLOAD, version: str = "1.0-1", name: str = "busybox",
         archive: str = "debian") -> PinnedPackage:
    return PinnedPackage(name, version, archive, f"pool/main/b/{name}/{name}_{version}_s390x.deb",
                         hashlib.sha256(data).hexdigest(), len(data))


def _serve(root: Path, pin: PinnedPackage, data: bytes = PAYLOAD) -> None:
    path = root / pin.archive / pin.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_fetch_verifies_and_caches(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    pin = _pin()
    _serve(root, pin)
    got = fetch(pin, tmp_path / "pool", [url], refresh_hint="kvmh image lock --update")
    assert got.read_bytes() == PAYLOAD
    (root / pin.archive / pin.filename).unlink()
    assert fetch(pin, tmp_path / "pool", [url], refresh_hint="x") == got, "a verified file is not fetched again"


def test_wrong_sha256_is_refused_and_named(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    pin = _pin()
    _serve(root, pin, PAYLOAD.replace(b"known", b"other"))
    with pytest.raises(NotServed) as err:
        fetch(pin, tmp_path / "pool", [url], refresh_hint="kvmh image lock --update")
    message = str(err.value)
    assert "busybox 1.0-1: SHA256 mismatch" in message and url in message and "\n" not in message
    assert not list((tmp_path / "pool").glob("*.deb")), "the refused file must not stay in the cache"


def test_a_404_mirror_is_skipped_for_the_next(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    pin = _pin()
    _serve(root, pin)
    empty = url.replace("{archive}", "nothing-here/{archive}")
    got = fetch(pin, tmp_path / "pool", [empty, url], refresh_hint="x")
    assert got.read_bytes() == PAYLOAD


def test_no_mirror_has_the_file(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, _root = mirror
    pin = _pin()
    with pytest.raises(NotServed) as err:
        fetch(pin, tmp_path / "pool", [url, "http://127.0.0.1:9/{archive}"],
              refresh_hint="kvmh image lock --arch s390x --update")
    message = str(err.value)
    assert message.startswith("busybox 1.0-1 (busybox_1.0-1_s390x.deb) is served by no mirror")
    assert url in message and "127.0.0.1:9" in message
    assert message.endswith("kvmh image lock --arch s390x --update") and "\n" not in message
    assert err.value.exit_status == 2


def test_mirror_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert archive_root("http://m/debian", "debian") == "http://m/debian"
    assert archive_root("http://m/debian/", "debian-security") == "http://m/debian-security"
    snap = "https://snapshot.debian.org/archive/{archive}/20251201T000000Z"
    assert archive_root(snap, "debian-security") == "https://snapshot.debian.org/archive/debian-security/20251201T000000Z"
    monkeypatch.setenv("KVMH_DEBIAN_MIRRORS", "http://a/{archive} http://b/debian")
    assert mirrors_from() == ["http://a/{archive}", "http://b/debian"]
    assert mirrors_from(["http://c/debian"]) == ["http://c/debian"]


def test_lock_round_trip_and_diff(tmp_path: Path) -> None:
    lock = Lock("s390x", "s390x", ("trixie",), (_pin(), _pin(name="kmod")), kernel_package=None, roots=("busybox",))
    path = tmp_path / "x.lock.json"
    write_lock(path, lock)
    assert load_lock(path) == lock
    newer = Lock("s390x", "s390x", ("trixie",), (_pin(version="1.1-1"), _pin(name="zlib1g")), roots=("busybox",))
    assert diff_locks(lock, newer) == ["~ busybox 1.0-1 -> 1.1-1", "- kmod 1.0-1", "+ zlib1g 1.0-1"]
    path.write_text(dump_lock(lock).replace('"format": 1', '"format": 9'))
    with pytest.raises(UsageError, match="malformed .*kvmh image lock --update"):
        load_lock(path)


class FakeIndex:
    """An index that knows newer versions than its mirror serves."""

    def __init__(self, pins: dict[str, list[PinnedPackage]], deps: dict[str, list[str]]) -> None:
        self._pins = pins
        self._deps = deps

    def closure(self, roots, exclude=()):
        return sorted(set(roots) | {d for r in roots for d in self._deps.get(r, [])} - set(exclude))

    def depends(self, package):
        return self._deps.get(package, [])

    def pins(self, package):
        return list(self._pins.get(package, []))

    def package_names(self, prefix):
        return [n for n in self._pins if n.startswith(prefix)]


def test_relock_takes_the_newest_served_version_and_keeps_unserved_previous_pins() -> None:
    served_urls: set[str] = set()

    def served(url: str) -> bool:
        return url in served_urls

    m = "http://mirror/{archive}"
    libc_new, libc_old = _pin(version="2.41-12+deb13u5", name="libc6"), _pin(version="2.41-12+deb13u4", name="libc6")
    zlib_prev = _pin(version="1:1.3-1+b1", name="zlib1g")
    zlib_index = _pin(version="1:1.3-1+deb13u1", name="zlib1g")
    k_new = _pin(version="6.12.117-1", name="linux-image-6.12.117+deb13-s390x")
    k_sec = _pin(version="6.12.113-1", name="linux-image-6.12.113+deb13-s390x", archive="debian-security")
    busy = _pin()
    index = FakeIndex({"busybox": [busy], "libc6": [libc_old, libc_new], "zlib1g": [zlib_index],
                       k_new.package: [k_new], k_sec.package: [k_sec]},
                      {"busybox": ["libc6", "zlib1g"], "linux-image-s390x": [k_new.package]})
    for pin in (busy, libc_old, zlib_prev, k_sec):
        served_urls.add(f"http://mirror/{pin.archive}/{pin.filename}")
    previous = Lock("s390x", "s390x", ("trixie",), (zlib_prev,))
    lock, unresolved = relock("s390x", "s390x", ("trixie", "trixie-security"), ["busybox"], [], index, [m],
                              previous, KernelPattern("linux-image-s390x", "linux-image-6.12.*-s390x"), served=served)
    got = lock.versions()
    assert got["libc6"] == "2.41-12+deb13u4", "the index's newest is not served: the older served build wins"
    assert got["zlib1g"] == "1:1.3-1+b1", "a build only the previous lock knows is kept when it is the one served"
    assert lock.kernel_package == k_sec.package, "the metapackage's kernel is not served: the newest served one"
    assert unresolved == []
    served_urls.discard(f"http://mirror/debian/{zlib_prev.filename}")
    lock2, unresolved2 = relock("s390x", "s390x", ("trixie",), ["busybox"], [], index, [m], previous, None,
                                served=served)
    assert unresolved2 == ["zlib1g"] and lock2.versions()["zlib1g"] == "1:1.3-1+b1"


def test_committed_locks_load_and_pin_a_kernel() -> None:
    from guest_images.resolve import lock_path

    for arch in ("s390x", "x86_64"):
        lock = load_lock(lock_path(arch))
        assert lock.kernel() is not None and lock.kernel().package.startswith("linux-image-6.12.")
        assert all(p.filename.startswith("pool/") for p in lock.packages)


def test_image_lock_command_exit_2_naming_unserved(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr("harness.debian_lock.is_served", lambda url: "libc6_" not in url)
    lines: list[str] = []
    status = locking.image_lock("s390x", mirrors=["http://127.0.0.1:9/{archive}"], out=lines.append)
    assert status == 2
    assert any(line.startswith("not served: libc6 ") for line in lines)
    assert lines[-1].endswith("refresh the lock: kvmh image lock --arch s390x --update")


def test_image_build_with_no_serving_mirror_is_one_line_and_exit_2(mirror: tuple[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    url, _root = mirror
    monkeypatch.setenv("KVMH_CACHE", str(tmp_path / "cache"))
    status = main(["image", "build", "--arch", "s390x", "--mirror", url])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("kvmh: error")]
    assert status == 2
    assert len(err) == 1, err
    assert err[0].startswith("kvmh: error: ") and "is served by no mirror" in err[0] and url in err[0]
    assert err[0].endswith("kvmh image lock --arch s390x --update")
