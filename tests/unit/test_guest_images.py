"""Unit tests of the guest image builder (no network, no QEMU)."""

from __future__ import annotations

import json

import base64
import gzip
import io
import lzma
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from guest_images import builder, kernels, keys, modules, recipe, rootfs
from guest_images.cpio import NewcWriter, write_initramfs
from guest_images.elf import ElfFile
from guest_images.resolve import Resolution
from harness.debian_pool import PinnedPackage
from harness.errors import InfrastructureError, UsageError

# --------------------------------------------------------------------------- helpers


def make_tree(root: Path) -> None:
    """A small tree with the kinds of entries an initramfs holds."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "empty-dir").mkdir()
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc/secret").write_bytes(b"s3cret")
    (root / "etc/secret").chmod(0o600)
    (root / "etc/empty").write_bytes(b"")
    (root / "etc/odd-size").write_bytes(bytes(range(256)) * 3 + b"xyz")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/sh").symlink_to("tool")
    (root / "dev").mkdir()


def parse_newc(data: bytes) -> list[dict]:
    """An independent newc reader: fields by position, names and data 4-byte aligned."""
    entries = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rdevmajor, rdevminor, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        data_start = (name_start + namesize + 3) & ~3
        body = data[data_start:data_start + filesize]
        pos = (data_start + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries.append({"name": name, "mode": mode, "data": body, "uid": fields[2], "rdev": (rdevmajor, rdevminor)})


def elf64(sections: dict[str, bytes], big_endian: bool = True, machine: int = 22, e_type: int = 1) -> bytes:
    """Build a minimal ELF64 file holding the given sections (enough for .modinfo parsing)."""
    e = ">" if big_endian else "<"
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    blobs = [*sections.values(), names]
    offsets = []
    body = b""
    for blob in blobs:
        offsets.append(64 + len(body))
        body += blob
    shoff = 64 + len(body)
    header = b"\x7fELF" + bytes([2, 2 if big_endian else 1, 1, 0]) + b"\0" * 8
    header += struct.pack(e + "HHIQQQIHHHHHH", e_type, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                          len(blobs) + 1, len(blobs))
    shdrs = b"\0" * 64
    name_off = 1
    for (name, blob), off in zip([*sections.items(), (".shstrtab", names)], offsets):
        shdrs += struct.pack(e + "IIQQQQIIQQ", name_off, 1, 0, 0, off, len(blob), 0, 0, 1, 0)
        name_off += len(name) + 1
    return header + body + shdrs


def fake_module(path: Path, depends: str, compress: bool = True) -> None:
    modinfo = b"license=GPL\0" + f"depends={depends}\0".encode() + b"vermagic=6.0.0 SMP\0"
    data = elf64({".text": b"\0" * 8, ".modinfo": modinfo})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(data) if compress else data)


def fake_s390_image(path: Path, release: str = "6.9.0-test") -> Path:
    head = bytes.fromhex("0008000080000200" "0200001860000050" "0200006860000050") + b"\x40" * 56
    banner = f"{release} (builder@host) #1 SMP Fri Jan 1 00:00:00 UTC 2025".encode()
    path.write_bytes(head + b"\0" * 0x1000 + b"Linux version %s\0" + banner + b"\0" + os.urandom(4096))
    return path


def fake_bzimage(path: Path, release: str = "6.9.0-x86") -> Path:
    image = bytearray(0x3000)
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<H", image, 0x236, 1)  # XLF_KERNEL_64
    struct.pack_into("<H", image, 0x20E, 0x1000)
    version = f"{release} (builder@host) #2 SMP PREEMPT_DYNAMIC\0".encode()
    image[0x1200:0x1200 + len(version)] = version
    path.write_bytes(bytes(image))
    return path


# --------------------------------------------------------------------------- cpio


def test_newc_roundtrip_with_independent_reader(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    out = tmp_path / "initrd.gz"
    write_initramfs(root, out, devices=(("dev/console", "c", 5, 1, 0o600),))
    entries = {e["name"]: e for e in parse_newc(gzip.decompress(out.read_bytes()))}
    names = list(entries)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/tool")
    assert entries["usr/bin/tool"]["data"] == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(entries["usr/bin/tool"]["mode"]) == 0o755
    assert stat.S_IMODE(entries["etc/secret"]["mode"]) == 0o600
    assert entries["etc/odd-size"]["data"] == (root / "etc/odd-size").read_bytes()
    assert entries["etc/empty"]["data"] == b""
    assert stat.S_ISLNK(entries["bin"]["mode"]) and entries["bin"]["data"] == b"usr/bin"
    assert stat.S_ISDIR(entries["empty-dir"]["mode"])
    assert stat.S_ISCHR(entries["dev/console"]["mode"]) and entries["dev/console"]["rdev"] == (5, 1)
    assert all(e["uid"] == 0 for e in entries.values())


def test_newc_is_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    write_initramfs(root, tmp_path / "a.gz")
    write_initramfs(root, tmp_path / "b.gz")
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed (apt-get install cpio)")
def test_newc_extracts_with_gnu_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    out = tmp_path / "initrd.gz"
    write_initramfs(root, out)
    archive = gzip.decompress(out.read_bytes())
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True)
    assert sorted(listing.stdout.decode().split()) == sorted(
        str(p.relative_to(root)) for p in root.rglob("*"))
    dest = tmp_path / "extracted"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive, cwd=dest,
                   check=True, capture_output=True)
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        copy = dest / rel
        if path.is_symlink():
            assert os.readlink(copy) == os.readlink(path), rel
        elif path.is_file():
            assert copy.read_bytes() == path.read_bytes(), rel
            assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(path.stat().st_mode), rel
        else:
            assert copy.is_dir(), rel


def test_newc_rejects_duplicates_and_sockets(tmp_path: Path) -> None:
    writer = NewcWriter(io.BytesIO())
    writer.add_file("a", b"1")
    with pytest.raises(ValueError, match="duplicate"):
        writer.add_file("/a", b"2")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a file"):
        writer.add_path("fifo", fifo)


# --------------------------------------------------------------------------- recipes and hashes


def test_recipes_merge_common_and_arch() -> None:
    s390 = recipe.load_recipe("s390x")
    x86 = recipe.load_recipe("amd64")
    assert s390.arch == "s390x" and x86.arch == "x86_64"
    assert "kexec-tools" in s390.packages and "dropbear-bin" in s390.packages
    assert s390.console == "ttysclp0" and x86.console == "ttyS0"
    assert "kvm_intel" in x86.modules and "virtio_net" in x86.modules and "kvm_intel" not in s390.modules
    assert s390.kernel.metapackage == "linux-image-s390x"
    assert x86.kernel.suffix == "-unsigned"
    assert s390.digest != x86.digest


def test_unknown_arch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="riscv64"):
        recipe.load_recipe("riscv64")


def test_image_hash_tracks_package_versions_and_inputs() -> None:
    r = recipe.load_recipe("s390x")
    key = builder.inputs_key(r, (), None)
    base = Resolution((_pin("busybox", "1:1.37.0-6"), _pin("linux-image-x", "6.12.1-1")), "linux-image-x")
    same = Resolution(tuple(reversed(base.pins)), "linux-image-x")
    bumped = Resolution((_pin("busybox", "1:1.37.0-7"), _pin("linux-image-x", "6.12.1-1")), "linux-image-x")
    rebuilt = Resolution((_pin("busybox", "1:1.37.0-6", sha="b" * 64), _pin("linux-image-x", "6.12.1-1")),
                         "linux-image-x")
    assert builder.image_hash(key, base) == builder.image_hash(key, same)
    assert builder.image_hash(key, base) != builder.image_hash(key, bumped)
    assert builder.image_hash(key, base) != builder.image_hash(key, rebuilt), "same version, other file"
    assert builder.inputs_key(r, ("strace",), None) != key
    assert builder.inputs_key(recipe.load_recipe("x86_64"), (), None) != key


def test_second_build_is_served_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMH_CACHE", str(tmp_path / "cache"))
    resolution = Resolution((_pin("busybox", "1"), _pin("linux-image-x", "2")), "linux-image-x")
    monkeypatch.setattr(builder, "resolve", lambda *a, **k: resolution)
    calls = []

    def fake_build(rec, res, user, key, digest, directory, mirrors):
        calls.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in (builder.KERNEL_NAME, builder.INITRD_NAME, builder.SSH_KEY_NAME):
            (directory / name).write_bytes(b"x")
        (directory / builder.HOST_KEY_NAME).write_text("ssh-ed25519 AAAA\n")
        (directory / builder.MANIFEST_NAME).write_text(
            '{"arch": "s390x", "image_hash": "%s", "kernel_release": "6.12", "inputs_key": "%s"}' % (digest, key))
        return builder._load(directory)

    monkeypatch.setattr(builder, "_build", fake_build)
    first = builder.build_image("s390x")
    second = builder.build_image("s390x")
    assert len(calls) == 1
    assert first == second
    assert first.known_hosts_line("127.0.0.1", 2222) == "[127.0.0.1]:2222 ssh-ed25519 AAAA"
    builder.build_image("s390x", force=True)
    assert len(calls) == 2


def test_locked_resolution_asks_no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's own packages come from its committed lock alone: no apt, no network."""
    from guest_images import resolve as resolve_mod

    def no_index(*args, **kwargs):
        raise AssertionError("the index was consulted")

    monkeypatch.setattr(resolve_mod, "index_view", no_index)
    for arch in ("s390x", "x86_64"):
        resolution = resolve_mod.resolve(recipe.load_recipe(arch))
        assert resolution.kernel_package and resolution.kernel() is not None
        assert {"busybox", "dropbear-bin", "libc6"} <= set(resolution.packages)
        assert all(len(p.sha256) == 64 and p.size > 0 for p in resolution.pins)
        assert resolution.unlocked == ()
        without_kernel = resolve_mod.resolve(recipe.load_recipe(arch), with_kernel=False)
        assert without_kernel.kernel_package is None and len(without_kernel.pins) == len(resolution.pins) - 1


