"""`carmp top RUN_ID`: a live view of a running farm, redrawn every --interval seconds.

It attaches the run's segments by name and only reads them: the dispatch segment for the
worker slots (pid, running task, tasks finished), the budget for the gauges, and the
event log for events/s, recent events and which agent each worker runs (agent_started /
agent_finished name the pid). The log is read with a plain cursor, not a reader, so a
viewer that falls behind the ring skips ahead silently instead of writing events_lost
into the run's log. Ctrl-C ends it (exit 0); so does the farm going away.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from carmp.cli.inspect import attached, resolve_run
from carmp.cli.main import OK
from carmp.pool.dispatch import Dispatch
from carmp.shared.budget import BudgetSnapshot, CoordinationBudget
from carmp.shared.event import Event, EventKind
from carmp.shared.eventlog import EventLog
from carmp.shared.proc import is_alive, rss_bytes
from carmp.shared.segment import SHM_DIR, peek_header, segment_name

DEFAULT_INTERVAL = 1.0
RECENT_EVENTS = 8
# A frame reads at most this many new events: a very busy log costs a viewer no more
# than this per frame (events/s still counts every event, from the log's next seq).
EVENTS_PER_FRAME = 4096


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = subcommands.add_parser("top", help="a live view of a running farm (Ctrl-C quits)")
    top.add_argument("run_id", metavar="RUN_ID", help="the run's id, or a unique prefix of it")
    top.add_argument("--interval", type=_seconds, default=DEFAULT_INTERVAL, metavar="S",
                     help=f"seconds between frames, and the window of the rates "
                          f"(default {DEFAULT_INTERVAL})")
    top.add_argument("--once", action="store_true",
                     help="print one frame (rates over one interval) and exit")
    top.set_defaults(run=run_top)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds > 0 and <= 3600, got {text!r}")
    return value


# ---- sampling ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerView:
    slot: int
    pid: int
    alive: bool
    task_id: int  # 0 when idle
    task_seconds: float  # how long the current task has run
    agent: str | None
    rss: int
    tasks_finished: int


@dataclass(frozen=True, slots=True)
class Frame:
    """What one redraw shows; rates are None on the first frame (nothing to compare)."""

    run_id: str
    supervisor_pid: int
    taken_at: float
    workers: list[WorkerView]
    budget: BudgetSnapshot
    events_total: int
    events_per_s: float | None
    tasks_per_s: float | None
    recent: list[Event]


class FarmWatch:
    """A run's dispatch, budget and event log, attached for reading; `sample()` makes frames."""

    def __init__(self, run_id: str, stack: ExitStack) -> None:
        self.run_id = run_id
        self.log = stack.enter_context(attached(run_id, "events", EventLog.attach))
        self.dispatch = Dispatch.attach(segment_name(run_id, "dispatch"))
        stack.callback(self.dispatch.close)
        self.budget = stack.enter_context(attached(run_id, "budget", CoordinationBudget.attach))
        header = peek_header(self.dispatch.segment.name)
        self.supervisor = (header.creator_pid, header.creator_start) if header else (0, 0)
        # worker pid -> the agents it runs now, outermost first (an agent may start
        # sub-agents in its own process)
        self.agents: dict[int, list[str]] = {}
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        # the recent past tells which agents run now and fills the recent events at once
        self.cursor = max(self.log.oldest_seq, self.log.next_seq - EVENTS_PER_FRAME)
        self.last: tuple[float, int, dict[int, tuple[int, int]]] | None = None

    def gone(self) -> str | None:
        """Why the farm is no longer there, or None while it runs."""
        for name in (self.log.name, self.dispatch.segment.name, self.budget.name):
            if not os.path.exists(f"{SHM_DIR}{name}"):
                return f"run {self.run_id} ended: its segments are gone"
        pid, start = self.supervisor
        if not is_alive(pid, start):
            return (f"run {self.run_id} ended: its supervisor (pid {pid}) died and left its "
                    "segments behind; `carmp cleanup` removes them")
        return None

    def sample(self) -> Frame:
        now = time.monotonic()
        next_seq = self.log.next_seq
        self._read_events(next_seq)
        finished = {slot.index: (slot.generation, slot.finished) for slot in self.dispatch}
        events_per_s = tasks_per_s = None
        if self.last is not None:
            then, then_seq, then_finished = self.last
            elapsed = max(now - then, 1e-9)
            events_per_s = (next_seq - then_seq) / elapsed
            tasks_per_s = sum(_finished_since(then_finished.get(index), now_count)
                              for index, now_count in finished.items()) / elapsed
        self.last = (now, next_seq, finished)
        return Frame(
            run_id=self.run_id, supervisor_pid=self.supervisor[0], taken_at=time.time(),
            workers=list(self._workers()), budget=self.budget.snapshot(),
            events_total=len(self.log), events_per_s=events_per_s, tasks_per_s=tasks_per_s,
            recent=list(self.recent))

    def _read_events(self, next_seq: int) -> None:
        self.cursor = max(self.cursor, next_seq - EVENTS_PER_FRAME)  # skip what we cannot keep up with
        for event in itertools.islice(self.log.iter_from(self.cursor), EVENTS_PER_FRAME):
            self.cursor = event.seq + 1
            self.recent.append(event)
            pid = event.data.get("pid")
            if not isinstance(pid, int):
                continue
            agent = str(event.data.get("agent"))
            running = self.agents.setdefault(pid, [])
            if event.kind == EventKind.AGENT_STARTED:
                running.append(agent)
            elif event.kind == EventKind.AGENT_FINISHED and agent in running:
                running.remove(agent)
            elif event.kind in (EventKind.WORKER_EXITED, EventKind.WORKER_CRASHED,
                                EventKind.WORKER_RECYCLED):
                del self.agents[pid]

    def _workers(self) -> Iterator[WorkerView]:
        now_ns = time.monotonic_ns()
        for slot in self.dispatch:
            pid = slot.pid
            task_id, started_ns = slot.running()
            yield WorkerView(
                slot=slot.index, pid=pid, alive=is_alive(pid, 0), task_id=task_id,
                task_seconds=max(0, now_ns - started_ns) / 1e9 if task_id else 0.0,
                agent=" > ".join(self.agents.get(pid, ())) or None, rss=rss_bytes(pid) if pid else 0,
                tasks_finished=slot.finished)


