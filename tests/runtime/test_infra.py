"""SharedInfra: CAR's surface (a fresh world, budgets, runtimes) and one world used from the
supervisor and from several processes at once (fork, forkserver, spawn); a fresh world and
its runtimes on Ray too."""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest

from carmp import (
    AgentLimit,
    BudgetExhausted,
    BudgetLimits,
    CoordinationBudget,
    SharedInfra,
    TokenAccounting,
)

WAIT = 60.0  # bounded waits on children: only hit when something is broken


def test_a_fresh_infra_is_an_empty_unbounded_world(any_world: SharedInfra) -> None:
    assert any_world.state.snapshot() == {} and any_world.policies.is_empty()
    for _ in range(50):
        any_world.begin_agent()
    any_world.record_output(TokenAccounting(10**6, 10**6, 100.0))
    any_world.begin_agent()
    snapshot = any_world.budget.snapshot()
    assert snapshot.agents_started == 51 and not snapshot.exhausted
    assert snapshot.limits.is_unbounded()


def test_with_budget_replaces_the_budget_and_closes_the_old_one() -> None:
    with SharedInfra() as infra:
        old = infra.budget.name
        assert infra.with_budget(BudgetLimits(max_agents=2)) is infra
        assert not os.path.exists(f"/dev/shm/{old[1:]}")
        infra.begin_agent()
        infra.begin_agent()
        with pytest.raises(AgentLimit):
            infra.begin_agent()


def test_two_infras_share_one_budget() -> None:
    """CAR case 9: spend recorded through one infra blocks the other."""
    with CoordinationBudget(BudgetLimits(max_total_tokens=100)) as budget:
        with SharedInfra().with_shared_budget(budget) as run_a, \
                SharedInfra().with_shared_budget(budget) as run_b:
            run_a.begin_agent()
            run_a.record_output(TokenAccounting(60, 50))
            with pytest.raises(BudgetExhausted):
                run_b.begin_agent()
        assert budget.snapshot().total_tokens == 110  # closing the infras left it open


def test_runtimes_share_the_world_but_not_their_tools(any_world: SharedInfra) -> None:
    first, second = any_world.make_runtime(), any_world.make_runtime()
    assert (first.state, first.log, first.policies) == (any_world.state, any_world.log,
                                                        any_world.policies)
    first.register_tool("only_here", lambda: 1)
    assert "only_here" not in second.tools
    first.execute({"actions": [{"type": "state_write", "parameters": {"key": "k", "value": 1}}]})
    assert second.state.get("k") == 1 and any_world.log.filter(kind="state_changed")
    runtime, context = any_world.make_isolated_runtime("solo")
    assert runtime.state is context and context.parent_state is any_world.state
    assert runtime.log is any_world.log and runtime.policies is any_world.policies


def test_one_world_from_the_supervisor_and_several_processes_at_once(mp_context: Any) -> None:
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=3))
        assert pickle.loads(pickle.dumps(infra)).state.name == infra.state.name
        children = [mp_context.Process(target=run_an_agent, args=(infra, f"agent-{i}"))
                    for i in range(2)]
        for child in children:
            child.start()
        infra.begin_agent()
        infra.make_runtime().execute({"actions": [
            {"type": "state_write", "parameters": {"key": "supervisor", "value": os.getpid()}}]})
        for child in children:
            child.join(WAIT)
        assert [child.exitcode for child in children] == [0, 0]
        assert infra.state.snapshot() == {"supervisor": os.getpid(),
                                          **{f"agent-{i}": children[i].pid for i in range(2)}}
        assert infra.budget.snapshot().agents_started == 3
        with pytest.raises(AgentLimit):
            infra.begin_agent()
        writers = {event.pid for event in infra.log.filter(kind="state_changed")}
        assert writers == {os.getpid(), *(child.pid for child in children)}


def run_an_agent(infra: SharedInfra, name: str) -> None:
    with infra:
        infra.begin_agent()
        result = infra.make_runtime().execute({"actions": [
            {"type": "state_write", "parameters": {"key": name, "value": os.getpid()}}]})
        assert result.succeeded
