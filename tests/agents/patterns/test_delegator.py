"""Delegator (CAR case 47): the `delegate` tool runs specialists in the main agent's
worker, reports unknown specialists as tool errors, and records every delegation."""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

from carmp.agents.patterns.delegator import (
    DELEGATE_TOOL,
    MAIN_TASK_TEMPLATE,
    DelegationRecord,
    Delegator,
)
from carmp.agents.types import AgentSpec
from carmp.errors import AgentFailed, BudgetExhausted
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, calls

MAIN = AgentSpec(name="main", system_prompt="you coordinate", tools=("search",))
SPECIALISTS = {"math": AgentSpec(name="math", system_prompt="You do sums.\nOnly sums."),
               "poet": AgentSpec(name="poet", system_prompt="")}


def delegations(*asked: tuple[str, str]) -> list[dict[str, Any]]:
    """One proposal per delegation, so a failing one does not stop the next."""
    return [{"id": f"p{i}", "actions": [{"id": "d", "type": "tool_call", "tool": DELEGATE_TOOL,
                                         "parameters": {"specialist": s, "subtask": t}}]}
            for i, (s, t) in enumerate(asked)]


def main_runner(*asked: tuple[str, str], **options: Any) -> ScriptedRunner:
    return ScriptedRunner(proposals={"main": delegations(*asked)}, **options)


def test_delegations_known_and_unknown(any_farm: Farm) -> None:
    """CAR case 47."""
    runner = main_runner(("math", "2+2"), ("nobody", "help"), answers={"math": "4"})
    result = Delegator(MAIN, SPECIALISTS).run("plan the party", runner, any_farm)
    known, unknown = orjson.loads(result.final_answer)  # the main agent saw these
    assert known["results"][0]["output"] == "4"  # the specialist's answer is the tool result
    assert unknown["aborted"] and "unknown specialist: nobody" in unknown["error"]
    first, second = result.delegations
    assert first == DelegationRecord("math", "2+2", "4", True)
    assert (second.specialist, second.subtask, second.success) == ("nobody", "help", False)
    assert second.result.startswith("unknown specialist: nobody")
    # the specialist ran as a sub-agent in the main agent's worker
    (main_call,) = calls(any_farm.infra.state, "main")
    (math_call,) = calls(any_farm.infra.state, "math")
    assert math_call["pid"] == main_call["pid"] != os.getpid()
    assert math_call["task"] == "2+2"


def test_the_main_agent_learns_its_tool_and_specialists(farm: Farm) -> None:
    Delegator(MAIN, SPECIALISTS).run("plan the party", ScriptedRunner(), farm)
    (call,) = calls(farm.infra.state, "main")
    assert call["tools"] == ["search", DELEGATE_TOOL]
    assert DELEGATE_TOOL in call["registered"]
    assert call["task"] == MAIN_TASK_TEMPLATE.format(
        task="plan the party", roster="- math: You do sums.\n- poet")


def test_a_failing_specialist_is_a_tool_error_and_a_failed_record(farm: Farm) -> None:
    runner = main_runner(("poet", "a rhyme"), errors={"poet": "writer's block"})
    result = Delegator(MAIN, SPECIALISTS).run("t", runner, farm)
    (report,) = orjson.loads(result.final_answer)
    assert "agent poet failed" in report["error"] and "writer's block" in report["error"]
    (record,) = result.delegations
    assert not record.success and "writer's block" in record.result


def test_a_specialist_the_budget_refuses_never_starts(farm: Farm) -> None:
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=1))  # the main agent takes the only slot
        result = Delegator(MAIN, SPECIALISTS).run("t", main_runner(("math", "1+1")), farm,
                                                  infra=infra)
        assert [c["agent"] for c in calls(infra.state)] == ["main"]
    (record,) = result.delegations
    assert not record.success and "max_agents" in record.result


def test_specialists_spend_counts_in_the_budget(farm: Farm) -> None:
    runner = main_runner(("math", "1+1"), tokens={"main": (10, 1, 0.0), "math": (5, 2, 0.0)})
    with SharedInfra() as infra:
        Delegator(MAIN, SPECIALISTS).run("t", runner, farm, infra=infra)
        snapshot = infra.budget.snapshot()
    assert (snapshot.total_tokens, snapshot.agents_started) == (18, 2)


def test_the_main_agent_is_load_bearing(farm: Farm) -> None:
    with pytest.raises(AgentFailed, match="agent main failed: .*lost"):
        Delegator(MAIN, SPECIALISTS).run("t", ScriptedRunner(errors={"main": "lost"}), farm)
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=0))
        with pytest.raises(BudgetExhausted):
            Delegator(MAIN, SPECIALISTS).run("t", ScriptedRunner(), farm, infra=infra)


def test_the_budget_modes_apply_to_the_main_agent(farm: Farm) -> None:
    """Beyond CAR: the main agent's reservation (200 tokens) cannot fit in a cap of 100."""
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_total_tokens=100))
        with pytest.raises(BudgetExhausted, match="reservation denied"):
            Delegator(MAIN, SPECIALISTS, reserve=TokenAccounting(200, 0, 0.0)).run(
                "t", ScriptedRunner(), farm, infra=infra)
        assert calls(infra.state) == []


def test_records_leave_nothing_behind_in_the_state(farm: Farm) -> None:
    before = set(farm.infra.state.keys())
    Delegator(MAIN, SPECIALISTS).run("t", main_runner(("math", "1"), ("poet", "2")), farm)
    assert {k for k in farm.infra.state.keys() if k.startswith("delegator:")} == set()
    assert set(farm.infra.state.keys()) - before <= {"scripted:calls"}


def test_result_json(farm: Farm) -> None:
    result = Delegator(MAIN, SPECIALISTS).run("t", main_runner(("math", "1"),
                                                               answers={"math": "one"}), farm)
    data = orjson.loads(result.to_json())
    assert set(data) == {"task", "final_answer", "delegations"}
    assert data["delegations"] == [{"specialist": "math", "subtask": "1", "result": "one",
                                    "success": True}]


def test_bad_specialists_are_refused() -> None:
    with pytest.raises(TypeError, match="specialist 'math' must be an AgentSpec"):
        Delegator(MAIN, {"math": "not a spec"})  # type: ignore[dict-item]
