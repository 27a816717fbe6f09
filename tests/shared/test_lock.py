"""RobustLock: mutual exclusion, owner-death recovery, crash-atomic multi-word writes."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from carmp.errors import LockTimeout, WouldBlock
from carmp.shared.lock import RobustLock
from carmp.shared.segment import HEADER_SIZE, Segment
from tests.conftest import kill

LOCK_AT = HEADER_SIZE
DATA_AT = HEADER_SIZE + RobustLock.size(8)
WORDS = 6


def make_segment() -> Segment:
    segment = Segment.create("locktest", RobustLock.size(8) + 8 * WORDS, layout_version=1)
    RobustLock(segment.region, LOCK_AT, undo_capacity=8).initialize()
    segment.mark_ready()
    return segment


@pytest.fixture
def segment() -> Any:
    seg = make_segment()
    yield seg
    seg.close()


def hold_lock_until_killed(name: str, ready: Any) -> None:
    seg = Segment.attach(name, kind="locktest", layout_version=1)
    RobustLock(seg.region, LOCK_AT, undo_capacity=8).acquire()
    ready.set()
    while True:
        signal.pause()


def test_acquire_release_and_context_manager(segment: Segment) -> None:
    lock = RobustLock(segment.region, LOCK_AT, undo_capacity=8)
    with lock:
        assert lock.statistics().owner_pid == os.getpid()
    assert lock.statistics().owner_pid == 0
    lock.acquire_nowait()
    lock.release()


def test_held_elsewhere_times_out_naming_the_owner_then_recovers(segment: Segment,
                                                                   mp_context: Any) -> None:
    lock = RobustLock(segment.region, LOCK_AT, undo_capacity=8, label="test lock")
    ready = mp_context.Event()
    child = mp_context.Process(target=hold_lock_until_killed, args=(segment.name, ready))
    child.start()
    try:
        assert ready.wait(60)
        with pytest.raises(WouldBlock):
            lock.acquire_nowait()
        with pytest.raises(LockTimeout) as caught:
            lock.acquire(timeout=0.05)
        assert caught.value.owner_pid == child.pid
        assert f"pid {child.pid}" in str(caught.value)
    finally:
        kill(child.pid)
        child.join()
    # the dead owner's lock is taken over within the bound
    lock.acquire(timeout=1.0)
    lock.release()
    assert lock.statistics().recoveries == 1


class _CrashingRegion:
    """Delegates to a real Region but exits the process at the n-th store."""

    def __init__(self, region: Any, crash_at: int) -> None:
        self._region = region
        self._stores_left = crash_at

    def store(self, offset: int, value: int) -> None:
        if self._stores_left == 0:
            os._exit(0)
        self._stores_left -= 1
        self._region.store(offset, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._region, name)


def test_crash_at_every_point_of_a_guarded_write_leaves_old_or_new(segment: Segment) -> None:
    old = [11 * (i + 1) for i in range(WORDS)]
    new = [1000 + i for i in range(WORDS)]
    stores_in_write = 3 * WORDS + 2
    for crash_at in range(stores_in_write + 1):
        for i, value in enumerate(old):
            segment.region.store(DATA_AT + 8 * i, value)
        pid = os.fork()
        if pid == 0:
            lock = RobustLock(_CrashingRegion(segment.region, crash_at), LOCK_AT,  # type: ignore[arg-type]
                              undo_capacity=8)
            lock.acquire()
            lock.write_words([(DATA_AT + 8 * i, v) for i, v in enumerate(new)])
            os._exit(0)  # completed: exit still holding the lock
        os.waitpid(pid, 0)
        lock = RobustLock(segment.region, LOCK_AT, undo_capacity=8)
        lock.acquire(timeout=1.0)
        seen = [segment.region.load(DATA_AT + 8 * i) for i in range(WORDS)]
        lock.release()
        # any crash before the undo record is cleared rolls back; a finished write stays
        expected = old if crash_at < stores_in_write else new
        assert seen == expected, f"crash after {crash_at} stores left {seen}"
        assert lock.statistics().recoveries == crash_at + 1


def test_write_words_refuses_more_than_its_undo_capacity(segment: Segment) -> None:
    lock = RobustLock(segment.region, LOCK_AT, undo_capacity=2)
    with lock, pytest.raises(ValueError, match="undo capacity"):
        lock.write_words([(DATA_AT, 1), (DATA_AT + 8, 2), (DATA_AT + 16, 3)])
    assert segment.region.load(DATA_AT) == 0
