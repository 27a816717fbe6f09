"""The event log on Ray: one log actor, fed in batches.

The actor (a PrimitiveHost) holds a local EventLog, so sequence numbers, the journal
format and the Event objects read back are exactly the local ones. `RayEventLog` is the
client every process holds:

- append() checks and encodes the event here (InvalidEvent and EventTooLarge come before
  any call), stamps this process's clock and pid, and buffers the payload. The buffer
  goes to the actor in ONE call when it holds `batch_size` events, on flush(), before
  any read through this client, when the `.seq` of an event it returned is first read,
  and on close(). So append() returns a `PendingEvent`, whose seq is its true one once
  asked for. A batch carries an idempotency key: a batch resent after a lost reply is
  appended once.
- reads are short calls; reader() and follow() poll them, because a hosted call runs on
  the actor's one thread and must never wait inside it.
- begin_span / end_span go to the actor after the buffer, so span events carry the
  actor's pid.

Restarts (see incarnations.py): a new incarnation attaches the rings its dead
predecessors left in /dev/shm, creates its log (with a journal, numbering continues from
the journal's last line), replays the events they held past that point with their seq,
time and pid, then removes the old segments. So sequence numbers keep growing, and an
acknowledged event survives SIGKILL as long as its node's /dev/shm does. Events the
journal already had are in the journal only, not in the new ring.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from carmp.backends.on_ray.cluster import ray_module
from carmp.backends.on_ray.host import HostedClient, HostedPart, start_host
from carmp.backends.on_ray.incarnations import (
    dead_predecessors,
    incarnation_run_id,
    new_host_id,
    unlink,
)
from carmp.errors import CarmpError, EventLogError, InvalidEventLog
from carmp.shared.event import (
    Event,
    EventKind,
    Span,
    SpanStatus,
    check_fields,
    encode_payload,
    kind_name,
)
from carmp.shared.eventlog import KIND, READ_BATCH, EventLog, EventLogStats, event_too_large
from carmp.shared.journal import JournalPath

DEFAULT_BATCH_SIZE = 256
READ_POLL = 0.02  # how often a client reader asks the actor for new events
WHAT = "event log"


# ---- the actor's side ---------------------------------------------------------------------


class LogHost:
    """What the log actor hosts: a local EventLog, plus a batch entry point that appends
    payloads a client encoded, with the client's timestamp and pid."""

    FORWARDED = frozenset({"events", "tail", "filter", "stats", "sync", "is_empty",
                           "begin_span", "end_span", "spans", "export_traces"})

    def __init__(self, host_id: str, journal: JournalPath | None,
                 options: dict[str, Any]) -> None:
        predecessors = _attach_predecessors(host_id)
        first_seq = min((old.oldest_seq for old in predecessors), default=0)
        try:
            self.log = EventLog(journal=journal, run_id=incarnation_run_id(host_id),
                                _first_seq=first_seq, **options)
        except BaseException:
            for old in predecessors:
                old.close()  # detach only: the next incarnation recovers them
            raise
        try:
            for old in predecessors:
                self._replay(old)
        except BaseException:
            for old in predecessors:
                old.close()
            self.log.close()
            raise
        for old in predecessors:
            _remove(old)
        self.batches = 0
        self.batched_events = 0

    def _replay(self, old: EventLog) -> None:
        """Append the events a dead predecessor held past our numbering, as they were."""
        log = self.log
        for event in old.iter_from(log.next_seq):
            while log.next_seq < event.seq:  # the old ring lost it: keep the numbering
                log.append(EventKind.EVENTS_LOST, data={"lost": 1, "cause": "actor_restarted"})
            payload = encode_payload(event.kind, event.action_id, event.proposal_id,
                                     event.run_id, event.writer, event.data)
            log._append(payload, event.timestamp_ns, event.pid, log.backpressure_timeout)

    def __getattr__(self, name: str) -> Any:
        if name in LogHost.FORWARDED:
            return getattr(self.log, name)
        raise AttributeError(f"the hosted event log has no method {name!r}")

    def append_batch(self, payloads: list[bytes],
                     stamps: list[tuple[int, int]]) -> tuple[list[int], CarmpError | None]:
        """Append encoded events in order; their seqs, and the error that stopped the
        batch (the events after it were not appended)."""
        self.batches += 1
        log, seqs = self.log, []
        try:
            for payload, (timestamp_ns, pid) in zip(payloads, stamps):
                seqs.append(log._append(payload, timestamp_ns, pid, log.backpressure_timeout))
        except CarmpError as exc:
            return seqs, exc
        finally:
            self.batched_events += len(seqs)
        return seqs, None

    def page(self, from_seq: int, max_events: int) -> list[Event]:
        """Up to max_events events from from_seq on (what the ring still holds)."""
        return list(itertools.islice(self.log.iter_from(from_seq), max_events))

    def settings(self) -> dict[str, Any]:
        """What a client needs to know once: to encode, check and name like the log."""
        return {"journal_path": self.log.journal_path, "max_event_size": self.log.max_event_size,
                "writer": self.log.writer,
                "actor_id": ray_module().get_runtime_context().get_actor_id()}

    def next_seq(self) -> int:
        return self.log.next_seq

    def oldest_seq(self) -> int:
        return self.log.oldest_seq

    def length(self) -> int:
        return len(self.log)

    def batch_counts(self) -> dict[str, int]:
        """Batches received and the events they appended (how well clients batch)."""
        return {"batches": self.batches, "events": self.batched_events}

    def close(self) -> None:
        self.log.close()


