"""Swarm and Pipeline (CAR-SPEC 2.11): several agents on one task, each in a farm worker.

Modes (`SwarmMode`, snake_case as in CAR's JSON):
- parallel: every agent starts at once on the task as it is, each gated by the budget
  right before its spawn; a refused agent is a budget-skipped output in its place
  (CAR's pre-flight gate and max_agents cap). Outputs keep the agents' order.
- sequential: one agent after another, each on SEQUENTIAL_TEMPLATE: the task and the
  answers of the agents before it that succeeded (the first gets the task as it is).
  The budget is checked before each agent, so a crossed cap stops the chain after at
  most one agent of overshoot; every agent not started is a budget-skipped output.
- debate: round 1, every agent answers the task in parallel; round 2, after round 1 has
  finished, every agent is gated again and gets DEBATE_TEMPLATE: the task and the
  other agents' successful round-1 answers, to critique before giving its revised
  answer. `outputs` holds round 1, then round 2: two per agent.

Finishing, in every mode:
- No agent succeeded: BudgetExhausted when the budget refused every agent, so none ran
  (CAR case 8, a cap crossed before the run: carmp raises rather than returning only
  placeholders), else NoOutput.
- The synthesizer is an optional finalizer: it gets SYNTHESIS_TEMPLATE (in debate,
  the judge's JUDGE_TEMPLATE over the round-2 answers) listing the successful answers,
  and its answer is `final_summary`. Without one, or when the budget refuses it or it
  fails, `final_summary` is `summarize()` of the successful answers (in debate those
  of round 2, or of round 1 when none of round 2 succeeded).

Isolation: with `isolated=True` each agent writes to an overlay of its own; once every
agent has finished, the overlays of those that succeeded merge at one barrier
(carmp/agents/merge.py) in the agents' order, through the concurrency gate when `gate`
is set (True, or a ConcurrencyControl that declares dependencies between agents). One
barrier per run, in every mode: a sequential or debating isolated agent sees the
answers of the agents before it, not their writes. The synthesizer runs after the
barrier; when isolated, its overlay merges at a barrier of its own.

Beyond CAR, `reserve` and `cancel_on_exhaustion` (carmp/agents/budgeting.py) apply to
every spawn of the run, and `timeout` bounds each agent.

A Pipeline is a sequential Swarm over its stages: `final_answer` is the last stage's
answer if that stage succeeded, else "". When no stage succeeded the swarm's NoOutput
(or BudgetExhausted) propagates.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carmp.agents.gate import ConcurrencyControl
from carmp.agents.merge import merge_overlays
from carmp.agents.patterns.common import (
    ENTRY_TEMPLATE,
    PatternOptions,
    Spawner,
    agent_specs,
    listing,
    outputs_of,
)
from carmp.agents.runner import AgentRun, Runner
from carmp.agents.types import AgentOutput, AgentSpec, wire_fields
from carmp.errors import InvalidPattern
from carmp.shared.wire import Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox


# Sequential mode: the task, then the successful answers of the agents before this one.
SEQUENTIAL_TEMPLATE = """{task}

Outputs of the agents before you, in order:
{outputs}"""

# Debate round 2: the task, the other agents' round-1 answers, the request to critique.
DEBATE_TEMPLATE = """{task}

The other agents answered:
{outputs}

Critique their answers, then give your own revised answer."""

# The synthesizer of the parallel and sequential modes.
SYNTHESIS_TEMPLATE = """{task}

The agents answered:
{outputs}

Combine their answers into one final answer."""

# The debate's judge (its synthesizer), over the round-2 answers.
JUDGE_TEMPLATE = """{task}

After debating, the agents' revised answers are:
{outputs}

