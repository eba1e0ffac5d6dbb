"""Upstream fixes the scenarios pin: subject, first release, stable backports, and what a failure means.

A failure of a fix-pinning step says which fix the kernel behaves as if it lacked, with the fix's subject
and the first release that has it, and whether the kernel's release string predates it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

Version = Tuple[int, int, int]


@dataclass(frozen=True)
class Fix:
    """One upstream commit a scenario pins."""

    commit: str
    subject: str
    first: Tuple[int, int]  # first mainline release that has it
    stable: Dict[Tuple[int, int], int] = field(default_factory=dict)  # (major, minor) -> first stable patch level

    def where(self) -> str:
        """``first in v6.4, backported to 6.3.3``."""
        text = f"first in v{self.first[0]}.{self.first[1]}"
        if self.stable:
            text += ", backported to " + ", ".join(f"{a}.{b}.{p}" for (a, b), p in sorted(self.stable.items()))
        return text

    def describe(self) -> str:
        """``fix 292a7d6fca33 ("…subject…"; first in v6.4, backported to 6.3.3)``."""
        return f'fix {self.commit} ("{self.subject}"; {self.where()})'

    def present_in(self, version: Optional[Version]) -> Optional[bool]:
        """Whether a kernel of this release has the fix by its version number (None: unparsable release)."""
        if version is None:
            return None
        major_minor = version[:2]
        if major_minor >= self.first:
            return True
        patch = self.stable.get(major_minor)
        return patch is not None and version[2] >= patch


FIXES: Dict[str, Fix] = {
    fix.commit: fix
    for fix in (
        # Backport to 6.3.y: "[PATCH 6.3 086/246]" of the 6.3.3-rc1 review (stable@vger.kernel.org, 15 May 2023).
        Fix("292a7d6fca33", "KVM: s390: pv: fix asynchronous teardown for small VMs", (6, 4), {(6, 3): 3}),
        # Backport to 6.4.y: "[PATCH 6.4 010/239]" of the 6.4.8-rc1 review (stable@vger.kernel.org, 1 Aug 2023).
        Fix("5ff92181577a", "KVM: s390: pv: simplify shutdown and fix race", (6, 5), {(6, 4): 8}),
    )
}


def release_version(release: str) -> Optional[Version]:
    """``"6.3.2-foo"`` -> ``(6, 3, 2)``; ``"6.12-rc3"`` -> ``(6, 12, 0)``; None without a leading X.Y."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def fix(commit: str) -> Fix:
    """The catalogued fix whose commit id starts with ``commit``."""
    for known, entry in FIXES.items():
        if known.startswith(commit) or commit.startswith(known):
            return entry
    raise KeyError(f"fix {commit!r} is not catalogued: known {', '.join(sorted(FIXES))}")


def release_verdict(entry: Fix, release: str) -> str:
    """What the release string says about the fix, for a failure message."""
    present = entry.present_in(release_version(release))
    if present is None:
        return f"kernel release {release or '(unknown)'} does not say whether it has it"
    if present:
        return (f"kernel {release} should have it by its release number: "
                "a regression, or a distribution kernel without the fix")
    return f"kernel {release} predates it"


def lacks_fix_message(commit: str, release: str, symptom: str) -> str:
    """``this kernel lacks fix 292a7d6fca33 ("…"; first in v6.4, …): PREPARE accepted …; kernel … predates it``."""
    entry = fix(commit)
    return f"this kernel lacks {entry.describe()}: {symptom}; {release_verdict(entry, release)}"


def pinned_scenario_message(commit: str, release: str) -> str:
    """The line a failing fix-pinning scenario carries when no single step names the fix."""
    entry = fix(commit)
    return f"this scenario pins {entry.describe()}; {release_verdict(entry, release)}"
