"""The state writes of one proposal, and how an abort undoes them.

CAR rolls back by restoring a snapshot of the whole store, which in a shared store would
also undo what other agents committed meanwhile. carmp undoes only this proposal's own
writes, and only where the key still holds the version this proposal wrote: a key that
someone else changed since is left as it is and reported as a conflict.

- StoreWrites (a StateStore): each write is a compare-and-set loop, so the value the key
  held before the proposal is known exactly (absent or a value); after it, the version the
  key now holds is recorded as this proposal's if the key still holds the bytes written.
  The rollback restores every key that still holds its recorded version in one batch
  (apply with expected_versions and abort_on_change), re-checking and retrying with the
  rest when another writer got in between. Rollback writes are tagged
  "rollback:<proposal id>", so the store's transition log shows them (the log itself is
  shared, so it is not cut back as CAR's restore() cuts it).
- OverlayWrites (an AgentContext): the overlay is the agent's own, so the rollback
  restores each key's overlay entry (value, tombstone, or none) to what it was before
  the proposal, unless the overlay changed it again since.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from carmp.runtime.context import AgentContext
from carmp.shared.state import DELETE, StateStore



@dataclass(frozen=True, slots=True)
class Rollback:
    restored: tuple[str, ...]
    conflicts: tuple[str, ...]


class ProposalWrites(Protocol):
    def write(self, key: str, value: Any, action_id: str) -> None: ...

    def rollback(self) -> Rollback: ...


def writes_for(state: StateStore | AgentContext, proposal_id: str) -> ProposalWrites:
    if isinstance(state, AgentContext):
        return OverlayWrites(state)
    return StoreWrites(state, proposal_id)


@dataclass(slots=True)
class _StoreEntry:
    before: bytes | None  # JSON before the proposal's first write; None: absent
    version: int          # the version of the proposal's last write


class StoreWrites:
    """Writes into a shared StateStore, undoable without clobbering others' writes."""

    def __init__(self, store: StateStore, proposal_id: str) -> None:
        self._store = store
        self._rollback_id = f"rollback:{proposal_id}"
        self._entries: dict[str, _StoreEntry] = {}  # in first-write order
        self._lock = threading.Lock()  # a level's actions write from several threads

    def write(self, key: str, value: Any, action_id: str) -> None:
        data = self._store.encode(key, value)
        with self._lock:  # one write at a time, so the first one's `before` is the original
            while True:
                before, version = self._store.get_with_version(key)
                outcome = self._store.apply({key: orjson.Fragment(data)}, action_id,
                                            expected_versions={key: version},
                                            abort_on_change=True)
                if outcome.applied:
                    written = outcome.transitions[0].version
                    break
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _StoreEntry(
                    None if version == 0 else orjson.dumps(before), written)
            else:
                entry.version = written

    def rollback(self) -> Rollback:
        with self._lock:
            pending = dict(self._entries)
            self._entries.clear()
        restored: tuple[str, ...] = ()
        conflicts: list[str] = []
        while pending:
            still_ours = {}
            for key, entry in pending.items():
                if self._store.version(key) == entry.version:
                    still_ours[key] = entry.version
                else:
                    conflicts.append(key)
            if not still_ours:
                break
            changes = {key: DELETE if (before := pending[key].before) is None
                       else orjson.Fragment(before) for key in still_ours}
            if self._store.apply(changes, self._rollback_id, expected_versions=still_ours,
                                 abort_on_change=True).applied:
                restored = tuple(still_ours)
                break
            pending = {key: pending[key] for key in still_ours}  # someone wrote: look again
        return Rollback(restored, tuple(conflicts))


class OverlayWrites:
    """Writes into an agent's overlay, undoable entry by entry (AgentContext.entry /
    put_entry: JSON bytes, None for a tombstone, or NO_ENTRY)."""

    def __init__(self, context: AgentContext) -> None:
        self._context = context
        self._before: dict[str, object] = {}  # the entry before the proposal
        self._written: dict[str, object] = {}  # the entry after the proposal's last write
        self._lock = threading.Lock()

    def write(self, key: str, value: Any, action_id: str) -> None:
        context = self._context
        with self._lock:
            self._before.setdefault(key, context.entry(key))
            context.set(key, value)
            self._written[key] = context.entry(key)

    def rollback(self) -> Rollback:
        context = self._context
        restored, conflicts = [], []
        with self._lock:
            for key, before in self._before.items():
                if context.entry(key) is not self._written[key]:
                    conflicts.append(key)
                    continue
                context.put_entry(key, before)
                restored.append(key)
            self._before.clear()
            self._written.clear()
        return Rollback(tuple(restored), tuple(conflicts))