Judge which answer is best and give it as the final answer."""


class SwarmMode(enum.StrEnum):
    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"
    DEBATE = "debate"

    @classmethod
    def parse(cls, mode: Any) -> SwarmMode:
        """The mode named `mode`; InvalidPattern for any other name."""
        try:
            return cls(mode)
        except ValueError:
            raise InvalidPattern(f"invalid mode {mode!r}: expected one of "
                                 f"{', '.join(m.value for m in cls)}") from None


def summarize(outputs: Iterable[AgentOutput]) -> str:
    """The runtime's summary when no synthesizer gives one: the only successful answer
    as it is, or each successful answer as an ENTRY_TEMPLATE, blank-line separated."""
    answers = [output for output in outputs if output.succeeded()]
    if len(answers) == 1:
        return answers[0].answer
    return "\n\n".join(ENTRY_TEMPLATE.format(name=output.name, answer=output.answer)
                       for output in answers)


@dataclass(frozen=True, slots=True)
class SwarmResult(Wire):
    """CAR's SwarmResult: the task, every agent's output (debate: round 1, then round 2)
    and the final summary."""

    task: str
    outputs: tuple[AgentOutput, ...]
    final_summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "outputs": [output.to_dict() for output in self.outputs],
                "final_summary": self.final_summary}

    @classmethod
    def from_dict(cls, data: Any) -> SwarmResult:
        fields = wire_fields("SwarmResult", data, _SWARM_FIELDS, _SWARM_FIELDS)
        return cls(fields["task"], outputs_of("SwarmResult.outputs", fields["outputs"]),
                   fields["final_summary"])


_SWARM_FIELDS = ("task", "outputs", "final_summary")


@dataclass(frozen=True)
class Swarm(PatternOptions):
    """Agents on one task: in parallel, in sequence, or in a two-round debate; an
    optional synthesizer (the debate's judge) writes the final summary."""

    agents: Sequence[AgentSpec]
    mode: SwarmMode | str = SwarmMode.PARALLEL
    synthesizer: AgentSpec | None = None
    isolated: bool = False
    gate: bool | ConcurrencyControl = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "agents", agent_specs("Swarm", self.agents))
        object.__setattr__(self, "mode", SwarmMode.parse(self.mode))
        if self.synthesizer is not None and not isinstance(self.synthesizer, AgentSpec):
            raise TypeError(f"synthesizer must be an AgentSpec, got "
                            f"{type(self.synthesizer).__name__}")
        if self.gate is not False and not self.isolated:
            raise InvalidPattern("the concurrency gate checks the merge of isolated agents; "
                                 "pass isolated=True with gate")
        if isinstance(self.gate, ConcurrencyControl):
            self.gate.check_agents(spec.name for spec in self.agents)
        elif not isinstance(self.gate, bool):
            raise TypeError(f"gate must be a bool or a ConcurrencyControl, got "
                            f"{type(self.gate).__name__}")

    def with_synthesizer(self, synthesizer: AgentSpec) -> Swarm:
        return replace(self, synthesizer=synthesizer)

    def control(self) -> ConcurrencyControl | None:
        """The gate of this swarm's merge barrier, if any."""
        if isinstance(self.gate, ConcurrencyControl):
            return self.gate
        return ConcurrencyControl() if self.gate else None

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> SwarmResult:
        """Run the agents (then the synthesizer) in the farm's workers; `infra` runs them
        against another world (one with a budget of its own, say)."""
        if not isinstance(task, str):
            raise TypeError(f"task must be a str, got {type(task).__name__}")
        with self.launcher(farm, runner, infra, mailbox, isolated=self.isolated) as launcher:
            spawner = Spawner(launcher)
            runs = self._agents(spawner, task)
            if self.isolated:
                runs = list(merge_overlays(launcher.infra, runs, self.control()).runs)
            outputs = tuple(run.output for run in runs)
            spawner.require_output(outputs, len(spawner.refusals))
            final = self._synthesize(spawner, task, outputs)
        return SwarmResult(task, outputs, final)

    def _agents(self, spawner: Spawner, task: str) -> list[AgentRun]:
        if self.mode is SwarmMode.PARALLEL:
            return spawner.all((spec, task) for spec in self.agents)
        if self.mode is SwarmMode.SEQUENTIAL:
            runs: list[AgentRun] = []
            for spec in self.agents:
                before = [run.output for run in runs]
                runs.append(spawner.run(spec, SEQUENTIAL_TEMPLATE.format(
                    task=task, outputs=listing(before)) if runs else task))
            return runs
        first = spawner.all((spec, task) for spec in self.agents)
        answers = [run.output for run in first]
        second = spawner.all((spec, DEBATE_TEMPLATE.format(task=task, outputs=listing(
            answers[:i] + answers[i + 1:]))) for i, spec in enumerate(self.agents))
        return first + second

    def _synthesize(self, spawner: Spawner, task: str, outputs: tuple[AgentOutput, ...]) -> str:
        if self.mode is SwarmMode.DEBATE:
            revised = outputs[len(self.agents):]
            outputs = revised if any(o.succeeded() for o in revised) else outputs[:len(revised)]
        if self.synthesizer is None:
            return summarize(outputs)
        template = JUDGE_TEMPLATE if self.mode is SwarmMode.DEBATE else SYNTHESIS_TEMPLATE
        run = spawner.run(self.synthesizer, template.format(task=task, outputs=listing(outputs)))
        if self.isolated:
            run = merge_overlays(spawner.launcher.infra, [run], self.control()).runs[0]
        return run.output.answer if run.output.succeeded() else summarize(outputs)


@dataclass(frozen=True, slots=True)
class PipelineResult(Wire):
    """CAR's PipelineResult: every stage's output in order, and the last stage's answer
    when it succeeded ("" otherwise)."""

    task: str
    stages: tuple[AgentOutput, ...]
    final_answer: str

    def all_succeeded(self) -> bool:
        return all(stage.succeeded() for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "stages": [stage.to_dict() for stage in self.stages],
                "final_answer": self.final_answer}

    @classmethod
    def from_dict(cls, data: Any) -> PipelineResult:
        fields = wire_fields("PipelineResult", data, _PIPELINE_FIELDS, _PIPELINE_FIELDS)
        return cls(fields["task"], outputs_of("PipelineResult.stages", fields["stages"]),
                   fields["final_answer"])


_PIPELINE_FIELDS = ("task", "stages", "final_answer")


@dataclass(frozen=True)
class Pipeline(PatternOptions):
    """Stages in order, each building on the answers before it: a sequential Swarm."""

    stages: Sequence[AgentSpec]
    isolated: bool = False
    gate: bool | ConcurrencyControl = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "stages", agent_specs("Pipeline", self.stages))
        self.swarm()  # checks the rest of the configuration now

    def swarm(self) -> Swarm:
        """The sequential Swarm this pipeline runs."""
        return Swarm(agents=self.stages, mode=SwarmMode.SEQUENTIAL, isolated=self.isolated,
                     gate=self.gate, reserve=self.reserve,
                     cancel_on_exhaustion=self.cancel_on_exhaustion, timeout=self.timeout)

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> PipelineResult:
        stages = self.swarm().run(task, runner, farm, infra=infra, mailbox=mailbox).outputs
        last = stages[-1]
        return PipelineResult(task, stages, last.answer if last.succeeded() else "")
