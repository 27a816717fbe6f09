"""Swarm (parallel, sequential, debate; synthesizer; budget) and Pipeline, with agents
in farm workers: CAR-SPEC section 3 cases 6-9, 36-38, 49."""

from __future__ import annotations


import pytest

from carmp.agents.patterns.swarm import (
    DEBATE_TEMPLATE,
    JUDGE_TEMPLATE,
    SEQUENTIAL_TEMPLATE,
    SYNTHESIS_TEMPLATE,
    Pipeline,
    PipelineResult,
    Swarm,
    SwarmMode,
    SwarmResult,
    summarize,
)
from carmp.agents.types import AgentSpec
from carmp.errors import AgentLimit, BudgetExhausted, InvalidPattern, NoOutput
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, agent, calls
from tests.conftest import make_farm




def specs(*names: str) -> list[AgentSpec]:
    return [agent(name) for name in names]


def called(world: SharedInfra) -> list[str]:
    return [call["agent"] for call in calls(world.state)]


def task_of(world: SharedInfra, name: str, index: int = 0) -> str:
    return str(calls(world.state, name)[index]["task"])


# ---- parallel ------------------------------------------------------------------------------


def test_parallel_agents_run_in_different_processes_then_the_synthesizer(
        flavor: str) -> None:
    """CAR case 37: the synthesizer runs once, after every agent, on all their answers.
    The two agents only get past their rendezvous if they run at the same time, so in two
    processes."""
    runner = ScriptedRunner(answers={"a": "alpha", "b": "beta", "syn": "combined"},
                            rendezvous={"a": 2, "b": 2})
    with make_farm(flavor, workers=2) as farm:
        result = Swarm(specs("a", "b"), synthesizer=agent("syn")).run("solve", runner, farm)
        log = calls(farm.infra.state)
    assert [output.answer for output in result.outputs] == ["alpha", "beta"]
    assert all(output.succeeded() for output in result.outputs)
    assert [call["agent"] for call in log] in (["a", "b", "syn"], ["b", "a", "syn"])
    assert log[0]["pid"] != log[1]["pid"]
    assert result.final_summary == "combined"
    assert log[2]["task"] == SYNTHESIS_TEMPLATE.format(
        task="solve", outputs="[a]: alpha\n[b]: beta")


def test_parallel_agents_beyond_max_agents_are_budget_skipped(farm: Farm,
                                                             world: SharedInfra) -> None:
    """CAR case 7: five agents, max_agents=3: exactly three run; the other two are
    budget-skipped outputs in their places."""
    world.with_budget(BudgetLimits(max_agents=3))
    result = Swarm(specs("a", "b", "c", "d", "e")).run("t", ScriptedRunner(), farm, infra=world)
    assert sorted(called(world)) == ["a", "b", "c"]
    assert [output.name for output in result.outputs] == ["a", "b", "c", "d", "e"]
    assert [output.succeeded() for output in result.outputs] == [True] * 3 + [False] * 2
    assert "coordination budget refused it" in (result.outputs[3].error or "")
    assert result.final_summary == summarize(result.outputs[:3])


def test_a_cap_crossed_before_the_run_starts_no_agent_and_raises(farm: Farm,
                                                                world: SharedInfra) -> None:
    """CAR case 8, pinned: zero runner calls, and BudgetExhausted (not a result of
    placeholders) since no agent could start."""
    world.with_budget(BudgetLimits(max_total_tokens=100))
    world.budget.record_output(TokenAccounting(input_tokens=100))
    with pytest.raises(BudgetExhausted, match="total tokens 100 reached the limit of 100"):
        Swarm(specs("a", "b", "c")).run("t", ScriptedRunner(), farm, infra=world)
    assert called(world) == []


def test_an_agent_limit_refusing_every_agent_is_budget_exhausted_too(
        farm: Farm, world: SharedInfra) -> None:
    world.with_budget(BudgetLimits(max_agents=0))
    with pytest.raises(BudgetExhausted, match="max_agents=0") as raised:
        Swarm(specs("a", "b")).run("t", ScriptedRunner(), farm, infra=world)
    assert isinstance(raised.value.__cause__, AgentLimit)


