"""One chaos round: a pattern runs on a farm while a killer SIGKILLs random workers at
exponentially distributed moments; then every promise of ROBUSTNESS.md is checked.

During the round a monitor reads the budget's ledger (under its lock, so each sample
is one instant) and checks `granted - refunded <= cap`. After it:
- every agent finished, or failed with a typed error (a carmp error class named in its
  output), and the pattern either returned or raised a CarmpError;
- no committed state write is lost (each chaos_write event names a write that had
  returned: its key holds that value), none is torn (every value's digest matches),
  each agent's writes are a gap-free prefix of its steps, and the shared counter lost
  no increment;
- the event log reads back whole from its first event: contiguous seqs, no corrupt
  record, no overwritten event, and each dead writer's record reported as a gap;
- every killed worker was reported dead (its detection latency is measured);
- once dead leases are refunded, no lease is held and the ledger balances:
  spent == granted - refunded;
- once the farm is closed, no /dev/shm name of the run is left and no worker process
  is alive or a zombie.
Violations are collected, not raised, so the soak can count them; tests assert none.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import psutil

import carmp.errors
from carmp import Farm
from carmp.agents.patterns.fleet import Fleet
from carmp.agents.patterns.map_reduce import MapReduce
from carmp.agents.patterns.swarm import Swarm
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import CarmpError
from carmp.shared.budget import BudgetLimits, CoordinationBudget, TokenAccounting
from carmp.shared.event import Event
from tests.chaos.agents import COUNT_KEY, PLAN_KEY, WRITE_PREFIX, chaos_agent, digest

PATTERNS = ("fleet", "swarm", "map_reduce")
# the refusal a budget-skipped output carries instead of an error class
BUDGET_SKIPPED = "not started: the coordination budget refused it"
MONITOR_INTERVAL = 0.001
# how long the checks wait for the last kills to show in the log (the promise is 1 s)
DETECTION_WAIT = 5.0
# a process created this long apart from a worker's start event is not that worker
PID_REUSE_SLACK = 1.0


@dataclass(frozen=True)
class ChaosConfig:
    pattern: str = "fleet"
    start_method: str = "forkserver"
    workers: int = 2
    agents: int = 8
    steps: int = 6
    pause: float = 0.04  # the longest sleep of a step, holding its lease
    estimate: int = 100  # tokens each step reserves
    budget_share: float = 0.25  # the cap, as a share of what every step could reserve
    burst: int = 20  # events each step appends back to back (kills land mid-append)
    mean_kill_interval: float = 0.15
    seed: int = 0

    @property
    def cap(self) -> int:
        return int(self.agents * self.steps * self.estimate * self.budget_share)


@dataclass
class RoundReport:
    config: ChaosConfig
    agents: int = 0  # started, as the log says
    succeeded: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    pattern_error: str | None = None
    kills: int = 0
    tasks: int = 0
    events: int = 0
    gaps: int = 0
    writes: int = 0
    budget_samples: int = 0
    lock_recoveries: int = 0
    dead_leases_refunded: int = 0
    spend_of_cut_commits: int = 0  # total tokens kept from commits a kill cut short
    detection_ms: list[float] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def max_detection_ms(self) -> float:
        return max(self.detection_ms, default=0.0)


class Background:
    """A daemon thread that runs _run() while a with-block runs; _stop says when to end."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class Killer(Background):
    """SIGKILLs a random ready worker of `farm` once a task runs, then after each
    exponentially distributed delay; remembers which pid died when (wall clock ns, the
    event log's clock)."""

    def __init__(self, farm: Farm, rng: random.Random, mean_interval: float) -> None:
        super().__init__("chaos-killer")
        self.farm, self.rng, self.mean_interval = farm, rng, mean_interval
        self.kills: dict[int, int] = {}

    def _run(self) -> None:
        # the first kill waits for a running task, so every round kills at least once
        while self.farm.statistics().running == 0:
            if self._stop.wait(0.001):
                return
        delay = 0.0
        while not self._stop.wait(delay):
            delay = self.rng.expovariate(1.0 / self.mean_interval)
            pids = self.farm.worker_pids()
            if not pids:
                continue
            pid = self.rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.setdefault(pid, time.time_ns())


