"""Tournament: competitors answer, a judge compares answers two at a time, single
elimination (CAR-SPEC 2.11).

Every competitor answers the task at once, each in a farm worker, each gated by the
budget. Then rounds: the competitors still in are paired in bracket order (first with
second, third with fourth, ...); an odd one out, the last, gets a bye; winners advance
in match order, the bye last. n competitors take ceil(log2 n) rounds and n - 1 matches.

A match between two candidates that both succeeded is judged by a fresh judge agent (the
judge's spec, run anew per match; the matches of a round are judged at once) on
JUDGE_TEMPLATE: the task and the two answers as A (left) and B (right). The judge's reply,
normalized as Vote normalizes answers, must be "a" or "b", or a candidate's name. Without
a usable verdict (the budget refused the judge, it failed, or its reply names neither)
the left candidate advances. A competitor that failed or was refused loses by forfeit
without a judge (two of them: the left advances). With every competitor successful the
judge is called exactly n - 1 times.

`ranking` runs best to worst: the winner, then the others by the round they were knocked
out in, later first (ties in seed order); competitors that failed or were refused come
last, whatever byes carried them. No successful competitor at all ends the run as a
Swarm's does: BudgetExhausted when the budget refused every competitor, else NoOutput.
The budget modes and `timeout` are the PatternOptions of swarm.py.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.common import (
    PatternOptions,
    Spawner,
    agent_specs,
    checked_spec,
    outputs_of,
)
from carmp.agents.patterns.vote import normalize
from carmp.agents.runner import AgentRun, Runner
from carmp.agents.types import AgentOutput, AgentSpec, wire_fields
from carmp.errors import InvalidAgentJson, InvalidPattern
from carmp.shared.wire import Wire

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

# The judge's task: the task, then the two answers of one match.
JUDGE_TEMPLATE = """{task}

Two candidates answered this task. Which answer is better?

Candidate A ({left}):
<<<A
{left_answer}
A>>>

Candidate B ({right}):
<<<B
{right_answer}
B>>>

Reply with A or B (or the better candidate's name) and nothing else."""


class MatchDecision(enum.StrEnum):
    """How a match was decided."""

    JUDGE = "judge"                # the judge picked the winner
    FORFEIT = "forfeit"            # a candidate had no answer (failed or refused)
    JUDGE_FAILED = "judge_failed"  # no usable verdict: the left candidate advanced


@dataclass(frozen=True, slots=True)
class MatchResult(Wire):
    """One pairwise judgment (CAR's MatchResult); `judge_reply` is empty when no judge
    answered."""

    round: int
    left: str
    right: str
    winner: str
    loser: str
    decided_by: MatchDecision
    judge_reply: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "left": self.left, "right": self.right,
                "winner": self.winner, "loser": self.loser,
                "decided_by": self.decided_by.value, "judge_reply": self.judge_reply}

    @classmethod
    def from_dict(cls, data: Any) -> MatchResult:
        fields = wire_fields("MatchResult", data, _MATCH_FIELDS[:-1], _MATCH_FIELDS)
        try:
            return cls(**{**fields, "decided_by": MatchDecision(fields["decided_by"])})
        except ValueError:
            raise InvalidAgentJson(f"MatchResult.decided_by must be one of "
                                   f"{[d.value for d in MatchDecision]}, got "
                                   f"{fields['decided_by']!r}") from None


_MATCH_FIELDS = ("round", "left", "right", "winner", "loser", "decided_by", "judge_reply")


@dataclass(frozen=True, slots=True)
class TournamentResult(Wire):
    """The bracket's outcome: every competitor's candidate (in seed order), every match,
    the winner and its answer, the ranking (best to worst) and the number of rounds."""

    task: str
    candidates: tuple[AgentOutput, ...]
    matches: tuple[MatchResult, ...]
    winner_name: str
    winner_answer: str
    ranking: tuple[str, ...]
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "candidates": [c.to_dict() for c in self.candidates],
                "matches": [m.to_dict() for m in self.matches],
                "winner_name": self.winner_name, "winner_answer": self.winner_answer,
                "ranking": list(self.ranking), "rounds": self.rounds}

    @classmethod
    def from_dict(cls, data: Any) -> TournamentResult:
        fields = wire_fields("TournamentResult", data, _RESULT_FIELDS, _RESULT_FIELDS)
        for name in ("matches", "ranking"):
            if not isinstance(fields[name], list):
                raise InvalidAgentJson(f"TournamentResult.{name} must be a list")
        return cls(**{**fields,
                      "candidates": outputs_of("TournamentResult.candidates", fields["candidates"]),
                      "matches": tuple(map(MatchResult.from_dict, fields["matches"])),
                      "ranking": tuple(fields["ranking"])})


