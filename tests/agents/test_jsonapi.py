"""JSON entry points (CAR cases 12, 49, 50): JSON in, result JSON out, CAR's error
messages, and a budget_json that caps one call only."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from carmp.agents.jsonapi import (
    JsonRunner,
    run_map_reduce,
    run_pipeline,
    run_supervisor,
    run_swarm,
    run_tournament,
    run_vote,
)
from carmp.agents.patterns.tournament import TournamentResult
from carmp.agents.patterns.vote import VoteResult
from carmp.errors import InvalidAgentJson, InvalidBudget, InvalidPattern, NoOutput, PatternFailed
from carmp.pool.farm import Farm
from tests.agents.scripted import ScriptedRunner, calls
from tests.conftest import START_METHODS


def agents(*names: str) -> str:
    return orjson.dumps([{"name": n, "system_prompt": f"you are {n}"} for n in names]).decode()


def agent(name: str) -> str:
    return orjson.dumps({"name": name, "system_prompt": ""}).decode()


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm(workers=2) as made:
        yield made


@pytest.mark.parametrize("start_method", START_METHODS)
def test_run_vote(start_method: str) -> None:
    runner = ScriptedRunner(answers={"a": "Paris", "b": "paris.", "c": "Lyon"})
    with Farm(workers=2, start_method=start_method) as farm:
        result = VoteResult.from_json(run_vote(agents("a", "b", "c"), "capital?",
                                               runner=runner, farm=farm))
    assert result.winner == "Paris" and result.agreement_ratio == pytest.approx(2 / 3)


@pytest.mark.parametrize("mode", ["parallel", "sequential", "debate"])
def test_run_swarm_accepts_cars_modes(farm: Farm, mode: str) -> None:
    """CAR case 49, part 2."""
    result = orjson.loads(run_swarm(mode, agents("a", "b"), "t", agent("s"),
                                    runner=ScriptedRunner(answers={"s": "summary"}), farm=farm))
    assert result["final_summary"] == "summary"
    assert result["task"] == "t" and len(result["outputs"]) == (4 if mode == "debate" else 2)


def test_an_invalid_mode_is_refused_before_anything_runs(farm: Farm) -> None:
    """CAR case 49, part 1."""
    with pytest.raises(InvalidPattern, match="invalid mode 'hybrid'"):
        run_swarm("hybrid", agents("a"), "t", runner=ScriptedRunner(), farm=farm)
    assert calls(farm.infra.state) == []


@pytest.mark.parametrize("agents_json, synthesizer_json, message", [
    ("not json", None, "invalid agents JSON"),
    ('{"name": "a", "system_prompt": ""}', None, "invalid agents JSON: expected a list"),
    ('[{"name": "a"}]', None, "invalid agents JSON: .*'system_prompt'"),
    (agents("a"), "[", "invalid synthesizer JSON"),
    (agents("a"), '{"name": 3, "system_prompt": ""}', "invalid synthesizer JSON"),
])
def test_bad_agent_json(farm: Farm, agents_json: str, synthesizer_json: str | None,
                        message: str) -> None:
    """CAR case 50, part 1."""
    with pytest.raises(InvalidAgentJson, match=message):
        run_swarm("parallel", agents_json, "t", synthesizer_json, runner=ScriptedRunner(),
                  farm=farm)
    assert calls(farm.infra.state) == []


def test_a_failing_pattern_is_a_swarm_error(farm: Farm) -> None:
    """CAR case 50, part 2."""
    runner = ScriptedRunner(errors={"a": "down", "b": "down"})
    with pytest.raises(PatternFailed, match="^swarm error: no agents produced output") as caught:
        run_swarm("parallel", agents("a", "b"), "t", runner=runner, farm=farm)
    assert isinstance(caught.value.__cause__, NoOutput)


@pytest.mark.parametrize("budget_json, message", [
    ("{max_agents: 1}", "invalid budget JSON"),
    ('{"max_agent": 1}', "invalid budget JSON: unknown keys"),
    ('{"max_agents": -1}', "invalid budget JSON"),
    ("[1]", "invalid budget JSON"),
])
def test_bad_budget_json(farm: Farm, budget_json: str, message: str) -> None:
    """CAR case 12, part 1."""
    with pytest.raises(InvalidBudget, match=message):
        run_vote(agents("a"), "t", budget_json=budget_json, runner=ScriptedRunner(), farm=farm)
    assert calls(farm.infra.state) == []


def test_budget_json_caps_this_call_only(farm: Farm) -> None:
    """CAR case 12, part 2: omitted keys are unbounded; the farm's budget is untouched."""
    result = orjson.loads(run_swarm("parallel", agents("a", "b", "c"), "t",
                                    budget_json='{"max_agents": 2}', runner=ScriptedRunner(),
                                    farm=farm))
    assert [o["error"] is None for o in result["outputs"]] == [True, True, False]
    assert "budget" in result["outputs"][2]["error"]
    assert farm.infra.budget.snapshot().agents_started == 0
    # the call's events and state land in the farm's world
    assert len(calls(farm.infra.state)) == 2
    assert farm.infra.log.filter(kind="budget_denied")
    # a second call gets a fresh budget of its own
    again = orjson.loads(run_vote(agents("a", "b"), "t", budget_json='{"max_agents": 2}',
                                  runner=ScriptedRunner(), farm=farm))
    assert all(vote["error"] is None for vote in again["votes"])


