"""Other spellings of the architecture names (uname, Debian, the kernel's ARCH=), mapped to the harness's.

Standard library only, with no imports: the agent bundle ships this file next to ``uapi.py``.
"""

ALIASES = {"amd64": "x86_64", "AMD64": "x86_64", "x86": "x86_64", "s390": "s390x", "arm64": "aarch64"}


def canonical(name: str) -> str:
    """``amd64``/``x86`` -> ``x86_64``, ``s390`` -> ``s390x``, ``arm64`` -> ``aarch64``; other names unchanged."""
    return ALIASES.get(name, name)