class BudgetMonitor(Background):
    """Samples the ledger until stopped (and once more then); any sample where a limited
    dimension's granted - refunded exceeds its cap is a violation."""

    def __init__(self, budget: CoordinationBudget, report: RoundReport) -> None:
        super().__init__("chaos-budget")
        self.budget, self.report = budget, report

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(MONITOR_INTERVAL):
            self.sample()

    def sample(self) -> None:
        ledger = self.budget.ledger()
        self.report.budget_samples += 1
        for i, cap in enumerate(ledger["limits"]):
            outstanding = ledger["granted"][i] - ledger["refunded"][i]
            if cap != 2**64 - 1 and outstanding > cap:
                self.report.violations.append(
                    f"budget over-granted: dimension {i} has granted - refunded = "
                    f"{outstanding} > cap {cap}")


def _agent_specs(config: ChaosConfig) -> list[AgentSpec]:
    return [AgentSpec(name=f"agent-{i}", system_prompt="chaos") for i in range(config.agents)]


def _run_fleet(farm: Farm, config: ChaosConfig) -> list[AgentOutput]:
    missions = [(spec, "chaos") for spec in _agent_specs(config)]
    return list(Fleet(missions=missions).run(chaos_agent, farm).outputs)


def _run_swarm(farm: Farm, config: ChaosConfig) -> list[AgentOutput]:
    return list(Swarm(agents=_agent_specs(config)).run("chaos", chaos_agent, farm).outputs)


def _run_map_reduce(farm: Farm, config: ChaosConfig) -> list[AgentOutput]:
    mapper = AgentSpec(name="mapper", system_prompt="chaos")
    reducer = AgentSpec(name="reducer", system_prompt="chaos")
    items = [f"item {i}" for i in range(config.agents - 1)]
    result = MapReduce(mapper=mapper, reducer=reducer, max_concurrent=config.workers * 2) \
        .run("chaos", items, chaos_agent, farm)
    return list(result.map_outputs)


RUNS: dict[str, Callable[[Farm, ChaosConfig], list[AgentOutput]]] = {
    "fleet": _run_fleet, "swarm": _run_swarm, "map_reduce": _run_map_reduce}


def typed_failure(error: str) -> str | None:
    """The carmp error class an agent's error names, None when it names none."""
    if error.startswith(BUDGET_SKIPPED):
        return "BudgetSkipped"
    name = error.partition(":")[0]
    kind = getattr(carmp.errors, name, None)
    return name if isinstance(kind, type) and issubclass(kind, CarmpError) else None


def run_round(config: ChaosConfig) -> RoundReport:
    """Run one round and check it; the report lists what broke (nothing, we hope)."""
    if config.pattern not in RUNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {config.pattern!r}")
    report = RoundReport(config)
    rng = random.Random(config.seed)
    started: dict[int, int] = {}
    farm = Farm(workers=config.workers, start_method=config.start_method,
                budget=BudgetLimits(max_total_tokens=config.cap))
    run_id = farm.run_id
    try:
        infra = farm.infra
        infra.state.set(PLAN_KEY, {"steps": config.steps, "pause": config.pause,
                                   "estimate": config.estimate, "burst": config.burst,
                                   "seed": config.seed}, "chaos")
        infra.state.set(COUNT_KEY, 0, "chaos")
        outputs: list[AgentOutput] = []
        with BudgetMonitor(infra.budget, report), \
                Killer(farm, rng, config.mean_kill_interval) as killer:
            try:
                outputs = RUNS[config.pattern](farm, config)
            except CarmpError as exc:  # a typed failure of the whole pattern
                report.pattern_error = f"{type(exc).__name__}: {exc}"
        report.kills = len(killer.kills)
        _check_outputs(outputs, report)
        _check_budget(infra.budget, config.estimate, report)
        events = _read_log(farm, killer.kills, report)
        started = {e.data["pid"]: e.timestamp_ns for e in events if e.kind == "worker_started"}
        _check_state(infra.state.snapshot(), events, report)
        _check_detection(killer.kills, events, report)
        _check_agents_ended(killer.kills, events, report)
        stats = farm.statistics()
        report.tasks = stats.done + stats.failed
    finally:
        farm.shutdown()
    _check_leftovers(run_id, started, report)
    return report


