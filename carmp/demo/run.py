"""The demo run: a farm of solver agents ranks its strategies, then solves a puzzle set
under one budget counted in node expansions.

1. qualify (Tournament): every strategy solves the first puzzles; a judge compares
   their results pairwise (most solved, fewest moves, fewest expansions) and ranks them.
   The `brute` strategy proposes the `brute_force` tool, which the run's policy denies,
   so it forfeits.
2. solve (Fleet): each puzzle goes to one strategy that qualified, in ranking order
   round robin, publishing its solution to the shared state. Weak strategies run out
   of their allowance on hard puzzles.
3. mop up (MapReduce): the champion maps over every puzzle, skipping the ones it finds
   solved on the shared state, and a tally agent reduces the mappers' answers.

Everything but the wall clock is decided by the seed: the puzzles, who solves what,
the moves, the ranking (as long as the budget does not run out mid-way).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from carmp.agents.patterns.fleet import Fleet
from carmp.agents.patterns.map_reduce import MapReduce
from carmp.agents.patterns.tournament import Tournament
from carmp.agents.types import AgentOutput
from carmp.demo import agents
from carmp.demo.puzzle import Instance, instances, solves
from carmp.errors import BudgetExhausted, CarmpError
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits

DEFAULT_PUZZLES = 60
DEFAULT_QUALIFIERS = 12
DEFAULT_BUDGET = 3_000_000  # node expansions
DEFAULT_SEED = 7
DEFAULT_WORKERS = 2
DENY_RULE = "no-brute-force"
REFUSED_BY_BUDGET = "not started: the coordination budget"  # budget_skipped_output's error


@dataclass(frozen=True, slots=True)
class Solution:
    """A puzzle the run solved: who handed the moves in, and whether they check out."""

    puzzle: str
    board: tuple[int, ...]
    moves: str
    by: str
    verified: bool


@dataclass(slots=True)
class DemoReport:
    """What the run did, for the summary and --json."""

    seed: int
    puzzles: list[Instance]
    ranking: list[str] = field(default_factory=list)
    forfeited: dict[str, str] = field(default_factory=dict)  # strategy -> why
    solutions: list[Solution] = field(default_factory=list)
    skipped: int = 0  # puzzles the mop-up found solved by others
    rescued: int = 0  # puzzles the mop-up solved that the solve phase left
    budget_cap: int | None = None
    budget_spent: int = 0
    budget_exhausted: bool = False
    agents: int = 0
    agents_refused: int = 0
    events: int = 0
    workers: int = 0
    workers_used: int = 0
    denials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unsolved(self) -> list[str]:
        done = {s.puzzle for s in self.solutions}
        return [p.name for p in self.puzzles if p.name not in done]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "puzzles": len(self.puzzles), "ranking": self.ranking,
            "forfeited": self.forfeited,
            "solutions": [{"puzzle": s.puzzle, "board": list(s.board), "moves": s.moves,
                           "by": s.by, "verified": s.verified} for s in self.solutions],
            "unsolved": self.unsolved, "skipped_as_solved": self.skipped,
            "solved_by_mop_up": self.rescued,
            "budget": {"cap": self.budget_cap, "spent": self.budget_spent,
                       "exhausted": self.budget_exhausted},
            "agents": {"started": self.agents, "refused_by_budget": self.agents_refused},
            "events": self.events, "events_per_second": round(self.events / self.seconds, 1),
            "workers": self.workers, "workers_used": self.workers_used,
            "policy_denials": self.denials, "seconds": round(self.seconds, 3)}


def run_demo(*, workers: int = DEFAULT_WORKERS, budget: int | None = DEFAULT_BUDGET,
             seed: int = DEFAULT_SEED, puzzles: int = DEFAULT_PUZZLES,
             qualifiers: int = DEFAULT_QUALIFIERS, log_path: str | Path | None = None,
             progress: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo farm; `budget` caps node expansions (None: no cap), `log_path` keeps
    the event log in a journal file, `progress` hears each phase as it starts."""
    say = progress or (lambda _: None)
    bundle = instances(puzzles, seed)
    report = DemoReport(seed=seed, puzzles=bundle, workers=workers, budget_cap=budget)
    limits = BudgetLimits(max_total_tokens=budget)
    began = time.perf_counter()
    with Farm(workers=workers, budget=limits, log_path=log_path) as farm:
        assert farm.infra.policies.shared is not None  # a farm's world always has one
        farm.infra.policies.shared.add_deny_tool(
            DENY_RULE, "brute_force", "enumerating every board wastes the shared budget")
        first_event = farm.infra.log.next_seq
        say(f"qualify: {len(agents.STRATEGIES)} strategies on {min(qualifiers, puzzles)} puzzles")
        qualifier = agents.mission("qualify", _listed(bundle[:qualifiers]), publish=False)
        bracket = Tournament(agents.STRATEGIES, agents.JUDGE).run(qualifier, agents.run, farm)
        report.forfeited = {c.name: c.error or "no result" for c in bracket.candidates
                            if not c.succeeded()}
        report.ranking = [name for name in bracket.ranking if name not in report.forfeited]
        if not report.ranking:
            raise CarmpError("no strategy finished the qualifier, so no one can solve the "
                             f"set: {report.forfeited}; give the run a larger --budget")
        qualified = {s.name: s for s in agents.STRATEGIES if s.name in report.ranking}
        say(f"solve: {len(bundle)} puzzles across {', '.join(report.ranking)}")
        solve = Fleet([(qualified[report.ranking[i % len(report.ranking)]],
                        agents.mission("solve", _listed([p]), publish=True))
                       for i, p in enumerate(bundle)]).run(agents.run, farm)
        champion = qualified[report.ranking[0]]
        say(f"mop up: {champion.name} takes what is left")
        mapped: tuple[AgentOutput, ...] = ()
        total: dict[str, Any] = {}
        try:
            mop_up = MapReduce(champion, agents.TALLY, max_concurrent=2 * workers).run(
                "mop up", [agents.mission("mop-up", _listed([p]), publish=True)
                           for p in bundle], agents.run, farm)
            mapped = mop_up.map_outputs
            total = orjson.loads(mop_up.reduced_answer) if mop_up.reduced_answer else {}
        except BudgetExhausted:
            pass  # no budget left for the tally: what the mappers solved is on the state
        report.seconds = time.perf_counter() - began
        report.skipped = len(total.get("skipped", []))
        report.rescued = len(total.get("solved", {}))
        _tally(report, farm, first_event, [*solve.outputs, *mapped], bracket.candidates)
    return report


