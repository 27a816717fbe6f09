"""`carmp ps`, `log`, `state`, `budget` and `cleanup`: look at farms on this machine.

A run is named by its run id (or a unique prefix of it) and attached read-only through
its shared-memory segments; `log` and `state` also read journal files, so a run can be
inspected after it ended. Nothing here changes a journal or a run's data: only
`cleanup` removes anything, and only the segments of runs whose creator is dead. (A
follower that falls behind the ring records its loss as an events_lost event, as every
reader of the log does.)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any, TypeVar

import orjson

from carmp.cli.main import OK, FAILED, UsageError
from carmp.errors import CarmpError, JournalCorrupt, SegmentNotFound, StateJournalWarning
from carmp.pool.dispatch import Dispatch
from carmp.shared.budget import BudgetStatistics, CoordinationBudget, TokenAccounting
from carmp.shared.event import Event
from carmp.shared.eventlog import READ_BATCH, EventLog
from carmp.shared.journal import read_journal
from carmp.shared.proc import is_alive
from carmp.shared.segment import (
    NAME_PREFIX,
    SHM_DIR,
    SegmentHeader,
    list_segment_names,
    peek_header,
    segment_name,
    sweep,
)
from carmp.shared.state import StateStore, replay_journal

DEFAULT_TAIL = 10
FOLLOW_POLL = 0.5  # seconds a follower waits for events before it checks for Ctrl-C again

Attached = TypeVar("Attached", EventLog, StateStore, CoordinationBudget)


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ps = subcommands.add_parser("ps", help="list the farms on this machine")
    _json_option(ps)
    ps.set_defaults(run=run_ps)

    log = subcommands.add_parser("log", help="read a run's event log or an event journal")
    log_commands = log.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in (("tail", "the last N events"),
                              ("follow", "the last N events, then new ones until Ctrl-C"),
                              ("dump", "every event"),
                              ("stats", "event counts by kind and events/s")):
        parser = log_commands.add_parser(action, help=help_text)
        parser.add_argument("source", metavar="RUN_ID_OR_JOURNAL")
        parser.add_argument("--kind", action="append", metavar="K",
                            help="only events of this kind (repeat for several)")
        parser.add_argument("--agent", metavar="NAME",
                            help='only events whose data["agent"] is NAME')
        if action in ("tail", "follow"):
            parser.add_argument("-n", type=_count, default=DEFAULT_TAIL, metavar="N",
                                help=f"how many recent events (default {DEFAULT_TAIL})")
        _json_option(parser)
        parser.set_defaults(run=_into_a_pipe(run_log))

    state = subcommands.add_parser("state", help="read a run's state store or a state journal")
    state_commands = state.add_subparsers(dest="action", metavar="ACTION", required=True)
    dump = state_commands.add_parser("dump", help="every key and value")
    get = state_commands.add_parser("get", help="the value of one key")
    get.add_argument("key", metavar="KEY")
    for parser in (dump, get):
        parser.add_argument("source", metavar="RUN_ID_OR_JOURNAL")
        _json_option(parser)
        parser.set_defaults(run=_into_a_pipe(run_state))

    budget = subcommands.add_parser("budget", help="a run's budget: spend, limits, statistics")
    budget.add_argument("run_id", metavar="RUN_ID")
    _json_option(budget)
    budget.set_defaults(run=run_budget)

    cleanup = subcommands.add_parser("cleanup", help="remove the segments of dead runs")
    cleanup.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    cleanup.add_argument("--include-corrupt", action="store_true",
                         help="also remove old segments whose header cannot be read")
    _json_option(cleanup)
    cleanup.set_defaults(run=run_cleanup)


def _into_a_pipe(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A reader that closes the pipe early (`carmp log dump RUN | head`) ends the command
    quietly, as other Unix tools do."""

    @functools.wraps(run)
    def quiet_when_the_reader_leaves(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except BrokenPipeError:
            # the interpreter flushes stdout once more at exit: let that go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return OK

    return quiet_when_the_reader_leaves


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


# ---- finding runs ----------------------------------------------------------------------------


def _run_and_kind(name: str) -> tuple[str, str]:
    """The run id and kind in a segment name /carmp-<run id>-<kind>."""
    run_id, _, kind = name[1 + len(NAME_PREFIX):].partition("-")
    return run_id, kind


def resolve_run(prefix: str) -> str:
    """The one run on this machine whose id is `prefix` or starts with it."""
    runs = sorted({_run_and_kind(name)[0] for name in list_segment_names()})
    matches = [prefix] if prefix in runs else [
        run for run in runs if prefix and run.startswith(prefix)]
    if not matches:
        raise UsageError(
            f"no run {prefix!r} on this machine and no file of that name; `carmp ps` lists "
            "the runs, or give the path of a journal file"
        )
    if len(matches) > 1:
        raise UsageError(
            f"run id prefix {prefix!r} matches {len(matches)} runs ({', '.join(matches)}); "
            "give more of the id"
        )
    return matches[0]


@contextmanager
def attached(run_id: str, kind: str, attach: Callable[[str], Attached]) -> Iterator[Attached]:
    """A run's segment of `kind`, attached for the block and detached after it."""
    try:
        part = attach(segment_name(run_id, kind))
    except SegmentNotFound:
        raise UsageError(
            f"run {run_id} has no {kind} segment: its farm did not make one, or has just "
            "closed it"
        ) from None
    try:
        yield part
    finally:
        part.close()


def _is_journal(source: str) -> bool:
    return os.path.isfile(source)


# ---- carmp ps ----------------------------------------------------------------------------------


def run_ps(args: argparse.Namespace) -> int:
    runs = describe_runs()
    if args.json:
        _print_json(runs)
        return OK
    if not runs:
        print("no carmp runs on this machine")
        return OK
    rows = [[run["run_id"], ",".join(map(str, run["supervisor_pids"])) or "?",
             "alive" if run["alive"] else "dead", _workers_cell(run["workers"]),
             ", ".join(f"{s['kind']} {_size(s['size'])}" for s in run["segments"])]
            for run in runs]
    _print_table(["RUN ID", "PID", "STATUS", "WORKERS", "SEGMENTS"], rows)
    return OK


def describe_runs() -> list[dict[str, Any]]:
    """Every run with segments here: its creators, whether one lives, workers, segments."""
    segments: dict[str, list[tuple[str, SegmentHeader | None, int]]] = {}
    for name in list_segment_names():
        try:
            header = peek_header(name)
            size = os.path.getsize(f"{SHM_DIR}{name}")
        except OSError:
            continue  # removed as we looked
        segments.setdefault(_run_and_kind(name)[0], []).append((name, header, size))
    runs = []
    for run_id, parts in sorted(segments.items()):
        headers = [header for _, header, _ in parts if header is not None]
        creators = {(h.creator_pid, h.creator_start) for h in headers}
        runs.append({
            "run_id": run_id,
            "supervisor_pids": sorted({pid for pid, _ in creators}),
            "alive": any(is_alive(pid, start) for pid, start in creators),
            "workers": _workers(run_id) if any(h.kind == "dispatch" for h in headers) else None,
            "segments": [{"name": name,
                          "kind": header.kind if header else _run_and_kind(name)[1],
                          "size": size, "readable": header is not None}
                         for name, header, size in parts],
        })
    return runs


def _workers(run_id: str) -> list[dict[str, Any]] | None:
    """The worker slots of a run's dispatch segment; None when it cannot be attached."""
    try:
        dispatch = Dispatch.attach(segment_name(run_id, "dispatch"))
    except CarmpError:
        return None
    try:
        return [{"slot": slot.index, "pid": slot.pid, "alive": is_alive(slot.pid, 0),
                 "running_task": slot.running()[0] or None, "tasks_finished": slot.finished}
                for slot in dispatch]
    finally:
        dispatch.close()


def _workers_cell(workers: list[dict[str, Any]] | None) -> str:
    if workers is None:
        return "?"
    alive = sum(w["alive"] for w in workers)
    busy = sum(w["alive"] and w["running_task"] is not None for w in workers)
    return f"{alive}/{len(workers)} alive, {busy} busy"


def _size(size: int) -> str:
    scaled = float(size)
    for unit in ("B", "KiB", "MiB"):
        if scaled < 1024:
            return f"{scaled:.4g} {unit}"
        scaled /= 1024
    return f"{scaled:.4g} GiB"


# ---- carmp log ---------------------------------------------------------------------------------


def run_log(args: argparse.Namespace) -> int:
    keep = _event_filter(args.kind, args.agent)
    if args.action == "follow":
        if _is_journal(args.source):
            raise UsageError("follow reads a live run; read a journal with `carmp log dump`")
        with attached(resolve_run(args.source), "events", EventLog.attach) as log:
            _follow(log, keep, args.n, args.json)
        return OK
    events = [event for event in load_events(args.source) if keep(event)]
    if args.action == "stats":
        _print_stats(events, args.json)
        return OK
    if args.action == "tail":
        events = events[len(events) - args.n:] if args.n else []
    _print_events(events, args.json)
    return OK


def _event_filter(kinds: list[str] | None, agent: str | None) -> Callable[[Event], bool]:
    wanted = None if kinds is None else set(kinds)
    return lambda event: (wanted is None or event.kind in wanted) and (
        agent is None or event.data.get("agent") == agent)


def load_events(source: str) -> list[Event]:
    """Every event of a journal file, or every event a live run's ring still holds."""
    if not _is_journal(source):
        with attached(resolve_run(source), "events", EventLog.attach) as log:
            return log.events()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report below says it once, in our words
        events, report = read_journal(source)
    if report.skipped and not events:
        first = report.skipped[0]
        raise JournalCorrupt(
            f"{source} holds no readable event ({len(report.skipped)} bad lines; line "
            f"{first.line}: {first.reason}); is it an event journal?"
        )
    if not report.ok:
        where = (f"line {report.skipped[0].line}: {report.skipped[0].reason}"
                 if report.skipped else f"seq {report.chain_breaks[0]}")
        _warn(f"{source}: skipped {len(report.skipped)} bad line(s), "
              f"{len(report.chain_breaks)} hash chain break(s); first at {where}")
    return events


def _follow(log: EventLog, keep: Callable[[Event], bool], recent: int, as_json: bool) -> None:
    """The last `recent` matching events, then each new one as it commits, until Ctrl-C."""
    history = [event for event in log.events() if keep(event)]
    shown = history[len(history) - recent:] if recent else []
    _print_events(shown, as_json)
    with log.reader(history[-1].seq + 1 if history else log.oldest_seq) as reader:
        while True:
            _print_events([e for e in reader.read(READ_BATCH, FOLLOW_POLL) if keep(e)], as_json)


def _print_events(events: Iterable[Event], as_json: bool) -> None:
    lines = [orjson.dumps(e.to_dict()).decode() if as_json else _event_line(e) for e in events]
    if lines:
        print("\n".join(lines), flush=True)


def _event_line(event: Event) -> str:
    when = datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S.%f")[:-3]
    who = event.writer or f"pid {event.pid}"
    action = f" action={event.action_id}" if event.action_id else ""
    data = f" {orjson.dumps(event.data).decode()}" if event.data else ""
    return f"{event.seq:>8} {when} {event.kind:<20} {who}{action}{data}"


def _print_stats(events: list[Event], as_json: bool) -> None:
    counts = Counter(event.kind for event in events)
    span = (events[-1].timestamp_ns - events[0].timestamp_ns) / 1e9 if events else 0.0
    rate = len(events) / span if span > 0 else None
    if as_json:
        _print_json({"events": len(events), "span_s": span, "events_per_s": rate,
                     "by_kind": dict(counts.most_common())})
        return
    _print_table(["KIND", "EVENTS"], [[kind, str(n)] for kind, n in counts.most_common()])
    rate_text = f"{rate:,.0f} events/s" if rate is not None else "no rate (under two timestamps)"
    print(f"{len(events)} events over {span:.3f} s: {rate_text}")


# ---- carmp state -------------------------------------------------------------------------------


def run_state(args: argparse.Namespace) -> int:
    values = _load_state(args.source)
    if args.action == "get":
        if args.key not in values:
            print(f"carmp state: no key {args.key!r} in {args.source}; "
                  "`carmp state dump` lists the keys", file=sys.stderr)
            return FAILED
        print(orjson.dumps(values[args.key]).decode())
        return OK
    if args.json:
        _print_json(values)
    else:
        for key, value in sorted(values.items()):
            print(f"{key} = {orjson.dumps(value).decode()}")
    return OK


def _load_state(source: str) -> dict[str, Any]:
    """Every key and value of a live run's store, or as a state journal leaves them."""
    if not _is_journal(source):
        with attached(resolve_run(source), "state", StateStore.attach) as store:
            return store.snapshot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StateJournalWarning)
        replayed = replay_journal(source)
    bad = [str(w.message) for w in caught if issubclass(w.category, StateJournalWarning)]
    if bad and not replayed and len(bad) == _record_lines(source):
        raise JournalCorrupt(f"{source} holds no readable state record; first: {bad[0]}; "
                             "is it a state journal?")
    if bad:
        _warn(f"{len(bad)} bad line(s) skipped; first: {bad[0]}")
    return {key: orjson.loads(value) for key, (value, _expires) in replayed.items()}


