"""The QEMU command line is one pure function, shared by the local and the nested QEMU target."""

from __future__ import annotations

from pathlib import Path

from harness.arch import get_arch
from harness.targets.nested_qemu import nested_qemu_argv
from harness.targets.qemu_argv import qemu_argv
from harness.targets.spec import TargetOptions


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_same_inputs_same_argv_and_every_arch_fact_from_the_arch_module() -> None:
    spec = get_arch("s390x")
    kwargs = dict(binary=spec.qemu_binary, accelerator="tcg", kernel=Path("/img/vmlinuz"),
                  initrd=Path("/img/initrd.img"), port=40022, host_cpus=64, memory_mb=None, smp=None)
    argv = qemu_argv(spec, **kwargs)
    assert argv == qemu_argv(spec, **kwargs)
    assert argv[0] == "qemu-system-s390x"
    assert _value(argv, "-machine") == spec.machine and _value(argv, "-cpu") == spec.tcg_cpu
    assert _value(argv, "-smp") == str(spec.max_tcg_cpus), "TCG caps the vCPUs"
    assert _value(argv, "-m") == str(spec.default_memory_mb)
    assert _value(argv, "-chardev") == "stdio,id=con0,signal=off"
    assert _value(argv, "-netdev") == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert _value(argv, "-append").startswith(f"console={spec.console} ")


def test_the_nested_target_differs_only_in_accelerator_cpus_and_console() -> None:
    options = TargetOptions(memory_mb=1024, extra_cmdline="kvmh.x=1")
    nested = nested_qemu_argv("s390x", options, "/run/g", 41000, host_cpus=4)
    local = qemu_argv(get_arch("s390x"), binary="qemu-system-s390x", accelerator="kvm", kernel="/run/g/vmlinuz",
                      initrd="/run/g/initrd.img", port=41000, host_cpus=4, memory_mb=1024,
                      extra_cmdline="kvmh.x=1")
    differ = [(a, b) for a, b in zip(local, nested) if a != b]
    assert differ == [("stdio,id=con0,signal=off", "file,id=con0,path=/run/g/console.log")]
    assert _value(nested, "-accel") == "kvm" and _value(nested, "-smp") == "4"
