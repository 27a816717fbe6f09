"""SpawnSubtask (CAR case 46): the tool subset is enforced by the schema and at call time,
sub-agents never get the meta-tool, and spawns in one proposal run concurrently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from carmp.agents.patterns.spawn_subtask import (
    SPAWN_SUBTASK_TOOL,
    SUBTASK_SYSTEM_PROMPT,
    SpawnSubtask,
    SubtaskRecord,
    spawn_schema,
)
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import AgentFailed, TerminalToolError
from carmp.pool.farm import Farm
from carmp.runtime.tools import ToolSpec
from carmp.shared.budget import BudgetLimits
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, calls

MAIN = AgentSpec(name="main", system_prompt="you plan", tools=("search", "shell"),
                 max_turns=4, metadata={"model": "big"})


def echo(**parameters: Any) -> Any:
    return parameters


@dataclass(frozen=True)
class Toolbox:
    """The main agent's runner registers its tools (echoes) and then plays the script;
    sub-agents register nothing themselves."""

    script: ScriptedRunner

    def __call__(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if spec.name == MAIN.name:
            for name in MAIN.tools:
                runtime.register_tool(name, echo)
        return self.script(spec, task, runtime, mailbox)


def spawning(*spawns: dict[str, Any], concurrent: bool = False) -> list[dict[str, Any]]:
    """One proposal holding a spawn action per `spawns` entry."""
    behaviour = {"failure_behavior": "skip"} if concurrent else {}
    return [{"id": "p", "actions": [
        {"id": f"s{i}", "type": "tool_call", "tool": SPAWN_SUBTASK_TOOL, "parameters": spawn,
         **behaviour} for i, spawn in enumerate(spawns)]}]


def test_out_of_set_tools_are_rejected_before_any_sub_agent_runs(any_farm: Farm) -> None:
    """CAR case 46, part 1."""
    runner = Toolbox(ScriptedRunner(proposals={"main": spawning(
        {"task": "clean up", "tools": ["shell", "rm"]})}))
    result = SpawnSubtask(MAIN).run("tidy the repo", runner, any_farm)
    (report,) = orjson.loads(result.final_answer)
    assert "rejected" in report and "'rm' is not one of ['search', 'shell']" in report["rejected"]
    assert [c["agent"] for c in calls(any_farm.infra.state)] == ["main"]
    assert result.subtasks == ()


def test_a_sub_agent_gets_exactly_its_tools_and_never_the_meta_tool(farm: Farm) -> None:
    """CAR case 46, part 2: depth is exactly one."""
    runner = Toolbox(ScriptedRunner(proposals={"main": spawning(
        {"task": "find it", "tools": ["search"]})}, answers={"main.subtask-1": "found"}))
    result = SpawnSubtask(MAIN).run("t", runner, farm)
    (main_call,) = calls(farm.infra.state, "main")
    (sub_call,) = calls(farm.infra.state, "main.subtask-1")
    assert main_call["tools"] == ["search", "shell", SPAWN_SUBTASK_TOOL]
    assert sub_call["tools"] == ["search"] == sub_call["registered"]  # copied from the parent
    assert sub_call["task"] == "find it" and sub_call["pid"] == main_call["pid"]
    assert result.subtasks == (SubtaskRecord("main.subtask-1", "find it", ("search",), "found",
                                             True),)
    (report,) = orjson.loads(result.final_answer)
    assert report["results"][0]["output"] == "found"  # the answer is the tool's result


@dataclass(frozen=True)
class SubSpecs:
    """A runner that reports the spec each sub-agent got."""

    def __call__(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if spec.name == MAIN.name:
            return ScriptedRunner(proposals={"main": spawning({"task": "x"})})(
                spec, task, runtime, mailbox)
        return AgentOutput(name=spec.name, answer=spec.to_json(), turns=1, tool_calls=0,
                           duration_ms=1.0)


def test_the_sub_agents_spec(farm: Farm) -> None:
    (record,) = SpawnSubtask(MAIN).run("t", SubSpecs(), farm).subtasks
    assert AgentSpec.from_json(record.result) == AgentSpec(
        name="main.subtask-1", system_prompt=SUBTASK_SYSTEM_PROMPT.format(parent="main"),
        tools=(), max_turns=4, metadata={"model": "big"})


def bypass(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    """Calls the meta-tool's function directly, past the schema."""
    try:
        runtime.tools[SPAWN_SUBTASK_TOOL].fn(task="x", tools=["rm"])
    except TerminalToolError as refused:
        return AgentOutput(name=spec.name, answer=str(refused), turns=1, tool_calls=1,
                           duration_ms=1.0)
    raise AssertionError("the meta-tool granted a tool its parent does not have")


def test_the_tool_checks_the_subset_again_when_called(farm: Farm) -> None:
    result = SpawnSubtask(MAIN).run("t", bypass, farm)
    assert "refused tools ['rm']" in result.final_answer
    assert result.subtasks == ()


def test_spawns_of_one_proposal_run_concurrently(farm: Farm) -> None:
    # each sub-agent waits until the main agent and both sub-agents have started
    script = ScriptedRunner(
        proposals={"main": spawning({"task": "a"}, {"task": "b"}, concurrent=True)},
        rendezvous={"main.subtask-1": 3, "main.subtask-2": 3})
    result = SpawnSubtask(MAIN).run("t", Toolbox(script), farm)
    assert sorted(r.agent for r in result.subtasks) == ["main.subtask-1", "main.subtask-2"]
    assert all(r.success for r in result.subtasks)
    assert len({c["pid"] for c in calls(farm.infra.state)}) == 1  # all in the main's worker


def test_a_failed_sub_agent_is_a_tool_error_and_a_failed_record(farm: Farm) -> None:
    script = ScriptedRunner(proposals={"main": spawning({"task": "a"})},
                            errors={"main.subtask-1": "boom"})
    result = SpawnSubtask(MAIN).run("t", Toolbox(script), farm)
    (report,) = orjson.loads(result.final_answer)
    assert "agent main.subtask-1 failed" in report["error"]
    (record,) = result.subtasks
    assert not record.success and "boom" in record.result


def test_a_sub_agent_the_budget_refuses_never_starts(farm: Farm) -> None:
    script = ScriptedRunner(proposals={"main": spawning({"task": "a"})})
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=1))
        result = SpawnSubtask(MAIN).run("t", Toolbox(script), farm, infra=infra)
        assert [c["agent"] for c in calls(infra.state)] == ["main"]
    (record,) = result.subtasks
    assert not record.success and "max_agents" in record.result


def test_the_main_agent_is_load_bearing(farm: Farm) -> None:
    with pytest.raises(AgentFailed, match="agent main failed"):
        SpawnSubtask(MAIN).run("t", ScriptedRunner(errors={"main": "x"}), farm)


def test_a_parent_without_tools_can_grant_none() -> None:
    schema = ToolSpec("spawn", echo, spawn_schema(()))
    assert schema.problems({"task": "x", "tools": []}) == []
    assert schema.problems({"task": "x", "tools": ["search"]})
    assert ToolSpec("spawn", echo, spawn_schema(("a",))).problems({"task": ""})  # empty task


def test_result_json(farm: Farm) -> None:
    script = ScriptedRunner(proposals={"main": spawning({"task": "a", "tools": ["shell"]})})
    data = orjson.loads(SpawnSubtask(MAIN).run("t", Toolbox(script), farm).to_json())
    assert set(data) == {"task", "final_answer", "subtasks"}
    assert data["subtasks"][0]["tools"] == ["shell"]
