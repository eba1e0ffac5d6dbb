"""Build (or find in the cache) a bootable guest: kernel + gzip'd newc initramfs + SSH keys."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from harness.debian import unpack
from harness.debian_pool import fetch_all, mirrors_from
from harness.errors import InfrastructureError, UsageError
from harness.hashing import file_sha256
from harness.locks import file_lock, try_file_lock
from harness.paths import cache_subdir, staged_replacement
from harness import progress
from harness.stages import stage

from . import rootfs
from .cpio import write_initramfs
from .kernels import kernel_arch_of, kernel_release_of, looks_like_kernel
from .keys import generate_keys, write_client_key
from .modules import ModuleTree, find_release_dir
from .recipe import Recipe, load_recipe
from .resolve import Resolution, refresh_command, resolve

log = logging.getLogger(__name__)

BUILDER_VERSION = "2"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
SSH_KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "host_ed25519.pub"
MANIFEST_NAME = "manifest.json"
DEVICES = (("dev/console", "c", 5, 1, 0o600), ("dev/null", "c", 1, 3, 0o666))


@dataclass(frozen=True)
class GuestImage:
    """A built guest. ``root`` is the unpacked root filesystem tree the initramfs was packed from."""

    arch: str
    kernel: Path
    initrd: Path
    ssh_key: Path
    host_key_pub: str
    image_hash: str
    kernel_release: str
    root: Path

    @property
    def directory(self) -> Path:
        return self.initrd.parent

    def known_hosts_line(self, host: str = "127.0.0.1", port: int = 22) -> str:
        """A known_hosts entry pinning the guest's host key at ``host:port``."""
        name = host if port == 22 else f"[{host}]:{port}"
        return f"{name} {self.host_key_pub}"

    def manifest(self) -> dict:
        return json.loads((self.directory / MANIFEST_NAME).read_text())


@dataclass(frozen=True)
class UserKernel:
    """A kernel image (and optional modules tree) the user supplied instead of Debian's."""

    image: Path
    release: str
    modules: Optional[ModuleTree]
    selected: tuple[str, ...]
    digest: str


def _user_kernel(recipe: Recipe, kernel: Optional[Path], modules_dir: Optional[Path]) -> Optional[UserKernel]:
    if kernel is None:
        if modules_dir is not None:
            raise UsageError("modules_dir was given without kernel; pass the kernel image the modules "
                             "were built with too")
        return None
    kernel = Path(kernel).expanduser().resolve()
    if not kernel.is_file():
        raise UsageError(f"kernel image {kernel} does not exist; pass the path of the built image "
                         f"(e.g. {_image_hint(recipe.arch)})")
    if not looks_like_kernel(kernel, recipe.arch):
        other = kernel_arch_of(kernel)
        if other:
            raise UsageError(f"{kernel} is an {other} kernel, not an {recipe.arch} one; build it for "
                             f"{recipe.arch} or choose the {other} image")
        raise UsageError(f"{kernel} is not an {recipe.arch} kernel image; pass {_image_hint(recipe.arch)}")
    image_release = kernel_release_of(kernel, recipe.arch)
    tree = ModuleTree(find_release_dir(Path(modules_dir).expanduser())) if modules_dir is not None else None
    if tree is not None and image_release and image_release != tree.release:
        raise UsageError(f"kernel {kernel} is release {image_release} but the modules in "
                         f"{tree.release_dir} are {tree.release}; pass the modules built with this kernel")
    release = tree.release if tree else (image_release or "unknown")
    digest = hashlib.sha256()
    digest.update(file_sha256(kernel).encode())
    selected: tuple[str, ...] = ()
    if tree is not None:
        names, missing = tree.closure(recipe.modules)
        if missing:
            log.warning("modules %s are neither in %s nor built into the kernel", ", ".join(missing),
                        tree.release_dir)
        selected = tuple(names)
        digest.update(tree.content_hash(selected).encode())
    else:
        log.warning("no modules directory given: the image carries no kernel modules for %s", release)
    return UserKernel(kernel, release, tree, selected, digest.hexdigest())


def _image_hint(arch: str) -> str:
    return "arch/s390/boot/bzImage" if arch == "s390x" else "arch/x86/boot/bzImage"


def _guest_files_digest(recipe: Recipe) -> str:
    digest = hashlib.sha256(rootfs.INIT_SCRIPT.read_bytes())
    for rel, text in sorted(rootfs.static_files(recipe.hostname).items()):
        digest.update(f"{rel}\0{text}\0".encode())
    return digest.hexdigest()


