"""MapReduce (CAR-SPEC 2.11): one mapper per item, at most max_concurrent at a time,
then one reducer over their answers.

The mapper's spec is cloned per item and named "<mapper name>-<item index>" (0-based:
map_outputs[i] is "mapper-i"); each clone gets MAP_TEMPLATE, the task and its item.
Mappers start in item order, each gated by the budget right before its spawn, and at
most `max_concurrent` of them are submitted and unfinished at any moment: the next one
starts when one finishes. A mapper the budget refuses is a budget-skipped output in
its place and takes no slot. `map_outputs` keep item order, whatever order the mappers
finished in.

The reducer is load-bearing. It runs once, on REDUCE_TEMPLATE: the task and the
successful mapper answers in item order (a failed mapper is left out). When the budget
refuses it the run ends with BudgetExhausted, and when it fails, with AgentFailed naming
it (there is no reduced answer to give). No mapper succeeded (no items, too): the
reducer does not run, and the run ends with BudgetExhausted when the budget refused
every mapper, else NoOutput.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.common import (
    PatternOptions,
    Spawner,
    agent_specs,
    listing,
    outputs_of,
    run_required,
)
from carmp.agents.runner import AgentRun, Runner
from carmp.agents.types import AgentOutput, AgentSpec, wire_fields
from carmp.errors import AgentFailed, InvalidPattern
from carmp.shared.wire import Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

DEFAULT_MAX_CONCURRENT = 5

# One mapper's task: the task, then its item.
MAP_TEMPLATE = """{task}

Item {number} of {count}:
{item}"""

# The reducer's task: the task, then the mappers' answers in item order.
REDUCE_TEMPLATE = """{task}

The mappers answered, in item order:
{outputs}

Combine their answers into one answer."""


@dataclass(frozen=True, slots=True)
class MapReduceResult(Wire):
    """CAR's MapReduceResult: every mapper's output in item order and the reducer's
    answer."""

    task: str
    map_outputs: tuple[AgentOutput, ...]
    reduced_answer: str

    def all_succeeded(self) -> bool:
        """Every mapper succeeded."""
        return all(output.succeeded() for output in self.map_outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task,
                "map_outputs": [output.to_dict() for output in self.map_outputs],
                "reduced_answer": self.reduced_answer}

    @classmethod
    def from_dict(cls, data: Any) -> MapReduceResult:
        fields = wire_fields("MapReduceResult", data, _FIELDS, _FIELDS)
        return cls(fields["task"], outputs_of("MapReduceResult.map_outputs",
                                            fields["map_outputs"]), fields["reduced_answer"])


_FIELDS = ("task", "map_outputs", "reduced_answer")


@dataclass(frozen=True)
class MapReduce(PatternOptions):
    """A mapper per item, bounded in flight, and one reducer."""

    mapper: AgentSpec
    reducer: AgentSpec
    max_concurrent: int = DEFAULT_MAX_CONCURRENT

    def __post_init__(self) -> None:
        super().__post_init__()
        agent_specs("MapReduce", (self.mapper, self.reducer))
        if isinstance(self.max_concurrent, bool) or not isinstance(self.max_concurrent, int) \
                or self.max_concurrent < 1:
            raise InvalidPattern(f"max_concurrent must be an int >= 1, got "
                                 f"{self.max_concurrent!r}")

    def with_max_concurrent(self, max_concurrent: int) -> MapReduce:
        return replace(self, max_concurrent=max_concurrent)

    def mapper_for(self, index: int) -> AgentSpec:
        """The mapper's clone for item `index`."""
        return replace(self.mapper, name=f"{self.mapper.name}-{index}")

    def run(self, task: str, items: Sequence[str], runner: Runner, farm: Farm, *,
            infra: SharedInfra | None = None, mailbox: Mailbox | None = None) -> MapReduceResult:
        """Map every item, then reduce, in the farm's workers; `infra` runs the agents
        against another world."""
        items = list(items)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"MapReduce items must be str, item {index} is "
                                f"{type(item).__name__}")
        with self.launcher(farm, runner, infra, mailbox) as launcher:
            spawner = Spawner(launcher)
            outputs = tuple(run.output for run in self._map(spawner, task, items))
            spawner.require_output(outputs, len(spawner.refusals))
            reduced = run_required(launcher, self.reducer, REDUCE_TEMPLATE.format(
                task=task, outputs=listing(outputs))).output
        if not reduced.succeeded():
            raise AgentFailed(reduced.name, reduced.error or "its outcome was not a success")
        return MapReduceResult(task, outputs, reduced.answer)

    def _map(self, spawner: Spawner, task: str, items: list[str]) -> list[AgentRun]:
        runs: dict[int, AgentRun] = {}
        running: dict[Future[AgentRun], int] = {}

        def settle(finished: set[Future[AgentRun]]) -> None:
            for future in finished:
                runs[running.pop(future)] = future.result()

        for index, item in enumerate(items):
            while len(running) >= self.max_concurrent:
                settle(wait(running, return_when=FIRST_COMPLETED).done)
            running[spawner.start(self.mapper_for(index), MAP_TEMPLATE.format(
                task=task, number=index + 1, count=len(items), item=item))] = index
        settle(wait(running).done)
        return [runs[index] for index in range(len(items))]