def _check_outputs(outputs: list[AgentOutput], report: RoundReport) -> None:
    if not outputs and report.pattern_error is None:
        report.violations.append("the pattern returned no outputs and raised nothing")
    for output in outputs:
        if output.succeeded():
            continue
        kind = typed_failure(output.error or "")
        if kind is None:
            report.violations.append(f"agent {output.name} failed untyped: {output.error!r}")
        report.failures[kind or "untyped"] += 1


def _check_budget(budget: CoordinationBudget, estimate: int, report: RoundReport) -> None:
    """Once dead leases are refunded none is held, nothing is reserved, and the ledger
    balances: spent == granted - refunded, but for the spend of commits cut short. A
    worker killed inside commit() after its spend was added keeps that spend, and its
    lease is refunded whole as a dead owner's (so the cap is never granted twice): the
    excess is at most one estimate per dead lease (this agent never commits more)."""
    budget.reclaim_dead_leases()
    stats = budget.statistics()
    report.lock_recoveries = stats.lock_recoveries
    report.dead_leases_refunded = stats.dead_leases_refunded
    if stats.leases_held:
        report.violations.append(f"{stats.leases_held} leases still held after the round")
    ledger = budget.ledger()
    per_lease = TokenAccounting(output_tokens=estimate).as_words()
    for i in range(4):
        if ledger["reserved"][i] != 0:
            report.violations.append(f"dimension {i}: {ledger['reserved'][i]} still reserved")
        kept = ledger["spent"][i] - (ledger["granted"][i] - ledger["refunded"][i])
        if not 0 <= kept <= per_lease[i] * stats.dead_leases_refunded:
            report.violations.append(
                f"ledger does not balance in dimension {i}: spent {ledger['spent'][i]}, "
                f"granted {ledger['granted'][i]} - refunded {ledger['refunded'][i]}, "
                f"{stats.dead_leases_refunded} dead leases")
        if i == 2:
            report.spend_of_cut_commits = kept


def _read_log(farm: Farm, kills: dict[int, int], report: RoundReport) -> list[Event]:
    """Every event of the round, once each killed worker's death is in the log (or
    DETECTION_WAIT passed: a kill just before the pattern ended may still be in
    flight), checked for contiguity; gaps counted."""
    deadline = time.monotonic() + DETECTION_WAIT
    while True:
        events, lost, holes, corrupt = _all_events(farm)
        if set(kills) <= _ended(events).keys() or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if lost:
        report.violations.append(f"the ring overwrote {lost} events: enlarge it")
    if corrupt:
        report.violations.append(f"{corrupt} corrupt records in the event log")
    seqs = [event.seq for event in events]
    if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        report.violations.append("event seqs are not contiguous")
    reported = sum(1 for e in events
                   if e.kind == "events_lost" and e.data.get("cause") == "writer_gone")
    if reported != holes:
        report.violations.append(f"{holes} holes skipped but {reported} reported as events")
    report.events, report.gaps = len(events), holes
    return events


