"""What an install left on a host: the paths it uses (HostLayout) and the JSON record it writes there."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import InfrastructureError
from ..targets.base import Target

log = logging.getLogger(__name__)

RECORD_VERSION = 1
RECORD_NAME = "installed.json"


@dataclass(frozen=True)
class HostLayout:
    """Where an install puts things on the host.

    Kernel and initramfs go to ``<boot_dir>/kvmh/<release>/`` (a directory of their own, so the
    distribution's kernel hooks never see them), modules to ``<modules_root>/<release>/``, the record
    to ``<state_dir>/installed.json``. The defaults are the real locations; tests point them elsewhere.
    """

    boot_dir: str = "/boot"
    modules_root: str = "/lib/modules"
    state_dir: str = "/var/lib/kvmh"
    zipl_conf: str = "/etc/zipl.conf"
    bls_dir: str = "/boot/loader/entries"

    @property
    def record_path(self) -> str:
        return f"{self.state_dir}/{RECORD_NAME}"

    def kernel_dir(self, release: str) -> str:
        return f"{self.boot_dir}/kvmh/{release}"

    def modules_dir(self, release: str) -> str:
        return f"{self.modules_root}/{release}"


@dataclass
class ZiplChange:
    """How a persistent (zipl) install changed the boot configuration, so restore can undo it."""

    conf: str
    backup: Optional[str]  # copy of the original zipl.conf, None when there was none
    bls_entry: Optional[str] = None
    section: str = "kvmh"


@dataclass
class InstallRecord:
    """One install on one host. ``paths`` are removed by restore (directories recursively)."""

    release: str
    method: str
    token: str
    cmdline: str
    image_sha256: str
    previous_release: str
    installed_at: str
    initramfs: str = ""
    status: str = "copying"  # copying -> loaded -> booted
    paths: list[str] = field(default_factory=list)
    zipl: Optional[ZiplChange] = None
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "InstallRecord":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported install record version {data.get('version')!r}")
        zipl = data.pop("zipl", None)
        known = {name for name in cls.__dataclass_fields__}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.zipl = ZiplChange(**zipl) if zipl else None
        return record


def read_record(target: Target, layout: HostLayout) -> Optional[InstallRecord]:
    """Return the host's install record, or None when there is none."""
    result = target.run(f"cat {shlex.quote(layout.record_path)} 2>/dev/null", timeout=60)
    if result.exit_status != 0 or not result.stdout.strip():
        return None
    try:
        return InstallRecord.from_json(result.stdout)
    except (ValueError, TypeError) as err:
        raise InfrastructureError(
            f"install record {layout.record_path} on {target.spec} is unreadable ({err}): "
            f"inspect it and remove it by hand") from None
