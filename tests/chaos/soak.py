"""The soak: many randomized chaos rounds in one supervisor process, then a summary.

    python -m tests.chaos.soak [--rounds N] [--seed S] [--out FILE]
    make soak SOAK_ROUNDS=N    (300 rounds by default, summary in bench/results/soak.md)

Each round draws a pattern, start method, worker and agent counts, steps, budget cap,
event burst and kill rate, and runs tests/chaos/chaos.py's round and its checks. The
supervisor's RSS is read after every round: once the run is warm (past the warm-up
rounds and half the run) it must stay flat (growth under RSS_GROWTH_LIMIT to the end),
or the soak fails as it does on any violation. The summary table goes to stdout and,
with --out, to a Markdown file.
"""

from __future__ import annotations

import argparse
import collections
import platform
import random
import sys
import time
from datetime import datetime, timezone

import psutil

from carmp.backends.local import START_METHODS
from tests.chaos.chaos import PATTERNS, ChaosConfig, RoundReport, run_round

WARM_UP_ROUNDS = 10
RSS_GROWTH_LIMIT = 4 * 1024 * 1024


def random_config(rng: random.Random, seed: int) -> ChaosConfig:
    workers = rng.randint(2, 4)
    return ChaosConfig(
        pattern=rng.choice(PATTERNS), start_method=rng.choice(START_METHODS),
        workers=workers, agents=rng.randint(workers + 2, 4 * workers), steps=rng.randint(2, 8),
        pause=rng.uniform(0.005, 0.05), budget_share=rng.uniform(0.15, 1.0), burst=rng.randint(0, 100),
        mean_kill_interval=rng.uniform(0.03, 0.3), seed=seed)


def settled_round(rounds: int) -> int:
    """The round after which the run is warm (imports done, allocator arenas grown): the
    later of the warm-up rounds and half the run."""
    return min(max(WARM_UP_ROUNDS, rounds // 2), rounds)


def summary(reports: list[RoundReport], rss_mib: list[float], seconds: float) -> list[str]:
    failures: collections.Counter[str] = collections.Counter()
    for report in reports:
        failures.update(report.failures)
    warm, settled = min(WARM_UP_ROUNDS, len(rss_mib)), settled_round(len(rss_mib))
    rows = [
        ("rounds", len(reports)),
        ("rounds with a violation", sum(1 for r in reports if r.violations)),
        ("workers killed", sum(r.kills for r in reports)),
        ("agents started", sum(r.agents for r in reports)),
        ("agents succeeded", sum(r.succeeded for r in reports)),
        ("agents failed, by error", ", ".join(f"{k} {v}" for k, v in failures.most_common())
         or "none"),
        ("patterns that raised a typed error", sum(1 for r in reports if r.pattern_error)),
        ("farm tasks", sum(r.tasks for r in reports)),
        ("committed state writes checked", sum(r.writes for r in reports)),
        ("events read back", sum(r.events for r in reports)),
        ("event gaps reported (dead writers)", sum(r.gaps for r in reports)),
        ("budget ledger samples", sum(r.budget_samples for r in reports)),
        ("budget lock recoveries", sum(r.lock_recoveries for r in reports)),
        ("dead leases refunded", sum(r.dead_leases_refunded for r in reports)),
        ("tokens kept from commits a kill cut short", sum(r.spend_of_cut_commits for r in reports)),
        ("leaked shared-memory names", sum(len(r.leaked) for r in reports)),
        ("orphan worker processes", sum(len(r.orphans) for r in reports)),
        ("max kill-to-detection latency",
         f"{max((r.max_detection_ms for r in reports), default=0.0):.1f} ms"),
        (f"supervisor RSS after rounds {warm}, {settled} and {len(rss_mib)}",
         f"{rss_mib[warm - 1]:.1f}, {rss_mib[settled - 1]:.1f}, {rss_mib[-1]:.1f} MiB"),
        ("wall time", f"{seconds:.0f} s"),
    ]
    return ["| measure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="randomized chaos rounds; fails on any "
                                                 "broken promise or a growing supervisor")
    parser.add_argument("--rounds", type=int, default=300, help="how many rounds (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the round plans")
    parser.add_argument("--out", help="also write the summary, as Markdown, to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    rng = random.Random(args.seed)
    me = psutil.Process()
    reports: list[RoundReport] = []
    rss_mib: list[float] = []
    began = time.perf_counter()
    for number in range(1, args.rounds + 1):
        config = random_config(rng, seed=rng.randrange(2**32))
        report = run_round(config)
        reports.append(report)
        rss_mib.append(me.memory_info().rss / 2**20)
        status = "ok" if not report.violations else "VIOLATED: " + "; ".join(report.violations)
        print(f"round {number}/{args.rounds}: {config.pattern} {config.start_method} "
              f"{config.workers}w {report.agents} agents, {report.kills} kills, "
              f"{report.succeeded} ok, detected in <= {report.max_detection_ms:.1f} ms, "
              f"rss {rss_mib[-1]:.1f} MiB: {status}", flush=True)
    table = summary(reports, rss_mib, time.perf_counter() - began)
    settled = settled_round(len(rss_mib))
    growth = (rss_mib[-1] - rss_mib[settled - 1]) * 2**20
    verdict = []
    if any(r.violations for r in reports):
        verdict.append("some rounds broke a promise (see above)")
    if growth > RSS_GROWTH_LIMIT:
        verdict.append(f"supervisor RSS grew {growth / 2**20:.1f} MiB after round {settled}")
    print("\n".join(table))
    print("soak FAILED: " + "; ".join(verdict) if verdict else "soak passed")
    if args.out:
        header = (f"# carmp soak\n\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
                  f"{platform.node() or 'this machine'} ({psutil.cpu_count()} CPUs), "
                  f"`python -m tests.chaos.soak --rounds {args.rounds} --seed {args.seed}`\n\n")
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(header + "\n".join(table) + "\n")
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
