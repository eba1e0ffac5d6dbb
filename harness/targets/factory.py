"""The one factory of targets: a spec string and options in, an unstarted Target of the right kind out."""

from __future__ import annotations

from typing import Optional

from .base import Target
from .local import LocalTarget
from .model import ModelTarget
from .nested_qemu import NestedQemuTarget
from .qemu import QemuTarget
from .spec import TargetOptions, TargetSpec, parse_target_spec
from .ssh_host import SshHostTarget


def make_target(spec: str, options: Optional[TargetOptions] = None) -> Target:
    """Create (but do not start) the target a spec names."""
    parsed = parse_target_spec(spec)
    options = options or TargetOptions()
    if parsed.kind == "local":
        return LocalTarget()
    if parsed.kind == "model":
        return ModelTarget()
    if parsed.kind == "qemu":
        return QemuTarget(parsed.arch, options)
    if parsed.kind == "nested":
        host_spec = TargetSpec(kind="ssh", user=parsed.user, host=parsed.host, port=parsed.port)
        return NestedQemuTarget(SshHostTarget(host_spec, options), None, options, arch=parsed.arch, owns_host=True)
    return SshHostTarget(parsed, options)
