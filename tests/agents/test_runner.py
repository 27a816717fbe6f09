"""Agents as farm tasks: run in workers, failures become outputs, budget gate, overlays,
under each start method and on Ray."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from carmp.agents.runner import AgentLauncher
from carmp.agents.types import AgentOutput, AgentSpec, Message
from carmp.pool.farm import Farm
from carmp.runtime.context import AgentContext
from carmp.runtime.infra import SharedInfra
from carmp.shared.budget import BudgetLimits
from tests.agents.scripted import ScriptedRunner, calls
from tests.conftest import make_farm

WAIT = 60


@pytest.fixture
def farm(flavor: str) -> Iterator[Farm]:
    with make_farm(flavor, workers=2,
                   budget=BudgetLimits(max_agents=3, max_total_tokens=100)) as made:
        yield made


def spec(name: str) -> AgentSpec:
    return AgentSpec(name=name, system_prompt="")


def test_agents_run_in_workers_and_calls_are_counted(farm: Farm) -> None:
    with AgentLauncher(farm, ScriptedRunner(answers={"a": "yes"})) as agents:
        runs = [agents.start(spec(name), "t").result(WAIT) for name in ("a", "b")]
    assert [r.output.answer for r in runs] == ["yes", "b: t"]
    assert all(r.pid is not None and r.pid != os.getpid() for r in runs)
    assert {c["pid"] for c in calls(farm.infra.state)} == {r.pid for r in runs}
    kinds = [e.kind for e in farm.infra.log.filter(kind="agent_finished")]
    assert len(kinds) == 2


def raising(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    raise ValueError(f"{spec.name} cannot do {task}")


def not_an_output(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
    return "plain text"


async def asynchronous(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    return AgentOutput(name=spec.name, answer=task.upper(), turns=1, tool_calls=0,
                       duration_ms=1.0)


def killed(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("runner, error", [
    (raising, "ValueError: a cannot do t"),
    (not_an_output, "returned str, not an AgentOutput"),
    (killed, "WorkerCrashed"),
])
def test_a_failing_agent_becomes_a_failed_output(farm: Farm, runner: Any, error: str) -> None:
    with AgentLauncher(farm, runner) as agents:
        run = agents.start(spec("a"), "t").result(WAIT)
    assert not run.output.succeeded()
    assert error in (run.output.error or "")
    assert run.output.name == "a"
    # the farm keeps serving after a worker died under an agent
    assert farm.submit(abs, -3).result(WAIT) == 3


def test_async_runner(farm: Farm) -> None:
    with AgentLauncher(farm, asynchronous) as agents:
        assert agents.run(spec("a"), "go").output.answer == "GO"


def test_budget_gate_and_spend_seen_with_the_output(farm: Farm) -> None:
    runner = ScriptedRunner(tokens={"a": (60, 50, 0.0)})
    with AgentLauncher(farm, runner) as agents:
        first = agents.run(spec("a"), "t")  # 110 tokens: crosses the 100 cap
        assert farm.infra.budget.snapshot().exhausted  # recorded before the result came
        second = agents.run(spec("b"), "t")
    assert first.output.succeeded()
    assert not second.output.succeeded() and "budget" in (second.output.error or "")
    assert second.pid is None
    assert [c["agent"] for c in calls(farm.infra.state)] == ["a"]


def writer(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    result = runtime.execute({"id": f"p-{spec.name}", "actions": [
        {"id": "w", "type": "state_write", "parameters": {"key": f"k-{spec.name}",
                                                         "value": task}}]})
    failed = spec.name.startswith("fail")
    return AgentOutput(name=spec.name, answer=str(result.succeeded), turns=1, tool_calls=1,
                       duration_ms=1.0, error="told to fail" if failed else None)


def test_isolated_agents_bring_their_overlay_home_only_on_success(farm: Farm) -> None:
    with AgentLauncher(farm, writer, isolated=True) as agents:
        good = agents.run(spec("good"), "v1")
        bad = agents.run(spec("fail"), "v2")
    state = farm.infra.state
    assert not state.exists("k-good") and not state.exists("k-fail")  # nothing merged yet
    assert bad.overlay is None
    assert good.overlay is not None
    AgentContext.from_delta(state, good.overlay).merge_to_parent()
    assert state.get("k-good") == "v1"


def listener(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    if spec.name == "listener":
        answer = str(mailbox.register("listener").recv(timeout=WAIT).content)
    else:
        mailbox.send(Message(sender=spec.name, to="listener", content=task))
        answer = "sent"
    return AgentOutput(name=spec.name, answer=answer, turns=1, tool_calls=0, duration_ms=1.0)


def test_agents_in_two_workers_talk_through_the_mailbox(farm: Farm) -> None:
    with AgentLauncher(farm, listener) as agents:
        agents.mailbox.register("listener")  # so a send lands whichever agent runs first
        heard = agents.submit(spec("listener"), "")
        said = agents.submit(spec("talker"), "hello across processes")
        assert said.result(WAIT).output.answer == "sent"
        run = heard.result(WAIT)
    assert run.output.answer == "hello across processes"


def test_two_infras_sharing_one_budget(farm: Farm,
                                      new_world: Callable[[Farm], SharedInfra]) -> None:
    """CAR case 9: spend from run A, on its own infra, blocks run B on another."""
    first, second = new_world(farm), new_world(farm)
    first.with_budget(BudgetLimits(max_total_tokens=100))
    second.with_shared_budget(first.budget)
    runner = ScriptedRunner(tokens={"a": (80, 30, 0.0)})
    with AgentLauncher(farm, runner, infra=first) as run_a:
        assert run_a.run(spec("a"), "t").output.succeeded()
    with AgentLauncher(farm, runner, infra=second) as run_b:
        refused = run_b.run(spec("b"), "t")
    assert "budget" in (refused.output.error or "")
    assert [c["agent"] for c in calls(first.state)] == ["a"]
    assert farm.infra.budget.snapshot().total_tokens == 0  # the farm's own budget untouched
