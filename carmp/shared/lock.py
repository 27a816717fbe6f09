"""RobustLock: a cross-process lock inside a segment that survives a dead owner,
with an undo log so that the words it guards read old-or-new after a crash.

A process SIGKILLed while holding the lock never blocks anyone: the next acquirer
takes the lock over (robust mutex, EOWNERDEAD) and rolls back any multi-word write
the dead owner left half done.

Layout at the lock's offset (bytes, little-endian words):

    offset  size        field
    0       64          robust process-shared mutex + owner pid (native, LOCK_SIZE)
    64      8           undo entry count; 0 = no guarded write in flight
    72      8           recoveries: times a dead owner's lock was taken over
    80      16 * cap    undo entries: (word offset, value before the write)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from carmp import _native
from carmp.errors import LockTimeout, WouldBlock

DEFAULT_TIMEOUT = 30.0
_UNDO_COUNT = _native.LOCK_SIZE
_RECOVERIES = _native.LOCK_SIZE + 8
_UNDO_ENTRIES = _native.LOCK_SIZE + 16


@dataclass(frozen=True, slots=True)
class LockStatistics:
    owner_pid: int   # who holds it now; 0 when free
    recoveries: int  # dead owners taken over so far


class RobustLock:
    """Mutual exclusion across processes; `with lock:` acquires with DEFAULT_TIMEOUT."""

    __slots__ = ("_region", "_offset", "_undo_capacity", "_on_recover", "label")

    def __init__(self, region: _native.Region, offset: int, *, undo_capacity: int = 16,
                 label: str = "lock", on_recover: Callable[[], None] | None = None) -> None:
        self._region = region
        self._offset = offset
        self._undo_capacity = undo_capacity
        # Repairs data the lock guards beyond its undo log (a structure with its own
        # undo record); runs while the recovered lock is held.
        self._on_recover = on_recover
        self.label = label

    @staticmethod
    def size(undo_capacity: int = 16) -> int:
        """Bytes a lock with this undo capacity occupies (a multiple of 64)."""
        raw = _UNDO_ENTRIES + 16 * undo_capacity
        return (raw + 63) // 64 * 64

    def initialize(self) -> None:
        """Creator only, before the segment is published."""
        self._region.lock_init(self._offset)
        self._region.store(self._offset + _UNDO_COUNT, 0)
        self._region.store(self._offset + _RECOVERIES, 0)

    # ---- acquire / release -------------------------------------------------------

    def acquire(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Block until held; a dead owner's lock is recovered. None waits forever."""
        try:
            recovered = self._region.lock_acquire(self._offset, timeout)
        except TimeoutError:
            owner = self._region.lock_owner(self._offset)
            holder = (f"held by pid {owner}. That process is alive and stuck holding it: "
                      "inspect or kill it") if owner else (
                "it records no holder: unless it was released at this very moment, its "
                "memory was overwritten and the segment is corrupt; recreate it (remove "
                "leftovers with `carmp cleanup`)")
            raise LockTimeout(f"{self.label}: not acquired within {timeout} s; {holder}",
                              owner_pid=owner) from None
        if recovered:
            self._recover_or_release()

    def acquire_nowait(self) -> None:
        recovered = self._region.lock_try(self._offset)
        if recovered is None:
            raise WouldBlock(f"{self.label} is held by pid {self._region.lock_owner(self._offset)}")
        if recovered:
            self._recover_or_release()

    def release(self) -> None:
        self._region.lock_release(self._offset)

    def take_over(self) -> None:
        """Finish acquiring this lock after a native call took it from a dead owner (and
        said so): roll back the owner's guarded write and run on_recover."""
        self._recover_or_release()

    def __enter__(self) -> RobustLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # ---- crash-atomic writes --------------------------------------------------------

    def write_words(self, writes: Sequence[tuple[int, int]]) -> None:
        """Store several words so that a crash midway leaves all of them as they were.
        The caller holds the lock. Values are unsigned 64-bit (negatives wrap)."""
        if len(writes) > self._undo_capacity:
            raise ValueError(f"{len(writes)} writes exceed the undo capacity {self._undo_capacity}")
        region, base = self._region, self._offset
        entry = base + _UNDO_ENTRIES
        for offset, _ in writes:
            region.store(entry, offset)
            region.store(entry + 8, region.load(offset))
            entry += 16
        region.store(base + _UNDO_COUNT, len(writes))  # the undo record is now valid
        for offset, value in writes:
            region.store(offset, value)
        region.store(base + _UNDO_COUNT, 0)            # the write is complete

    def _recover_or_release(self) -> None:
        try:
            self._recover()
        except BaseException:
            self.release()  # a repair that fails must not leave the lock stuck here
            raise

    def _recover(self) -> None:
        region, base = self._region, self._offset
        pending = region.load(base + _UNDO_COUNT)
        if pending > self._undo_capacity:
            pending = 0  # a corrupt count cannot be trusted to point anywhere
        for i in reversed(range(pending)):
            entry = base + _UNDO_ENTRIES + 16 * i
            region.store(region.load(entry), region.load(entry + 8))
        region.store(base + _UNDO_COUNT, 0)
        region.fetch_add(base + _RECOVERIES, 1)
        if self._on_recover is not None:
            self._on_recover()

    def statistics(self) -> LockStatistics:
        return LockStatistics(
            owner_pid=self._region.lock_owner(self._offset),
            recoveries=self._region.load(self._offset + _RECOVERIES),
        )