def test_no_successful_agent_is_no_output(farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(errors={"a": "model down", "b": "model down"})
    with pytest.raises(NoOutput):
        Swarm(specs("a", "b")).run("t", runner, farm, infra=world)
    assert sorted(called(world)) == ["a", "b"]


def test_a_worker_killed_under_an_agent_is_a_failed_output_and_the_swarm_completes(
        farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(answers={"a": "alpha", "c": "gamma"}, crashes=frozenset({"b"}))
    result = Swarm(specs("a", "b", "c")).run("t", runner, farm, infra=world)
    a, b, c = result.outputs
    assert a.answer == "alpha" and c.answer == "gamma"
    assert not b.succeeded() and "WorkerCrashed" in (b.error or "")
    assert result.final_summary == "[a]: alpha\n\n[c]: gamma"


def test_a_refused_or_failing_synthesizer_falls_back_to_the_joined_answers(
        farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(answers={"a": "alpha", "b": "beta"}, errors={"broken": "no"})
    failed = Swarm(specs("a", "b"), synthesizer=agent("broken")).run("t", runner, farm,
                                                                     infra=world)
    assert failed.final_summary == "[a]: alpha\n\n[b]: beta"
    world.with_budget(BudgetLimits(max_agents=2))
    refused = Swarm(specs("a", "b"), synthesizer=agent("syn")).run("t", runner, farm,
                                                                  infra=world)
    assert refused.final_summary == "[a]: alpha\n\n[b]: beta"
    assert "syn" not in called(world)


def test_two_worlds_sharing_one_budget(farm: Farm, world: SharedInfra) -> None:
    """CAR case 9: the spend of a swarm on one world refuses the agents of a swarm on
    another world that shares its budget."""
    world.with_budget(BudgetLimits(max_total_tokens=100))
    with SharedInfra() as other:
        other.with_shared_budget(world.budget)
        runner = ScriptedRunner(tokens={"a": (80, 30, 0.0)})
        Swarm(specs("a")).run("t", runner, farm, infra=world)
        with pytest.raises(BudgetExhausted):
            Swarm(specs("b")).run("t", runner, farm, infra=other)
        assert calls(other.state) == []


# ---- sequential -----------------------------------------------------------------------------


def test_sequential_agents_see_the_answers_before_them(farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(answers={"a": "alpha", "b": "beta", "c": "gamma"})
    result = Swarm(specs("a", "b", "c"), "sequential").run("t", runner, farm, infra=world)
    assert called(world) == ["a", "b", "c"]
    assert task_of(world, "a") == "t"
    assert task_of(world, "b") == SEQUENTIAL_TEMPLATE.format(task="t", outputs="[a]: alpha")
    assert task_of(world, "c") == SEQUENTIAL_TEMPLATE.format(
        task="t", outputs="[a]: alpha\n[b]: beta")
    assert result.final_summary == "[a]: alpha\n\n[b]: beta\n\n[c]: gamma"


def test_a_cap_crossed_mid_sequence_stops_the_chain(farm: Farm, world: SharedInfra) -> None:
    """CAR case 6: agent 2's report crosses the cap: agents 3-5 are never called."""
    world.with_budget(BudgetLimits(max_total_tokens=100))
    runner = ScriptedRunner(tokens={name: (30, 20, 0.0) for name in "abcde"})
    result = Swarm(specs(*"abcde"), SwarmMode.SEQUENTIAL).run("t", runner, farm, infra=world)
    assert called(world) == ["a", "b"]
    assert [output.succeeded() for output in result.outputs] == [True, True] + [False] * 3
    assert all("budget" in (output.error or "") for output in result.outputs[2:])
    assert world.budget.snapshot().total_tokens == 100


# ---- debate ------------------------------------------------------------------------------------


def test_debate_runs_two_rounds_then_the_judge(farm: Farm, world: SharedInfra) -> None:
    """CAR case 38: each agent twice (its second task has the others' first answers,
    not its own), the judge once on the revised answers."""
    runner = ScriptedRunner(answers={"a": ["a1", "a2"], "b": ["b1", "b2"], "c": ["c1", "c2"],
                                     "judge": "b2 wins"})
    result = Swarm(specs("a", "b", "c"), "debate", synthesizer=agent("judge")).run(
        "t", runner, farm, infra=world)
    assert sorted(called(world)) == ["a", "a", "b", "b", "c", "c", "judge"]
    assert called(world)[-1] == "judge"
    assert [output.answer for output in result.outputs] == ["a1", "b1", "c1", "a2", "b2", "c2"]
    assert task_of(world, "b", 1) == DEBATE_TEMPLATE.format(task="t",
                                                            outputs="[a]: a1\n[c]: c1")
    assert task_of(world, "judge") == JUDGE_TEMPLATE.format(
        task="t", outputs="[a]: a2\n[b]: b2\n[c]: c2")
    assert result.final_summary == "b2 wins"


def test_debate_without_a_judge_summarizes_the_revised_answers(farm: Farm,
                                                               world: SharedInfra) -> None:
    runner = ScriptedRunner(answers={"a": ["a1", "a2"], "b": ["b1", "b2"]})
    result = Swarm(specs("a", "b"), "debate").run("t", runner, farm, infra=world)
    assert result.final_summary == "[a]: a2\n\n[b]: b2"


# ---- configuration and results ---------------------------------------------------------------


def test_modes_and_bad_configurations() -> None:
    """CAR case 49's modes: parallel, sequential and debate, nothing else."""
    assert [Swarm(specs("a"), mode).mode for mode in ("parallel", "sequential", "debate")] == \
        [SwarmMode.PARALLEL, SwarmMode.SEQUENTIAL, SwarmMode.DEBATE]
    with pytest.raises(InvalidPattern, match="invalid mode 'hybrid': expected one of "
                                             "parallel, sequential, debate"):
        Swarm(specs("a"), "hybrid")
    with pytest.raises(InvalidPattern, match="one or more agents"):
        Swarm([])
    with pytest.raises(TypeError, match="AgentSpec"):
        Swarm(["a"])  # type: ignore[list-item]
    with pytest.raises(InvalidPattern, match="isolated=True"):
        Swarm(specs("a"), gate=True)
    with pytest.raises(InvalidPattern, match="timeout"):
        Swarm(specs("a"), timeout=0)
    with pytest.raises(TypeError, match="reserve"):
        Swarm(specs("a"), reserve=30)  # type: ignore[arg-type]
    assert Swarm(specs("a")).with_synthesizer(agent("s")).synthesizer == agent("s")


def test_results_travel_as_cars_json(farm: Farm) -> None:
    runner = ScriptedRunner(tokens={"a": (1, 2, 0.5)})
    result = Swarm(specs("a", "b")).run("t", runner, farm)
    assert set(result.to_dict()) == {"task", "outputs", "final_summary"}
    assert SwarmResult.from_json(result.to_json()) == result
    piped = Pipeline(specs("a", "b")).run("t", runner, farm)
    assert set(piped.to_dict()) == {"task", "stages", "final_answer"}
    assert PipelineResult.from_json(piped.to_json()) == piped


# ---- pipeline -------------------------------------------------------------------------------


def test_pipeline_stages_build_on_each_other(flavor: str) -> None:
    """CAR case 36: stage k's task holds stage k-1's answer; the final answer is the last
    stage's."""
    runner = ScriptedRunner(answers={"draft": "v1", "edit": "v2", "polish": "v3"})
    with make_farm(flavor, workers=2) as farm:
        result = Pipeline(specs("draft", "edit", "polish")).run("write", runner, farm)
        log = calls(farm.infra.state)
    assert [call["agent"] for call in log] == ["draft", "edit", "polish"]
    assert "[draft]: v1" in log[1]["task"] and "[edit]: v2" in log[2]["task"]
    assert result.final_answer == "v3"
    assert result.all_succeeded()


def test_a_failed_last_stage_leaves_no_final_answer(farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(answers={"draft": "v1"}, errors={"edit": "crashed"})
    result = Pipeline(specs("draft", "edit")).run("write", runner, farm, infra=world)
    assert result.final_answer == ""
    assert not result.all_succeeded()
    assert [stage.name for stage in result.stages] == ["draft", "edit"]


def test_a_pipeline_whose_stages_all_fail_raises_no_output(farm: Farm,
                                                          world: SharedInfra) -> None:
    runner = ScriptedRunner(errors={"draft": "down", "edit": "down"})
    with pytest.raises(NoOutput):
        Pipeline(specs("draft", "edit")).run("write", runner, farm, infra=world)
