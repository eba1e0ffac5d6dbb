"""Fixtures of the shipped KVM suites: the probed capabilities, scenario running, model-result labels,
and the run's one-line summary in the JUnit file."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from harness.errors import HarnessError
from harness.kvm.caps import Capabilities
from harness.kvm.probe import probe, pv_skip_reason
from harness.kvm.runner import ScenarioResult, is_model, run_scenario
from harness.kvm.scenarios import Scenario
from harness.results.junit_hook import suite_property
from harness.results.summary import CAPS_KEY, record_headline
from harness.targets.base import Target


@pytest.fixture(scope="session")
def kvm_caps(request: pytest.FixtureRequest, kvm_target: Target) -> Capabilities:
    """What the target offers (one agent call; the model target presents a PV-capable 6.12 host)."""
    try:
        caps = probe(kvm_target)
    except HarnessError as err:
        pytest.fail(f"capability probe failed on {kvm_target.spec}: {err}", pytrace=False)
    request.config.stash[CAPS_KEY] = caps
    return caps


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The summary line (model results, or why nothing ran) as a JUnit testsuite property."""
    record_headline(session)


@pytest.fixture(scope="session")
def _model_suite_property(request: pytest.FixtureRequest) -> None:
    suite_property(request.config, "result_source", "model")


@pytest.fixture(autouse=True)
def _label_model_results(request: pytest.FixtureRequest) -> Iterator[None]:
    """On the model target, mark the suite and every test as model results (not kernel results)."""
    if "kvm_target" in request.fixturenames and is_model(request.getfixturevalue("kvm_target")):
        request.getfixturevalue("_model_suite_property")
        request.node.user_properties.append(("results", "model result"))
    yield


@pytest.fixture
def run_kvm_scenario(request: pytest.FixtureRequest, kvm_target: Target,
                     kvm_caps: Capabilities) -> Callable[[Scenario], ScenarioResult]:
    """Skip with the precise reason when the target lacks what the scenario needs; else run and assert it."""

    def run(scenario: Scenario) -> ScenarioResult:
        reason = pv_skip_reason(kvm_caps, scenario.needs)
        if reason:
            pytest.skip(reason)
        # The plugin's kernel log window around this test catches splats: no second read of the log here.
        result = run_scenario(kvm_target, scenario, kvm_caps, check_kernel_log=False)
        request.node.add_report_section("call", "scenario", result.report())
        request.node.user_properties.append(("scenario", scenario.name))
        if scenario.fix:
            request.node.user_properties.append(("pins_fix", scenario.fix))
        for line in result.fix_lines():
            request.node.user_properties.append(("fix_verdict", line))
        warn = result.warn_check()
        if warn is not None:
            request.node.user_properties.append(("warn_check", warn))
        for note in result.notes:
            request.node.user_properties.append(("scenario_note", note))
        result.assert_ok()
        return result

    return run