def _pin(name: str, version: str, sha: str = "a" * 64) -> PinnedPackage:
    return PinnedPackage(name, version, "debian", f"pool/main/x/{name}_{version}_s390x.deb", sha, 1)


# --------------------------------------------------------------------------- kernels


def test_kernel_signatures_on_fake_images(tmp_path: Path) -> None:
    s390 = fake_s390_image(tmp_path / "s390.img")
    x86 = fake_bzimage(tmp_path / "bzImage")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(70000))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert kernels.looks_like_kernel(s390, "s390x") and not kernels.looks_like_kernel(s390, "x86_64")
    assert kernels.looks_like_kernel(x86, "x86_64") and not kernels.looks_like_kernel(x86, "s390x")
    for path in (garbage, empty, tmp_path / "missing", Path(os.path.realpath("/bin/ls"))):
        assert not kernels.looks_like_kernel(path, "s390x")
        assert not kernels.looks_like_kernel(path, "x86_64")
    assert kernels.kernel_release_of(s390, "s390x") == "6.9.0-test"
    assert kernels.kernel_release_of(x86, "x86_64") == "6.9.0-x86"
    assert kernels.kernel_release_of(garbage, "s390x") is None
    assert kernels.kernel_arch_of(x86) == "x86_64" and kernels.kernel_arch_of(garbage) is None