def _record_lines(path: str) -> int:
    with open(path, "rb") as journal:
        return sum(1 for line in journal if line.strip())


# ---- carmp budget ------------------------------------------------------------------------------


def run_budget(args: argparse.Namespace) -> int:
    with attached(resolve_run(args.run_id), "budget", CoordinationBudget.attach) as budget:
        snapshot = budget.snapshot().to_dict()
        counters = budget.statistics()
    statistics = {field.name: _jsonable(getattr(counters, field.name))
                  for field in fields(BudgetStatistics)}
    if args.json:
        _print_json({"snapshot": snapshot, "statistics": statistics})
        return OK
    limits = snapshot.pop("limits")
    rows = [[name, _plain(value), _plain(limits.get(_LIMIT_OF.get(name, name)))]
            for name, value in snapshot.items()]
    _print_table(["SPENT", "VALUE", "LIMIT"], rows)
    print()
    _print_table(["STATISTIC", "VALUE"],
                 [[name, _plain(value)] for name, value in statistics.items()])
    return OK


_LIMIT_OF = {"input_tokens": "max_input_tokens", "output_tokens": "max_output_tokens",
             "total_tokens": "max_total_tokens", "cost_usd": "max_cost_usd",
             "agents_started": "max_agents"}


def _jsonable(value: Any) -> Any:
    return value.to_dict() if isinstance(value, TokenAccounting) else value


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (str, int, float)):
        return str(value)
    return orjson.dumps(value).decode()


# ---- carmp cleanup -----------------------------------------------------------------------------


def run_cleanup(args: argparse.Namespace) -> int:
    swept = sweep(dry_run=args.dry_run, include_corrupt=args.include_corrupt)
    if args.json:
        _print_json({"dry_run": args.dry_run, "segments": [asdict(s) for s in swept]})
        return OK
    verb = "would remove" if args.dry_run else "removed"
    for segment in swept:
        pid = f"pid {segment.creator_pid}" if segment.creator_pid else "no pid"
        print(f"{verb} {segment.name} ({segment.reason}, {pid})")
    print(f"{verb} {len(swept)} segment(s) of dead runs")
    return OK


# ---- output ------------------------------------------------------------------------------------


def _print_json(document: Any) -> None:
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns two spaces apart: readable on a terminal and through a pipe."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    for row in (headers, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _warn(message: str) -> None:
    print(f"carmp: warning: {message}", file=sys.stderr)

