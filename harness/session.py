"""The session's target: started on first use, shared by every test and suite of a pytest run, closed at its end.

It lives in pytest's ``config.stash``, so the plugin, the selftest items and the summary reach it the same way.
"""

from __future__ import annotations

import logging
from typing import Optional

import pytest

from .errors import HarnessError
from .parallel import worker_count
from .results.window import KernelLogWindow, can_read_kernel_log
from .stages import stage
from .targets.base import Target
from .targets.spec import TargetOptions
from .targets.factory import make_target

log = logging.getLogger(__name__)


def target_options(config: pytest.Config) -> TargetOptions:
    """Build TargetOptions from the command line."""
    return TargetOptions(
        kernel=config.getoption("--kvm-kernel"),
        modules_dir=config.getoption("--kvm-modules"),
        artifacts_dir=config.getoption("--kvm-artifacts"),
        accel=config.getoption("--kvm-accel"),
        boot_timeout=config.getoption("--kvm-boot-timeout"),
        ssh_key=config.getoption("--kvm-ssh-key"),
        known_hosts=config.getoption("--kvm-known-hosts"),
        accept_new_host_key=config.getoption("--kvm-accept-new-host-key"),
        guests_sharing_host=worker_count(config),
    )


class SessionTarget:
    """Starts the session's target on first use and closes it at session end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.target: Optional[Target] = None
        self.error: Optional[HarnessError] = None
        self.session_cursor: Optional[KernelLogWindow] = None
        self.attributed: set[str] = set()
        self.cursors: dict[int, int] = {}

    def get(self) -> Target:
        if self.error is not None:
            pytest.fail(f"target unavailable: {self.error}", pytrace=False)
        if self.target is None:
            spec = self.config.getoption("--kvm-target")
            target = make_target(spec, target_options(self.config))
            try:
                with stage(f"boot: {spec}"):
                    target.start()
            except HarnessError as err:
                target.close()
                self.error = err
                pytest.fail(f"target unavailable: {err}", pytrace=False)
            except BaseException:
                target.close()
                raise
            self.target = target
            if can_read_kernel_log(target):
                self.session_cursor = KernelLogWindow(target)
        return self.target

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None


HOLDER = pytest.StashKey["SessionTarget"]()


def install_holder(config: pytest.Config) -> "SessionTarget":
    holder = SessionTarget(config)
    config.stash[HOLDER] = holder
    return holder


def holder_of(config: pytest.Config) -> "SessionTarget":
    """The session's target holder (the plugin installs it at configure time)."""
    return config.stash[HOLDER]


def find_holder(config: Optional[pytest.Config]) -> Optional["SessionTarget"]:
    """The holder, or None outside a harness session."""
    return config.stash.get(HOLDER, None) if config is not None else None
