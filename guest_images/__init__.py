"""Guest images for kvm-harness: a kernel plus a small busybox/dropbear/python3 initramfs.

``build_image(arch)`` returns a cached ``GuestImage`` (kernel, initrd, SSH client key, pinned
host key); ``looks_like_kernel``/``kernel_release_of`` inspect kernel images.
"""

from .builder import GuestImage, build_image
from .kernels import kernel_arch_of, kernel_release_of, looks_like_kernel

__all__ = ["GuestImage", "build_image", "kernel_arch_of", "kernel_release_of", "looks_like_kernel"]
