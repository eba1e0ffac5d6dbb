"""The ``protvirt destroy … failed`` WARN_ONCEs of arch/s390/kvm/pv.c: where they sit and what they print.

Each fires only when an Ultravisor destroy call fails (memory is then leaked on purpose). Being
WARN_ONCE, each prints at most once per boot: a second failure after the first prints nothing.
"""

from __future__ import annotations

from typing import Dict, Tuple

MUST_NOT = "must not"
MAY = "may"

# site key -> (kernel function, the message it prints before "WARNING: CPU: …")
WARN_SITES: Dict[str, Tuple[str, str]] = {
    "cpu": ("kvm_s390_pv_destroy_cpu", "protvirt destroy cpu failed"),
    "vm": ("kvm_s390_pv_deinit_vm", "protvirt destroy vm failed"),
    "fast": ("kvm_s390_pv_deinit_vm_fast", "protvirt destroy vm fast failed"),
    "leftover": ("kvm_s390_pv_dispose_one_leftover", "protvirt destroy leftover vm failed"),
}

PROTVIRT_WARNS: Tuple[str, ...] = tuple(message for _, message in WARN_SITES.values())
