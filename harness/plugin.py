"""pytest plugin: target options, the session ``kvm_target`` fixture, and the target's facts as JUnit properties."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .errors import HarnessError
from .targets.base import Target
from .targets.spec import DEFAULT_TARGET, TargetOptions, make_target

log = logging.getLogger(__name__)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm-harness", "KVM harness: target under test")
    group.addoption("--kvm-target", default=DEFAULT_TARGET,
                    help="qemu:s390x (default), qemu:x86_64, local, model or ssh://user@host[:port]")
    group.addoption("--kvm-kernel", type=Path, default=None, help="boot this kernel image instead of the image's")
    group.addoption("--kvm-modules", type=Path, default=None,
                    help="modules staging dir (INSTALL_MOD_PATH) for --kvm-kernel")
    group.addoption("--kvm-accel", default="auto", choices=("auto", "kvm", "tcg"), help="QEMU accelerator")
    group.addoption("--kvm-boot-timeout", type=float, default=300.0, help="seconds until the target must be up")
    group.addoption("--kvm-artifacts", type=Path, default=None, help="directory for console logs and other evidence")
    group.addoption("--kvm-ssh-key", type=Path, default=None, help="private key for ssh:// targets")
    group.addoption("--kvm-known-hosts", type=Path, default=None, help="known_hosts file for ssh:// targets")
    group.addoption("--kvm-accept-new-host-key", action="store_true",
                    help="trust an ssh:// target's host key on first contact")


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
    )


class _TargetHolder:
    """Starts the session's target on first use and closes it at session end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.target: Optional[Target] = None
        self.error: Optional[HarnessError] = None

    def get(self) -> Target:
        if self.error is not None:
            pytest.fail(f"target unavailable: {self.error}", pytrace=False)
        if self.target is None:
            spec = self.config.getoption("--kvm-target")
            target = make_target(spec, target_options(self.config))
            try:
                target.start()
            except HarnessError as err:
                target.close()
                self.error = err
                pytest.fail(f"target unavailable: {err}", pytrace=False)
            except BaseException:
                target.close()
                raise
            self.target = target
        return self.target

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm_pv: needs protected virtualization on the target")
    config._kvm_holder = _TargetHolder(config)  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    holder = getattr(config, "_kvm_holder", None)
    if holder is not None:
        holder.close()


@pytest.fixture(scope="session")
def kvm_target(request: pytest.FixtureRequest, record_testsuite_property) -> Iterator[Target]:
    """The started target under test, shared by the whole session."""
    holder: _TargetHolder = request.config._kvm_holder  # type: ignore[attr-defined]
    target = holder.get()
    try:
        facts = target.facts()
        for name, value in facts.as_properties().items():
            record_testsuite_property(name, value)
    except HarnessError as err:
        log.warning("could not read the target's facts: %s", err)
    yield target
