"""Shared test configuration: pytester, and in CI a skip for want of something CI provides is a failure."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.ci import in_ci, provided_by

pytest_plugins = ["pytester"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped and not hasattr(report, "wasxfail")):
        return
    longrepr: Any = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    step = provided_by(reason)
    if step is not None:
        report.outcome = "failed"
        report.longrepr = f"{reason}\nCI provides this in {step}: it is missing, so this run proves nothing here"