def _attach_predecessors(host_id: str) -> list[EventLog]:
    """The logs of this host's dead incarnations, attached to be replayed."""
    found = []
    for name in dead_predecessors(host_id, KIND):
        try:
            found.append(EventLog.attach(name))
        except CarmpError:  # died before its ring was ready: nothing to recover
            unlink(name)
    return found


def _remove(old: EventLog) -> None:
    name = old.name
    old.close()
    unlink(name)


def start_log(journal: JournalPath | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
              **log_options: Any) -> RayEventLog:
    """A new log actor holding EventLog(journal=journal, **log_options), and its owner's
    client (close_host() ends the actor)."""
    factory = functools.partial(LogHost, new_host_id(), journal, log_options)
    return RayEventLog(start_host(factory, what=WHAT), batch_size=batch_size)


# ---- the client's side ----------------------------------------------------------------------


class _Batch:
    """The events buffered together: their seqs once the batch reached the actor."""

    __slots__ = ("client", "seqs", "error")

    def __init__(self, client: RayEventLog) -> None:
        self.client = client
        self.seqs: list[int] | None = None
        self.error: BaseException | None = None  # why the events past seqs have none


class PendingEvent(Event):
    """An appended Event whose seq is known once its batch reached the log actor: reading
    `seq` (or anything that reads every field) sends the batch first. It compares,
    hashes and pickles as the Event it resolves to."""

    def __new__(cls, batch: _Batch, index: int, *fields: Any) -> PendingEvent:
        event = tuple.__new__(cls, (-1, *fields))
        event.__dict__.update(batch=batch, index=index)
        return event

    @property
    def seq(self) -> int:
        batch: _Batch = self.__dict__["batch"]
        if batch.seqs is None:
            batch.client.flush()
        assert batch.seqs is not None
        index: int = self.__dict__["index"]
        if index >= len(batch.seqs):
            assert batch.error is not None
            raise batch.error
        return batch.seqs[index]

    def resolved(self) -> Event:
        """The plain Event, with its true seq."""
        known: Event | None = self.__dict__.get("event")
        if known is None:
            known = tuple.__new__(Event, (self.seq, *tuple.__getitem__(self, slice(1, None))))
            self.__dict__["event"] = known
        return known

    def __iter__(self) -> Iterator[Any]:
        return iter(self.resolved())

    def __getitem__(self, index: Any) -> Any:
        return self.resolved()[index]

    def __eq__(self, other: object) -> bool:
        return self.resolved() == other

    def __ne__(self, other: object) -> bool:
        return self.resolved() != other

    def __hash__(self) -> int:
        return hash(self.resolved())

    def __repr__(self) -> str:
        return repr(self.resolved())

    def __reduce__(self) -> Any:
        return (tuple.__new__, (Event, tuple(self.resolved())))