def test_a_load_bearing_refusal_is_a_pattern_error(farm: Farm) -> None:
    with pytest.raises(PatternFailed, match="^map_reduce error: coordination budget exhausted"):
        run_map_reduce(agent("m"), agent("r"), "t", '["x", "y"]', '{"max_agents": 2}',
                       runner=ScriptedRunner(), farm=farm)


def test_run_tournament(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"judge": "B"})
    result = TournamentResult.from_json(run_tournament(agents("x", "y", "z"), agent("judge"),
                                                       "t", runner=runner, farm=farm))
    assert result.winner_name == "z" and result.ranking == ("z", "y", "x")
    with pytest.raises(InvalidAgentJson, match="invalid judge JSON"):
        run_tournament(agents("x"), "{}", "t", runner=runner, farm=farm)


def test_run_pipeline(farm: Farm) -> None:
    result = orjson.loads(run_pipeline(agents("draft", "edit"), "t",
                                       runner=ScriptedRunner(answers={"edit": "done"}),
                                       farm=farm))
    assert result["final_answer"] == "done" and len(result["stages"]) == 2


def test_run_supervisor(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"boss": ["needs work", "APPROVED"]})
    result = orjson.loads(run_supervisor(agents("w1", "w2"), agent("boss"), "t", 3,
                                         runner=runner, farm=farm))
    assert result["approved"] is True and len(result["rounds"]) == 2


def test_run_map_reduce(farm: Farm) -> None:
    result = orjson.loads(run_map_reduce(agent("m"), agent("r"), "t", '["x", "y", "z"]',
                                         runner=ScriptedRunner(answers={"r": "reduced"}),
                                         farm=farm))
    assert result["reduced_answer"] == "reduced" and len(result["map_outputs"]) == 3
    with pytest.raises(InvalidPattern, match="invalid items JSON"):
        run_map_reduce(agent("m"), agent("r"), "t", '["x", 1]', runner=ScriptedRunner(),
                       farm=farm)


def cars_agent_fn(spec_json: str, task: str) -> str:
    """CAR's callback shape: AgentOutput JSON back; agent 'sloppy' lists its tool calls."""
    name = orjson.loads(spec_json)["name"]
    calls_made: object = [] if name == "sloppy" else 0
    return orjson.dumps({"name": name, "answer": f"{name} did {task}", "turns": 1,
                         "tool_calls": calls_made, "duration_ms": 1.5, "error": None}).decode()


def test_cars_json_callback_as_runner(farm: Farm) -> None:
    """CAR case 14 on the JSON path: a reply with tool_calls as a list fails its agent."""
    result = orjson.loads(run_swarm("parallel", agents("neat", "sloppy"), "t",
                                    runner=JsonRunner(cars_agent_fn), farm=farm))
    neat, sloppy = result["outputs"]
    assert neat["answer"] == "neat did t" and neat["error"] is None
    assert "tool_calls must be an int" in sloppy["error"]
