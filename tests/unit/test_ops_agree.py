"""The agent, the model and the scenario builders speak of the same step ops.

A model without an op the agent runs fails at run time only (``getattr(self, "op_" + …)``); this test
fails at once instead.
"""

from __future__ import annotations

import inspect
import re

from harness.kvm import agent, model, scenarios

STRUCTURAL = {"fork", "loop"}  # the model evaluates these itself, by walking their nested steps


def test_every_agent_op_has_a_model_op_and_back() -> None:
    modelled = {name[len("op_"):] for name in dir(model._Run) if name.startswith("op_")}
    assert STRUCTURAL <= set(agent.OPS)
    agent_only = sorted(set(agent.OPS) - STRUCTURAL - modelled)
    model_only = sorted(modelled - set(agent.OPS))
    assert set(agent.OPS) - STRUCTURAL == modelled, f"agent only: {agent_only}; model only: {model_only}"
    for op in STRUCTURAL:
        assert f'step["op"] == "{op}"' in inspect.getsource(model), f"the model does not walk {op!r} steps"


def test_scenario_builders_emit_only_agent_ops() -> None:
    built = set(re.findall(r'"op": "(\w+)"', inspect.getsource(scenarios)))
    assert built, "no scenario builder found"
    assert built <= set(agent.OPS), f"builders emit ops the agent does not know: {sorted(built - set(agent.OPS))}"
    used = {step["op"] for scenario in scenarios.SCENARIOS.values() for step in _walk(scenario.steps)}
    assert used <= set(agent.OPS)


def _walk(steps):
    for step in steps:
        yield step
        yield from _walk(step.get("steps") or [])