def test_s390_vmlinux_elf_is_recognised(tmp_path: Path) -> None:
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(elf64({".head.text": b"\0" * 16, ".init.text": b"\0" * 16}, e_type=2))
    program = tmp_path / "program"
    program.write_bytes(elf64({".text": b"\0" * 16}, e_type=2))
    assert kernels.looks_like_kernel(vmlinux, "s390x")
    assert not kernels.looks_like_kernel(program, "s390x")


def _real_s390_kernels() -> list[Path]:
    from harness.paths import cache_dir

    debian = []
    for kernel in sorted((cache_dir() / "images").glob("s390x-*/vmlinuz")):
        manifest = kernel.with_name("manifest.json")
        if manifest.exists() and not json.loads(manifest.read_text()).get("kernel_source", "").startswith("user:"):
            debian.append(kernel)
    return debian[:1]


def test_real_debian_s390_kernel() -> None:
    from tests.ci import in_ci

    found = _real_s390_kernels()
    if not found and in_ci():
        found = [builder.build_image("s390x").kernel]
    if not found:
        pytest.skip("no s390x image built yet (kvmh image build)")
    image = found[0]
    assert kernels.looks_like_kernel(image, "s390x")
    assert not kernels.looks_like_kernel(image, "x86_64")
    release = kernels.kernel_release_of(image, "s390x")
    assert release and release.endswith("-s390x")


# --------------------------------------------------------------------------- user kernel checks


def test_user_kernel_errors(tmp_path: Path) -> None:
    r = recipe.load_recipe("s390x")
    with pytest.raises(UsageError, match="does not exist"):
        builder._user_kernel(r, tmp_path / "nope", None)
    with pytest.raises(UsageError, match="is an x86_64 kernel"):
        builder._user_kernel(r, fake_bzimage(tmp_path / "bzImage"), None)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(UsageError, match="not an s390x kernel"):
        builder._user_kernel(r, junk, None)
    with pytest.raises(UsageError, match="without kernel"):
        builder._user_kernel(r, None, tmp_path)
    mods = tmp_path / "mods/lib/modules/6.1.0-other"
    fake_module(mods / "kernel/drivers/net/virtio_net.ko.xz", "")
    with pytest.raises(UsageError, match="6.1.0-other"):
        builder._user_kernel(r, fake_s390_image(tmp_path / "k"), tmp_path / "mods")


