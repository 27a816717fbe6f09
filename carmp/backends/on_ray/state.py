"""The state store on Ray: the local StateStore, sharded over PrimitiveHost actors.

Each shard is one host actor holding a `StateShard`: a local StateStore (the same code,
limits and JSONL journal, `<journal_dir>/state-<i>.journal`) plus what a shard needs
beyond it. A restarted shard replays its journal. `RayStateStore` is the client: the
StateStore surface carmp uses, forwarding to the shards by a stable hash of the key
(crc32 of its UTF-8). It pickles as its actor handles, so it travels into workers.

- Values are encoded and checked client-side (limits fetched once from shard 0), so a bad
  key or value fails before any call, with the local error types; ops travel as JSON
  bytes, never as pickled values.
- Versions are per shard. A shard adds its incarnation (`epoch`, bumped and journaled at
  every start) above bit 40 of every version it reports: a restart renumbers the keys,
  and a version read before it must not match a different write after it. So a version
  still names one write of its key, and compare-and-set works per key as locally.
- A batch whose keys map to one shard is one call. Across shards it is a two-phase
  commit: prepare locks the keys on each shard under a transaction id (or answers busy,
  or changed), then commit applies and unlocks, or abort unlocks. Any writer that meets a
  locked key retries with a short backoff. A prepared lock lapses after LOCK_SECONDS, so
  a client killed mid-commit wedges nothing; a commit that arrives after its lock lapsed
  (or after the shard restarted) re-checks the expected versions, and when they moved it
  raises WorldUnavailable, the one case where a cross-shard batch ends partly applied
  (like a StateFull raised by a later shard's commit).
- Idempotency that survives a restart: the host remembers replies in memory only. For
  each writer the shard also keeps `carmp.shard/idem/<writer>` = the key of its last
  applied mutation, written in the same atomic batch as the mutation, so it is journaled
  with it. A repeat of that key after a restart is answered "applied" rebuilt from the
  resent call (its transitions then carry old_value None and version 0: the earlier
  incarnation's are gone). A writer sends one mutation at a time, so one record each is
  enough; records are swept IDEMPOTENCY_SECONDS after their last use.
- Reserved keys (prefix `carmp.shard/`) are hidden from keys(), snapshot(), transitions
  and the key count, but take room: two per shard, and one per writer that wrote to it
  in the last IDEMPOTENCY_SECONDS, count against max_keys.
- Transition indices are the shard's own log positions, bookkeeping writes included: use
  transition_count() as a cursor, not as len(transitions()).
  Across shards, transitions() merges the shards' logs by commit timestamp (each shard's
  own order kept; writes on different shards within the same instant have no defined
  order), transition_count() is the sum of the shards', and transitions_since(i > 0) and
  restore() need shards=1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import os
import random
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson

from carmp.backends.on_ray.host import RESTART_WAIT, HostedClient, start_host
from carmp.backends.on_ray.incarnations import left_behind, unlink
from carmp.errors import BackendUnsupported, WorldUnavailable
from carmp.shared.state import (
    DELETE,
    BatchOutcome,
    Op,
    StateStatistics,
    StateStore,
    StateTransition,
)

RESERVED = "carmp.shard/"
IDEMPOTENCY = RESERVED + "idem/"
EPOCH = RESERVED + "epoch"
SEGMENT = RESERVED + "segment"
SHARD_ACTION = "carmp.shard"
EPOCH_SHIFT = 40              # a shard's own versions stay far below 2**40
LOCK_SECONDS = 5.0            # a prepared lock lapses after this
IDEMPOTENCY_SECONDS = 4 * RESTART_WAIT  # a record outlives every resend of its mutation
SWEEP_SECONDS = 10.0          # between sweeps of records past IDEMPOTENCY_SECONDS
FIRST_BACKOFF = 0.001
LONGEST_BACKOFF = 0.05

BUSY: Literal["busy"] = "busy"
LOST: Literal["lost"] = "lost"
Prepared = tuple[str, tuple[str, ...]]
"""A prepare's answer: ("prepared" | "changed" | "busy", the keys that changed or are busy)."""