def _listed(puzzles: list[Instance]) -> list[tuple[str, tuple[int, ...]]]:
    return [(p.name, p.board) for p in puzzles]


def _answer(output: AgentOutput) -> dict[str, Any]:
    if not output.succeeded() or not output.answer:
        return {}
    answer: dict[str, Any] = orjson.loads(output.answer)
    return answer


def _tally(report: DemoReport, farm: Farm, first_event: int, solvers: list[AgentOutput],
           candidates: tuple[AgentOutput, ...]) -> None:
    """Fill the report from the shared world: solutions from the state, spend from the
    budget, workers and denials from the event log."""
    state, log = farm.infra.state, farm.infra.log
    for puzzle in report.puzzles:
        handed_in = state.get_or(agents.SOLVED_PREFIX + puzzle.name, None)
        if handed_in is not None:
            report.solutions.append(Solution(puzzle.name, puzzle.board, handed_in["moves"],
                                              handed_in["by"],
                                              solves(puzzle.board, handed_in["moves"])))
    snapshot = farm.infra.budget.snapshot()
    report.budget_spent = snapshot.total_tokens
    report.budget_exhausted = snapshot.exhausted
    report.agents = snapshot.agents_started
    outputs = [*candidates, *solvers]
    report.agents_refused = sum(1 for o in outputs
                                if (o.error or "").startswith(REFUSED_BY_BUDGET))
    events = log.events()
    report.events = log.next_seq - first_event
    report.workers_used = len({e.pid for e in events if e.kind == "agent_started"})
    report.denials = [{"policy": e.data.get("policy"), "reason": e.data.get("reason")}
                      for e in events if e.kind == "policy_violation"]