_RESULT_FIELDS = ("task", "candidates", "matches", "winner_name", "winner_answer", "ranking",
                  "rounds")


def verdict(reply: str, left: str, right: str) -> bool | None:
    """True when the judge's reply picks the left candidate, False the right, None
    neither."""
    said = normalize(reply)
    if said in ("a", normalize(left)):
        return True
    if said in ("b", normalize(right)):
        return False
    return None


@dataclass(frozen=True)
class Tournament(PatternOptions):
    """Single elimination over competitors' answers, judged pairwise."""

    competitors: Sequence[AgentSpec]
    judge: AgentSpec

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "competitors", agent_specs("Tournament", self.competitors))
        names = [c.name for c in self.competitors]
        if len(set(names)) != len(names):
            raise InvalidPattern(f"competitor names must be unique (the ranking lists names), "
                                 f"got {names}")
        checked_spec("Tournament's judge", self.judge)

    def run(self, task: str, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> TournamentResult:
        """Run the competitors, then the bracket, in the farm's workers; `infra` runs them
        against another world."""
        with self.launcher(farm, runner, infra, mailbox) as launcher:
            spawner = Spawner(launcher)
            candidates = tuple(run.output for run in spawner.all(
                (competitor, task) for competitor in self.competitors))
            spawner.require_output(candidates, len(spawner.refusals))
            bracket = _Bracket(task, candidates, self.judge, spawner)
            while len(bracket.alive) > 1:
                bracket.play_round()
        winner = bracket.alive[0]
        return TournamentResult(task, candidates, tuple(bracket.matches),
                                candidates[winner].name, candidates[winner].answer,
                                bracket.ranking(), bracket.round)


class _Bracket:
    """The state of one tournament: who is still in (seed indices in bracket order), the
    matches so far, and the round each loser went out in."""

    def __init__(self, task: str, candidates: tuple[AgentOutput, ...], judge: AgentSpec,
                 spawner: Spawner) -> None:
        self.task, self.candidates, self.judge, self.spawner = task, candidates, judge, spawner
        self.alive = list(range(len(candidates)))
        self.matches: list[MatchResult] = []
        self.out_in: dict[int, int] = {}
        self.round = 0

    def play_round(self) -> None:
        self.round += 1
        pairs = list(zip(self.alive[0::2], self.alive[1::2]))
        bye = self.alive[-1:] if len(self.alive) % 2 else []
        judged = {pair: self.spawner.start(self.judge, self.judge_task(*pair))
                  for pair in pairs if all(self.candidates[i].succeeded() for i in pair)}
        self.alive = [self.decide(left, right, judged.get((left, right)))
                      for left, right in pairs] + bye

    def judge_task(self, left: int, right: int) -> str:
        a, b = self.candidates[left], self.candidates[right]
        return JUDGE_TEMPLATE.format(task=self.task, left=a.name, left_answer=a.answer,
                                     right=b.name, right_answer=b.answer)

    def decide(self, left: int, right: int, judging: Future[AgentRun] | None) -> int:
        """Play one match; the winner's seed index."""
        reply = ""
        if judging is None:  # a candidate without an answer forfeits (both: left advances)
            decided_by = MatchDecision.FORFEIT
            left_wins = self.candidates[left].succeeded() or not self.candidates[right].succeeded()
        else:
            judge = judging.result().output
            picked = verdict(judge.answer, self.candidates[left].name,
                             self.candidates[right].name) if judge.succeeded() else None
            reply = judge.answer
            decided_by = MatchDecision.JUDGE_FAILED if picked is None else MatchDecision.JUDGE
            left_wins = picked is not False
        winner, loser = (left, right) if left_wins else (right, left)
        self.out_in[loser] = self.round
        self.matches.append(MatchResult(self.round, self.candidates[left].name,
                                        self.candidates[right].name,
                                        self.candidates[winner].name,
                                        self.candidates[loser].name, decided_by, reply))
        return winner

    def ranking(self) -> tuple[str, ...]:
        def place(index: int) -> tuple[bool, int, int]:
            went_out = self.out_in.get(index, self.round + 1)  # the winner never went out
            return (not self.candidates[index].succeeded(), -went_out, index)

        return tuple(self.candidates[i].name for i in sorted(range(len(self.candidates)),
                                                             key=place))
