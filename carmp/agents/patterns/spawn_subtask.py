"""SpawnSubtask: a main agent that invents short-lived sub-agents, each with a subset of
its own tools (CAR-SPEC 2.11).

The main agent runs in a farm worker with the meta-tool `spawn_subtask(task, tools)`,
registered through the launcher's `prepare` hook. The subset is enforced twice, as in
CAR: the tool's JSON Schema makes the items of `tools` an enum of the main agent's tools
(`spawn_subtask` excluded), so the runtime's validator rejects a proposal asking for
anything else before any of it runs; and the tool checks again when called, refusing
with TerminalToolError (no retry can fix it).

A call runs the sub-agent right there, in the main agent's worker, after the budget gate
(a refusal is the tool's error): its spec is named `<main>.subtask-<n>`, has the
SUBTASK_SYSTEM_PROMPT, the main agent's max_turns and metadata (the model choice), and
exactly the tools granted, never `spawn_subtask`; its runtime gets the granted tools the
main agent's runtime has registered (copied, same functions) and no meta-tool, so
delegation depth is exactly one. Its answer is the tool's result; a failed sub-agent
raises AgentFailed, the tool's error. Several spawn actions in one proposal run
concurrently through the runtime's DAG executor when their level can run concurrently
(no action of it has failure_behavior "abort").

Each spawn leaves a SubtaskRecord, carried home through the shared state like the
Delegator's records (numbered in the order the spawns started). `final_answer` is the
main agent's answer; the main agent is load-bearing (BudgetExhausted when refused,
AgentFailed when it fails). The budget modes and `timeout` (PatternOptions of swarm.py)
apply to the main agent, whose timeout covers its sub-agents too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.delegator import RunRecords, run_main_agent, run_sub_agent, world
from carmp.agents.patterns.common import PatternOptions, checked_spec, why_failed
from carmp.agents.runner import Runner
from carmp.agents.types import AgentSpec, wire_fields
from carmp.errors import AgentFailed, BudgetError, TerminalToolError
from carmp.shared.wire import JsonOut, Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.runtime import Runtime
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

SPAWN_SUBTASK_TOOL = "spawn_subtask"
SUBTASK_SYSTEM_PROMPT = ("You are a sub-agent that {parent} started for one focused subtask. "
                         "Use only the tools you were given, and answer with the result.")


def spawn_schema(allowed: Sequence[str]) -> dict[str, Any]:
    """The meta-tool's JSON Schema: `tools` may name only `allowed` tools."""
    items: dict[str, Any] = {"type": "string", "enum": list(allowed)} if allowed \
        else {"type": "string", "not": {}}  # no tool to grant: any name is refused
    return {"type": "object",
            "properties": {"task": {"type": "string", "minLength": 1},
                           "tools": {"type": "array", "items": items, "uniqueItems": True}},
            "required": ["task"], "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class SubtaskRecord(Wire):
    """One spawn: the sub-agent's name, task and tools, and its answer as `result` when
    it succeeded, else why it failed."""

    agent: str
    task: str
    tools: tuple[str, ...]
    result: str
    success: bool

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "task": self.task, "tools": list(self.tools),
                "result": self.result, "success": self.success}

    @classmethod
    def from_dict(cls, data: Any) -> SubtaskRecord:
        fields = wire_fields("SubtaskRecord", data, _RECORD_FIELDS, _RECORD_FIELDS)
        return cls(**{**fields, "tools": tuple(fields["tools"])})


_RECORD_FIELDS = ("agent", "task", "tools", "result", "success")


@dataclass(frozen=True, slots=True)
class SpawnSubtaskResult(JsonOut):
    """The main agent's answer and every sub-agent it spawned."""

    task: str
    final_answer: str
    subtasks: tuple[SubtaskRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "final_answer": self.final_answer,
                "subtasks": [record.to_dict() for record in self.subtasks]}


@dataclass(frozen=True)
class SpawnSubtask(PatternOptions):
    """A main agent with the `spawn_subtask` meta-tool over its own tools."""

    main: AgentSpec

    def __post_init__(self) -> None:
        super().__post_init__()
        checked_spec("SpawnSubtask's main agent", self.main)

    @property
    def grantable(self) -> tuple[str, ...]:
        """The main agent's tools a sub-agent may get: all but the meta-tool."""
        return tuple(tool for tool in self.main.tools if tool != SPAWN_SUBTASK_TOOL)

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> SpawnSubtaskResult:
        """Run the main agent (and, through its meta-tool, its sub-agents) in the farm's
        workers; `infra` runs them against another world."""
        records = RunRecords("spawn_subtask")
        main = self.main.with_tools([*self.grantable, SPAWN_SUBTASK_TOOL])
        answer, subtasks = run_main_agent(
            self, main, task, runner, farm, infra, mailbox, records,
            lambda box, there: _SpawnTool(runner, main, self.grantable, records, box, there))
        return SpawnSubtaskResult(task, answer, tuple(map(SubtaskRecord.from_dict, subtasks)))


class _SpawnTool:
    """The `prepare` hook that gives the main agent its meta-tool; pickled to the worker
    with the launcher's task."""

    def __init__(self, runner: Runner, main: AgentSpec, grantable: tuple[str, ...],
                 records: RunRecords, mailbox: Mailbox, infra: SharedInfra | None) -> None:
        self.runner, self.main, self.grantable = runner, main, grantable
        self.records, self.mailbox, self.infra = records, mailbox, infra

    def __call__(self, runtime: Runtime, spec: AgentSpec) -> None:
        def spawn_subtask(task: str, tools: Sequence[str] = ()) -> str:
            return self.spawn(runtime, task, tools)

        runtime.register_tool(SPAWN_SUBTASK_TOOL, spawn_subtask, spawn_schema(self.grantable),
                              "run a sub-agent on a task with some of your tools; the "
                              "result is its answer")

    def spawn(self, parent: Runtime, task: str, tools: Sequence[str]) -> str:
        infra = world(self.infra)
        refused = [tool for tool in tools if tool not in self.grantable]
        if refused:
            raise TerminalToolError(
                f"{SPAWN_SUBTASK_TOOL} refused tools {refused}: a sub-agent may only get "
                f"tools of {self.main.name!r} ({', '.join(self.grantable) or 'none'})")
        number = self.records.reserve(infra.state)
        spec = AgentSpec(name=f"{self.main.name}.subtask-{number}",
                         system_prompt=SUBTASK_SYSTEM_PROMPT.format(parent=self.main.name),
                         tools=tuple(tools), max_turns=self.main.max_turns,
                         metadata=dict(self.main.metadata))

        def grant(runtime: Runtime, sub: AgentSpec) -> None:
            for name in sub.tools:
                if name in parent.tools:
                    tool = parent.tools[name]
                    runtime.register_tool(name, tool.fn, tool.schema, tool.description)

        try:
            output = run_sub_agent(self.runner, spec, task, infra, self.mailbox,
                                   prepare=grant).output
            if not output.succeeded():
                raise AgentFailed(spec.name, why_failed(output))
        except (BudgetError, AgentFailed) as failure:
            self.records.put(infra.state, number,
                             SubtaskRecord(spec.name, task, spec.tools, str(failure),
                                           False).to_dict())
            raise
        self.records.put(infra.state, number,
                         SubtaskRecord(spec.name, task, spec.tools, output.answer,
                                       True).to_dict())
        return output.answer