def inputs_key(recipe: Recipe, extra: Sequence[str], user: Optional[UserKernel]) -> str:
    """Hash everything an image depends on except the Debian package versions."""
    parts = [BUILDER_VERSION, recipe.data, _guest_files_digest(recipe), sorted(extra),
             user.digest if user else None, repr(DEVICES)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def image_hash(key: str, resolution: Resolution) -> str:
    """The image's identity: its inputs plus the exact package files (version and SHA256 of each)."""
    files = sorted((p.package, p.version, p.sha256) for p in resolution.pins)
    data = json.dumps([key, files, resolution.kernel_package])
    return hashlib.sha256(data.encode()).hexdigest()


def _images_dir() -> Path:
    """The image cache: private (0700), since images hold SSH keys."""
    path = cache_subdir("images")
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def _load(directory: Path) -> GuestImage:
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    return GuestImage(
        arch=manifest["arch"],
        kernel=directory / KERNEL_NAME,
        initrd=directory / INITRD_NAME,
        ssh_key=directory / SSH_KEY_NAME,
        host_key_pub=(directory / HOST_KEY_NAME).read_text().strip(),
        image_hash=manifest["image_hash"],
        kernel_release=manifest["kernel_release"],
        root=directory / "rootfs",
    )


def _complete(directory: Path) -> bool:
    return all((directory / name).exists() for name in (MANIFEST_NAME, KERNEL_NAME, INITRD_NAME,
                                                        SSH_KEY_NAME, HOST_KEY_NAME))


def _remove_abandoned_builds() -> None:
    """Delete work directories of builds that no longer hold their lock (the process is gone).

    Each build holds ``.build-<id>.lock`` while its ``.build-<id>`` directory exists; a lock that can be
    taken means its owner died, whatever pid namespace it ran in.
    """
    for lock in _images_dir().glob(".build-*.lock"):
        with try_file_lock(lock) as got:
            if not got:
                continue
            work = lock.with_suffix("")
            if work.exists():
                log.info("removing abandoned build directory %s", work.name)
                shutil.rmtree(work, ignore_errors=True)
            lock.unlink(missing_ok=True)


def build_image(arch: str = "s390x", *, kernel: Optional[Path] = None, modules_dir: Optional[Path] = None,
                extra_packages: Sequence[str] = (), force: bool = False,
                mirrors: Sequence[str] = ()) -> GuestImage:
    """Return a bootable guest image for ``arch``, building it unless an identical one is cached.

    The packages are the ones the recipe's lock pins, fetched from ``mirrors`` (default: ``$KVMH_DEBIAN_MIRRORS``
    or Debian's) and checked against their SHA256. ``kernel``/``modules_dir`` replace Debian's kernel with the
    user's image and its ``lib/modules/<release>`` tree; ``extra_packages`` are more (unlocked) Debian packages.
    """
    started = time.monotonic()
    recipe = load_recipe(arch)
    extra = tuple(dict.fromkeys(extra_packages))
    user = _user_kernel(recipe, kernel, modules_dir)
    key = inputs_key(recipe, extra, user)
    mirrors = mirrors_from(mirrors)
    resolution = resolve(recipe, extra, with_kernel=user is None, mirrors=mirrors)
    digest = image_hash(key, resolution)
    directory = _images_dir() / f"{recipe.arch}-{digest[:16]}"
    if not force and _complete(directory):
        log.info("guest image %s is cached (%.2f s)", directory.name, time.monotonic() - started)
        return _load(directory)
    with file_lock(_images_dir() / f".{directory.name}.lock", what=f"image build {directory.name}"):
        if not force and _complete(directory):
            return _load(directory)
        _remove_abandoned_builds()
        with stage(_stage_name(recipe.arch)):
            image = _build(recipe, resolution, user, key, digest, directory, mirrors)
    size = image.initrd.stat().st_size
    log.info("built guest image %s in %.1f s: initrd %.1f MiB, kernel %.1f MiB", directory.name,
             time.monotonic() - started, size / 2**20, image.kernel.stat().st_size / 2**20)
    return image


def _stage_name(arch: str) -> str:
    return f"image: {arch} guest"


def _build(recipe: Recipe, resolution: Resolution, user: Optional[UserKernel], key: str, digest: str,
           directory: Path, mirrors: Sequence[str]) -> GuestImage:
    build_id = f"{directory.name}-{uuid.uuid4().hex[:8]}"
    with file_lock(_images_dir() / f".build-{build_id}.lock", what="own build"):
        try:
            return _build_locked(recipe, resolution, user, key, digest, directory, mirrors,
                                 _images_dir() / f".build-{build_id}")
        finally:
            (_images_dir() / f".build-{build_id}.lock").unlink(missing_ok=True)


def _build_locked(recipe: Recipe, resolution: Resolution, user: Optional[UserKernel], key: str, digest: str,
                  directory: Path, mirrors: Sequence[str], work: Path) -> GuestImage:
    started = time.monotonic()
    root = work / "rootfs"
    with staged_replacement(work, directory):
        root.mkdir(parents=True, mode=0o700)
        work.chmod(0o700)
        name = _stage_name(recipe.arch)
        progress.update(name, total=sum(p.size for p in resolution.pins), unit="B",
                        current=f"{len(resolution.pins)} packages")
        debs = fetch_all(resolution.pins, cache_subdir(f"debs/{recipe.arch}"), mirrors,
                         refresh_hint=refresh_command(recipe.arch), progress=lambda n: progress.update(name, advance=n))
        progress.update(name, current="unpacking and packing the initramfs")
        rootfs.unpack_all((debs[p.package] for p in resolution.userland()), root)
        rootfs.merge_usr(root)
        if user is None:
            release, tree, selected = _debian_kernel(recipe, debs[resolution.kernel_package], work)
        else:
            shutil.copyfile(user.image, work / KERNEL_NAME)
            release, tree, selected = user.release, user.modules, list(user.selected)
        if tree is not None:
            tree.install(selected, root)
        shutil.rmtree(work / "kernel-package", ignore_errors=True)
        freed = rootfs.prune(root, recipe.prune)
        log.debug("pruned %.1f MiB", freed / 2**20)
        dropped = rootfs.check_libraries(root)
        content = rootfs.tree_digest(root)
        keys = generate_keys(f"kvmh-{recipe.arch}-{digest[:8]}")
        write_client_key(keys, work / SSH_KEY_NAME)
        (work / HOST_KEY_NAME).write_text(keys.host_public_line + "\n")
        guest_manifest = {"arch": recipe.arch, "image_hash": digest, "kernel_release": release,
                          "builder_version": BUILDER_VERSION, "modules": selected,
                          "console": recipe.console, "hostname": recipe.hostname}
        rootfs.configure(root, hostname=recipe.hostname, keys=keys, load_modules=recipe.load_modules,
                         manifest=guest_manifest)
        size = write_initramfs(root, work / INITRD_NAME, devices=DEVICES)
        manifest = {
            **guest_manifest,
            "inputs_key": key,
            "suite": recipe.suite,
            "packages": resolution.packages,
            "package_sha256": {p.package: p.sha256 for p in resolution.pins},
            "unlocked_packages": list(resolution.unlocked),
            "rootfs_sha256": content,
            "kernel_source": (f"user:{user.image}" if user else
                              f"debian:{resolution.kernel_package}="
                              f"{resolution.packages[resolution.kernel_package]}"),
            "dropped_python_extensions": dropped,
            "initrd_bytes": size,
            "rootfs_bytes": rootfs.tree_size(root),
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.time(),
        }
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return _load(directory)


def _debian_kernel(recipe: Recipe, deb: Path, work: Path) -> tuple[str, ModuleTree, list[str]]:
    """Unpack Debian's kernel package: copy its image to ``work``, return release, modules, selection."""
    staging = work / "kernel-package"
    unpack(deb, staging)
    images = sorted((staging / "boot").glob("vmlinuz-*"))
    if not images:
        raise InfrastructureError(f"{deb.name} contains no boot/vmlinuz-*; check the recipe's kernel package")
    image = images[0]
    if not looks_like_kernel(image, recipe.arch):
        raise InfrastructureError(f"{image.name} from {deb.name} is not an {recipe.arch} kernel image")
    shutil.copyfile(image, work / KERNEL_NAME)
    tree = ModuleTree(find_release_dir(staging))
    selected, missing = tree.closure(recipe.modules)
    if missing:
        log.warning("modules %s are not in %s", ", ".join(missing), deb.name)
    return tree.release, tree, selected
