"""Fleet (CAR case 42), and run_required: how patterns start a load-bearing agent."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from carmp.agents.patterns.fleet import Fleet
from carmp.agents.patterns.common import as_exhausted, run_required
from carmp.agents.runner import AgentLauncher
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import AgentLimit, BudgetExhausted, InvalidPattern
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, agent, calls


def test_fleet_runs_every_mission_and_counts_failures(any_farm: Farm) -> None:
    """CAR case 42: three missions, one fails."""
    missions = [(agent("scout"), "map the north"), (agent("miner"), "dig"),
                (agent("cook"), "make soup")]
    runner = ScriptedRunner(answers={"scout": "mapped"}, errors={"miner": "cave-in"})
    result = Fleet(missions).run(runner, any_farm)
    assert (result.succeeded, result.failed) == (2, 1)
    assert result.duration_ms > 0
    assert [o.name for o in result.outputs] == ["scout", "miner", "cook"]
    assert [o.answer for o in result.outputs] == ["mapped", "", "cook: make soup"]
    assert "cave-in" in (result.outputs[1].error or "")
    # each agent got its own mission
    assert {c["agent"]: c["task"] for c in calls(any_farm.infra.state)} == {
        "scout": "map the north", "miner": "dig", "cook": "make soup"}
    assert orjson.loads(result.to_json())["succeeded"] == 2


def test_fleet_agents_run_at_once_in_different_processes(farm: Farm) -> None:
    runner = ScriptedRunner(rendezvous={"a": 2, "b": 2})  # each waits until both started
    result = Fleet([(agent("a"), "x"), (agent("b"), "y")]).run(runner, farm)
    assert result.succeeded == 2
    pids = {c["pid"] for c in calls(farm.infra.state)}
    assert len(pids) == 2 and os.getpid() not in pids


@dataclass(frozen=True)
class KillingRunner:
    """Kills its own worker under one agent."""

    victim: str

    def __call__(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if spec.name == self.victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return ScriptedRunner()(spec, task, runtime, mailbox)


def test_a_worker_killed_under_an_agent_is_a_failed_output(farm: Farm) -> None:
    result = Fleet([(agent("a"), "x"), (agent("doomed"), "y"), (agent("c"), "z")]).run(
        KillingRunner("doomed"), farm)
    assert (result.succeeded, result.failed) == (2, 1)
    assert "WorkerCrashed" in (result.outputs[1].error or "")
    assert result.outputs[2].answer == "c: z"


def test_agents_the_budget_refuses_are_skipped_in_place() -> None:
    with SharedInfra() as infra, Farm(workers=2) as farm:
        infra.with_budget(BudgetLimits(max_agents=2))
        result = Fleet([(agent(n), "t") for n in ("a", "b", "c")]).run(
            ScriptedRunner(), farm, infra=infra)
        assert [c["agent"] for c in calls(infra.state)] in (["a", "b"], ["b", "a"])
    assert (result.succeeded, result.failed) == (2, 1)
    assert "budget" in (result.outputs[2].error or "")


def test_a_reserving_fleet_cannot_overshoot_its_cap(farm: Farm) -> None:
    """Beyond CAR: each spawn reserves 40 tokens first, so only two of three fit in 100
    (CAR's gate alone would start all three, their spend reported only after)."""
    runner = ScriptedRunner(tokens={n: (40, 0, 0.0) for n in "abc"})
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_total_tokens=100))
        result = Fleet([(agent(n), "t") for n in "abc"],
                       reserve=TokenAccounting(40, 0, 0.0)).run(runner, farm, infra=infra)
        assert len(calls(infra.state)) == 2
        assert infra.budget.snapshot().total_tokens == 80
    assert (result.succeeded, result.failed) == (2, 1)
    assert "reservation denied" in (result.outputs[2].error or "")


def test_run_required_raises_budget_exhausted_for_an_agent_limit(farm: Farm) -> None:
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=1))
        with AgentLauncher(farm, ScriptedRunner(), infra=infra) as launcher:
            assert run_required(launcher, agent("a"), "t").output.succeeded()
            with pytest.raises(BudgetExhausted, match="max_agents=1 reached") as caught:
                run_required(launcher, agent("b"), "t")
        assert isinstance(caught.value.__cause__, AgentLimit)
        assert caught.value.snapshot.agents_started == 1
        assert [c["agent"] for c in calls(infra.state)] == ["a"]


def test_as_exhausted_keeps_a_spend_refusal_as_it_is() -> None:
    with SharedInfra() as infra:
        refusal = BudgetExhausted("total_tokens 10 reached the limit of 10",
                                  infra.budget.snapshot())
        assert as_exhausted(refusal, infra) is refusal


def test_bad_missions_are_refused() -> None:
    with pytest.raises(TypeError, match="mission #1"):
        Fleet([(agent("a"), "t"), (agent("b"), 7)])  # type: ignore[list-item]
    with pytest.raises(InvalidPattern, match="timeout"):
        Fleet([], timeout=0)
