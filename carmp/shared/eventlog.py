"""EventLog: CAR's append-only event log (CAR-SPEC 2.6) as one mmap ring that every
process of a run shares.

Any process appends: one native call reserves a sequence number and bytes, copies the
event and commits it with a CRC32C, so sequence numbers are global and gap-free. Any
number of readers in any process read from a sequence number, follow new events (asleep
on a futex until a commit wakes them), or take snapshots: events(), tail(n), filter().

The ring has a fixed capacity and overwrites its oldest events, so:
- a reader that falls behind learns exactly how many events it lost (EventReader.lost)
  and records an events_lost event;
- backpressure=True makes writers wait for registered readers instead, for at most
  backpressure_timeout, then raise EventLogFull;
- journal=path has the creating process drain every event into a JSONL file; writers
  wait for that drainer, so nothing is lost when the ring wraps. EventLog.load(path)
  replays a journal; hash_chain=True adds CAR's tamper-evident prev_hash / hash.
A writer killed between reserve and commit leaves a hole: readers skip it at once when
its pid is dead, or after hole_timeout when its writer stalls or died before claiming it,
and report it as an events_lost event at that sequence number (ROBUSTNESS R4). Spans are
span_started / span_ended events.

Payload layout (offsets from the payload start, 8-byte little-endian words):

    offset  size  field
    0       8     flags: bit 0 backpressure mode, bit 1 journaled by the creator
    8       8     hole timeout, ns
    16      8     backpressure timeout, ns (NO_TIMEOUT: wait without limit)
    24      40    reserved, zero (the largest event is the ring header's max record)
    64      ...   the ring (native/ring.c; sizes in carmp_native.h), 64-byte aligned:
                  +0    header, 256 bytes: magic "CARMPRNG", version, capacity, slots,
                        reader slots, max record, first seq; at +64 the frontier (next seq,
                        next byte: one 16-byte CAS unit); at +128 sleeping readers and their
                        futex word; at +192 sleeping writers, their futex word, registered
                        readers, the cached slowest cursor (seq, byte), abandoned holes,
                        full waits, reaped readers
                  +256  descriptors, 32 bytes * slots: status (seq low 32 bits | state |
                        writer pid), byte position, length | CRC32C << 32, timestamp ns
                  then  reader cursors, 64 bytes * max_readers: owner pid, next seq, next byte
                  then  data, capacity bytes: payloads, 8-byte aligned, never split

A payload is the event as a compact orjson array (see carmp.shared.event); the sequence
number, timestamp and writer pid live in its descriptor.
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from carmp import _native
from carmp.errors import (
    CarmpError,
    EventLogError,
    EventLogFull,
    EventsLost,
    EventTooLarge,
    InvalidEvent,
    InvalidEventLog,
    JournalCorrupt,
    SegmentCorrupt,
)
from carmp.shared.event import (
    Event,
    EventKind,
    Span,
    SpanStatus,
    check_fields,
    decode_batch,
    encode_payload,
    fold_spans,
    kind_name,
    not_json,
    otlp_json,
    span_status,
)
from carmp.shared.journal import JournalPath, JournalReport, JournalWriter, journal_tail, read_journal
from carmp.shared.segment import HEADER_SIZE, Segment

LAYOUT_VERSION = 1
KIND = "events"
MIB = 1 << 20
DEFAULT_CAPACITY = 4 * MIB
DEFAULT_MAX_EVENT_SIZE = 64 * 1024
# load() stands a gap event in for each seq a journal lacks, up to this many in all
MAX_MISSING_SEQS = 1_000_000
MIN_MAX_EVENT_SIZE = 256
DEFAULT_HOLE_TIMEOUT = 1.0
DEFAULT_BACKPRESSURE_TIMEOUT = 10.0
DEFAULT_MAX_READERS = 16
BYTES_PER_DESCRIPTOR = 64  # one descriptor per this many bytes of capacity
READ_BATCH = 1024
RESOLVE_AFTER = 0.005  # a blocking reader checks a pending record's writer after this long
RESOLVE_POLL = 0.01    # ... and then rechecks this often (a dead writer wakes nobody)
CLOSE_GRACE = 5.0      # beyond the hole timeout, for the journal to drain on close
NO_TIMEOUT = 2**64 - 1

_FLAGS = HEADER_SIZE
_HOLE_TIMEOUT = HEADER_SIZE + 8
_BACKPRESSURE_TIMEOUT = HEADER_SIZE + 16
_RING = HEADER_SIZE + 64
_BACKPRESSURE_FLAG = 1
_JOURNALED_FLAG = 2

_RECORD = _native.RING_RECORD
_PENDING = _native.RING_PENDING
_LOST = _native.RING_LOST

_dumps = orjson.dumps
_monotonic = time.monotonic
_time_ns = time.time_ns
_new_event = tuple.__new__
_own_pid = os.getpid()


def _refresh_pid() -> None:
    global _own_pid
    _own_pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def segment_size(capacity: int = DEFAULT_CAPACITY, *,
                 max_readers: int = DEFAULT_MAX_READERS) -> int:
    """The /dev/shm bytes (header included) of a log of this capacity, so a world can check
    that all its segments fit before it creates any."""
    return _RING + _ring_geometry(capacity, max_readers)[2]


def _ring_geometry(capacity: int, max_readers: int) -> tuple[int, int, int]:
    """The ring's data capacity (a power of two), descriptor slots and bytes."""
    capacity = _power_of_two_at_least(capacity)
    slots = _power_of_two_at_least(max(capacity // BYTES_PER_DESCRIPTOR, 64))
    return capacity, slots, _native.ring_size(capacity, slots, max_readers)


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True, slots=True)
class EventLogStats:
    """CAR's stats (events, spans, approximate bytes) plus the ring's own counters."""

    events: int              # appended so far (len(log)), holes included
    spans: int               # spans started among the events still in the ring
    approx_event_bytes: int  # bytes the events still in the ring occupy
    approx_span_bytes: int   # of which span events
    retained: int            # events still in the ring
    oldest_seq: int
    next_seq: int
    capacity: int
    holes: int               # reservations abandoned because their writer died or stalled
    full_waits: int          # appends that found no room and had to wait (backpressure)
    readers_registered: int
    readers_reaped: int      # registered readers found dead and dropped
    journaled_seq: int | None  # every event below it is in the journal (creator only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Cursor:
    """Reads the ring from a sequence number: decodes records, reports holes and corrupt
    records as events_lost events at their seq, settles holes (a dead writer's at once,
    a stalled one's after hole_timeout), and steps over what the ring overwrote."""

    __slots__ = ("_ring", "next_seq", "_slot", "_hole_timeout", "lost", "holes", "corrupt",
                 "losses", "_stuck_seq", "_stuck_since", "_stuck_frontier")

    def __init__(self, ring: _native.Ring, start_seq: int, slot: int, hole_timeout: float) -> None:
        self._ring = ring
        self.next_seq = start_seq
        self._slot = slot
        self._hole_timeout = hole_timeout
        self.lost = self.holes = self.corrupt = 0
        self.losses: list[tuple[int, int]] = []  # overwritten [first, resume) not yet reported
        self._stuck_seq = -1
        self._stuck_since = 0.0
        self._stuck_frontier = 0

    def read(self, max_events: int, timeout: float | None) -> list[Event]:
        """Up to max_events events; waits up to `timeout` s (None: forever) for a first one."""
        deadline = None if timeout is None else _monotonic() + timeout
        ring = self._ring
        while True:
            payloads, timestamps, pids, sizes, stop, next_seq = ring.read(
                self.next_seq, max_events, self._slot)
            if sizes:
                events, holes, corrupt = decode_batch(self.next_seq, payloads, timestamps, pids,
                                                      sizes)
                self.holes += holes
                self.corrupt += corrupt
            if stop == _LOST:
                skipped_from = self.next_seq + len(sizes)
                self.lost += next_seq - skipped_from
                self.losses.append((skipped_from, next_seq))
            self.next_seq = next_seq
            if sizes:
                return events
            if stop == _RECORD or stop == _LOST:
                continue
            if stop == _PENDING and self._settle_hole(patient=timeout != 0):
                continue
            left = None if deadline is None else deadline - _monotonic()
            if left is not None and left <= 0:
                return []
            if stop == _PENDING:
                left = RESOLVE_POLL if left is None else min(left, RESOLVE_POLL)
            ring.wait(self.next_seq, left)

    def _settle_hole(self, patient: bool) -> bool:
        """Abandon the pending record at next_seq if its writer is dead or has stalled
        past hole_timeout; True when something was abandoned (read again)."""
        now, seq = _monotonic(), self.next_seq
        if self._stuck_seq != seq:
            self._stuck_seq, self._stuck_since = seq, now
            self._stuck_frontier = self._ring.next_seq()
            if patient:
                return False  # a live writer is usually about to commit: let it
        elif patient and now - self._stuck_since < RESOLVE_AFTER:
            return False
        stale_below = self._stuck_frontier if now - self._stuck_since >= self._hole_timeout else 0
        return bool(self._ring.resolve(seq, self._hole_timeout, stale_below) > 0)

    def caught_up(self) -> bool:
        return self.next_seq >= self._ring.next_seq()

    def close(self) -> None:
        if self._slot >= 0:
            slot, self._slot = self._slot, -1
            try:
                self._ring.unregister(slot)
            except CarmpError:
                pass  # the ring is closed here: the slot goes with it


class EventReader:
    """A cursor over the log in this process. read() returns batches (waiting up to a
    timeout for the first event); iterating yields what is there now, then stops.

    A reader that falls behind the wrapping ring moves on to the oldest event still held,
    adds what it missed to `lost`, and records an events_lost event (on_lost="record",
    the default) or also raises EventsLost (on_lost="raise"). A registered reader is
    waited for by writers, so it loses nothing (backpressure)."""

    def __init__(self, log: EventLog, start_seq: int, *, register: bool,
                 on_lost: Literal["record", "raise"] = "record") -> None:
        if on_lost not in ("record", "raise"):
            raise InvalidEventLog(f"on_lost must be 'record' or 'raise', got {on_lost!r}")
        slot = -1
        if register:
            slot = log._ring.register(start_seq)
            if slot < 0:
                raise EventLogError(
                    f"all {log._ring.readers} reader slots of {log.name} are registered; close "
                    "readers you no longer use, or create the log with more max_readers"
                )
        self._log = log
        self._cursor = _Cursor(log._ring, start_seq, slot, log.hole_timeout)
        self._raise_losses = on_lost == "raise"
        self._stash: list[Event] = []  # read past a loss that was raised: handed out next
        self._finalizer = weakref.finalize(self, self._cursor.close)

    @property
    def next_seq(self) -> int:
        return self._cursor.next_seq

    @property
    def lost(self) -> int:
        """Events the ring overwrote before this reader got them."""
        return self._cursor.lost

    @property
    def holes(self) -> int:
        """Records skipped because their writer died or stalled mid-append."""
        return self._cursor.holes

    @property
    def corrupt(self) -> int:
        """Records that failed validation (CRC, shape or JSON) and were skipped."""
        return self._cursor.corrupt

    @property
    def registered(self) -> bool:
        return self._cursor._slot >= 0

    def read(self, max_events: int = READ_BATCH, timeout: float | None = 0.0) -> list[Event]:
        """Up to max_events events from next_seq on. Holes and corrupt records come as
        events_lost events at their seq. Waits up to `timeout` s (None: forever) for the
        first event; [] when none came."""
        if self._stash:
            events, self._stash = self._stash, []
            return events
        events = self._cursor.read(max_events, timeout)
        losses = self._cursor.losses
        if losses:
            self._cursor.losses = []
            for first, resume in losses:
                self._record_loss(first, resume)
            if self._raise_losses:
                self._stash = events
                raise EventsLost(sum(r - f for f, r in losses), losses[0][0], losses[-1][1])
        return events

    def _record_loss(self, first: int, resume: int) -> None:
        """Record an events_lost event, without waiting: a full log (backpressure, or a
        journal behind) must not stall a read; `lost` counts the loss regardless."""
        payload = encode_payload(EventKind.EVENTS_LOST.value, None, None, None, self._log.writer, {
            "lost": resume - first, "cause": "overwritten", "first_seq": first,
            "last_seq": resume - 1, "reader_pid": _own_pid,
        })
        try:
            self._log._append(payload, _time_ns(), 0, 0.0)
        except EventLogFull:
            pass

    def __iter__(self) -> Iterator[Event]:
        while batch := self.read():
            yield from batch

    def close(self) -> None:
        """Stop being waited for (registered readers); safe to call twice."""
        self._finalizer()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog:
    """The run's event log in shared memory; pickles by name and re-attaches elsewhere.

    capacity: bytes of events the ring holds (rounded up to a power of two);
    max_event_size: the largest encoded event (EventTooLarge above it);
    backpressure: writers wait for registered readers instead of overwriting;
    backpressure_timeout: how long a writer waits for room (None: no limit);
    journal: a JSONL file the creating process appends every event to;
    hash_chain: journal lines carry prev_hash and hash (needs a journal);
    hole_timeout: how long readers wait for a stalled writer before skipping its record;
    max_readers: how many readers may register at once (the journal takes one);
    writer: the default writer name of events this handle appends."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *,
                 max_event_size: int = DEFAULT_MAX_EVENT_SIZE, backpressure: bool = False,
                 backpressure_timeout: float | None = DEFAULT_BACKPRESSURE_TIMEOUT,
                 journal: JournalPath | None = None, hash_chain: bool = False,
                 hole_timeout: float = DEFAULT_HOLE_TIMEOUT,
                 max_readers: int = DEFAULT_MAX_READERS, writer: str | None = None,
                 run_id: str | None = None, _segment: Segment | None = None,
                 _first_seq: int = 0) -> None:
        self.writer = writer
        self._journal: JournalWriter | None = None
        self._journal_holder: list[JournalWriter] = []  # read by the finalizer
        self.load_report: JournalReport | None = None
        if _segment is not None:
            try:
                self._bind(_segment, _attach_ring(_segment))
            except BaseException:
                _segment.close()
                raise
            return
        _check_options(capacity, max_event_size, backpressure_timeout, hole_timeout, max_readers)
        if hash_chain and journal is None:
            raise InvalidEventLog("hash_chain=True needs journal=path: the chain lives in the journal")
        last, cut_short = journal_tail(journal) if journal is not None else (None, False)
        if last is not None:
            _first_seq = last.seq + 1  # continue the journal's numbering and chain
        capacity, slots, ring_bytes = _ring_geometry(capacity, max_readers)
        segment = Segment.create(KIND, _RING - HEADER_SIZE + ring_bytes,
                                 layout_version=LAYOUT_VERSION, run_id=run_id)
        try:
            region = segment.region
            region.store(_FLAGS, (_BACKPRESSURE_FLAG if backpressure else 0)
                         | (_JOURNALED_FLAG if journal is not None else 0))
            region.store(_HOLE_TIMEOUT, round(hole_timeout * 1e9))
            region.store(_BACKPRESSURE_TIMEOUT, NO_TIMEOUT if backpressure_timeout is None
                         else round(backpressure_timeout * 1e9))
            ring = _native.Ring.create(region, _RING, ring_bytes, capacity, slots, max_readers,
                                       max_event_size, _first_seq)
            self._bind(segment, ring)
            if journal is not None:
                self._start_journal(journal, hash_chain, last, cut_short)
            segment.mark_ready()
        except BaseException:
            finalizer = getattr(self, "_finalizer", None)
            if finalizer is not None:
                finalizer()
            else:
                segment.close()
            raise

    def _bind(self, segment: Segment, ring: _native.Ring) -> None:
        self._segment = segment
        self._ring = ring
        region = segment.region
        flags = region.load(_FLAGS)
        self.backpressure = bool(flags & _BACKPRESSURE_FLAG)
        self.journaled = bool(flags & _JOURNALED_FLAG)  # its creator drains it to a journal
        self.hole_timeout = region.load(_HOLE_TIMEOUT) / 1e9
        timeout_ns = region.load(_BACKPRESSURE_TIMEOUT)
        self.backpressure_timeout = None if timeout_ns == NO_TIMEOUT else timeout_ns / 1e9
        if not 0 < self.hole_timeout < 1e6 or not (
                self.backpressure_timeout is None or self.backpressure_timeout < 1e9):
            ring.release()
            raise SegmentCorrupt(
                f"event log {segment.name} holds impossible timeouts; it was overwritten: "
                "recreate it (remove leftovers with `carmp cleanup`)"
            )
        self.max_event_size = ring.max_record
        self.capacity = ring.capacity
        self._append_payload = ring.append
        self._finalizer = weakref.finalize(self, _close_log, ring, segment, self._journal_holder,
                                           self.hole_timeout + CLOSE_GRACE)
        _open_logs.add(self)

    def _start_journal(self, path: JournalPath, chain: bool, last: Event | None,
                       cut_short: bool) -> None:
        first_seq = self._ring.first_seq
        slot = self._ring.register(first_seq)
        if slot < 0:
            raise InvalidEventLog("max_readers must be at least 1 for the journal's drainer")
        cursor = _Cursor(self._ring, first_seq, slot, self.hole_timeout)
        self._journal = JournalWriter(path, cursor, chain=chain,
                                      prev_hash=last.hash if last is not None else None,
                                      newline_first=cut_short, wake=self._ring.wake)
        self._journal_holder.append(self._journal)
        self._journal.start()

    # ---- identity and lifecycle --------------------------------------------------------

    @classmethod
    def attach(cls, name: str) -> EventLog:
        """Attach the event log segment `name` that another process created."""
        return cls(_segment=Segment.attach(name, kind=KIND, layout_version=LAYOUT_VERSION))

    @classmethod
    def with_journal(cls, path: JournalPath, **options: Any) -> EventLog:
        """CAR's constructor name: EventLog(journal=path, **options)."""
        return cls(journal=path, **options)

    @property
    def name(self) -> str:
        return self._segment.name

    @property
    def journal_path(self) -> str | None:
        return str(self._journal.path) if self._journal is not None else None

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (EventLog.attach, (self._segment.name,))

    def close(self) -> None:
        """Detach. In the creating process this first drains the journal (holes settle
        within hole_timeout), then removes the segment. Safe to call twice."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<EventLog {self._segment.name} closed>"
        return f"<EventLog {self._segment.name} events={len(self)} capacity={self.capacity}>"

    # ---- writing -------------------------------------------------------------------------

    def append(self, kind: str, action_id: str | None = None, proposal_id: str | None = None,
               data: dict[str, Any] | None = None, *, run_id: str | None = None,
               writer: str | None = None) -> Event:
        """Append an event stamped with this process's clock and pid; returns it with its
        sequence number. Waits for room only in backpressure (or journaled) logs."""
        if type(kind) is not str or not kind:
            kind = kind_name(kind)
        if data is None:
            data = {}
        if writer is None:
            writer = self.writer
        if type(data) is not dict or not (action_id is None or type(action_id) is str) \
                or not (proposal_id is None or type(proposal_id) is str) \
                or not (run_id is None or type(run_id) is str) \
                or not (writer is None or type(writer) is str):
            check_fields(kind, action_id, proposal_id, run_id, writer, data)
        try:  # encode_payload, inlined: this is every writer's hot path
            payload = _dumps([kind, action_id, proposal_id, run_id, writer, data, None, None])
        except TypeError as exc:
            raise not_json(exc) from None
        timestamp_ns = _time_ns()
        if len(payload) > self.max_event_size:
            raise self._too_large(len(payload))
        try:
            seq: int = self._append_payload(payload, timestamp_ns, self.backpressure_timeout)
        except TimeoutError:
            raise self._full() from None
        if seq < 0:
            seq = self._append(payload, timestamp_ns, 0, self.backpressure_timeout)
        return _new_event(Event, (seq, timestamp_ns, _own_pid, kind, action_id, proposal_id,
                                  run_id, writer, data, None, None))

    def _append(self, payload: bytes, timestamp_ns: int, pid: int,
                timeout: float | None) -> int:
        """Append a payload (pid 0: this process's) until it commits; the seq it got."""
        if len(payload) > self.max_event_size:
            raise self._too_large(len(payload))
        try:
            seq: int = self._append_payload(payload, timestamp_ns, timeout, pid)
            while seq < 0:  # readers gave up on us mid-append (we stalled): append again
                seq = self._append_payload(payload, timestamp_ns, timeout, pid)
        except TimeoutError:
            raise self._full() from None
        return seq

    def _too_large(self, size: int) -> EventTooLarge:
        return event_too_large(size, self.max_event_size)

    def _full(self) -> EventLogFull:
        return EventLogFull(
            f"no room in {self.name} for {self.backpressure_timeout} s: registered readers "
            "(or the journal) have not read the events that room holds. Read faster, close "
            "readers you no longer use, raise backpressure_timeout, or give the log more capacity"
        )

    # ---- reading ---------------------------------------------------------------------------

    def reader(self, from_seq: int | None = None, *, register: bool | None = None,
               on_lost: Literal["record", "raise"] = "record") -> EventReader:
        """A reader from `from_seq` (default: the oldest event still held). Registered
        readers (the default in backpressure mode) are waited for by writers."""
        start = self.oldest_seq if from_seq is None else max(from_seq, self._ring.first_seq)
        return EventReader(self, start, register=self.backpressure if register is None else register,
                           on_lost=on_lost)

    def iter_from(self, seq: int) -> Iterator[Event]:
        """Events from `seq` up to the newest committed one, oldest first; events the ring
        no longer holds are skipped."""
        cursor = _Cursor(self._ring, max(seq, self._ring.first_seq), -1, self.hole_timeout)
        while batch := cursor.read(READ_BATCH, 0.0):
            yield from batch

    def __iter__(self) -> Iterator[Event]:
        return self.iter_from(self.oldest_seq)

    def events(self) -> list[Event]:
        """Every event the ring still holds, oldest first."""
        return list(self.iter_from(self.oldest_seq))  # no len() hint: it counts every append

    def tail(self, n: int) -> list[Event]:
        """The newest n events (fewer if the ring holds fewer)."""
        if n <= 0:
            return []
        return list(self.iter_from(max(self.oldest_seq, self.next_seq - n)))[-n:]

    def filter(self, kind: str | None = None, action_id: str | None = None) -> list[Event]:
        """Events still held with this kind and/or action_id."""
        wanted = None if kind is None else kind_name(kind)
        return [event for event in self
                if (wanted is None or event.kind == wanted)
                and (action_id is None or event.action_id == action_id)]

    def follow(self, timeout: float | None = None, *, from_seq: int | None = None) -> Iterator[Event]:
        """Yield events as they are committed, from `from_seq` (default: only new ones),
        sleeping until a commit wakes the reader; ends once `timeout` s pass with no new
        event (None: never)."""
        start = self.next_seq if from_seq is None else from_seq
        with self.reader(start) as reader:
            while batch := reader.read(READ_BATCH, timeout):
                yield from batch

    @property
    def next_seq(self) -> int:
        """The sequence number the next append gets."""
        return int(self._ring.next_seq())

    @property
    def oldest_seq(self) -> int:
        """The oldest event the ring still holds."""
        return int(self._ring.stats()[2])

    def __len__(self) -> int:
        """Events appended so far, by every process (the ring may hold fewer)."""
        return min(max(0, self.next_seq - self._ring.first_seq), sys.maxsize)

    def is_empty(self) -> bool:
        return len(self) == 0

    def stats(self) -> EventLogStats:
        next_seq, next_pos, oldest, abandoned, full_waits, registered, reaped = self._ring.stats()
        spans = span_bytes = 0
        for event in self.iter_from(oldest):
            if event.kind == EventKind.SPAN_STARTED:
                spans += 1
            if event.kind in (EventKind.SPAN_STARTED, EventKind.SPAN_ENDED):
                span_bytes += len(encode_payload(event.kind, None, None, None, None, event.data))
        return EventLogStats(
            events=len(self), spans=spans, approx_event_bytes=min(next_pos, self.capacity),
            approx_span_bytes=span_bytes, retained=next_seq - oldest, oldest_seq=oldest,
            next_seq=next_seq, capacity=self.capacity, holes=abandoned, full_waits=full_waits,
            readers_registered=registered, readers_reaped=reaped,
            journaled_seq=self._journal.journaled_seq if self._journal is not None else None,
        )

    # ---- durability ---------------------------------------------------------------------------

    def sync(self, timeout: float | None = None) -> None:
        """Block until every event appended so far is in the journal and fsynced (creator
        only). Default timeout: the hole timeout plus CLOSE_GRACE."""
        if self._journal is None or self._journal.owner_pid != os.getpid():
            raise EventLogError(
                f"{self.name} has no journal here: sync() works in the process that created "
                "the log with journal=path"
            )
        self._journal.sync(self.next_seq, self.hole_timeout + CLOSE_GRACE if timeout is None else timeout)

    @classmethod
    def load(cls, path: JournalPath, *, strict: bool = False, capacity: int | None = None,
             **options: Any) -> EventLog:
        """A new log holding a journal's events with their seq, time, writer and hashes.
        Bad lines are skipped and reported (log.load_report, one EventJournalWarning), and
        stand in the log as events_lost events so later sequence numbers still match;
        strict=True raises JournalCorrupt instead. The ring is sized to hold every event
        unless `capacity` says otherwise (then the oldest are overwritten)."""
        if "journal" in options:
            raise InvalidEventLog("load() builds a log from a journal; it does not write one")
        events, report = read_journal(path, strict=strict)
        missing = events[-1].seq - events[0].seq + 1 - len(events) if events else 0
        if missing > MAX_MISSING_SEQS:  # each would cost a gap event and ring space
            raise JournalCorrupt(
                f"{path}: its events skip {missing:,} sequence numbers between seq "
                f"{events[0].seq} and seq {events[-1].seq}, more than lines lost explain: "
                "seq fields are corrupt; find the line whose seq jumps, fix or remove it, "
                "and load again")
        payloads = [encode_payload(event.kind, event.action_id, event.proposal_id, event.run_id,
                                   event.writer, event.data, event.prev_hash, event.hash)
                    for event in events]
        max_size = max((len(p) for p in payloads), default=0)
        max_event_size = max(options.pop("max_event_size", DEFAULT_MAX_EVENT_SIZE),
                             _power_of_two_at_least(max_size))
        if capacity is None:
            span = events[-1].seq - events[0].seq + 1 if events else 1
            needed = sum(len(p) + 8 for p in payloads) + 64 * span
            capacity = max(DEFAULT_CAPACITY, 2 * needed, 4 * max_event_size,
                           span * BYTES_PER_DESCRIPTOR)
        log = cls(capacity, max_event_size=max_event_size,
                  _first_seq=events[0].seq if events else 0, **options)
        try:
            for event, payload in zip(events, payloads):
                while log.next_seq < event.seq:  # a skipped line held this seq
                    log.append(EventKind.EVENTS_LOST, data={
                        "lost": 1, "cause": "journal_line_unreadable", "journal": str(path)})
                log._append(payload, event.timestamp_ns, event.pid, log.backpressure_timeout)
        except BaseException:
            log.close()
            raise
        log.load_report = report
        return log

    # ---- spans ----------------------------------------------------------------------------------

    def begin_span(self, name: str, trace_id: str, parent_span_id: str | None = None,
                   attributes: dict[str, Any] | None = None) -> str:
        """Open a span (a span_started event); returns its new span id (16 hex digits)."""
        if type(name) is not str or type(trace_id) is not str:
            raise InvalidEvent("a span's name and trace_id must be str")
        span_id = secrets.token_hex(8)
        self.append(EventKind.SPAN_STARTED, data={
            "span_id": span_id, "trace_id": trace_id, "parent_span_id": parent_span_id,
            "name": name, "attributes": {} if attributes is None else attributes,
        })
        return span_id

    def end_span(self, span_id: str, status: SpanStatus | str = SpanStatus.OK,
                 message: str | None = None) -> None:
        """Close a span (a span_ended event) with its status and end time."""
        self.append(EventKind.SPAN_ENDED, data={
            "span_id": span_id, "status": span_status(status).value, "message": message,
        })

    def spans(self) -> list[Span]:
        """Spans whose start is still in the ring, in start order."""
        span_kinds = (EventKind.SPAN_STARTED, EventKind.SPAN_ENDED)
        return fold_spans(event for event in self if event.kind in span_kinds)

    def export_traces(self, service_name: str = "carmp") -> str:
        """The spans as OTLP/JSON (an ExportTraceServiceRequest body)."""
        return otlp_json(self.spans(), service_name)


def event_too_large(size: int, max_event_size: int) -> EventTooLarge:
    """The error of an event that encodes to more than max_event_size bytes (also raised
    by clients that encode before sending, such as the Ray backend's)."""
    return EventTooLarge(
        f"the event encodes to {size} bytes, over this log's max_event_size of "
        f"{max_event_size}; put bulky data in the state store and reference it, "
        "or create the log with a larger max_event_size"
    )


def _attach_ring(segment: Segment) -> _native.Ring:
    try:
        return _native.Ring.attach(segment.region, _RING, segment.size - _RING)
    except ValueError:
        raise SegmentCorrupt(
            f"event log {segment.name} has no valid ring header; it was overwritten or is "
            "not an event log: recreate it (remove leftovers with `carmp cleanup`)"
        ) from None


def _check_options(capacity: int, max_event_size: int, backpressure_timeout: float | None,
                   hole_timeout: float, max_readers: int) -> None:
    def whole(value: object) -> bool:
        return type(value) is int

    if not whole(max_event_size) or max_event_size < MIN_MAX_EVENT_SIZE:
        raise InvalidEventLog(f"max_event_size must be an int >= {MIN_MAX_EVENT_SIZE}, got {max_event_size!r}")
    if not whole(capacity) or _power_of_two_at_least(capacity) < 4 * max_event_size:
        raise InvalidEventLog(
            f"capacity must be an int of at least 4 x max_event_size ({4 * max_event_size} "
            f"bytes), got {capacity!r}; raise capacity or lower max_event_size"
        )
    if _power_of_two_at_least(capacity) > 1 << 40:
        raise InvalidEventLog(f"capacity {capacity} is over the 1 TiB a ring can hold")
    if not (isinstance(hole_timeout, (int, float)) and 0 < hole_timeout < 1e6):
        raise InvalidEventLog(f"hole_timeout must be seconds > 0, got {hole_timeout!r}")
    if backpressure_timeout is not None and not (
            isinstance(backpressure_timeout, (int, float)) and 0 <= backpressure_timeout < 1e9):
        raise InvalidEventLog(f"backpressure_timeout must be seconds >= 0 or None, got {backpressure_timeout!r}")
    if not whole(max_readers) or not 1 <= max_readers <= _native.RING_MAX_READERS:
        raise InvalidEventLog(
            f"max_readers must be an int in 1..{_native.RING_MAX_READERS}, got {max_readers!r}")


def _close_log(ring: _native.Ring, segment: Segment, journal: list[JournalWriter],
               drain_timeout: float) -> None:
    """Finalizer of an EventLog: drain the journal (creator), release the ring here once no
    call waits inside it, then detach (the creator also unlinks)."""
    try:
        if journal and journal[0].owner_pid == os.getpid():
            journal[0].stop(drain_timeout)
    finally:
        deadline = _monotonic() + CLOSE_GRACE
        while ring.release() > 0 and _monotonic() < deadline:
            time.sleep(0.001)  # waiting calls were woken and leave within a moment
        segment.close()


_open_logs: weakref.WeakSet[EventLog] = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:
    """Registered after segment.py's own exit hook, so it runs first: a ring still holding
    its segment's mapping would keep that segment from closing."""
    for log in list(_open_logs):
        log.close()
