"""StateStore: CAR's shared JSON key/value world, one segment that every process attaches.

CAR semantics (car-state): `get`/`set`/`delete`/`keys`/`snapshot`, and every change
yields a StateTransition(key, old_value, new_value, action_id, timestamp) kept in an
ordered log; `restore(snapshot, transition_count)` rolls back a proposal and
`replace_all(snapshot)` restores a checkpoint and clears the log. Values cross
processes as JSON (orjson), never pickle.

Beyond CAR: a version per key (`get_with_version`, `compare_and_set`, `update`), atomic
multi-key batches (`transaction()`, `apply()`), TTLs with `reap_expired`, a bounded
transition log that says when it dropped entries, and an opt-in JSONL journal.

How it holds up across processes: the hash table lives in native/table.c. Reads take
no lock (one native call: hash, probe, a copy checked against the bucket's sequence
word). Writes hold the store's RobustLock and are batches with an undo record: a
writer SIGKILLed anywhere leaves the old or the new values, and the next holder of the
lock repairs the table (`on_recover`). A read that finds a bucket busy for too long
takes the lock, which waits for a live writer or repairs a dead one's batch.

Payload layout (offsets from the payload start, little-endian 8-byte words):

    offset  size                 field
    0       8                    journal generation: bumped by every rewrite, so that
                                 processes reopen the journal file after a compaction
    8       8                    journal path length in bytes (0: not durable)
    64      4096                 journal path, UTF-8, NUL-padded
    4160    RobustLock.size(0)   the write lock
    4288    table_size(...)      the hash table (layout in native/table.c): buckets with
                                 sequence words, entries, undo log, value arena, and the
                                 transition ring
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from carmp import _native
from carmp.errors import (
    KeyTooLarge,
    SegmentCorrupt,
    StateFull,
    StateJournalWarning,
    TransitionsDropped,
    ValueTooLarge,
)
from carmp.shared.lock import RobustLock
from carmp.shared.segment import HEADER_SIZE, Segment, store_bytes

LAYOUT_VERSION = 1
KIND = "state"
DEFAULT_MAX_KEYS = 65_536
DEFAULT_CAPACITY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_KEY_BYTES = 1024
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_TRANSITION_LOG_BYTES = 4 * 1024 * 1024
MAX_JOURNAL_PATH = 4096

_P = HEADER_SIZE
JOURNAL_GENERATION = _P
JOURNAL_PATH_LENGTH = _P + 8
JOURNAL_PATH = _P + 64
LOCK = JOURNAL_PATH + MAX_JOURNAL_PATH
TABLE = LOCK + RobustLock.size(0)

_loads = orjson.loads
_dumps = orjson.dumps


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()
"""In `apply()` changes: remove this key."""


_UNDECODED: Any = object()


class StateTransition:
    """One change: `old_value`/`new_value` are None when the key was or is absent;
    `timestamp` is seconds since the epoch; `version` is the key's version the change left
    (what compare_and_set and expected_versions compare against). Values read from the store decode from JSON
    when first asked for, so writes that ignore their transition pay nothing for it."""

    __slots__ = ("key", "action_id", "timestamp", "version", "_old", "_new", "_old_json",
                 "_new_json")
    _old_json: bytes | None
    _new_json: bytes | None

    def __init__(self, key: str, old_value: Any, new_value: Any, action_id: str,
                 timestamp: float, version: int = 0) -> None:
        self.key = key
        self.action_id = action_id
        self.timestamp = timestamp
        self.version = version
        self._old = old_value
        self._new = new_value

    @classmethod
    def _from_json(cls, key: str, old: bytes | None, new: bytes | None, action_id: str,
                   timestamp_ns: int, version: int) -> StateTransition:
        transition = cls.__new__(cls)
        transition.key = key
        transition.action_id = action_id
        transition.timestamp = timestamp_ns / 1e9
        transition.version = version
        transition._old = transition._new = _UNDECODED
        transition._old_json = old
        transition._new_json = new
        return transition

    @property
    def old_value(self) -> Any:
        if self._old is _UNDECODED:
            self._old = None if self._old_json is None else _loads(self._old_json)
        return self._old

    @property
    def new_value(self) -> Any:
        if self._new is _UNDECODED:
            self._new = None if self._new_json is None else _loads(self._new_json)
        return self._new

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "old_value": self.old_value, "new_value": self.new_value,
                "action_id": self.action_id, "timestamp": self.timestamp}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateTransition):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"StateTransition(key={self.key!r}, old_value={self.old_value!r}, "
                f"new_value={self.new_value!r}, action_id={self.action_id!r}, "
                f"timestamp={self.timestamp!r})")


@dataclass(frozen=True, slots=True)
class StateStatistics:
    keys: int
    max_keys: int
    bytes_used: int            # arena bytes in use, block overhead included
    capacity_bytes: int
    transitions: int           # transition_count()
    first_transition: int      # oldest index still in the log
    transitions_dropped: int   # evicted to make room, ever
    commits: int               # write batches committed
    writer_recoveries: int     # batches of dead writers undone or finished
    lock_recoveries: int


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What `apply()` did: `changed` lists keys whose version differed from the one
    expected; `applied` is False when abort_on_change refused the batch."""

    transitions: list[StateTransition]
    changed: tuple[str, ...]
    applied: bool


