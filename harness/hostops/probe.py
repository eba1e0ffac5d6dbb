"""Read everything the install checks need from a host in one shell command (no changes made)."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from typing import Optional

from ..errors import InfrastructureError
from ..targets.base import Target
from .record import HostLayout
from .shell import PATH_PREFIX

log = logging.getLogger(__name__)

TOOLS = ("kexec", "systemctl", "dracut", "mkinitramfs", "zipl", "python3", "tar", "setsid", "sudo", "depmod")

# Prints "key=value" lines; DIR=... lines describe the filesystem holding each install directory.
_PROBE = r"""
echo "uid=$(id -u)"
echo "user=$(id -un 2>/dev/null)"
echo "arch=$(uname -m)"
echo "release=$(uname -r)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
echo "cmdline=$(cat /proc/cmdline 2>/dev/null)"
echo "kexec_load_disabled=$(cat /proc/sys/kernel/kexec_load_disabled 2>/dev/null || echo missing)"
[ -r /sys/devices/system/memory/block_size_bytes ] && echo "memory_block_size=yes" || echo "memory_block_size=no"
[ -d /run/systemd/system ] && echo "systemd=yes" || echo "systemd=no"
echo "lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null)"
echo "prot_virt_host=$(cat /sys/firmware/uv/prot_virt_host 2>/dev/null || echo absent)"
echo "facilities=$(grep -m1 '^facilities' /proc/cpuinfo 2>/dev/null | cut -d: -f2)"
[ -e /dev/kvm ] && echo "kvm=yes" || echo "kvm=no"
echo "root_fstype=$(awk '$2 == "/" {t = $3} END {print t}' /proc/mounts 2>/dev/null)"
echo "mem_available_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)"
for t in __TOOLS__; do p=$(command -v "$t" 2>/dev/null) && echo "tool_$t=$p"; done
[ -f __RECORD__ ] && echo "record=yes" || echo "record=no"
[ -e __MODDIR__ ] && echo "modules_exist=yes" || echo "modules_exist=no"
for d in __DIRS__; do
  e=$d
  while [ ! -e "$e" ] && [ "$e" != / ]; do e=$(dirname "$e"); done
  line=$(df -Pk "$e" 2>/dev/null | awk 'NR > 1' | tail -n 1)
  # busybox df prints no line for the initramfs root (rootfs): report it with no size.
  [ -n "$line" ] || line="rootfs 0 0 0 - /"
  echo "DIR=$d $line"
done
[ -r __ZIPLCONF__ ] && echo "zipl_conf=yes" || echo "zipl_conf=no"
[ -d __BLSDIR__ ] && echo "bls=yes" || echo "bls=no"
"""

_ROOT_SIZE = r"du -skx / 2>/dev/null | cut -f1"


@dataclass
class FsInfo:
    """The filesystem that holds (or will hold) one install directory."""

    path: str
    device: str
    mount: str
    avail_kb: int


@dataclass
class HostProbe:
    """What the host said about itself before anything was changed."""

    uid: int
    user: str
    arch: str
    release: str
    boot_id: str
    cmdline: str
    kexec_load_disabled: str  # "0", "1" or "missing" (kernel without kexec)
    memory_block_size: bool
    systemd: bool
    lockdown: str
    prot_virt_host: str
    facilities: list[int]
    kvm: bool
    root_fstype: str
    mem_available_kb: int
    tools: dict[str, str]
    record_exists: bool
    modules_exist: bool
    filesystems: dict[str, FsInfo] = field(default_factory=dict)
    zipl_conf: bool = False
    bls: bool = False
    root_size_kb: int = 0

    @property
    def root_is_initramfs(self) -> bool:
        """True when ``/`` is the unpacked initramfs itself (no root disk), as in the harness's own guests."""
        return self.root_fstype in ("rootfs", "ramfs", "tmpfs")

    def has(self, tool: str) -> bool:
        return tool in self.tools


def parse_probe(text: str) -> HostProbe:
    """Parse the probe script's output (pure function, unit-tested on recorded output)."""
    values: dict[str, str] = {}
    tools: dict[str, str] = {}
    filesystems: dict[str, FsInfo] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "DIR":
            fs = _parse_df(value)
            if fs is not None:
                filesystems[fs.path] = fs
        elif key.startswith("tool_"):
            tools[key[5:]] = value.strip()
        else:
            values[key] = value.strip()
    facilities = [int(word) for word in values.get("facilities", "").split() if word.isdigit()]
    try:
        uid = int(values.get("uid", "-1"))
    except ValueError:
        uid = -1
    mem = values.get("mem_available_kb", "")
    return HostProbe(
        uid=uid,
        user=values.get("user", ""),
        arch=values.get("arch", ""),
        release=values.get("release", ""),
        boot_id=values.get("boot_id", ""),
        cmdline=values.get("cmdline", ""),
        kexec_load_disabled=values.get("kexec_load_disabled", "missing") or "missing",
        memory_block_size=values.get("memory_block_size") == "yes",
        systemd=values.get("systemd") == "yes",
        lockdown=values.get("lockdown", ""),
        prot_virt_host=values.get("prot_virt_host", "absent"),
        facilities=facilities,
        kvm=values.get("kvm") == "yes",
        root_fstype=values.get("root_fstype", ""),
        mem_available_kb=int(mem) if mem.isdigit() else 0,
        tools=tools,
        record_exists=values.get("record") == "yes",
        modules_exist=values.get("modules_exist") == "yes",
        filesystems=filesystems,
        zipl_conf=values.get("zipl_conf") == "yes",
        bls=values.get("bls") == "yes",
    )


def _parse_df(value: str) -> Optional[FsInfo]:
    """``<dir> <device> <1k-blocks> <used> <available> <capacity> <mounted on>`` -> FsInfo."""
    words = value.split()
    if len(words) < 7 or not words[4].isdigit():
        return None
    return FsInfo(path=words[0], device=words[1], mount=" ".join(words[6:]), avail_kb=int(words[4]))


def probe_host(target: Target, layout: HostLayout, release: str) -> HostProbe:
    """Run the probe on ``target`` for an install of ``release``."""
    dirs = (layout.boot_dir, layout.modules_root, layout.state_dir)
    script = (_PROBE.replace("__TOOLS__", " ".join(TOOLS))
              .replace("__RECORD__", shlex.quote(layout.record_path))
              .replace("__MODDIR__", shlex.quote(layout.modules_dir(release)))
              .replace("__DIRS__", " ".join(shlex.quote(d) for d in dirs))
              .replace("__ZIPLCONF__", shlex.quote(layout.zipl_conf))
              .replace("__BLSDIR__", shlex.quote(layout.bls_dir)))
    result = target.run(PATH_PREFIX + script, timeout=120)
    probe = parse_probe(result.stdout)
    if not probe.arch:
        raise InfrastructureError(f"cannot read the basic facts of {target.spec} (uname failed: "
                                  f"{result.stderr.strip()[:200] or result.exit_status})")
    if probe.root_is_initramfs:
        size = target.run(_ROOT_SIZE, timeout=300).stdout.strip()
        probe.root_size_kb = int(size) if size.isdigit() else 0
    log.debug("host probe of %s: %s", target.spec, probe)
    return probe
