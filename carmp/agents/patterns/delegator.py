"""Delegator: a main agent that hands subtasks to named specialists (CAR-SPEC 2.11), and
the machinery for sub-agents that a tool runs in its own worker (SpawnSubtask and the
Advisor use it).

The main agent runs in a farm worker with a `delegate` tool (parameters `specialist`
and `subtask`), registered on its runtime through the launcher's `prepare` hook; its
spec lists the tool and its task (MAIN_TASK_TEMPLATE) names every specialist. A
`delegate` call runs in that worker, in the thread of the main agent's proposal:

- an unknown name raises UnknownSpecialist, which the runtime reports to the main agent
  as the action's error;
- otherwise the budget gate (`begin_agent`) runs first, and a refusal is the tool's
  error (the specialist never starts);
- otherwise the specialist runs right there as a sub-agent (`run_agent`, with its own
  runtime over the same world, the run's mailbox and the same runner), and its answer is
  the tool's result; a specialist that fails raises AgentFailed, the tool's error.

Every call, failed or not, leaves a DelegationRecord. Records travel home through the
shared state: each is written under a key of this run (RunRecords: `delegator:<id>:<n>`,
numbered in the order the calls finished) and the pattern collects and deletes them once
the main agent is done. The result's `final_answer` is the main agent's answer. The main
agent is load-bearing: refused by the budget it is BudgetExhausted, failed it is
AgentFailed (the records of that run are dropped with it). The budget modes and
`timeout` (PatternOptions of swarm.py) apply to the main agent; a specialist passes
CAR's gate only, and the main agent's timeout covers its sub-agents too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.common import PatternOptions, checked_spec, run_required, why_failed
from carmp.agents.runner import AgentRun, Prepare, Runner, run_agent
from carmp.agents.types import AgentSpec, wire_fields
from carmp.errors import AgentFailed, BudgetError, CarmpError, UnknownSpecialist
from carmp.shared.mailbox import Mailbox
from carmp.shared.state import DELETE
from carmp.shared.wire import JsonOut, Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.runtime import Runtime
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.state import StateStore

DELEGATE_TOOL = "delegate"
DELEGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"specialist": {"type": "string", "minLength": 1},
                   "subtask": {"type": "string"}},
    "required": ["specialist", "subtask"],
    "additionalProperties": False,
}
# The main agent's task: the caller's task, then how to delegate and to whom.
MAIN_TASK_TEMPLATE = """{task}

You may hand a subtask to a specialist with the `delegate` tool, parameters \
{{"specialist": <name>, "subtask": <text>}}; its result is the specialist's answer. \
Specialists:
{roster}"""


# ---- sub-agents run by a tool, in the tool's own process ------------------------------------


def world(infra: SharedInfra | None) -> SharedInfra:
    """`infra`, or the farm's world as this worker attached it."""
    from carmp.pool.worker import current_infra

    found = infra if infra is not None else current_infra()
    if found is None:
        raise CarmpError("a sub-agent was started outside a farm worker with no world to run "
                         "in; pass infra= (a SharedInfra), or start it from an agent's tool")
    return found


def run_sub_agent(runner: Runner, spec: AgentSpec, task: str, infra: SharedInfra,
                  mailbox: Mailbox, *, isolated: bool = False,
                  prepare: Prepare | None = None) -> AgentRun:
    """CAR's budget gate, then the agent in this very process (BudgetError when the
    budget refuses it: it never starts)."""
    infra.begin_agent()
    return run_agent(runner, spec, task, infra, mailbox, isolated=isolated, prepare=prepare)


class RunRecords:
    """What a pattern's tools record in workers, kept in the shared state under one run's
    keys until the pattern collects them: `<kind>:<run id>:<n>`, plus a counter."""

    def __init__(self, kind: str) -> None:
        self.prefix = f"{kind}:{uuid.uuid4().hex}"

    def reserve(self, state: StateStore) -> int:
        """The next record number (1, 2, ...), atomically across processes."""
        counted = state.update(f"{self.prefix}:count", lambda n: (n or 0) + 1, self.prefix)
        number: int = counted.new_value
        return number

    def put(self, state: StateStore, number: int, record: dict[str, Any]) -> None:
        state.set(f"{self.prefix}:{number}", record, self.prefix)

    def add(self, state: StateStore, record: dict[str, Any]) -> None:
        self.put(state, self.reserve(state), record)

    def collect(self, state: StateStore) -> list[dict[str, Any]]:
        """Every record in number order, removed from the state (a number reserved but
        never written, its tool cut short, is left out)."""
        count = state.get(f"{self.prefix}:count") or 0
        keys = [f"{self.prefix}:{n}" for n in range(1, count + 1)]
        records = [record for record in map(state.get, keys) if record is not None]
        state.apply(dict.fromkeys([f"{self.prefix}:count", *keys], DELETE), self.prefix)
        return records


