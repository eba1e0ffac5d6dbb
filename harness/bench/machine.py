"""Facts about the machine a benchmark ran on, recorded with every report."""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any, Dict, Iterable

from .hostmem import read_meminfo

GIB_KB = 1 << 20


def machine_facts(qemu_binaries: Iterable[str] = ()) -> Dict[str, Any]:
    """CPUs, memory, architecture, kernel, /dev/kvm, load, and the version of each QEMU binary given."""
    mem = read_meminfo()
    kvm = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    facts: Dict[str, Any] = {
        "cpus": os.cpu_count(),
        "mem_total_gib": round(mem.get("MemTotal", 0) / GIB_KB, 1),
        "mem_available_gib": round(mem.get("MemAvailable", 0) / GIB_KB, 1),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "dev_kvm": kvm,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    versions = {}
    for binary in qemu_binaries:
        if shutil.which(binary):
            from ..targets.qemu import qemu_version

            versions[binary] = qemu_version(binary)
    if versions:
        facts["qemu"] = versions
    first_qemu = next(iter(versions.values()), "")
    facts["summary"] = (f"{facts['cpus']} cores, {facts['mem_total_gib']:g} GiB, {facts['arch']}"
                        f"{' with /dev/kvm' if kvm else ''}"
                        f"{', QEMU ' + first_qemu.split()[0] if first_qemu else ''}, Linux {facts['kernel']}")
    return facts