class RayEventLog(HostedPart):
    """The event log's client: the local EventLog's surface over the log actor. It pickles
    small (its actor handle and settings; an empty buffer on the other side), so it
    travels to worker actors. close() flushes; only close_host() ends the actor."""

    def __init__(self, hosted: HostedClient, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 writer: str | None = None, settings: dict[str, Any] | None = None) -> None:
        if type(batch_size) is not int or batch_size < 1:
            raise InvalidEventLog(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.hosted = hosted
        self.batch_size = batch_size
        self._settings = hosted.call("settings") if settings is None else settings
        self.writer: str | None = self._settings["writer"] if writer is None else writer
        self.max_event_size: int = self._settings["max_event_size"]
        self.journal_path: str | None = self._settings["journal_path"]
        self.name = f"ray-log-{self._settings['actor_id'][:12]}"
        self.closed = False
        self._lock = threading.RLock()
        self._payloads: list[bytes] = []
        self._stamps: list[tuple[int, int]] = []
        self._batch = _Batch(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.hosted, self.batch_size, self.writer, self._settings))

    def __repr__(self) -> str:
        return f"<RayEventLog {self.name}{' closed' if self.closed else ''}>"

    # ---- writing ----------------------------------------------------------------------

    def append(self, kind: str, action_id: str | None = None, proposal_id: str | None = None,
               data: dict[str, Any] | None = None, *, run_id: str | None = None,
               writer: str | None = None) -> PendingEvent:
        """Buffer an event stamped with this process's clock and pid; its seq is known
        (and read) once the buffer reached the actor."""
        kind = kind_name(kind)
        if data is None:
            data = {}
        if writer is None:
            writer = self.writer
        check_fields(kind, action_id, proposal_id, run_id, writer, data)
        payload = encode_payload(kind, action_id, proposal_id, run_id, writer, data)
        if len(payload) > self.max_event_size:
            raise event_too_large(len(payload), self.max_event_size)
        timestamp_ns, pid = time.time_ns(), os.getpid()
        with self._lock:
            self._check_open()
            batch = self._batch
            self._payloads.append(payload)
            self._stamps.append((timestamp_ns, pid))
            event = PendingEvent(batch, len(self._payloads) - 1, timestamp_ns, pid, kind,
                                 action_id, proposal_id, run_id, writer, data, None, None)
            if len(self._payloads) >= self.batch_size:
                self.flush()
        return event

    def flush(self) -> None:
        """Send the buffered events to the actor in one call; raises the error that
        stopped the batch (EventLogFull, ...), whose later events were not appended."""
        with self._lock:
            if not self._payloads:
                return
            batch, payloads, stamps = self._batch, self._payloads, self._stamps
            self._batch, self._payloads, self._stamps = _Batch(self), [], []
            try:
                batch.seqs, batch.error = self.hosted.mutate("append_batch", payloads, stamps)
            except BaseException as exc:  # the actor is gone: these events have no seq
                batch.seqs, batch.error = [], exc
            if batch.error is not None:
                raise batch.error

    def _check_open(self) -> None:
        if self.closed:
            raise EventLogError(f"{self.name} was closed in this process; append through "
                                "another client of the log (one unpickled from it)")

    def begin_span(self, name: str, trace_id: str, parent_span_id: str | None = None,
                   attributes: dict[str, Any] | None = None) -> str:
        """Open a span (a span_started event, appended by the actor); its span id."""
        self.flush()
        span_id: str = self.hosted.mutate("begin_span", name, trace_id, parent_span_id,
                                           attributes)
        return span_id

    def end_span(self, span_id: str, status: SpanStatus | str = SpanStatus.OK,
                 message: str | None = None) -> None:
        self.flush()
        self.hosted.mutate("end_span", span_id, status, message)

    # ---- reading: this client's own appends first -------------------------------------------

    def _read(self, method: str, *args: Any) -> Any:
        self.flush()
        return self.hosted.call(method, *args)

    def events(self) -> list[Event]:
        """Every event the ring still holds, oldest first."""
        events: list[Event] = self._read("events")
        return events

    def tail(self, n: int) -> list[Event]:
        events: list[Event] = self._read("tail", n)
        return events

    def filter(self, kind: str | None = None, action_id: str | None = None) -> list[Event]:
        events: list[Event] = self._read("filter", kind, action_id)
        return events

    def iter_from(self, seq: int) -> Iterator[Event]:
        """Events from `seq` up to the newest, fetched a page at a time."""
        reader = self.reader(seq)
        while batch := reader.read(READ_BATCH, 0.0):
            yield from batch

    def __iter__(self) -> Iterator[Event]:
        return self.iter_from(self.oldest_seq)

    def __len__(self) -> int:
        length: int = self._read("length")
        return length

    def is_empty(self) -> bool:
        return len(self) == 0

    @property
    def next_seq(self) -> int:
        seq: int = self._read("next_seq")
        return seq

    @property
    def oldest_seq(self) -> int:
        seq: int = self._read("oldest_seq")
        return seq

    def stats(self) -> EventLogStats:
        stats: EventLogStats = self._read("stats")
        return stats

    def batch_counts(self) -> dict[str, int]:
        """Batches the actor received and the events they held (all clients)."""
        counts: dict[str, int] = self._read("batch_counts")
        return counts

    def sync(self, timeout: float | None = None) -> None:
        """Wait until every event appended so far (this client's buffer included) is in
        the journal and fsynced."""
        self._read("sync", timeout)

    def spans(self) -> list[Span]:
        spans: list[Span] = self._read("spans")
        return spans

    def export_traces(self, service_name: str = "carmp") -> str:
        traces: str = self._read("export_traces", service_name)
        return traces

    def reader(self, from_seq: int | None = None) -> RayEventReader:
        """A reader from `from_seq` (default: the oldest event still held)."""
        return RayEventReader(self, self.oldest_seq if from_seq is None else from_seq)

    def follow(self, timeout: float | None = None, *,
               from_seq: int | None = None) -> Iterator[Event]:
        """Yield events as they come, from `from_seq` (default: only new ones); ends once
        `timeout` s pass with no new event (None: never)."""
        reader = self.reader(self.next_seq if from_seq is None else from_seq)
        while batch := reader.read(READ_BATCH, timeout):
            yield from batch

    # ---- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and stop using the log here; the actor lives on for other clients."""
        if not self.closed:
            self.flush()
            self.closed = True

    def close_host(self) -> None:
        """For the owner: flush, close the hosted log (journal drained, segment removed)
        and end the actor."""
        self.close()
        super().close_host()


def _rebuild(hosted: HostedClient, batch_size: int, writer: str | None,
             settings: dict[str, Any]) -> RayEventLog:
    return RayEventLog(hosted, batch_size=batch_size, writer=writer, settings=settings)


class RayEventReader:
    """A cursor over the log actor with EventReader's read() contract, by polling short
    calls. Events the ring overwrote before this reader got them count in `lost`."""

    def __init__(self, log: RayEventLog, start_seq: int) -> None:
        self._log = log
        self.next_seq = start_seq
        self.lost = 0

    def read(self, max_events: int = READ_BATCH, timeout: float | None = 0.0) -> list[Event]:
        """Up to max_events events from next_seq on; waits up to `timeout` s (None:
        forever) for a first one; [] when none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            events: list[Event] = self._log._read("page", self.next_seq, max_events)
            if events:
                self.lost += max(0, events[0].seq - self.next_seq)
                self.next_seq = events[-1].seq + 1
                return events
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            time.sleep(READ_POLL if left is None else min(left, READ_POLL))

    def __iter__(self) -> Iterator[Event]:
        while batch := self.read():
            yield from batch

    def close(self) -> None:
        """Nothing to release: the reader holds no slot in the actor."""

    def __enter__(self) -> RayEventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