T = TypeVar("T")
Op = tuple[str, bytes | None, int]
"""A prepared write: key, JSON bytes (None: delete), TTL deadline in ns (0: none)."""


class StateStore:
    """CAR's StateStore in shared memory; pickles by name and re-attaches elsewhere."""

    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS,
                 capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
                 max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
                 max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
                 transition_log_bytes: int = DEFAULT_TRANSITION_LOG_BYTES,
                 journal: str | os.PathLike[str] | None = None,
                 run_id: str | None = None, _segment: Segment | None = None) -> None:
        self._journal: _Journal | None = None
        if _segment is not None:
            self._bind(_segment)
            return
        geometry = _geometry(max_keys, capacity_bytes, max_key_bytes, max_value_bytes,
                             transition_log_bytes)
        path = None if journal is None else os.path.abspath(os.fspath(journal))
        replayed = replay_journal(path) if path is not None and os.path.exists(path) else {}
        size = _table_segment_size(geometry) - HEADER_SIZE
        segment = Segment.create(KIND, size, layout_version=LAYOUT_VERSION, run_id=run_id)
        try:
            _native.table_init(segment.region, TABLE, *geometry)
            RobustLock(segment.region, LOCK, undo_capacity=0).initialize()
            if path is not None:
                _store_path(segment.region, path)
            self._bind(segment)
            if replayed:
                self._load(replayed)
            if self._journal is not None:
                with self._lock:
                    self._journal.rewrite(self._table.items())
            segment.mark_ready()
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            segment.close()
            raise

    @classmethod
    def durable(cls, path: str | os.PathLike[str], **options: Any) -> StateStore:
        """CAR's durable store: replays `path` if it exists, then journals every change."""
        return cls(journal=path, **options)

    @classmethod
    def attach(cls, name: str) -> StateStore:
        """Attach the state segment `name` created by another process."""
        return cls(_segment=Segment.attach(name, kind=KIND, layout_version=LAYOUT_VERSION))

    def _bind(self, segment: Segment) -> None:
        self._segment = segment
        region = segment.region
        try:
            table = _native.Table(region, TABLE)
        except ValueError as exc:
            raise SegmentCorrupt(f"state segment {segment.name}: {exc}; remove it with "
                                 "`carmp cleanup` and recreate the store") from None
        self._table = table
        self._lock = RobustLock(region, LOCK, undo_capacity=0,
                                label=f"state lock of {segment.name}",
                                on_recover=self._repair)
        self.max_keys, self.capacity_bytes, self.transition_log_bytes, self.max_key_bytes, \
            self.max_value_bytes = table.config()
        self._key_chars_always_fit = self.max_key_bytes // 4  # UTF-8: at most 4 bytes a char
        path = _load_path(region)
        if path is not None:
            self._journal = _Journal(path, region)
        # bound natives for the hot paths
        self._read = table.get
        self._write = table.set

    def _repair(self) -> None:
        try:
            self._table.recover()
        except ValueError as exc:
            raise SegmentCorrupt(f"state segment {self.name}: {exc}; recreate the store "
                                 "(restore it from its journal, if it has one)") from None

    @property
    def name(self) -> str:
        return self._segment.name

    @property
    def journal_path(self) -> str | None:
        return None if self._journal is None else self._journal.path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (StateStore.attach, (self._segment.name,))

    def close(self) -> None:
        """Detach; in the creating process this also removes the segment."""
        if self._journal is not None:
            self._journal.close()
        self._segment.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StateStore {self._segment.name} keys={self._table.statistics()[0]}>"

    # ---- reads (lock-free) -------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value of `key`, or None when absent."""
        try:
            raw = self._read(key)
        except BlockingIOError:
            raw = self._locked(self._read, key)
        return None if raw is None else _loads(raw)

    def get_or(self, key: str, default: Any) -> Any:
        try:
            raw = self._read(key)
        except BlockingIOError:
            raw = self._locked(self._read, key)
        return default if raw is None else _loads(raw)

    def get_with_version(self, key: str) -> tuple[Any, int]:
        """(value, version); (None, 0) when absent. Versions grow with every write of any
        key, so a version names one write."""
        try:
            entry = self._table.get_entry(key)
        except BlockingIOError:
            entry = self._locked(self._table.get_entry, key)
        return (None, 0) if entry is None else (_loads(entry[0]), entry[1])

    def version(self, key: str) -> int:
        """The key's version, 0 when absent."""
        try:
            return self._table.version(key)
        except BlockingIOError:
            return self._locked(self._table.version, key)

    def exists(self, key: str) -> bool:
        return self.version(key) != 0

    def _locked(self, read: Callable[[str], T], key: str) -> T:
        with self._lock:
            return read(key)

    # ---- whole-store reads (under the lock: one consistent view) -----------------------

    def keys(self) -> list[str]:
        with self._lock:
            keys = self._table.keys()
        return sorted(keys)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the whole map, taken atomically."""
        with self._lock:
            items = self._table.items()
        return {key: _loads(data) for key, data, _, _ in sorted(items)}

    def transition_count(self) -> int:
        return self._table.log_bounds()[1]

    def transitions(self) -> list[StateTransition]:
        """The whole log; TransitionsDropped if the bounded log dropped any of it."""
        return self.transitions_since(0)

    def transitions_since(self, index: int) -> list[StateTransition]:
        """Transitions index, index + 1, ...; TransitionsDropped when some of them were
        dropped from the bounded log to make room."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"transition index must be an int >= 0, got {index!r}")
        with self._lock:
            first, count = self._table.log_bounds()
            if index < first:
                raise TransitionsDropped(
                    f"transitions {index}..{first - 1} of {self.name} were dropped to make room "
                    f"(the log keeps the newest that fit in its bytes); read "
                    f"transitions_since({first}), or create the store with a larger "
                    "transition_log_bytes", first_retained=first)
            rows = self._table.transitions(index) if index < count else []
        return [StateTransition._from_json(key, old, new, action, ts, version)
                for _, ts, version, key, action, old, new in rows]

    def statistics(self) -> StateStatistics:
        keys, max_keys, used, capacity, first, count, dropped, _, commits, recoveries = \
            self._table.statistics()
        return StateStatistics(
            keys=keys, max_keys=max_keys, bytes_used=used, capacity_bytes=capacity,
            transitions=count, first_transition=first, transitions_dropped=dropped,
            commits=commits, writer_recoveries=recoveries,
            lock_recoveries=self._lock.statistics().recoveries,
        )

    # ---- writes ---------------------------------------------------------------------------

    def set(self, key: str, value: Any, action_id: str, *, ttl: float | None = None) -> StateTransition:
        """Write `key`; `ttl` seconds from now makes it reapable by reap_expired()."""
        data = self.encode(key, value)
        expires = 0 if ttl is None else _deadline(ttl)
        now = time.time_ns()
        try:
            # One native call takes the lock, writes and lets go, unless the lock is busy
            # (None), was left by a dead writer (False), or a journal line must be written.
            done = None if self._journal is not None else \
                self._write(key, data, expires, action_id, now, LOCK)
            if type(done) is not tuple:
                done = self._set_holding_lock(done is False, key, data, expires, action_id, now)
        except BufferError as exc:
            raise self._full(exc) from None
        return StateTransition._from_json(key, done[0], data, action_id, now, done[2])

    def _set_holding_lock(self, taken_from_dead_owner: bool, key: str, data: bytes,
                          expires: int, action_id: str, now: int) -> tuple[bytes | None, int, int]:
        if taken_from_dead_owner:
            self._lock.take_over()
        else:
            self._lock.acquire()
        try:
            done = self._write(key, data, expires, action_id, now)
            if self._journal is not None:
                self._journal.append(_set_record(key, data, expires, action_id, now))
        finally:
            self._lock.release()
        assert type(done) is tuple
        return done

    def delete(self, key: str, action_id: str) -> StateTransition | None:
        """Remove `key`; None when it was absent."""
        transitions = self._commit([(self.check_key(key), None, 0)], action_id).transitions
        return transitions[0] if transitions else None

    def compare_and_set(self, key: str, expected_version: int, value: Any,
                        action_id: str = "compare_and_set", *, ttl: float | None = None) -> bool:
        """Write only if the key's version is still `expected_version` (0: absent)."""
        return bool(self._commit([self._op(key, value, ttl)], action_id,
                                 expected={key: expected_version}, abort_on_change=True).applied)

    def update(self, key: str, fn: Callable[[Any], Any], action_id: str = "update", *,
               ttl: float | None = None) -> StateTransition:
        """Set key to fn(current value or None), retrying when another writer got there
        first; fn may run more than once."""
        while True:
            value, version = self.get_with_version(key)
            outcome = self._commit([self._op(key, fn(value), ttl)], action_id,
                                   expected={key: version}, abort_on_change=True)
            if outcome.applied:
                return outcome.transitions[0]

    def apply(self, changes: Mapping[str, Any], action_id: str, *,
              ttls: Mapping[str, float] | None = None,
              expected_versions: Mapping[str, int] | None = None,
              abort_on_change: bool = False) -> BatchOutcome:
        """Apply {key: value, or DELETE} as one batch that other processes see whole.
        Keys whose version differs from `expected_versions` are reported as changed;
        with abort_on_change nothing is applied then."""
        ttls = ttls or {}
        ops = [(self.check_key(key), None, 0) if value is DELETE
               else self._op(key, value, ttls.get(key)) for key, value in changes.items()]
        return self._commit(ops, action_id, expected=expected_versions,
                            abort_on_change=abort_on_change)

    @contextlib.contextmanager
    def transaction(self, action_id: str = "transaction") -> Iterator[Transaction]:
        """`with store.transaction("a1") as tx: tx.set(...); tx.delete(...)`: the writes
        apply together when the block ends (others see all or none); nothing applies if
        the block raises."""
        tx = Transaction(self)
        yield tx
        tx.transitions = self._commit(list(tx._ops.values()), action_id).transitions

    def restore(self, snapshot: Mapping[str, Any], transition_count: int) -> None:
        """Replace the map with `snapshot` and cut the log back to `transition_count`
        entries (CAR's rollback); one atomic step."""
        self._replace(snapshot, transition_count)

    def replace_all(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the map with `snapshot`, record no transitions, and clear the log."""
        self._replace(snapshot, 0)

    def reap_expired(self, now: float | None = None) -> list[str]:
        """Remove keys whose TTL ran out by `now` (seconds since the epoch; default: now),
        each logged with action_id "reap_expired"; then compact the journal."""
        now_ns = time.time_ns() if now is None else int(now * 1e9)
        with self._lock:
            keys = self._table.expired(now_ns)
            if keys:
                self._apply_locked([(key, None, 0) for key in keys], "reap_expired",
                                   time.time_ns())
            if self._journal is not None:
                self._journal.rewrite(self._table.items())
        return sorted(keys)

    def sync(self) -> None:
        """fsync the journal (a no-op for a store without one)."""
        if self._journal is not None:
            with self._lock:
                self._journal.sync()

    def compact(self) -> None:
        """Rewrite the journal as a snapshot of the current map."""
        if self._journal is not None:
            with self._lock:
                self._journal.rewrite(self._table.items())

    # ---- internals --------------------------------------------------------------------------

    def check_key(self, key: str) -> str:
        """`key`, if this store can hold it: TypeError or KeyTooLarge otherwise."""
        if key.__class__ is str and len(key) <= self._key_chars_always_fit:
            return key
        if not isinstance(key, str):
            raise TypeError(f"state keys are str, not {type(key).__name__}: {key!r}")
        if len(key) > self._key_chars_always_fit and len(key.encode()) > self.max_key_bytes:
            raise KeyTooLarge(
                f"key {key[:40]!r}... is {len(key.encode())} bytes in UTF-8, over this store's "
                f"max_key_bytes={self.max_key_bytes}; use a shorter key or create the store "
                "with a larger max_key_bytes")
        return key

    def encode(self, key: str, value: Any) -> bytes:
        """The JSON bytes this store would keep for key's value: TypeError naming the key
        and the type for a non-JSON value, KeyTooLarge or ValueTooLarge over the limits."""
        if key.__class__ is not str or len(key) > self._key_chars_always_fit:
            self.check_key(key)
        try:
            data = _dumps(value)
        except TypeError as exc:  # orjson.JSONEncodeError
            raise TypeError(
                f"the value for state key {key!r} is a {type(value).__name__}, which is not "
                f"JSON ({exc}); store dicts, lists, str, int, float, bool or None, converting "
                "other types first") from None
        if len(data) > self.max_value_bytes:
            raise ValueTooLarge(
                f"the value for state key {key!r} is {len(data)} bytes as JSON, over this "
                f"store's max_value_bytes={self.max_value_bytes}; store less, split it over "
                "several keys, or create the store with a larger max_value_bytes")
        return data

    def _op(self, key: str, value: Any, ttl: float | None) -> Op:
        return (key, self.encode(key, value), 0 if ttl is None else _deadline(ttl))

    def _full(self, exc: BufferError) -> StateFull:
        what, key = exc.args if len(exc.args) == 2 else ("bytes", "?")
        stats = self.statistics()
        if what == "keys":
            return StateFull(
                f"state store {self.name} holds its maximum of {stats.max_keys} keys, so "
                f"{key!r} cannot be added; delete keys, reap expired ones, or create the store "
                "with a larger max_keys")
        return StateFull(
            f"state store {self.name} has no room for the value of {key!r}: "
            f"{stats.bytes_used} of {stats.capacity_bytes} arena bytes are in use (a batch "
            "also keeps the values it replaces until it commits); delete keys or create the "
            "store with a larger capacity_bytes")

    def _commit(self, ops: list[Op], action_id: str, *, expected: Mapping[str, int] | None = None,
                abort_on_change: bool = False) -> BatchOutcome:
        if not isinstance(action_id, str):
            raise TypeError(f"action_id must be a str, not {type(action_id).__name__}")
        with self._lock:
            changed = tuple(key for key, version in (expected or {}).items()
                            if self._table.version(key) != version)
            if changed and abort_on_change:
                return BatchOutcome([], changed, applied=False)
            transitions = self._apply_locked(ops, action_id, time.time_ns())
        return BatchOutcome(transitions, changed, applied=True)

    def _apply_locked(self, ops: list[Op], action_id: str, now: int) -> list[StateTransition]:
        try:
            results = self._table.apply([(key, data, expires, action_id)
                                         for key, data, expires in ops], now)
        except BufferError as exc:
            raise self._full(exc) from None
        transitions = []
        for (key, data, expires), (old, _, version) in zip(ops, results):
            if old is None and data is None:
                continue  # deleting an absent key changes nothing
            transitions.append(StateTransition._from_json(key, old, data, action_id, now,
                                                          version))
        if self._journal is not None and transitions:
            self._journal.append(b"".join(
                _set_record(key, data, expires, action_id, now) if data is not None
                else _delete_record(key, action_id, now) for key, data, expires in ops))
        return transitions

    def _replace(self, snapshot: Mapping[str, Any], transition_count: int) -> None:
        if isinstance(transition_count, bool) or not isinstance(transition_count, int) \
                or transition_count < 0:
            raise ValueError(f"transition_count must be an int >= 0, got {transition_count!r}")
        items: list[Op] = [(key, self.encode(key, value), 0) for key, value in snapshot.items()]
        with self._lock:
            recorded = self._table.log_bounds()[1]
            if transition_count > recorded:
                raise ValueError(
                    f"transition_count {transition_count} is more than the {recorded} "
                    "transitions recorded; pass the count taken with the snapshot")
            self._load_locked(items, transition_count)
            if self._journal is not None:
                self._journal.rewrite(self._table.items())

    def _load(self, items: Mapping[str, tuple[bytes, int]]) -> None:
        with self._lock:
            self._load_locked([(key, data, expires) for key, (data, expires) in items.items()], 0)

    def _load_locked(self, items: list[Op], transition_count: int) -> None:
        for key, data, _ in items:
            self.check_key(key)
            if data is not None and len(data) > self.max_value_bytes:
                raise ValueTooLarge(f"the value for state key {key!r} is {len(data)} bytes, "
                                    f"over max_value_bytes={self.max_value_bytes}; create the "
                                    "store with a larger max_value_bytes to load it")
        try:
            self._table.replace(items, time.time_ns(), transition_count)
        except BufferError as exc:
            raise self._full(exc) from None


class Transaction:
    """Writes buffered by `StateStore.transaction()`; reads see them first."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._ops: dict[str, Op] = {}
        self.transitions: list[StateTransition] = []  # filled when the block ends

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        self._ops[key] = self._store._op(key, value, ttl)

    def delete(self, key: str) -> None:
        self._ops[key] = (self._store.check_key(key), None, 0)

    def get(self, key: str) -> Any:
        if key in self._ops:
            data = self._ops[key][1]
            return None if data is None else _loads(data)
        return self._store.get(key)


# ---- geometry and the segment's journal path ---------------------------------------------


def _geometry(max_keys: int, capacity_bytes: int, max_key_bytes: int, max_value_bytes: int,
              transition_log_bytes: int) -> tuple[int, int, int, int, int, int]:
    for name, value, low in (("max_keys", max_keys, 1), ("capacity_bytes", capacity_bytes, 64),
                             ("max_key_bytes", max_key_bytes, 1),
                             ("max_value_bytes", max_value_bytes, 0),
                             ("transition_log_bytes", transition_log_bytes, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if max_keys > 2**30 or max_key_bytes > 2**20 or max_value_bytes > 2**31:
        raise ValueError("max_keys is at most 2**30, max_key_bytes 2**20, max_value_bytes 2**31")
    return (max_keys, capacity_bytes // 16 * 16, transition_log_bytes // 8 * 8, max_key_bytes,
            max_value_bytes, secrets.randbits(64))


def segment_size(*, max_keys: int = DEFAULT_MAX_KEYS,
                 capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
                 max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
                 max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
                 transition_log_bytes: int = DEFAULT_TRANSITION_LOG_BYTES) -> int:
    """The /dev/shm bytes (header included) of a store with these limits, so a world can
    check that all its segments fit before it creates any."""
    return _table_segment_size(_geometry(max_keys, capacity_bytes, max_key_bytes,
                                         max_value_bytes, transition_log_bytes))


def _table_segment_size(geometry: tuple[int, ...]) -> int:
    return TABLE + _native.table_size(*geometry)


def _store_path(region: _native.Region, path: str) -> None:
    raw = path.encode()
    if len(raw) > MAX_JOURNAL_PATH:
        raise ValueError(f"journal path is {len(raw)} bytes; at most {MAX_JOURNAL_PATH}")
    store_bytes(region, JOURNAL_PATH, raw)
    region.store(JOURNAL_PATH_LENGTH, len(raw))


def _load_path(region: _native.Region) -> str | None:
    length = region.load(JOURNAL_PATH_LENGTH)
    if length == 0:
        return None
    if length > MAX_JOURNAL_PATH:
        raise SegmentCorrupt(f"state segment journal path length {length} is corrupt")
    raw = region.read(JOURNAL_PATH, length)
    try:
        if b"\0" not in raw:
            return raw.decode()
    except UnicodeDecodeError:
        pass
    raise SegmentCorrupt(f"state segment journal path {raw[:60]!r} is corrupt (not a UTF-8 "
                         "path); recreate the store from its journal")


def _deadline(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
            or ttl < 0:
        raise ValueError(f"ttl must be a finite number of seconds >= 0, got {ttl!r}")
    return time.time_ns() + int(ttl * 1e9)


# ---- the journal: JSONL, one record per line, each with a CRC32C --------------------------
#
#   {"crc":"<8 hex digits>","rec":<record>}\n
#
# where the CRC32C covers the record's bytes exactly as written, and a record is
#   {"op":"set","key":K,"value":V,"expires_ns":E,"action_id":A,"ts":T}
#   {"op":"delete","key":K,"action_id":A,"ts":T}
# Replay applies them in order (last write wins) and drops keys whose TTL ran out.

_LINE_HEAD = b'{"crc":"'
_LINE_MIDDLE = b'","rec":'
_REC_AT = len(_LINE_HEAD) + 8 + len(_LINE_MIDDLE)


def _line(record: bytes) -> bytes:
    return b"%s%08x%s%s}\n" % (_LINE_HEAD, _native.crc32c(record), _LINE_MIDDLE, record)


def _set_record(key: str, data: bytes, expires_ns: int, action_id: str, ts: int) -> bytes:
    return _line(_dumps({"op": "set", "key": key, "value": orjson.Fragment(data),
                         "expires_ns": expires_ns, "action_id": action_id, "ts": ts}))


def _delete_record(key: str, action_id: str, ts: int) -> bytes:
    return _line(_dumps({"op": "delete", "key": key, "action_id": action_id, "ts": ts}))


def _parse_line(line: bytes) -> dict[str, Any]:
    """One journal line's record; ValueError saying why when it is malformed."""
    if not line.endswith(b"}") or not line.startswith(_LINE_HEAD) \
            or line[_REC_AT - len(_LINE_MIDDLE):_REC_AT] != _LINE_MIDDLE:
        raise ValueError("not a journal record")
    record = line[_REC_AT:-1]
    try:
        crc = int(line[len(_LINE_HEAD):len(_LINE_HEAD) + 8], 16)
    except ValueError:
        raise ValueError("unreadable CRC") from None
    if _native.crc32c(record) != crc:
        raise ValueError("CRC mismatch")
    try:
        parsed = _loads(record)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"bad JSON: {exc}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("key"), str):
        raise ValueError("record without a str key")
    if parsed.get("op") == "set":
        expires = parsed.get("expires_ns")
        if "value" not in parsed or isinstance(expires, bool) or not isinstance(expires, int) \
                or expires < 0:
            raise ValueError("set record without a value or expires_ns")
    elif parsed.get("op") != "delete":
        raise ValueError(f"unknown op {parsed.get('op')!r}")
    return parsed


def replay_journal(path: str) -> dict[str, tuple[bytes, int]]:
    """key -> (JSON bytes, TTL deadline) after every record of the journal at `path`,
    skipping malformed lines with a StateJournalWarning and keys whose TTL ran out. Reads
    only: what `carmp state` uses to show a journal without opening (and compacting) it."""
    state: dict[str, tuple[bytes, int]] = {}
    with open(path, "rb") as journal:
        for number, line in enumerate(journal, start=1):
            line = line.rstrip(b"\n")
            if not line:
                continue
            try:
                record = _parse_line(line)
            except ValueError as exc:
                warnings.warn(
                    f"{path}:{number}: skipped a malformed state journal line ({exc}): "
                    f"{line[:60]!r}; the other lines were replayed", StateJournalWarning,
                    stacklevel=4)
                continue
            if record["op"] == "set":
                state[record["key"]] = (_dumps(record["value"]), record["expires_ns"])
            else:
                state.pop(record["key"], None)
    now = time.time_ns()
    return {key: entry for key, entry in state.items() if entry[1] == 0 or entry[1] > now}


class _Journal:
    """The store's JSONL journal in this process. Appends happen under the store lock,
    so lines land in commit order; a rewrite bumps the shared generation word so other
    processes reopen the new file before their next append."""

    def __init__(self, path: str, region: _native.Region) -> None:
        self.path = path
        self._region = region
        self._fd = -1
        self._generation = -1
        self._pid = 0

    def _file(self) -> int:
        generation = self._region.load(JOURNAL_GENERATION)
        if self._fd < 0 or generation != self._generation or self._pid != os.getpid():
            self.close()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
            self._generation = generation
            self._pid = os.getpid()
        return self._fd

    def append(self, lines: bytes) -> None:
        fd = self._file()
        view = memoryview(lines)
        while view:
            view = view[os.write(fd, view):]

    def sync(self) -> None:
        os.fsync(self._file())

    def rewrite(self, items: list[tuple[str, bytes, int, int]]) -> None:
        """Replace the journal with one set record per key, atomically (rename)."""
        temporary = f"{self.path}.{os.getpid()}.tmp"
        now = time.time_ns()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            body = b"".join(_set_record(key, data, expires, "compact", now)
                            for key, data, _, expires in sorted(items))
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._region.fetch_add(JOURNAL_GENERATION, 1)

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1
