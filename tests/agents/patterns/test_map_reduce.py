"""MapReduce: bounded mappers in flight, item order, the load-bearing reducer (CAR-SPEC
section 3 case 40)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from carmp.agents.patterns.map_reduce import (
    MAP_TEMPLATE,
    REDUCE_TEMPLATE,
    MapReduce,
    MapReduceResult,
)
from carmp.errors import AgentFailed, BudgetExhausted, InvalidPattern, NoOutput
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits
from carmp.shared.event import Event
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, agent, calls
from tests.conftest import make_farm

ITEMS = [f"item {i}" for i in range(7)]





def most_at_once(events: Iterable[Event], begin: set[str], end: set[str]) -> int:
    """The most begun-but-not-ended at any point of the log's order."""
    now = peak = 0
    for event in events:
        if event.kind in begin:
            now += 1
            peak = max(peak, now)
        elif event.kind in end:
            now -= 1
    return peak


def answer_of(task: str) -> str:
    return "seen " + task.rsplit("\n", 1)[-1]


def test_mappers_in_flight_item_order_and_one_reduce(flavor: str) -> None:
    """CAR case 40: 7 items, max_concurrent=2, three workers: never more than two mapper
    tasks submitted and unfinished (the farm's task events, in log order), nor running;
    map_outputs in item order; the reducer once, with all 7 answers."""
    runner = ScriptedRunner(answers={f"m-{i}": answer_of for i in range(7)} | {"r": "sum"})
    with make_farm(flavor, workers=3, task_events=True) as farm:
        start = farm.infra.log.next_seq
        result = MapReduce(agent("m"), agent("r"), max_concurrent=2).run(
            "count", ITEMS, runner, farm)
        events = list(farm.infra.log.iter_from(start))
        log = calls(farm.infra.state)
    tasks = [e for e in events if e.kind.startswith("task_")]
    assert len([e for e in tasks if e.kind == "task_submitted"]) == 8  # 7 mappers + reducer
    assert most_at_once(tasks, {"task_submitted"}, {"task_finished", "task_failed"}) == 2
    assert most_at_once(events, {"agent_started"}, {"agent_finished"}) <= 2
    assert [output.name for output in result.map_outputs] == [f"m-{i}" for i in range(7)]
    assert [output.answer for output in result.map_outputs] == [f"seen {item}" for item in ITEMS]
    assert result.all_succeeded()
    assert [call["agent"] for call in log].count("r") == 1
    assert log[-1]["agent"] == "r"
    assert log[-1]["task"] == REDUCE_TEMPLATE.format(task="count", outputs="\n".join(
        f"[m-{i}]: seen item {i}" for i in range(7)))
    assert result.reduced_answer == "sum"
    assert MAP_TEMPLATE.format(task="count", number=3, count=7, item="item 2") in \
        {call["task"] for call in log}


def test_a_reducer_refused_by_the_budget_is_budget_exhausted(farm: Farm,
                                                            world: SharedInfra) -> None:
    world.with_budget(BudgetLimits(max_agents=7))
    with pytest.raises(BudgetExhausted, match="max_agents=7"):
        MapReduce(agent("m"), agent("r")).run("count", ITEMS, ScriptedRunner(), farm,
                                              infra=world)
    assert len(calls(world.state)) == 7 and not calls(world.state, "r")


def test_a_failing_reducer_is_agent_failed(farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(errors={"r": "out of context"})
    with pytest.raises(AgentFailed, match="agent r failed: RuntimeError: out of context"):
        MapReduce(agent("m"), agent("r")).run("count", ITEMS[:2], runner, farm, infra=world)


def test_a_mapper_killed_with_its_worker_is_a_failed_output_in_its_place(
        farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(crashes=frozenset({"m-1"}))
    result = MapReduce(agent("m"), agent("r")).run("count", ITEMS[:3], runner, farm, infra=world)
    assert [output.succeeded() for output in result.map_outputs] == [True, False, True]
    assert "WorkerCrashed" in (result.map_outputs[1].error or "")
    assert not result.all_succeeded()
    assert "[m-1]" not in calls(world.state, "r")[0]["task"]
    assert result.reduced_answer


def test_no_successful_mapper_skips_the_reducer(farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(errors={"m-0": "down", "m-1": "down"})
    with pytest.raises(NoOutput):
        MapReduce(agent("m"), agent("r")).run("count", ITEMS[:2], runner, farm, infra=world)
    with pytest.raises(NoOutput):
        MapReduce(agent("m"), agent("r")).run("count", [], runner, farm, infra=world)
    assert not calls(world.state, "r")


def test_configuration_and_json(farm: Farm) -> None:
    with pytest.raises(InvalidPattern, match="max_concurrent"):
        MapReduce(agent("m"), agent("r"), max_concurrent=0)
    with pytest.raises(TypeError, match="item 1 is int"):
        MapReduce(agent("m"), agent("r")).run("t", ["a", 2], ScriptedRunner(), farm)  # type: ignore[list-item]
    assert MapReduce(agent("m"), agent("r")).with_max_concurrent(9).max_concurrent == 9
    result = MapReduce(agent("m"), agent("r")).run("t", ITEMS[:2], ScriptedRunner(), farm)
    assert set(result.to_dict()) == {"task", "map_outputs", "reduced_answer"}
    assert MapReduceResult.from_json(result.to_json()) == result
