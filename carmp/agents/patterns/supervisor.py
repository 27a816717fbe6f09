"""Supervisor (CAR-SPEC 2.11): workers answer in parallel, a supervisor reviews their
work, and they revise it with its feedback, until it approves or max_rounds is reached.

Each round the workers run at once, as a parallel Swarm does, each gated by the budget
(a refused worker is a budget-skipped output of its round): on the task in round 1, on
WORKER_TEMPLATE (the task and the supervisor's latest feedback) after. Workers are
load-bearing: a round in which none succeeded ends the run with BudgetExhausted when
the budget refused them all, else NoOutput.

The supervisor, gated too, reviews REVIEW_TEMPLATE: the task, the round number and the
workers' successful answers. Its answer approves the work when it holds the word
APPROVED, case-sensitive ("approved" or "UNAPPROVED" do not). Every review's answer,
the approving one too, is appended to `supervisor_feedback`: one entry per review, so
a run approved in its second round has two. Unapproved, the next round starts, up to
`max_rounds`; after the last one the result has approved=False (MaxRoundsExceeded is
not raised: the result says so and keeps every round). A review the budget refuses, or
one that fails, ends the run unapproved and adds no feedback.

`final_answer` is the last round's successful answers as swarm.summarize() puts them:
the only answer as it is, or "[name]: answer" entries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.swarm import summarize
from carmp.agents.patterns.common import PatternOptions, Spawner, agent_specs, listing, outputs_of
from carmp.agents.runner import Runner
from carmp.agents.types import AgentOutput, AgentSpec, wire_fields
from carmp.errors import InvalidAgentJson, InvalidPattern
from carmp.shared.wire import Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

DEFAULT_MAX_ROUNDS = 3
APPROVAL = re.compile(r"\bAPPROVED\b")

# The workers' task after round 1: the task and the supervisor's latest feedback.
WORKER_TEMPLATE = """{task}

The supervisor reviewed your team's previous answers and said:
{feedback}

Revise your answer accordingly."""

# The supervisor's review of one round.
REVIEW_TEMPLATE = """{task}

Round {round}: the workers answered:
{outputs}

If the work is complete and correct, reply APPROVED. Otherwise give feedback the
workers can act on in the next round."""


@dataclass(frozen=True, slots=True)
class SupervisorResult(Wire):
    """CAR's SupervisorResult: each round's worker outputs, each review's answer, the
    final answer and whether the supervisor approved it."""

    task: str
    rounds: tuple[tuple[AgentOutput, ...], ...]
    supervisor_feedback: tuple[str, ...]
    final_answer: str
    approved: bool

    def total_rounds(self) -> int:
        return len(self.rounds)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task,
                "rounds": [[output.to_dict() for output in outputs] for outputs in self.rounds],
                "supervisor_feedback": list(self.supervisor_feedback),
                "final_answer": self.final_answer, "approved": self.approved}

    @classmethod
    def from_dict(cls, data: Any) -> SupervisorResult:
        fields = wire_fields("SupervisorResult", data, _FIELDS, _FIELDS)
        rounds, feedback = fields["rounds"], fields["supervisor_feedback"]
        if not isinstance(rounds, list) or not isinstance(feedback, list) \
                or not all(isinstance(entry, str) for entry in feedback):
            raise InvalidAgentJson("SupervisorResult.rounds must be a list of lists of "
                                   "AgentOutput objects and supervisor_feedback a list of str")
        return cls(fields["task"], tuple(outputs_of(f"SupervisorResult.rounds[{i}]", outputs)
                                         for i, outputs in enumerate(rounds)),
                   tuple(feedback), fields["final_answer"], fields["approved"])


_FIELDS = ("task", "rounds", "supervisor_feedback", "final_answer", "approved")


@dataclass(frozen=True)
class Supervisor(PatternOptions):
    """Workers in parallel, reviewed by a supervisor, round after round."""

    workers: Sequence[AgentSpec]
    supervisor: AgentSpec
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "workers", agent_specs("Supervisor", self.workers))
        agent_specs("Supervisor", (self.supervisor,))
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) \
                or self.max_rounds < 1:
            raise InvalidPattern(f"max_rounds must be an int >= 1, got {self.max_rounds!r}")

    def with_max_rounds(self, max_rounds: int) -> Supervisor:
        return replace(self, max_rounds=max_rounds)

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> SupervisorResult:
        """Run rounds of workers and reviews in the farm's workers; `infra` runs them
        against another world."""
        rounds: list[tuple[AgentOutput, ...]] = []
        feedback: list[str] = []
        approved = False
        with self.launcher(farm, runner, infra, mailbox) as launcher:
            spawner = Spawner(launcher)
            while not approved and len(rounds) < self.max_rounds:
                brief = WORKER_TEMPLATE.format(task=task, feedback=feedback[-1]) \
                    if feedback else task
                refused = len(spawner.refusals)
                outputs = tuple(run.output for run in spawner.all(
                    (worker, brief) for worker in self.workers))
                spawner.require_output(outputs, len(spawner.refusals) - refused)
                rounds.append(outputs)
                review = spawner.run(self.supervisor, REVIEW_TEMPLATE.format(
                    task=task, round=len(rounds), outputs=listing(outputs))).output
                if not review.succeeded():
                    break
                feedback.append(review.answer)
                approved = APPROVAL.search(review.answer) is not None
        return SupervisorResult(task, tuple(rounds), tuple(feedback), summarize(rounds[-1]),
                                approved)
