"""Operations on real hosts reached over SSH: install and boot a kernel (kexec or zipl), restore, nested QEMU."""

from .install import install_kernel
from .record import HostLayout, InstallRecord
from .restore import RestoreResult, restore

__all__ = ["HostLayout", "InstallRecord", "RestoreResult", "install_kernel", "restore"]
