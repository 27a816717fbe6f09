"""`carmp demo`: run the demo farm (carmp/demo) and print what it did.

The summary is plain text; `--json` prints one JSON document instead. The phases are
announced on stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

import orjson

from carmp.cli.main import OK
from carmp.demo.run import (
    DEFAULT_BUDGET,
    DEFAULT_PUZZLES,
    DEFAULT_QUALIFIERS,
    DEFAULT_SEED,
    DEFAULT_WORKERS,
    DemoReport,
    run_demo,
)


def _positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give 1 or more")
    return value


def register(subcommands: Any) -> None:
    demo = subcommands.add_parser(
        "demo", help="run a CPU-bound demo farm of puzzle-solving agents",
        description="Puzzle-solving strategies rank themselves in a Tournament, solve a "
                    "seeded 8-puzzle set in a Fleet under one budget of node expansions, "
                    "and share their solutions on the state store; a policy denies the "
                    "brute_force tool.")
    demo.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS,
                      help=f"worker processes (default {DEFAULT_WORKERS})")
    demo.add_argument("--budget", type=_positive, default=DEFAULT_BUDGET,
                      help=f"node expansions the whole run may spend (default {DEFAULT_BUDGET})")
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED,
                      help=f"makes the puzzles, and so the whole run (default {DEFAULT_SEED})")
    demo.add_argument("--puzzles", type=_positive, default=DEFAULT_PUZZLES,
                      help=f"puzzles in the set (default {DEFAULT_PUZZLES})")
    demo.add_argument("--qualifiers", type=_positive, default=DEFAULT_QUALIFIERS,
                      help=f"puzzles the tournament ranks on (default {DEFAULT_QUALIFIERS})")
    demo.add_argument("--log", metavar="PATH",
                      help="also keep the event log in this journal file")
    demo.add_argument("--json", action="store_true", help="print one JSON document")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    def announce(phase: str) -> None:
        print(f"carmp demo: {phase} ...", file=sys.stderr, flush=True)

    report = run_demo(workers=args.workers, budget=args.budget, seed=args.seed,
                      puzzles=args.puzzles, qualifiers=args.qualifiers, log_path=args.log,
                      progress=announce if sys.stderr.isatty() else None)
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(summary(report))
    return OK


def summary(report: DemoReport) -> str:
    """The report as a few readable lines."""
    lines = [f"carmp demo: {len(report.puzzles)} puzzles (seed {report.seed}) on "
             f"{report.workers} workers in {report.seconds:.1f} s", ""]
    lines.append("ranking (Tournament): " + "  ".join(
        f"{place}. {name}" for place, name in enumerate(report.ranking, 1)))
    for name, why in report.forfeited.items():
        lines.append(f"forfeited: {name} ({why})")
    verified = sum(s.verified for s in report.solutions)
    lines.append(f"solved (Fleet): {len(report.solutions)}/{len(report.puzzles)}, "
                 f"{verified} verified")
    by: dict[str, list[str]] = {}
    for solution in report.solutions:
        by.setdefault(solution.by, []).append(f"{solution.puzzle}:{len(solution.moves)}")
    width = max((len(name) for name in by), default=0)
    for name, solved in by.items():
        lines.append(f"  {name:<{width}}  {len(solved):>3} puzzles  (puzzle:moves) "
                     + " ".join(solved))
    if report.unsolved:
        lines.append("  unsolved: " + " ".join(report.unsolved))
    lines.append(f"shared state: the mop-up (MapReduce) skipped {report.skipped} puzzles "
                 f"already solved and solved {report.rescued} left unsolved")
    cap = "no cap" if report.budget_cap is None else f"{report.budget_cap:,}"
    stopped = ", exhausted: the cap stopped work" if report.budget_exhausted else ""
    lines.append(f"budget: {report.budget_spent:,} of {cap} node expansions{stopped}")
    lines.append(f"agents: {report.agents} started, {report.agents_refused} refused by the "
                 f"budget; workers used: {report.workers_used} of {report.workers}")
    rate = report.events / report.seconds if report.seconds else 0.0
    lines.append(f"events: {report.events:,} ({rate:,.0f}/s)")
    denials = Counter(f"{d['policy']}: {d['reason']}" for d in report.denials)
    lines.append(f"policy denials: {len(report.denials)}")
    lines.extend(f"  {count} x {what}" for what, count in denials.items())
    return "\n".join(lines)
