"""The event log on Ray: the local log's numbering, reads and journal through a log actor
fed in batches, lazy sequence numbers, idempotent resends, appends from Ray tasks and
actors, and a log actor that survives SIGKILL."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carmp import Event, EventKind, EventLog, EventTooLarge, InvalidEvent
from carmp.backends.on_ray.eventlog import RayEventLog, start_log
from carmp.backends.on_ray.host import HostedClient
from tests.backends.on_ray.hosts import actor_pid, segments_of, wait_gone

pytestmark = pytest.mark.ray


@pytest.fixture
def log(ray_session: Any) -> Iterator[RayEventLog]:
    log = start_log(batch_size=8)
    yield log
    log.close_host()


def batches_received(log: RayEventLog) -> int:
    """Asked past the client, so that asking does not flush its buffer."""
    counts: dict[str, int] = log.hosted.call("batch_counts")
    return counts["batches"]


def appended(log: RayEventLog) -> int:
    length: int = log.hosted.call("length")
    return length


def test_sequence_numbers_and_reads_are_the_local_logs(log: RayEventLog) -> None:
    kinds = ["agent_started", "task_started", "agent_started", "task_finished", "agent_finished"]
    returned = [log.append(kind, f"a{i % 2}", data={"i": i}) for i, kind in enumerate(kinds)]
    events = log.events()
    assert [e.seq for e in events] == [0, 1, 2, 3, 4] == [e.seq for e in returned]
    assert events == returned
    assert all(type(e) is Event for e in events)
    assert [e.data["i"] for e in log.filter(kind="agent_started")] == [0, 2]
    assert [e.seq for e in log.filter(action_id="a1")] == [1, 3]
    assert [e.seq for e in log.tail(2)] == [3, 4]
    assert [e.seq for e in log.iter_from(3)] == [3, 4]
    assert list(log) == events
    assert (len(log), log.next_seq, log.oldest_seq, log.is_empty()) == (5, 5, 0, False)
    assert log.stats().events == 5
    assert log.name.startswith("ray-log-")


def test_appends_reach_the_actor_in_few_batches(ray_session: Any) -> None:
    log = start_log(batch_size=256)
    try:
        for i in range(1000):
            log.append("tick", data={"i": i})
        assert batches_received(log) == 3  # 768 sent, 232 still buffered
        log.flush()
        assert log.hosted.call("batch_counts") == {"batches": 4, "events": 1000}
        assert len(log) == 1000
    finally:
        log.close_host()


def test_a_returned_event_learns_its_seq_when_asked(log: RayEventLog) -> None:
    first, second = log.append("one"), log.append("two")
    assert appended(log) == 0  # still in this client's buffer
    assert second.seq == 1
    assert appended(log) == 2
    assert first.seq == 0 and first.to_dict()["seq"] == 0
    assert first.resolved() == Event(0, first.timestamp_ns, os.getpid(), "one", None, None,
                                     None, None, {})
    assert first[0] == 0 and list(second)[0] == 1


def test_bad_events_fail_before_anything_is_sent(ray_session: Any) -> None:
    log = start_log(max_event_size=256)
    try:
        with pytest.raises(InvalidEvent):
            log.append("", data={})
        with pytest.raises(InvalidEvent):
            log.append("kind", data={"x": object()})
        with pytest.raises(EventTooLarge):
            log.append("kind", data={"x": "y" * 1000})
        log.flush()
        assert batches_received(log) == 0
    finally:
        log.close_host()


class ResendingClient(HostedClient):
    """Sends every call twice with the same idempotency key: a reply Ray lost, resent."""

    def _send(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              key: str | None) -> Any:
        super()._send(method, args, kwargs, key)
        return super()._send(method, args, kwargs, key)


def test_a_resent_batch_is_appended_once(log: RayEventLog) -> None:
    resending = RayEventLog(ResendingClient(log.hosted.handle, "event log"))
    events = [resending.append("once", data={"i": i}) for i in range(5)]
    resending.flush()
    assert [e.seq for e in events] == [0, 1, 2, 3, 4]
    assert len(log) == 5


def test_events_from_ray_tasks_and_actors_carry_their_pid_and_writer(
        log: RayEventLog, ray_session: Any) -> None:
    ray = ray_session

    @ray.remote(num_cpus=0)
    def emit(log: RayEventLog, count: int) -> tuple[int, list[int]]:
        seqs = [log.append("from_task", writer="task", data={"i": i}).seq for i in range(count)]
        return os.getpid(), seqs

    @ray.remote(num_cpus=0)
    class Emitter:
        def __init__(self, log: RayEventLog) -> None:
            self.log = log
            self.log.writer = "actor"

        def emit(self, count: int) -> int:
            for i in range(count):
                self.log.append("from_actor", data={"i": i})
            self.log.flush()
            return os.getpid()

    emitter = Emitter.remote(log)
    actor_pid_ = ray.get(emitter.emit.remote(20))
    task_pid, task_seqs = ray.get(emit.remote(log, 20))
    try:
        by_task = log.filter(kind="from_task")
        by_actor = log.filter(kind="from_actor")
        assert [e.seq for e in by_task] == task_seqs
        assert {(e.pid, e.writer) for e in by_task} == {(task_pid, "task")}
        assert {(e.pid, e.writer) for e in by_actor} == {(actor_pid_, "actor")}
        assert [e.data["i"] for e in by_actor] == list(range(20))
        assert sorted(e.seq for e in log.events()) == list(range(40))
    finally:
        ray.kill(emitter)


def test_a_reader_and_follow_see_new_events(log: RayEventLog) -> None:
    reader = log.reader(0)
    assert reader.read(timeout=0) == []
    log.append("a")
    log.append("b")
    assert [e.kind for e in reader.read(timeout=5)] == ["a", "b"]
    assert reader.next_seq == 2
    log.append("c")
    assert [e.kind for e in log.follow(timeout=0.1, from_seq=1)] == ["b", "c"]


def test_the_journal_is_the_local_format(tmp_path: Path, ray_session: Any) -> None:
    journal = tmp_path / "events.jsonl"
    log = start_log(journal=str(journal))
    try:
        for i in range(30):
            log.append("step", f"act-{i}", data={"i": i})
        log.begin_span("plan", "trace-1")
        log.sync()
        assert log.journal_path == str(journal)
        loaded = EventLog.load(journal)
        try:
            assert loaded.events() == log.events()
            assert len(loaded.spans()) == 1
        finally:
            loaded.close()
    finally:
        log.close_host()


def test_a_killed_log_actor_comes_back_and_numbering_goes_on(
        tmp_path: Path, ray_session: Any) -> None:
    journal = tmp_path / "events.jsonl"
    log = start_log(journal=str(journal))
    try:
        for i in range(10):
            log.append("before", data={"i": i})
        log.sync()  # 0..9 are in the journal
        for i in range(5):
            log.append("unsynced", data={"i": i})
        log.flush()  # 10..14 reached the actor, perhaps not the journal
        killed = actor_pid(log)
        os.kill(killed, signal.SIGKILL)
        assert wait_gone(killed)
        after = log.append("after")
        assert after.seq == 15
        assert actor_pid(log) != killed
        assert segments_of(killed) == []  # the new incarnation removed what it left
        log.sync()
        loaded = EventLog.load(journal)
        try:
            assert [e.seq for e in loaded.events()] == list(range(16))
            assert [e.kind for e in loaded.events()] == ["before"] * 10 + ["unsynced"] * 5 \
                + ["after"]
        finally:
            loaded.close()
    finally:
        log.close_host()


def test_without_a_journal_a_restarted_actor_keeps_the_events_its_ring_held(
        log: RayEventLog) -> None:
    for i in range(5):
        log.append("before", data={"i": i})
    log.flush()
    killed = actor_pid(log)
    os.kill(killed, signal.SIGKILL)
    assert wait_gone(killed)
    assert log.append("after").seq == 5
    assert [e.kind for e in log.events()] == ["before"] * 5 + ["after"]
    assert segments_of(killed) == []


def test_close_host_leaves_no_process_and_no_segment(tmp_path: Path, ray_session: Any) -> None:
    log = start_log(journal=str(tmp_path / "events.jsonl"))
    log.append(EventKind.AGENT_STARTED)
    pid = actor_pid(log)
    assert segments_of(pid) != []
    log.close_host()
    assert wait_gone(pid)
    assert segments_of(pid) == []
    assert log.closed
    with EventLog.load(tmp_path / "events.jsonl") as loaded:
        assert len(loaded.events()) == 1
