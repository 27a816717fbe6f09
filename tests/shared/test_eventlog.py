"""EventLog: CAR's behaviours, the shared ring across processes, backpressure, the journal,
spans, and the crash and corruption guarantees (ROBUSTNESS R4, R13)."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carmp import (
    CarmpError,
    Event,
    EventJournalWarning,
    EventKind,
    EventLog,
    EventLogFull,
    EventsLost,
    EventTooLarge,
    InvalidEvent,
    InvalidEventLog,
    JournalCorrupt,
    JournalWriteFailed,
    SegmentClosed,
    SegmentCorrupt,
    SpanStatus,
)
from carmp.shared.event import chained
from carmp.shared.segment import HEADER_SIZE
from tests.conftest import kill

SMALL = 16384  # a ring of 16 KiB with 1 KiB events holds a few hundred small events
CHILD_WAIT = 60.0  # bounded waits on children: far above what any of them needs
DRAIN_WAIT = 30.0  # bounded waits for readers to get what they expect


@pytest.fixture
def make_log() -> Iterator[Callable[..., EventLog]]:
    made: list[EventLog] = []

    def make(capacity: int = 1 << 20, **options: Any) -> EventLog:
        log = EventLog(capacity, **options)
        made.append(log)
        return log

    yield make
    for log in made:
        log.close()


def small_log(make_log: Callable[..., EventLog], **options: Any) -> EventLog:
    return make_log(SMALL, max_event_size=1024, **options)


def read_until(reader: Any, last_seq: int) -> list[Event]:
    """Everything up to and including last_seq, waiting for it (bounded)."""
    got: list[Event] = []
    deadline = time.monotonic() + DRAIN_WAIT
    while reader.next_seq <= last_seq:
        assert time.monotonic() < deadline, f"reader stuck at seq {reader.next_seq}"
        got += reader.read(timeout=0.5)
    return got


def start(mp_context: Any, target: Callable[..., None], *args: Any) -> Any:
    process = mp_context.Process(target=target, args=args)
    process.start()
    return process


def join_ok(*processes: Any) -> None:
    for process in processes:
        process.join(CHILD_WAIT)
        assert process.exitcode == 0, f"child {process.pid} exited with {process.exitcode}"


# ---- CAR's behaviours (CAR-SPEC 3, event log 24-26) ------------------------------------------


def test_append_then_filter_by_kind_and_action_id(make_log: Callable[..., EventLog]) -> None:
    log = make_log()
    log.append(EventKind.ACTION_EXECUTING, "a1")
    wanted = log.append(EventKind.ACTION_SUCCEEDED, "a1", data={"output": 42})
    log.append(EventKind.ACTION_SUCCEEDED, "a2")
    assert log.filter(kind=EventKind.ACTION_SUCCEEDED, action_id="a1") == [wanted]
    assert log.filter(kind="action_succeeded") == [wanted, log.events()[2]]
    assert log.filter(action_id="a1")[0].kind == "action_executing"
    assert log.filter() == log.events()


def test_journal_written_then_loaded_is_equal(make_log: Callable[..., EventLog],
                                              tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog.with_journal(path, capacity=SMALL, max_event_size=1024)
    written = [log.append("proposal_received", proposal_id="p1", data={"actions": 2}),
               log.append("action_succeeded", "a1", "p1", {"ok": True}, run_id="r1", writer="w")]
    written += [log.append("tick", data={"i": i, "pad": "x" * 40}) for i in range(500)]  # wraps
    log.close()
    loaded = EventLog.load(path)
    try:
        assert loaded.events() == written
        assert loaded.load_report is not None and loaded.load_report.ok
        assert len(loaded) == 502
    finally:
        loaded.close()


def test_span_gets_status_and_end_time_and_exports_as_otlp_json(
        make_log: Callable[..., EventLog]) -> None:
    log = make_log()
    trace = "ab" * 16
    root = log.begin_span("coordination", trace, attributes={"pattern": "swarm", "agents": 3})
    child = log.begin_span("agent", trace, parent_span_id=root)
    log.end_span(child, "error", "tool failed")
    log.end_span(root, SpanStatus.OK)
    open_span = log.begin_span("late", trace)
    spans = {span.span_id: span for span in log.spans()}
    assert spans[root].status == SpanStatus.OK and spans[root].end_ns is not None
    assert spans[root].end_ns >= spans[root].start_ns
    assert (spans[child].status, spans[child].message, spans[child].parent_span_id) == (
        SpanStatus.ERROR, "tool failed", root)
    assert spans[open_span].end_ns is None and spans[open_span].status == SpanStatus.UNSET
    exported = json.loads(log.export_traces())
    otlp = exported["resourceSpans"][0]["scopeSpans"][0]["spans"]
    by_id = {span["spanId"]: span for span in otlp}
    assert by_id[child]["parentSpanId"] == root and by_id[child]["status"] == {
        "code": 2, "message": "tool failed"}
    assert by_id[root]["traceId"] == trace and by_id[root]["status"]["code"] == 1
    assert "endTimeUnixNano" not in by_id[open_span]
    attributes = {a["key"]: a["value"] for a in by_id[root]["attributes"]}
    assert attributes["pattern"] == {"stringValue": "swarm"}
    assert attributes["agents"] == {"intValue": "3"}
    assert log.stats().spans == 3
    with pytest.raises(InvalidEvent, match="span status"):
        log.end_span(root, "finished")


# ---- records ------------------------------------------------------------------------------------


def test_an_event_carries_its_sequence_time_writer_and_data(make_log: Callable[..., EventLog]) -> None:
    log = make_log(writer="supervisor")
    before = time.time_ns()
    event = log.append(EventKind.WORKER_STARTED, data={"worker": 1})
    assert (event.seq, event.kind, event.writer, event.pid, event.data) == (
        0, "worker_started", "supervisor", os.getpid(), {"worker": 1})
    assert before <= event.timestamp_ns <= time.time_ns()
    assert abs(event.timestamp - event.timestamp_ns / 1e9) < 1e-6
    assert type(event.kind) is str  # an EventKind is stored as its plain string
    assert log.append("my_own_kind", writer="agent-7").writer == "agent-7"
    assert log.events()[0] == event
    assert pickle.loads(pickle.dumps(event)) == event
    assert Event.from_dict(event.to_dict()) == event


def test_carmp_and_car_kinds_are_listed() -> None:
    names = {kind.value for kind in EventKind}
    for kind in ("proposal_received", "state_rollback", "replan_exhausted", "agent_started",
                 "agent_finished", "budget_denied", "budget_reserved", "budget_refunded",
                 "worker_started", "worker_exited", "worker_crashed", "worker_recycled",
                 "task_submitted", "task_started", "task_finished", "task_failed", "events_lost"):
        assert kind in names


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(kind=""), "kind"),
        (dict(kind=7), "kind"),
        (dict(kind="k", action_id=3), "action_id"),
        (dict(kind="k", proposal_id=b"p"), "proposal_id"),
        (dict(kind="k", run_id=1.5), "run_id"),
        (dict(kind="k", writer=["w"]), "writer"),
        (dict(kind="k", data=[1, 2]), "dict"),
        (dict(kind="k", data={"s": {1, 2}}), "JSON"),
        (dict(kind="k", data={1: "non-str key"}), "JSON"),
        (dict(kind="k", data={"big": 2**64}), "JSON"),
    ],
)
def test_malformed_events_are_refused_and_change_nothing(make_log: Callable[..., EventLog],
                                                         fields: dict[str, Any], match: str) -> None:
    log = make_log()
    with pytest.raises(InvalidEvent, match=match):
        log.append(**fields)
    assert len(log) == 0


def test_an_event_over_the_maximum_raises_and_appends_nothing(make_log: Callable[..., EventLog]) -> None:
    log = make_log(max_event_size=1024)
    log.append("fits", data={"blob": "x" * 900})
    with pytest.raises(EventTooLarge, match="max_event_size of 1024"):
        log.append("too_big", data={"blob": "x" * 1024})
    assert len(log) == 1 and [e.kind for e in log.events()] == ["fits"]


@pytest.mark.parametrize(
    "options",
    [dict(capacity=1000, max_event_size=1024), dict(max_event_size=10),
     dict(hole_timeout=0), dict(backpressure_timeout=-1), dict(max_readers=0),
     dict(hash_chain=True), dict(capacity=1.5)],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventLog):
        EventLog(**options)


# ---- the ring across processes -----------------------------------------------------------------


def append_numbered(log: EventLog, writer: str, count: int, go: Any) -> None:
    go.wait(CHILD_WAIT)
    for n in range(count):
        log.append(EventKind.TASK_FINISHED, data={"n": n}, writer=writer)
    log.close()


def test_writer_processes_get_gap_free_ordered_sequence_numbers(
        make_log: Callable[..., EventLog], mp_context: Any) -> None:
    log = make_log()
    go = mp_context.Event()
    writers = [start(mp_context, append_numbered, log, f"w{i}", 400, go) for i in range(4)]
    go.set()
    join_ok(*writers)
    events = log.events()
    assert [event.seq for event in events] == list(range(1600)) and len(log) == 1600
    for i in range(4):
        mine = [event for event in events if event.writer == f"w{i}"]
        assert [event.data["n"] for event in mine] == list(range(400))  # each in its own order
    assert {event.pid for event in events} == {writer.pid for writer in writers}


def test_a_log_pickles_by_name_and_attaches(make_log: Callable[..., EventLog]) -> None:
    log = make_log(backpressure=True, hole_timeout=0.5, backpressure_timeout=3.0)
    log.append("first")
    copy = pickle.loads(pickle.dumps(log))
    try:
        assert copy.name == log.name and copy.events() == log.events()
        assert (copy.backpressure, copy.hole_timeout, copy.backpressure_timeout) == (True, 0.5, 3.0)
        copy.append("second")
        assert [e.kind for e in log.events()] == ["first", "second"]
    finally:
        copy.close()
    assert os.path.exists("/dev/shm/" + log.name[1:])  # an attacher never unlinks
    with pytest.raises(SegmentClosed):
        copy.append("after close")


# ---- readers --------------------------------------------------------------------------------------


def test_iterate_from_a_seq_tail_len_and_stats(make_log: Callable[..., EventLog]) -> None:
    log = make_log()
    assert log.is_empty() and log.tail(3) == [] and list(log) == []
    events = [log.append("tick", data={"i": i}) for i in range(10)]
    assert list(log.iter_from(7)) == events[7:]
    assert log.tail(3) == events[-3:] and log.tail(100) == events and log.tail(0) == []
    assert len(log) == 10 and not log.is_empty()
    stats = log.stats()
    assert (stats.events, stats.retained, stats.oldest_seq, stats.next_seq, stats.holes) == (
        10, 10, 0, 10, 0)
    assert stats.approx_event_bytes > 0 and stats.to_dict()["events"] == 10
    reader = log.reader(4)
    assert reader.read(max_events=2) == events[4:6] and reader.next_seq == 6
    assert list(reader) == events[6:]


def append_with_pauses(log: EventLog, count: int, pause: float) -> None:
    for i in range(count):
        time.sleep(pause)
        log.append("tick", data={"i": i})
    log.close()


def test_follow_wakes_for_events_from_another_process(make_log: Callable[..., EventLog],
                                                      mp_context: Any) -> None:
    log = make_log()
    writer = start(mp_context, append_with_pauses, log, 5, 0.02)
    got = []
    for event in log.follow(timeout=DRAIN_WAIT, from_seq=0):
        got.append(event.data["i"])
        if len(got) == 5:
            break
    join_ok(writer)
    assert got == [0, 1, 2, 3, 4]


def test_follow_sleeps_instead_of_spinning_and_ends_after_its_timeout(
        make_log: Callable[..., EventLog]) -> None:
    log = make_log()
    log.append("old")
    cpu = time.thread_time()
    assert list(log.follow(timeout=0.3)) == []  # only new events; none came
    assert time.thread_time() - cpu < 0.1  # asleep on the futex, not polling


class Interrupted(Exception):
    pass


def test_a_signal_interrupts_a_blocked_follow(make_log: Callable[..., EventLog]) -> None:
    log = make_log()

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(Interrupted):
            list(log.follow(timeout=DRAIN_WAIT))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_closing_while_another_thread_follows_ends_that_follow(
        make_log: Callable[..., EventLog]) -> None:
    log = EventLog()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            list(log.follow(timeout=DRAIN_WAIT))
        except SegmentClosed as exc:
            errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.1)
    log.close()
    follower.join(DRAIN_WAIT)
    assert not follower.is_alive() and len(errors) == 1


def test_a_reader_behind_the_ring_learns_exactly_what_it_lost(
        make_log: Callable[..., EventLog]) -> None:
    log = small_log(make_log)
    reader = log.reader(0)
    first = [log.append("tick", data={"i": i}) for i in range(10)]
    assert reader.read() == first
    for i in range(10, 2000):
        log.append("tick", data={"i": i})
    after_gap = reader.read(max_events=5000)
    resume = after_gap[0].seq
    assert resume > 10 and reader.lost == resume - 10
    assert [e.seq for e in after_gap] == list(range(resume, 2000))
    assert [e.data["i"] for e in after_gap] == list(range(resume, 2000))
    [recorded] = [e for e in reader.read() if e.kind == EventKind.EVENTS_LOST]
    assert recorded.data == {"lost": resume - 10, "cause": "overwritten", "first_seq": 10,
                             "last_seq": resume - 1, "reader_pid": os.getpid()}


def test_on_lost_raise_reports_then_hands_out_what_followed(make_log: Callable[..., EventLog]) -> None:
    log = small_log(make_log)
    reader = log.reader(0, on_lost="raise")
    for i in range(2000):
        log.append("tick", data={"i": i})
    with pytest.raises(EventsLost) as caught:
        reader.read(max_events=5000)
    assert caught.value.first_seq == 0 and caught.value.lost == caught.value.resume_seq
    after = reader.read(max_events=5000)
    assert after[0].seq == caught.value.resume_seq and after[-1].seq == 1999


def append_fast(log: EventLog, count: int) -> None:
    for n in range(count):
        log.append("tick", data={"n": n, "pad": "y" * 30})
    log.close()


def test_a_slow_reader_accounts_for_every_event_of_a_fast_writer(
        make_log: Callable[..., EventLog], mp_context: Any) -> None:
    log = small_log(make_log)
    reader = log.reader(0)
    writer = start(mp_context, append_fast, log, 3000)
    got: list[Event] = []
    while writer.is_alive():
        got += reader.read(max_events=20, timeout=0.2)
        time.sleep(0.002)  # slow on purpose
    join_ok(writer)
    got += reader.read(max_events=100_000)
    seqs = [event.seq for event in got]
    assert seqs == sorted(set(seqs))
    missing = set(range(seqs[-1] + 1)) - set(seqs)
    assert len(missing) == reader.lost  # every event delivered or counted, exactly once
    ticks = [event.data["n"] for event in got if event.kind == "tick"]
    assert ticks == sorted(ticks) and ticks[-1] == 2999


# ---- backpressure -----------------------------------------------------------------------------------


def test_backpressure_times_out_with_a_clear_error_and_overwrites_nothing(
        make_log: Callable[..., EventLog]) -> None:
    log = small_log(make_log, backpressure=True, backpressure_timeout=0.05)
    reader = log.reader(0)
    assert reader.registered
    appended = 0
    with pytest.raises(EventLogFull, match="no room"):
        while True:
            log.append("tick", data={"i": appended})
            appended += 1
    assert appended > 10 and log.stats().full_waits >= 1
    got = reader.read(max_events=100_000)
    assert [event.data["i"] for event in got] == list(range(appended)) and reader.lost == 0
    log.append("room again")
    reader.close()
    for i in range(1000):  # nobody registered: the ring overwrites instead of waiting
        log.append("tick", data={"i": i})


def test_backpressure_writer_waits_for_a_slow_reader_and_loses_nothing(
        make_log: Callable[..., EventLog], mp_context: Any) -> None:
    log = small_log(make_log, backpressure=True, backpressure_timeout=DRAIN_WAIT)
    reader = log.reader(0)
    writer = start(mp_context, append_fast, log, 2000)
    got = []
    while len(got) < 2000:
        batch = reader.read(max_events=50, timeout=DRAIN_WAIT)
        assert batch, "the writer stopped early"
        got += batch
        time.sleep(0.001)
    join_ok(writer)
    assert [event.data["n"] for event in got] == list(range(2000))
    assert reader.lost == 0 and log.stats().full_waits > 0


def register_and_wait(log: EventLog, ready: Any) -> None:
    reader = log.reader(0)
    assert reader.registered
    ready.set()
    while True:
        signal.pause()


def test_a_dead_registered_reader_holds_no_writer_up(make_log: Callable[..., EventLog],
                                                      mp_context: Any) -> None:
    log = small_log(make_log, backpressure=True, backpressure_timeout=DRAIN_WAIT)
    ready = mp_context.Event()
    child = start(mp_context, register_and_wait, log, ready)
    assert ready.wait(CHILD_WAIT)
    assert log.stats().readers_registered == 1
    kill(child.pid)
    child.join()
    for i in range(2000):  # far past the room the dead reader held
        log.append("tick", data={"i": i})
    stats = log.stats()
    assert stats.readers_reaped == 1 and stats.readers_registered == 0


# ---- the journal ----------------------------------------------------------------------------------


def append_to_journal(log: EventLog, writer: str, count: int) -> None:
    for n in range(count):
        log.append(EventKind.TASK_FINISHED, f"{writer}-{n}", data={"n": n}, writer=writer)
    log.close()


def test_journal_replay_equals_what_writer_processes_wrote(
        make_log: Callable[..., EventLog], mp_context: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = small_log(make_log, journal=path, hash_chain=True)
    first = log.append(EventKind.PROPOSAL_RECEIVED, writer="supervisor")
    writers = [start(mp_context, append_to_journal, log, f"w{i}", 300) for i in range(3)]
    join_ok(*writers)
    held = log.events()  # the ring wrapped: only the newest are held
    log.close()
    loaded = EventLog.load(path)
    try:
        events = loaded.events()
        assert [event.seq for event in events] == list(range(901))
        report = loaded.load_report
        assert report is not None and report.ok and report.chained
        unchained = [event._replace(prev_hash=None, hash=None) for event in events]
        assert unchained[0] == first and unchained[-len(held):] == held
        for i in range(3):
            mine = [e for e in events if e.writer == f"w{i}"]
            assert [e.data["n"] for e in mine] == list(range(300))
            assert [e.action_id for e in mine] == [f"w{i}-{n}" for n in range(300)]
    finally:
        loaded.close()


def test_journal_continues_numbering_and_chain_across_logs(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(journal=path, hash_chain=True) as log:
        log.append("run_started")
        log.sync()
        assert len(path.read_bytes().splitlines()) == 1
        log.append("tick")
    with EventLog(journal=path, hash_chain=True) as log:
        assert log.append("run_completed").seq == 2
    with EventLog.load(path) as loaded:
        assert [e.kind for e in loaded.events()] == ["run_started", "tick", "run_completed"]
        assert loaded.load_report is not None and loaded.load_report.ok


def test_a_journal_that_cannot_be_opened_fails_the_constructor(tmp_path: Path) -> None:
    with pytest.raises(JournalWriteFailed, match="create its folder"):
        EventLog(journal=tmp_path / "missing" / "events.jsonl")


def journal_lines(count: int, *, chain: bool) -> list[bytes]:
    """A journal written the way the drainer writes it, without a ring."""
    lines, prev = [], None
    for seq in range(count):
        event = Event(seq, 1_700_000_000_000_000_000 + seq, 4242, "tick", f"a{seq}", None, None,
                      "w", {"i": seq})
        if chain:
            event = chained(event, prev)
            prev = event.hash
        lines.append(orjson.dumps(event.to_dict()) + b"\n")
    return lines


def test_corrupt_and_truncated_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    lines = journal_lines(4, chain=False)
    path = tmp_path / "events.jsonl"
    path.write_bytes(lines[0] + b"{not json\n" + lines[2] + b'{"seq": 3}\n' + lines[3][:20])
    with pytest.warns(EventJournalWarning, match="skipped 3 bad line"):
        loaded = EventLog.load(path)
    try:
        report = loaded.load_report
        assert report is not None and [s.line for s in report.skipped] == [2, 4, 5]
        assert "truncated" in report.skipped[2].reason and "not JSON" in report.skipped[0].reason
        events = loaded.events()
        assert [e.seq for e in events] == [0, 1, 2]  # seq 1 stands in for the bad line
        assert events[1].kind == "events_lost" and events[1].data["cause"] == "journal_line_unreadable"
        assert events[2].data == {"i": 2}
    finally:
        loaded.close()
    with pytest.raises(JournalCorrupt, match=":2: not JSON"):
        EventLog.load(path, strict=True)


def test_the_hash_chain_exposes_a_changed_or_removed_line(tmp_path: Path) -> None:
    lines = journal_lines(5, chain=True)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(lines[:2]) + lines[2].replace(b'"i":2', b'"i":9') + b"".join(lines[3:]))
    with pytest.warns(EventJournalWarning, match="1 hash chain break"):
        with EventLog.load(path) as loaded:
            assert loaded.load_report is not None and loaded.load_report.chain_breaks == (2,)
    path.write_bytes(b"".join(lines[:2]) + b"".join(lines[3:]))  # line 3 removed
    with pytest.raises(JournalCorrupt, match="hash chain breaks at seq 3"):
        EventLog.load(path, strict=True)


# ---- crash safety (ROBUSTNESS R4) ----------------------------------------------------------------

PAYLOAD = orjson.dumps(["doomed", None, None, None, None, {}, None, None])


def die_mid_append(log: EventLog, steps: int, report: Any) -> None:
    log.append(EventKind.AGENT_STARTED, writer="doomed")
    report.put(log._ring.append_unfinished(PAYLOAD, steps))
    while True:
        signal.pause()


@pytest.mark.parametrize("steps", [1, 2, 3], ids=["reserved", "claimed", "copied"])
def test_a_writer_killed_between_reserve_and_commit_is_skipped_and_reported(
        make_log: Callable[..., EventLog], mp_context: Any, steps: int) -> None:
    log = make_log(hole_timeout=0.2)
    report = mp_context.Queue()
    child = start(mp_context, die_mid_append, log, steps, report)
    hole = report.get(timeout=CHILD_WAIT)
    kill(child.pid)
    child.join()
    after = log.append(EventKind.AGENT_FINISHED)  # other writers carry on
    reader = log.reader(0)
    got = read_until(reader, after.seq)
    assert [event.seq for event in got] == list(range(after.seq + 1))
    gap = got[hole]
    assert gap.kind == "events_lost" and gap.data["cause"] == "writer_gone"
    assert gap.pid == (child.pid if steps >= 2 else 0)  # known once it claimed the record
    assert got[-1] == after and reader.holes == 1 and log.stats().holes == 1
    assert log.events()[hole] == gap  # every reader now sees the same gap, at once


def append_forever(log: EventLog, started: Any) -> None:
    started.set()
    while True:
        log.append(EventKind.TASK_STARTED, data={"pad": "z" * 40})


def test_writers_killed_mid_append_again_and_again_never_stall_readers(
        make_log: Callable[..., EventLog], mp_context: Any) -> None:
    rounds = 30 if mp_context.get_start_method() == "fork" else 4
    log = make_log(1 << 16, max_event_size=1024, hole_timeout=0.2)
    for _ in range(rounds):
        started = mp_context.Event()
        child = start(mp_context, append_forever, log, started)
        assert started.wait(CHILD_WAIT)
        time.sleep(random.uniform(0, 0.005))
        kill(child.pid)
        child.join()
    last = log.append(EventKind.AGENT_FINISHED)
    reader = log.reader()
    got = read_until(reader, last.seq)
    assert [e.seq for e in got] == list(range(got[0].seq, last.seq + 1))  # parseable, no gaps
    kinds = {e.kind for e in got[:-1]}
    assert kinds <= {"task_started", "events_lost"}
    holes = [e for e in got if e.kind == "events_lost"]
    assert all(e.data["cause"] == "writer_gone" for e in holes) and len(holes) <= rounds
    assert reader.lost == 0 and reader.corrupt == 0


# ---- lifecycle -------------------------------------------------------------------------------------


def test_close_is_idempotent_and_use_after_close_is_a_clear_error() -> None:
    log = EventLog()
    log.append("x")
    log.close()
    log.close()
    assert log.closed and "closed" in repr(log)
    with pytest.raises(SegmentClosed, match="closed"):
        log.events()
    assert not os.path.exists("/dev/shm/" + log.name[1:])


# ---- random bytes never crash or hang readers (ROBUSTNESS R13) -------------------------------

scribbles = st.lists(st.tuples(st.integers(0, 2**31), st.binary(min_size=1, max_size=24)),
                     min_size=1, max_size=24)


@given(scribbles, st.integers(0, 300), st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_in_the_ring_are_reported_never_crash_or_hang(
        writes: list[tuple[int, bytes]], events: int, near_the_header: bool) -> None:
    with EventLog(SMALL, max_event_size=1024, hole_timeout=0.01, backpressure_timeout=0.01) as log:
        for i in range(events):
            log.append("tick", data={"i": i})
        mapping = log._segment._mmap
        payload = len(mapping) - HEADER_SIZE
        for offset, data in writes:
            # half the examples aim at the config, ring header and descriptors
            at = HEADER_SIZE + offset % (min(payload, 4096) if near_the_header else payload)
            data = data[:len(mapping) - at]
            mapping[at:at + len(data)] = data
        seqs = [event.seq for event in log.events()]
        assert seqs == sorted(set(seqs))
        log.tail(5)
        log.stats()
        reader = log.reader(0)
        for _ in range(3):
            batch = reader.read(timeout=0.02)
            assert all(type(event.kind) is str and type(event.data) is dict for event in batch)
        try:
            log.append("after", data={"ok": True})
        except CarmpError:
            pass  # a scribbled cursor may look like a reader that holds the room
        try:
            EventLog.attach(log.name).close()
        except SegmentCorrupt:
            pass


@given(st.binary(max_size=3000))
@settings(max_examples=60, deadline=None)
def test_random_journal_bytes_load_without_crashing(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EventJournalWarning)
            with EventLog.load(path) as loaded:
                seqs = [event.seq for event in loaded.events()]
        assert seqs == sorted(set(seqs))


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_a_damaged_chained_journal_loads_every_intact_line(data: st.DataObject) -> None:
    lines = journal_lines(12, chain=True)
    originals = {seq: Event.from_dict(orjson.loads(line)) for seq, line in enumerate(lines)}
    damaged = list(lines)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(damaged) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "drop", "junk", "twice"]))
        line = damaged[index]
        if len(line) < 2 and how in ("flip", "cut"):
            how = "drop"  # an earlier cut left too little to change
        if how == "flip":
            at = data.draw(st.integers(0, len(line) - 1))
            damaged[index] = line[:at] + bytes([line[at] ^ data.draw(st.integers(1, 255))]) + line[at + 1:]
        elif how == "cut":
            damaged[index] = line[:data.draw(st.integers(0, len(line) - 1))]
        elif how == "drop":
            del damaged[index]
        elif how == "junk":
            damaged.insert(index, data.draw(st.binary(max_size=60)) + b"\n")
        else:
            damaged.insert(index, line)
        if not damaged:
            damaged = [lines[0]]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        path.write_bytes(b"".join(damaged))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EventJournalWarning)
            with EventLog.load(path) as loaded:
                events = loaded.events()
                report = loaded.load_report
    assert report is not None
    for event in events:
        if event.kind == "events_lost" and event.data.get("cause") == "journal_line_unreadable":
            continue
        # intact, or caught by the chain; a changed line never passes silently
        assert event == originals.get(event.seq) or event.seq in report.chain_breaks