def test_user_kernel_with_modules(tmp_path: Path) -> None:
    r = recipe.load_recipe("s390x")
    mods = tmp_path / "mods/lib/modules/6.9.0-test"
    fake_module(mods / "kernel/drivers/net/virtio_net.ko.xz", "net_failover")
    fake_module(mods / "kernel/net/core/net_failover.ko.xz", "")
    (mods / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    kernel = fake_s390_image(tmp_path / "bzImage")
    user = builder._user_kernel(r, kernel, tmp_path / "mods")
    assert user is not None and user.release == "6.9.0-test"
    assert user.selected == ("net_failover", "virtio_net")
    fake_module(mods / "kernel/drivers/net/virtio_net.ko.xz", "")
    assert builder._user_kernel(r, kernel, tmp_path / "mods").digest != user.digest


# --------------------------------------------------------------------------- modules


def test_module_closure_builtin_and_missing(tmp_path: Path) -> None:
    rel = tmp_path / "lib/modules/6.9.0"
    fake_module(rel / "kernel/arch/s390/kvm/kvm.ko.xz", "")
    fake_module(rel / "kernel/drivers/net/virtio_net.ko", "net_failover", compress=False)
    fake_module(rel / "kernel/net/core/net-failover.ko.xz", "failover")
    fake_module(rel / "kernel/net/core/failover.ko.xz", "")
    (rel / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    assert modules.find_release_dir(tmp_path) == rel
    assert modules.find_release_dir(tmp_path / "lib/modules") == rel
    tree = modules.ModuleTree(rel)
    selected, missing = tree.closure(["virtio-net", "virtio_blk", "kvm", "no_such"])
    assert selected == ["failover", "kvm", "net_failover", "virtio_net"]
    assert missing == ["no_such"]
    root = tmp_path / "guest"
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    dest = tree.install(selected, root)
    assert (dest / "kernel/net/core/net-failover.ko.xz").exists()
    assert (dest / "modules.builtin").exists()
    if shutil.which("depmod") or Path("/usr/sbin/depmod").exists() or Path("/sbin/depmod").exists():
        # depmod derives dependencies from symbols (the fakes have none): check it indexed every module
        dep = (dest / "modules.dep").read_text()
        assert sorted(line.split(":")[0] for line in dep.splitlines()) == sorted(
            str(tree.by_name[name].relative_to(rel)) for name in selected)


def test_find_release_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        modules.find_release_dir(tmp_path / "nope")
    with pytest.raises(UsageError, match="modules_install"):
        modules.find_release_dir(tmp_path)
    for release in ("6.1", "6.2"):
        (tmp_path / "lib/modules" / release / "kernel").mkdir(parents=True)
    with pytest.raises(UsageError, match="several kernel releases"):
        modules.find_release_dir(tmp_path)


# --------------------------------------------------------------------------- keys


def test_keys_formats() -> None:
    paramiko = pytest.importorskip("paramiko")
    generated = keys.generate_keys("kvmh-test")
    client = paramiko.Ed25519Key.from_private_key(io.StringIO(generated.client_private_openssh.decode()))
    kind, blob, comment = generated.client_public_line.split()
    assert kind == "ssh-ed25519" and comment == "kvmh-test"
    assert blob == client.get_base64()
    host = keys.parse_dropbear_ed25519(generated.host_private_dropbear)
    raw_public = base64.b64decode(generated.host_public_line.split()[1])[-32:]
    from cryptography.hazmat.primitives import serialization

    assert host.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw_public
    # dropbear's layout: string "ssh-ed25519", string(seed || public), nothing else
    blob_bytes = generated.host_private_dropbear
    assert blob_bytes[:15] == b"\0\0\0\x0bssh-ed25519" and blob_bytes[15:19] == b"\0\0\0\x40"
    assert len(blob_bytes) == 19 + 64 and blob_bytes[-32:] == raw_public
    tampered = blob_bytes[:-1] + bytes([blob_bytes[-1] ^ 1])
    with pytest.raises(ValueError, match="does not match"):
        keys.parse_dropbear_ed25519(tampered)


def test_ssh_keygen_reads_client_key(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed (apt-get install openssh-client)")
    generated = keys.generate_keys("c")
    path = tmp_path / "id_ed25519"
    keys.write_client_key(generated, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == generated.client_public_line.split()[:2]


# --------------------------------------------------------------------------- rootfs


def test_merge_usr_and_prune(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/old").write_text("x")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/s390x-linux-gnu").mkdir(parents=True)
    (root / "usr/share/doc/pkg").mkdir(parents=True)
    (root / "usr/share/doc/pkg/README").write_text("docs" * 100)
    (root / "usr/lib/python3.13/json/__pycache__").mkdir(parents=True)
    (root / "usr/lib/python3.13/json/__init__.py").write_text("")
    (root / "usr/lib/python3.13/json/__pycache__/x.pyc").write_text("")
    rootfs.merge_usr(root)
    assert (root / "bin").is_symlink() and os.readlink(root / "bin") == "usr/bin"
    assert (root / "usr/bin/old").read_text() == "x"
    assert (root / "lib").is_symlink()
    freed = rootfs.prune(root, ["usr/share/doc", "usr/lib/python3.13/**/__pycache__"])
    assert freed >= 400
    assert not (root / "usr/share/doc").exists()
    assert not (root / "usr/lib/python3.13/json/__pycache__").exists()
    assert (root / "usr/lib/python3.13/json/__init__.py").exists()


def test_check_libraries(tmp_path: Path) -> None:
    program = Path(os.path.realpath("/bin/ls"))
    needed = ElfFile(program.read_bytes()).needed()
    assert "libc.so.6" in needed
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/python3.13/lib-dynload").mkdir(parents=True)
    shutil.copy(program, root / "usr/lib/python3.13/lib-dynload/_ext.so")
    removed = rootfs.check_libraries(root)
    assert len(removed) == 1 and "libc.so.6" in removed[0]
    assert not (root / "usr/lib/python3.13/lib-dynload/_ext.so").exists()
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(program, root / "usr/bin/ls")
    with pytest.raises(InfrastructureError, match="usr/bin/ls needs"):
        rootfs.check_libraries(root)
    for lib in needed:
        (root / "usr/lib/x86_64-linux-gnu" / lib).write_bytes(b"")
    assert rootfs.check_libraries(root) == []
    # a library whose own dependency is missing is dropped, and then a program needing it is broken
    libdir = root / "usr/lib/x86_64-linux-gnu"
    victim = needed[0]
    shutil.copy(program, libdir / victim)
    (libdir / needed[-1]).unlink()
    (root / "usr/bin/ls").unlink()
    removed = rootfs.check_libraries(root)
    assert removed and removed[0].startswith(f"usr/lib/x86_64-linux-gnu/{victim}")
    shutil.copy(program, root / "usr/bin/ls")
    with pytest.raises(InfrastructureError, match="usr/bin/ls needs"):
        rootfs.check_libraries(root)


def test_configure_writes_init_keys_and_etc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/busybox").write_bytes(b"")
    (root / "usr/bin/python3.13").write_bytes(b"")
    generated = keys.generate_keys("c")
    rootfs.configure(root, hostname="kvmh-test", keys=generated, load_modules=["virtio_net", "kvm"],
                     manifest={"arch": "s390x"})
    init = (root / "init").read_text()
    assert init.startswith("#!/bin/sh") and stat.S_IMODE((root / "init").stat().st_mode) == 0o755
    for needle in ("KVMH-READY", "devtmpfs", "debugfs", "10.0.2.15/24", "10.0.2.2", "dropbear", "-s -p 22"):
        assert needle in init
    assert (root / "etc/kvmh/modules").read_text().split() == ["virtio_net", "kvm"]
    assert (root / "root/.ssh/authorized_keys").read_text().strip() == generated.client_public_line
    assert stat.S_IMODE((root / "root/.ssh/authorized_keys").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "root").stat().st_mode) == 0o700
    assert (root / "etc/dropbear/dropbear_ed25519_host_key").read_bytes() == generated.host_private_dropbear
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:root:/root:/bin/sh")
    assert "cttyhack" in (root / "etc/inittab").read_text()
    assert "PS1='kvmh# '" in (root / "etc/profile").read_text()
    assert os.readlink(root / "usr/bin/sh") == "busybox"
    assert os.readlink(root / "usr/bin/python3") == "python3.13"
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_init_script_parses() -> None:
    result = subprocess.run(["sh", "-n", str(rootfs.INIT_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