def shard_index(key: str, shards: int) -> int:
    """The shard that holds `key`: stable across processes and restarts."""
    return zlib.crc32(key.encode()) % shards


def _ttls(ops: list[Op]) -> dict[str, float]:
    """Seconds left to each op's TTL deadline (the wire carries deadlines)."""
    now = time.time_ns()
    return {key: max(0.0, (expires - now) / 1e9) for key, _, expires in ops if expires}


class StateShard:
    """One shard, the object a PrimitiveHost hosts: a local StateStore, the two-phase
    commit locks, durable idempotency records and incarnation-stamped versions."""

    def __init__(self, **store_options: Any) -> None:
        self.store = StateStore(**store_options)
        previous = self.store.get(SEGMENT)
        epoch = int(self.store.get_or(EPOCH, 0)) + 1
        self.store.apply({EPOCH: epoch, SEGMENT: self.store.name}, SHARD_ACTION)
        if isinstance(previous, str) and left_behind(previous):
            unlink(previous)  # the killed incarnation could not remove its segment
        self._epoch = epoch
        self._offset = epoch << EPOCH_SHIFT
        self._locks: dict[str, tuple[str, float]] = {}  # key -> (txn, monotonic deadline)
        self._whole: tuple[str, float] | None = None    # a replace_all's lock on every key
        self._next_sweep = 0.0
        self._records = {key: self.store.get(key)["until"] for key in self.store.keys()
                         if key.startswith(IDEMPOTENCY)}

    def close(self) -> None:
        self.store.close()

    # ---- versions: the shard's own, stamped with its incarnation ----------------------

    def _out(self, version: int) -> int:
        return version + self._offset if version else 0

    def _in(self, version: int) -> int:
        if version == 0:
            return 0
        if version >> EPOCH_SHIFT != self._epoch:
            return -1  # from an earlier incarnation: matches no write of this one
        return version - self._offset

    def _portable(self, transition: StateTransition) -> StateTransition:
        """Decoded (so it pickles by value) and stamped with this incarnation."""
        _ = transition.old_value, transition.new_value
        transition.version = self._out(transition.version)
        return transition

    def _visible(self, transitions: list[StateTransition]) -> list[StateTransition]:
        return [self._portable(t) for t in transitions if not t.key.startswith(RESERVED)]

    # ---- reads --------------------------------------------------------------------

    def limits(self) -> tuple[int, int, int, int, int]:
        store = self.store
        return (store.max_keys, store.capacity_bytes, store.transition_log_bytes,
                store.max_key_bytes, store.max_value_bytes)

    def get(self, key: str) -> Any:
        return self.store.get(key)

    def get_or(self, key: str, default: Any) -> Any:
        return self.store.get_or(key, default)

    def get_with_version(self, key: str) -> tuple[Any, int]:
        value, version = self.store.get_with_version(key)
        return value, self._out(version)

    def version(self, key: str) -> int:
        return self._out(self.store.version(key))

    def keys(self) -> list[str]:
        return [key for key in self.store.keys() if not key.startswith(RESERVED)]

    def snapshot(self) -> dict[str, Any]:
        return {key: value for key, value in self.store.snapshot().items()
                if not key.startswith(RESERVED)}

    def transition_count(self) -> int:
        return self.store.transition_count()

    def transitions_since(self, index: int) -> list[StateTransition]:
        return self._visible(self.store.transitions_since(index))

    def statistics(self) -> StateStatistics:
        hidden = sum(1 for key in self.store.keys() if key.startswith(RESERVED))
        statistics = self.store.statistics()
        return dataclasses.replace(statistics, keys=statistics.keys - hidden)

    # ---- writes -------------------------------------------------------------------------

    def call_keyed(self, key: str, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """A mutation with its idempotency key: answered from the writer's durable record
        when it already applied, else run with that record written in its own batch."""
        writer, _, number = key.rpartition("-")
        record_key = IDEMPOTENCY + writer
        record = self.store.get(record_key)
        if isinstance(record, dict) and record.get("n") == number:
            return self._repeat(method, args)
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = now + SWEEP_SECONDS
        if method not in ("apply", "commit", "replace"):
            return getattr(self, method)(*args, **kwargs)
        until = now + IDEMPOTENCY_SECONDS
        self._records[record_key] = until
        return getattr(self, method)(*args, **kwargs, record=(record_key, {"n": number,
                                                                        "until": until}))

    def _repeat(self, method: str, args: tuple[Any, ...]) -> BatchOutcome | None:
        """The answer to a mutation (apply, commit or replace) that applied before this
        incarnation began, rebuilt from the resent call."""
        if method == "replace":
            return None
        ops: list[Op] = args[0] if method == "apply" else args[1]
        action_id: str = args[1] if method == "apply" else args[2]
        now = time.time()
        return BatchOutcome(
            [StateTransition(key, None, None if data is None else orjson.loads(data), action_id,
                             now) for key, data, _ in ops], (), applied=True)

    def _sweep(self, now: float) -> None:
        stale = [key for key, until in self._records.items() if until < now]
        if stale:
            self.store.apply(dict.fromkeys(stale, DELETE), SHARD_ACTION)
            for key in stale:
                del self._records[key]

    def _busy(self, keys: list[str], txn: str | None = None) -> tuple[str, ...]:
        """The keys a live prepared transaction other than `txn` holds. A lapsed lock met
        here is dropped, so the commit of its transaction re-checks its versions."""
        now = time.monotonic()
        if self._whole is not None and self._whole[0] != txn:
            if self._whole[1] > now:
                return ("*",)
            self._whole = None
        busy = []
        for key in keys:
            lock = self._locks.get(key)
            if lock is None or lock[0] == txn:
                continue
            if lock[1] > now:
                busy.append(key)
            else:
                del self._locks[key]
        return tuple(busy)

    def apply(self, ops: list[Op], action_id: str, expected: Mapping[str, int],
              abort_on_change: bool, *,
              record: tuple[str, Any] | None = None) -> BatchOutcome | Literal["busy"]:
        """A batch on this shard alone; BUSY while a prepared transaction holds a key."""
        if self._busy([key for key, _, _ in ops] + list(expected)):
            return BUSY
        return self._apply(ops, action_id, expected, abort_on_change, record)

    def _apply(self, ops: list[Op], action_id: str, expected: Mapping[str, int],
               abort_on_change: bool, record: tuple[str, Any] | None) -> BatchOutcome:
        changes: dict[str, Any] = {key: DELETE if data is None else orjson.Fragment(data)
                                   for key, data, _ in ops}
        if record is not None:
            changes[record[0]] = record[1]
        outcome = self.store.apply(
            changes, action_id, ttls=_ttls(ops), abort_on_change=abort_on_change,
            expected_versions={key: self._in(version) for key, version in expected.items()})
        return dataclasses.replace(outcome, transitions=self._visible(outcome.transitions))

    def prepare(self, txn: str, keys: list[str] | None, expected: Mapping[str, int],
                abort_on_change: bool) -> Prepared:
        """Phase one: lock `keys` (None: every key, for a replace) under `txn`."""
        busy = self._busy(list(self._locks) if keys is None else keys + list(expected), txn)
        if busy:
            return (BUSY, busy)
        changed = tuple(key for key, version in expected.items()
                        if self.store.version(key) != self._in(version))
        if changed and abort_on_change:
            return ("changed", changed)
        deadline = time.monotonic() + LOCK_SECONDS
        if keys is None:
            self._whole = (txn, deadline)
        for key in keys or ():
            self._locks[key] = (txn, deadline)
        for key in expected:
            self._locks[key] = (txn, deadline)
        return ("prepared", changed)

    def abort(self, txn: str) -> None:
        """Drop `txn`'s locks (a no-op when it holds none)."""
        for key in [key for key, lock in self._locks.items() if lock[0] == txn]:
            del self._locks[key]
        if self._whole is not None and self._whole[0] == txn:
            self._whole = None

    def commit(self, txn: str, ops: list[Op], action_id: str, expected: Mapping[str, int],
               abort_on_change: bool, *,
               record: tuple[str, Any] | None = None) -> BatchOutcome | Literal["busy", "lost"]:
        """Phase two. With its locks still held it applies as prepared; after they lapsed
        (or this shard restarted) it applies once no other transaction holds its keys, and
        only if nothing it expected has moved."""
        keys = [key for key, _, _ in ops] + list(expected)
        if all(self._locks.get(key, ("", 0.0))[0] == txn for key in keys):
            self.abort(txn)
            return self._apply(ops, action_id, {}, False, record)
        self.abort(txn)
        if self._busy(keys, txn):
            return BUSY
        outcome = self._apply(ops, action_id, expected, abort_on_change, record)
        return outcome if outcome.applied else LOST

    def replace(self, items: Mapping[str, bytes], transition_count: int, txn: str | None = None,
                *, record: tuple[str, Any] | None = None) -> Literal["busy"] | None:
        """restore()/replace_all() of this shard's part (under `txn`'s whole-shard lock
        when several shards replace together); the reserved keys stay."""
        if self._busy(list(self._locks), txn):
            return BUSY
        if txn is not None:
            self.abort(txn)
        kept = {key: value for key, value in self.store.snapshot().items()
                if key.startswith(RESERVED)}
        if record is not None:
            kept[record[0]] = record[1]
        self.store.restore({**{key: orjson.Fragment(data) for key, data in items.items()},
                            **kept}, transition_count)
        return None

    def reap_expired(self, now: float | None = None) -> list[str]:
        return [key for key in self.store.reap_expired(now) if not key.startswith(RESERVED)]

    def sync(self) -> None:
        self.store.sync()

    def compact(self) -> None:
        self.store.compact()


def start_state(journal_dir: str, *, shards: int = 1, **store_options: Any) -> RayStateStore:
    """`shards` StateShard actors journaling to `<journal_dir>/state-<i>.journal`, and a
    client for them. The directory must be on the machine (or a shared file system) where
    Ray places the actors, so that a restarted shard finds its journal."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an int >= 1, got {shards!r}")
    journal_dir = os.path.abspath(journal_dir)
    os.makedirs(journal_dir, exist_ok=True)
    clients = [start_host(functools.partial(
        StateShard, journal=os.path.join(journal_dir, f"state-{i}.journal"), **store_options),
        what=f"state shard {i}") for i in range(shards)]
    try:
        limits = clients[0].call("limits")
    except BaseException:
        for client in clients:
            client.close_host()
        raise
    return RayStateStore(clients, limits, journal_dir)


class RayStateStore(StateStore):
    """The StateStore surface over StateShard actors (see the module docstring). It does
    not own the actors: close() is a no-op, close_host() is the owner's shutdown."""

    def __init__(self, shards: list[HostedClient], limits: tuple[int, int, int, int, int],
                 journal_dir: str | None) -> None:
        # no StateStore.__init__: a client has no segment; encode() and check_key() need
        # only the limits
        self._shards = shards
        self._limits = limits
        self._journal_dir = journal_dir
        self.max_keys, self.capacity_bytes, self.transition_log_bytes, self.max_key_bytes, \
            self.max_value_bytes = limits
        self._key_chars_always_fit = self.max_key_bytes // 4

    def __reduce__(self) -> tuple[Any, Any]:
        return (RayStateStore, (self._shards, self._limits, self._journal_dir))

    @property
    def name(self) -> str:
        return f"ray-state-{self._shards[0].handle._actor_id.hex()[:12]}"

    @property
    def journal_path(self) -> str | None:
        return self._journal_dir

    def close(self) -> None:
        """Nothing to let go: the actors belong to whoever called start_state."""

    def close_host(self) -> None:
        """Close every shard (its segment and journal) and end its actor."""
        for shard in self._shards:
            shard.close_host()

    def __repr__(self) -> str:
        return f"<RayStateStore {self.name} shards={len(self._shards)}>"

    def _shard(self, key: str) -> HostedClient:
        if key.__class__ is not str:
            self.check_key(key)
        return self._shards[shard_index(key, len(self._shards))]

    # ---- reads --------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        return self._shard(key).call("get", key)

    def get_or(self, key: str, default: Any) -> Any:
        return self._shard(key).call("get_or", key, default)

    def get_with_version(self, key: str) -> tuple[Any, int]:
        """(value, version); (None, 0) when absent. Versions are per shard: one names one
        write of its key."""
        value, version = self._shard(key).call("get_with_version", key)
        return value, version

    def version(self, key: str) -> int:
        version: int = self._shard(key).call("version", key)
        return version

    def exists(self, key: str) -> bool:
        return self.version(key) != 0

    def keys(self) -> list[str]:
        return sorted(key for shard in self._shards for key in shard.call("keys"))

    def snapshot(self) -> dict[str, Any]:
        """The whole map; one atomic view per shard (not across shards)."""
        merged = {}
        for shard in self._shards:
            merged.update(shard.call("snapshot"))
        return dict(sorted(merged.items()))

    def transition_count(self) -> int:
        return sum(shard.call("transition_count") for shard in self._shards)

    def transitions_since(self, index: int) -> list[StateTransition]:
        if len(self._shards) == 1:
            transitions: list[StateTransition] = self._shards[0].call("transitions_since", index)
            return transitions
        if index != 0:
            raise BackendUnsupported(
                f"transitions_since({index!r}) on a store of {len(self._shards)} shards: their "
                "logs have no common index; read transitions() (merged by timestamp), or "
                "start the state with shards=1")
        return list(heapq.merge(*(shard.call("transitions_since", 0) for shard in self._shards),
                                key=lambda transition: transition.timestamp))

    def statistics(self) -> StateStatistics:
        """Every shard's statistics, summed."""
        each = [shard.call("statistics") for shard in self._shards]
        return StateStatistics(*(sum(getattr(s, field.name) for s in each)
                                 for field in dataclasses.fields(StateStatistics)))

    # ---- writes ---------------------------------------------------------------------------

    def set(self, key: str, value: Any, action_id: str, *,
            ttl: float | None = None) -> StateTransition:
        return self._commit([self._op(key, value, ttl)], action_id).transitions[0]

    def restore(self, snapshot: Mapping[str, Any], transition_count: int) -> None:
        """Replace the map and cut the log back (shards=1 only: sharded logs have no
        common index)."""
        if len(self._shards) != 1:
            raise BackendUnsupported(
                f"restore() on a store of {len(self._shards)} shards: their logs have no "
                "common transition count to cut back to; use replace_all(), or start the "
                "state with shards=1")
        self._replace(snapshot, transition_count)

    def replace_all(self, snapshot: Mapping[str, Any]) -> None:
        self._replace(snapshot, 0)

    def _replace(self, snapshot: Mapping[str, Any], transition_count: int) -> None:
        parts: list[dict[str, bytes]] = [{} for _ in self._shards]
        for key, value in snapshot.items():
            parts[shard_index(self.check_key(key), len(self._shards))][key] = \
                self.encode(key, value)
        if len(self._shards) == 1:
            _until_free(functools.partial(self._shards[0].mutate, "replace", parts[0],
                                          transition_count))
            return
        txn = os.urandom(8).hex()
        nothing: tuple[list[Op], dict[str, int]] = ([], {})
        everything = dict.fromkeys(range(len(self._shards)), nothing)
        self._prepare_all(txn, everything, whole=True, abort_on_change=False)
        self._finish(txn, [functools.partial(shard.mutate, "replace", part, 0, txn)
                           for shard, part in zip(self._shards, parts)])

    def reap_expired(self, now: float | None = None) -> list[str]:
        return sorted(key for shard in self._shards for key in shard.mutate("reap_expired", now))

    def sync(self) -> None:
        for shard in self._shards:
            shard.call("sync")

    def compact(self) -> None:
        for shard in self._shards:
            shard.call("compact")

    # ---- batches: one shard, or a two-phase commit over several --------------------------

    def _commit(self, ops: list[Op], action_id: str, *, expected: Mapping[str, int] | None = None,
                abort_on_change: bool = False) -> BatchOutcome:
        """What delete, compare_and_set, update, apply and transaction (the local
        StateStore's own code) commit through."""
        expected = expected or {}
        count = len(self._shards)
        parts: dict[int, tuple[list[Op], dict[str, int]]] = {}
        for op in ops:
            parts.setdefault(shard_index(op[0], count), ([], {}))[0].append(op)
        for key, version in expected.items():
            parts.setdefault(shard_index(self.check_key(key), count), ([], {}))[1][key] = version
        if len(parts) <= 1:
            index, (own, own_expected) = next(iter(parts.items()), (0, ([], {})))
            outcome: BatchOutcome = _until_free(lambda: self._shards[index].mutate(
                "apply", own, action_id, own_expected, abort_on_change))
            return outcome
        txn = os.urandom(8).hex()
        prepared, changed = self._prepare_all(txn, parts, whole=False,
                                              abort_on_change=abort_on_change)
        if not prepared:
            return BatchOutcome([], changed, applied=False)
        done = self._finish(txn, [functools.partial(
            self._shards[index].mutate, "commit", txn, own, action_id, own_expected,
            abort_on_change) for index, (own, own_expected) in sorted(parts.items())])
        if LOST in done:
            raise WorldUnavailable(
                f"a transaction over {len(parts)} state shards was applied on some of them "
                f"only: shard {sorted(parts)[done.index(LOST)]} restarted, or held it past its "
                f"{LOCK_SECONDS} s lock, and its keys changed meanwhile; re-read the keys and "
                "write them again")
        return BatchOutcome([t for outcome in done for t in outcome.transitions], changed,
                            applied=True)

    def _finish(self, txn: str, commits: list[Callable[[], Any]]) -> list[Any]:
        """Phase two on every prepared shard, in order. If one raises, the shards after it
        drop their locks at once instead of holding them until they lapse."""
        done: list[Any] = []
        try:
            for commit in commits:
                done.append(_until_free(commit))
        except BaseException:
            for shard in self._shards:
                with contextlib.suppress(Exception):
                    shard.mutate("abort", txn)
            raise
        return done

    def _prepare_all(self, txn: str, parts: Mapping[int, tuple[list[Op], dict[str, int]]], *,
                     whole: bool, abort_on_change: bool) -> tuple[bool, tuple[str, ...]]:
        """Prepare `txn` on every shard in `parts`, retrying while some are busy: (True,
        the keys that changed) with every shard locked, or (False, the keys that changed)
        when abort_on_change refused and nothing stays locked."""
        pause = FIRST_BACKOFF
        while True:
            answers = {index: self._shards[index].mutate(
                "prepare", txn, None if whole else [key for key, _, _ in own], own_expected,
                abort_on_change) for index, (own, own_expected) in sorted(parts.items())}
            states = {state for state, _ in answers.values()}
            if states == {"prepared"}:
                return True, tuple(key for _, keys in answers.values() for key in keys)
            for index, (state, _) in answers.items():
                if state == "prepared":
                    self._shards[index].mutate("abort", txn)
            if BUSY not in states:
                return False, tuple(key for state, keys in answers.values()
                                    if state == "changed" for key in keys)
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, LONGEST_BACKOFF)


def _until_free(send: Callable[[], Any]) -> Any:
    """send() again, with a growing pause, while a prepared transaction holds its keys."""
    pause = FIRST_BACKOFF
    while True:
        reply = send()
        if not (isinstance(reply, str) and reply == BUSY):
            return reply
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, LONGEST_BACKOFF)