def run_main_agent(options: PatternOptions, main: AgentSpec, task: str, runner: Runner,
                   farm: Farm, infra: SharedInfra | None, mailbox: Mailbox | None,
                   records: RunRecords, tool: Callable[[Mailbox, SharedInfra | None], Prepare]
                   ) -> tuple[str, list[dict[str, Any]]]:
    """Run a pattern's main agent in a farm worker with the tool `tool(mailbox, infra)`
    registers (the infra None: the worker's own world), then collect what the tool
    recorded: (the main agent's answer, the records). The main agent is load-bearing:
    BudgetExhausted when refused, AgentFailed when it fails. The run's mailbox is the
    caller's, or one made (and closed) here, since the tool needs it before the launcher
    exists."""
    with contextlib.ExitStack() as stack:
        box = mailbox if mailbox is not None \
            else stack.enter_context(farm.new_mailbox())
        prepare = tool(box, None if infra is None or infra is farm.infra else infra)
        launcher = stack.enter_context(options.launcher(farm, runner, infra, box,
                                                        prepare=prepare))
        try:
            output = run_required(launcher, main, task).output
        finally:
            found = records.collect(launcher.infra.state)
    if not output.succeeded():
        raise AgentFailed(main.name, why_failed(output))
    return output.answer, found


# ---- the pattern ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DelegationRecord(Wire):
    """One `delegate` call: the specialist's answer as `result` when it succeeded, else
    why it failed (unknown specialist, budget refusal, the specialist's error)."""

    specialist: str
    subtask: str
    result: str
    success: bool

    def to_dict(self) -> dict[str, Any]:
        return {"specialist": self.specialist, "subtask": self.subtask, "result": self.result,
                "success": self.success}

    @classmethod
    def from_dict(cls, data: Any) -> DelegationRecord:
        return cls(**wire_fields("DelegationRecord", data, _RECORD_FIELDS, _RECORD_FIELDS))


_RECORD_FIELDS = ("specialist", "subtask", "result", "success")


@dataclass(frozen=True, slots=True)
class DelegatorResult(JsonOut):
    """CAR's DelegatorResult: the main agent's answer and every delegation it made."""

    task: str
    final_answer: str
    delegations: tuple[DelegationRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "final_answer": self.final_answer,
                "delegations": [record.to_dict() for record in self.delegations]}


@dataclass(frozen=True)
class Delegator(PatternOptions):
    """A main agent with a `delegate` tool over named specialists."""

    main: AgentSpec
    specialists: Mapping[str, AgentSpec]

    def __post_init__(self) -> None:
        super().__post_init__()
        checked_spec("Delegator's main agent", self.main)
        object.__setattr__(self, "specialists", {
            name: checked_spec(f"specialist {name!r}", spec)
            for name, spec in self.specialists.items()})

    def main_task(self, task: str) -> str:
        roster = "\n".join(f"- {name}: {spec.system_prompt.strip().splitlines()[0]}"
                           if spec.system_prompt.strip() else f"- {name}"
                           for name, spec in self.specialists.items())
        return MAIN_TASK_TEMPLATE.format(task=task, roster=roster or "(none)")

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> DelegatorResult:
        """Run the main agent (and, through its tool, the specialists) in the farm's
        workers; `infra` runs them against another world."""
        records = RunRecords("delegator")
        main = self.main if DELEGATE_TOOL in self.main.tools \
            else self.main.with_tools([*self.main.tools, DELEGATE_TOOL])
        answer, delegations = run_main_agent(
            self, main, self.main_task(task), runner, farm, infra, mailbox, records,
            lambda box, there: _DelegateTool(runner, dict(self.specialists), records, box, there))
        return DelegatorResult(task, answer, tuple(map(DelegationRecord.from_dict, delegations)))


class _DelegateTool:
    """The `prepare` hook that gives the main agent its `delegate` tool; pickled to the
    worker with the launcher's task."""

    def __init__(self, runner: Runner, specialists: dict[str, AgentSpec], records: RunRecords,
                 mailbox: Mailbox, infra: SharedInfra | None) -> None:
        self.runner, self.specialists, self.records = runner, specialists, records
        self.mailbox, self.infra = mailbox, infra

    def __call__(self, runtime: Runtime, spec: AgentSpec) -> None:
        runtime.register_tool(DELEGATE_TOOL, self.delegate, DELEGATE_SCHEMA,
                              "run a specialist on a subtask; the result is its answer")

    def delegate(self, specialist: str, subtask: str) -> str:
        infra = world(self.infra)
        chosen = self.specialists.get(specialist)
        try:
            if chosen is None:
                raise UnknownSpecialist(specialist)
            output = run_sub_agent(self.runner, chosen, subtask, infra, self.mailbox).output
            if not output.succeeded():
                raise AgentFailed(specialist, why_failed(output))
        except (UnknownSpecialist, BudgetError, AgentFailed) as failure:
            self.records.add(infra.state, DelegationRecord(specialist, subtask, str(failure),
                                                           False).to_dict())
            raise
        self.records.add(infra.state, DelegationRecord(specialist, subtask, output.answer,
                                                       True).to_dict())
        return output.answer