def _finished_since(before: tuple[int, int] | None, now: tuple[int, int]) -> int:
    """Tasks a slot finished between two samples; a respawned worker counts from zero."""
    generation, count = now
    if before is None or before[0] != generation:
        return count
    return count - before[1]


# ---- drawing ----------------------------------------------------------------------------------


def render(frame: Frame) -> RenderableType:
    """One frame: header line, rates, workers, budget gauges, recent events."""
    when = datetime.fromtimestamp(frame.taken_at).strftime("%H:%M:%S")
    title = Text.assemble(("carmp top", "bold"), f"  run {frame.run_id}  supervisor pid "
                          f"{frame.supervisor_pid}  {when}")
    rates = Text(f"tasks/s {_rate(frame.tasks_per_s)}   events/s {_rate(frame.events_per_s)}   "
                 f"events {frame.events_total}")
    return Group(title, rates, _workers_table(frame.workers), _budget_table(frame.budget),
                 _events_table(frame.recent))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _workers_table(workers: list[WorkerView]) -> Table:
    table = Table(title="workers", title_justify="left", box=None, pad_edge=False)
    for column in ("SLOT", "PID", "STATE", "TASK", "FOR", "AGENT", "RSS", "DONE"):
        table.add_column(column, justify="right" if column in ("RSS", "DONE", "FOR") else "left")
    for worker in workers:
        state = "busy" if worker.alive and worker.task_id else "idle" if worker.alive else "gone"
        table.add_row(
            str(worker.slot), str(worker.pid or "-"), state,
            str(worker.task_id) if worker.task_id else "-",
            f"{worker.task_seconds:.1f}s" if worker.task_id else "-",
            worker.agent or "-", _mebibytes(worker.rss), str(worker.tasks_finished))
    return table


def _mebibytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size else "-"


def _budget_table(budget: BudgetSnapshot) -> Table:
    limits = budget.limits
    gauges = (("input tokens", budget.input_tokens, limits.max_input_tokens),
              ("output tokens", budget.output_tokens, limits.max_output_tokens),
              ("total tokens", budget.total_tokens, limits.max_total_tokens),
              ("cost usd", budget.cost_usd, limits.max_cost_usd),
              ("agents", budget.agents_started, limits.max_agents))
    title = "budget (exhausted)" if budget.exhausted else "budget"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("", "USED", "%", "SPENT", "LIMIT"):
        table.add_column(column, justify="right" if column in ("SPENT", "LIMIT") else "left")
    for name, spent, limit in gauges:
        if limit is None:
            table.add_row(name, "", "", f"{spent:g}", "none")
            continue
        share = spent / limit if limit else 1.0
        table.add_row(name, ProgressBar(total=max(limit, 1e-9), completed=min(spent, limit),
                                        width=24),
                      f"{share:.0%}", f"{spent:g}", f"{limit:g}")
    return table


def _events_table(events: list[Event]) -> Table:
    table = Table(title="recent events", title_justify="left", box=None, pad_edge=False,
                  expand=True)
    for column in ("SEQ", "TIME", "KIND", "WHO"):
        table.add_column(column, no_wrap=True)
    table.add_column("DATA", no_wrap=True, overflow="ellipsis", ratio=1)  # gets what is left
    for event in events:
        when = datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S.%f")[:-3]
        table.add_row(str(event.seq), when, event.kind, event.writer or f"pid {event.pid}",
                      orjson.dumps(event.data).decode() if event.data else "")
    return table


# ---- the command ------------------------------------------------------------------------------


def run_top(args: argparse.Namespace) -> int:
    console = Console()
    try:
        with ExitStack() as stack:
            watch = FarmWatch(resolve_run(args.run_id), stack)
            ended = _show(watch, console, args.interval, args.once)
    except KeyboardInterrupt:
        return OK
    if ended:
        console.print(ended, highlight=False)
    return OK


def _show(watch: FarmWatch, console: Console, interval: float, once: bool) -> str | None:
    """Draw frames until the farm goes (returns why) or, with `once`, draw one."""
    first = watch.sample()
    if once:
        time.sleep(interval)  # the rates need a window
        console.print(render(watch.sample()))
        return None
    with Live(render(first), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            ended = watch.gone()
            if ended:
                return ended
            live.update(render(watch.sample()), refresh=True)
