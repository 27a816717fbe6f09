"""Vote: agents answer one question in parallel and the most common answer wins
(CAR-SPEC 2.11).

Every voter gets the task as it is, each in a farm worker, each gated by the budget (a
refused voter is a budget-skipped output in `votes`): a parallel Swarm. Only successful
votes count.
Answers are compared after `normalize`: surrounding whitespace trimmed, lowercased,
inner runs of whitespace collapsed to one space, trailing punctuation (. , ; : ! ?)
stripped. The winner is the answer with the most matching votes, given in the form of
its first vote (trimmed); on a tie, the answer that reached the top count first, in
vote order. agreement_ratio = votes matching the winner / successful votes.

With a synthesizer (open-ended questions) the synthesizer always runs after the votes,
on SYNTHESIZER_TEMPLATE (the task and every successful vote, numbered), and its trimmed
answer is the winner; agreement_ratio is still the share of successful votes matching
it. The synthesizer is an optional finalizer: refused by the budget or failed, the
majority winner stands. No successful vote at all ends the run as a Swarm's does:
BudgetExhausted when the budget refused every voter, else NoOutput. The budget modes and
`timeout` are the PatternOptions of swarm.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.common import (
    PatternOptions,
    Spawner,
    agent_specs,
    checked_spec,
    outputs_of,
)
from carmp.agents.runner import Runner
from carmp.agents.types import AgentOutput, AgentSpec, wire_fields
from carmp.shared.wire import Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

# The synthesizer's task: the question, then each successful vote.
SYNTHESIZER_TEMPLATE = """{task}

{count} agents answered independently:
{votes}

Pick the best answer, or combine them into a better one, and reply with that answer only."""

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCTUATION = ".,;:!?"


def normalize(answer: str) -> str:
    """The form answers are compared in (see the module docstring)."""
    return _WHITESPACE.sub(" ", answer.strip().lower()).rstrip(_TRAILING_PUNCTUATION).rstrip()


def majority(answers: Iterable[str]) -> str:
    """The most common answer in the form of its first vote (trimmed); on a tie, the one
    that reached the top count first. "" without answers."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    winner, best = "", 0
    for answer in answers:
        key = normalize(answer)
        first.setdefault(key, answer.strip())
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > best:
            winner, best = first[key], counts[key]
    return winner


@dataclass(frozen=True, slots=True)
class VoteResult(Wire):
    """CAR's VoteResult: every vote in voter order, the winner and the agreement."""

    task: str
    votes: tuple[AgentOutput, ...]
    winner: str
    agreement_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "votes": [vote.to_dict() for vote in self.votes],
                "winner": self.winner, "agreement_ratio": self.agreement_ratio}

    @classmethod
    def from_dict(cls, data: Any) -> VoteResult:
        fields = wire_fields("VoteResult", data, _RESULT_FIELDS, _RESULT_FIELDS)
        return cls(**{**fields, "votes": outputs_of("VoteResult.votes", fields["votes"])})


_RESULT_FIELDS = ("task", "votes", "winner", "agreement_ratio")


@dataclass(frozen=True)
class Vote(PatternOptions):
    """Parallel voters, the most common answer wins; an optional synthesizer decides
    open-ended questions."""

    agents: Sequence[AgentSpec]
    synthesizer: AgentSpec | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "agents", agent_specs("Vote", self.agents))
        if self.synthesizer is not None:
            checked_spec("Vote's synthesizer", self.synthesizer)

    def with_synthesizer(self, synthesizer: AgentSpec) -> Vote:
        return replace(self, synthesizer=synthesizer)

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> VoteResult:
        """Run the voters (then the synthesizer) in the farm's workers; `infra` runs them
        against another world."""
        with self.launcher(farm, runner, infra, mailbox) as launcher:
            spawner = Spawner(launcher)
            votes = tuple(run.output for run in spawner.all((agent, task)
                                                            for agent in self.agents))
            spawner.require_output(votes, len(spawner.refusals))
            counted = [vote.answer for vote in votes if vote.succeeded()]
            winner = majority(counted)
            if self.synthesizer is not None:
                listed = "\n".join(f"{i}. {answer.strip()}" for i, answer in enumerate(counted, 1))
                synthesis = spawner.run(self.synthesizer, SYNTHESIZER_TEMPLATE.format(
                    task=task, count=len(counted), votes=listed)).output
                if synthesis.succeeded():
                    winner = synthesis.answer.strip()
        agreeing = sum(normalize(answer) == normalize(winner) for answer in counted)
        return VoteResult(task, votes, winner, agreeing / len(counted))