def _all_events(farm: Farm) -> tuple[list[Event], int, int, int]:
    """The log from its oldest event, with the reader's lost, hole and corrupt counts."""
    log = farm.infra.log
    with log.reader(log.oldest_seq, register=False) as reader:
        events: list[Event] = []
        while batch := reader.read():
            events.extend(batch)
        return events, reader.lost, reader.holes, reader.corrupt


def _ended(events: list[Event]) -> dict[int, int]:
    """Worker pid -> when the supervisor reported it gone."""
    return {e.data["pid"]: e.timestamp_ns for e in events
            if e.kind in ("worker_crashed", "worker_exited")}


def _check_state(snapshot: dict[str, Any], events: list[Event], report: RoundReport) -> None:
    steps: dict[str, set[int]] = collections.defaultdict(set)
    for key, value in snapshot.items():
        if not key.startswith(WRITE_PREFIX):
            continue
        agent, _, step = key[len(WRITE_PREFIX):].rpartition("/")
        whole = (isinstance(value, dict) and value.get("agent") == agent
                 and str(value.get("step")) == step and isinstance(value.get("blob"), str)
                 and value.get("digest") == digest(value["blob"]))
        if not whole:
            report.violations.append(f"torn or foreign value at {key}: {str(value)[:120]}")
        steps[agent].add(int(step))
    for agent, done in steps.items():
        if done != set(range(len(done))):
            report.violations.append(f"{agent}'s writes have a gap: steps {sorted(done)}")
    written = [e.data for e in events if e.kind == "chaos_write"]
    report.writes = len(written)
    for write in written:
        value = snapshot.get(write["key"])
        if not isinstance(value, dict) or value.get("digest") != write["digest"]:
            report.violations.append(f"committed write lost: {write['key']}")
    counted = [e.data["count"] for e in events if e.kind == "chaos_counted"]
    if len(set(counted)) != len(counted):
        report.violations.append("two increments of the counter saw the same value")
    if counted and snapshot.get(COUNT_KEY, 0) < max(counted):
        report.violations.append(f"counter lost increments: {snapshot.get(COUNT_KEY)} < "
                                 f"{max(counted)}")


def _check_detection(kills: dict[int, int], events: list[Event], report: RoundReport) -> None:
    ended = _ended(events)
    for pid, killed_at in kills.items():
        if pid not in ended:
            report.violations.append(f"worker {pid} was killed but never reported dead")
        else:
            report.detection_ms.append(max(0.0, (ended[pid] - killed_at) / 1e6))


def _still_there(pid: int, started_ns: int) -> bool:
    """Whether the worker that started as `pid` at `started_ns` still exists, a zombie
    included (nobody reaped it); a process that reuses its pid later is another one."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    return abs(created - started_ns / 1e9) < PID_REUSE_SLACK


def _check_agents_ended(kills: dict[int, int], events: list[Event],
                        report: RoundReport) -> None:
    """Seen from the log: every agent that started finished, or its worker was killed."""
    finished = {(e.data["agent"], e.pid) for e in events if e.kind == "agent_finished"}
    report.agents = sum(1 for e in events if e.kind == "agent_started")
    report.succeeded = sum(1 for e in events if e.kind == "agent_finished" and e.data["succeeded"])
    for event in events:
        if event.kind == "agent_started" and (event.data["agent"], event.pid) not in finished \
                and event.pid not in kills:
            report.violations.append(f"agent {event.data['agent']} started in {event.pid} and "
                                     "neither finished nor lost its worker")


def _check_leftovers(run_id: str, started: dict[int, int], report: RoundReport) -> None:
    """`started`: each worker's pid and when the farm said it started (wall clock ns)."""
    report.leaked = sorted(name for name in os.listdir("/dev/shm") if run_id in name)
    if report.leaked:
        report.violations.append(f"leaked shared-memory names: {report.leaked}")
    report.orphans = sorted(pid for pid, at in started.items() if _still_there(pid, at))
    if report.orphans:
        report.violations.append(f"worker processes outlived the farm: {report.orphans}")
