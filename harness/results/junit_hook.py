"""Reach pytest's JUnit writer to add testsuite properties after the session has run.

pytest has no public way to do that outside a fixture (``record_testsuite_property`` needs one); its writer
is in ``config.stash`` under a key of the private ``_pytest.junitxml``. This module is the one place that
touches it. In a pytest-xdist worker there is no writer (the controller writes the file): the properties are
collected in the worker's output and the controller adds them (:mod:`harness.results.workers`).
"""

from __future__ import annotations

from typing import Any, Optional

import pytest

WORKER_PROPERTIES = "kvm_suite_properties"
"""Key of the testsuite properties in an xdist worker's ``workeroutput``."""


class WorkerProperties:
    """An xdist worker's stand-in for the writer: keeps testsuite properties for the controller."""

    def __init__(self, sink: list[list[str]]) -> None:
        self.global_properties = sink

    def add_global_property(self, name: str, value: object) -> None:
        pair = [name, str(value)]
        if pair not in self.global_properties:
            self.global_properties.append(pair)


def junit_writer(config: pytest.Config) -> Optional[Any]:
    """The session's JUnit writer (``--junitxml``), an xdist worker's property collector, or None."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    output = getattr(config, "workeroutput", None)
    if xml is None and isinstance(output, dict):
        return WorkerProperties(output.setdefault(WORKER_PROPERTIES, []))
    return xml


def suite_property(config: pytest.Config, name: str, value: object) -> None:
    """Add a JUnit testsuite property (``record_testsuite_property`` that also works in an xdist worker)."""
    xml = junit_writer(config)
    if xml is not None:
        xml.add_global_property(name, value)
