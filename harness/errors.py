"""Error types whose messages are one clear line for the user, with the exit status they map to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_TEST_FAILED = 1
EXIT_INFRA = 2
EXIT_USAGE = 3


class HarnessError(Exception):
    """A failure the user can act on; ``str(err)`` is one line naming the problem and the fix."""

    exit_status = EXIT_INFRA

    def __init__(self, message: str, *, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class InfrastructureError(HarnessError):
    """The machinery failed (no boot, no SSH, build error, QEMU died): exit status 2."""


class UsageError(HarnessError):
    """The user asked for something malformed: exit status 3."""

    exit_status = EXIT_USAGE


class BootError(InfrastructureError):
    """The kernel did not reach a usable state (panic, silence, deadline)."""

