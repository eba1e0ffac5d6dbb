"""x86_64 guests: the ``q35`` machine with the first serial port as console and PCI virtio devices."""

from __future__ import annotations

from . import ArchSpec

X86_64 = ArchSpec(
    name="x86_64",
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machine="q35",
    tcg_cpu="max",
    kvm_cpu="host",
    console="ttyS0",
    nic_device="virtio-net-pci",
    rng_device="virtio-rng-pci",
    cmdline=("panic=-1", "loglevel=7"),
    kernel_image="arch/x86/boot/bzImage",
    max_tcg_cpus=8,
    default_memory_mb=2048,
    firmware_banners=("SeaBIOS", "iPXE", "Booting from ROM", "Booting from Hard Disk"),
    linux_arch="x86",
    debian_arch="amd64",
    cross_compile="x86_64-linux-gnu-",
    cross_package="gcc-x86-64-linux-gnu",
    cross_libc_package="libc6-dev-amd64-cross",
)
