"""carmp._native: the binding of the C core (Region atomics and robust locks, crc32c, hash64)."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import multiprocess
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carmp import _native
from carmp.shared.segment import HEADER_SIZE, Segment
from tests.conftest import kill

MASK = 2**64 - 1
SIZE = 4096
LOCK = _native.LOCK_SIZE
KIND = "nativet"
CHILD_WAIT = 30.0  # bounded waits on children: far above what any of them needs

words = st.integers(0, MASK)
# Small numbers hit the interesting edges (equal to the limit, off by one) far more often.
small_or_any = st.one_of(st.integers(0, 64), words)


class Closed(Exception):
    """The closed_error handed to every Region here, to tell it from other errors."""


def new_region(size: int = SIZE) -> tuple[mmap.mmap, _native.Region]:
    mapping = mmap.mmap(-1, size)
    return mapping, _native.Region(mapping, Closed)


@pytest.fixture
def region() -> Iterator[_native.Region]:
    mapping, region = new_region()
    yield region
    region.release()
    mapping.close()


def release_if_mine(region: _native.Region, offset: int) -> None:
    if not region.closed and region.lock_owner(offset) == os.getpid():
        try:
            region.lock_release(offset)
        except RuntimeError:
            pass


# ---- construction and release -------------------------------------------------------


def test_region_over_anonymous_mmap(region: _native.Region) -> None:
    assert region.size == SIZE
    assert region.closed is False
    assert region.read(0, SIZE) == bytes(SIZE)


def test_read_only_buffer_is_refused() -> None:
    with pytest.raises(BufferError):
        _native.Region(bytes(SIZE))
    for readonly in (
        mmap.mmap(-1, SIZE, prot=mmap.PROT_READ),
        mmap.mmap(-1, SIZE, access=mmap.ACCESS_READ),
    ):
        try:
            with pytest.raises(BufferError, match="not writable"):
                _native.Region(readonly)
        finally:
            readonly.close()


def test_unaligned_buffer_is_refused() -> None:
    mapping = mmap.mmap(-1, SIZE)
    view = memoryview(mapping)
    try:
        for start in (8, 32, 63):
            with pytest.raises(ValueError, match="64-byte aligned"):
                _native.Region(view[start:])
        # A 64-byte aligned slice of the same mapping is fine.
        inner = view[64:]
        region = _native.Region(inner)
        assert region.size == SIZE - 64
        region.release()
        inner.release()
    finally:
        view.release()
        mapping.close()


def test_closed_error_must_be_an_exception_class() -> None:
    mapping = mmap.mmap(-1, SIZE)
    try:
        with pytest.raises(TypeError):
            _native.Region(mapping, 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            _native.Region(mapping, str)  # type: ignore[arg-type]
    finally:
        mapping.close()


def test_init_twice_is_refused(region: _native.Region) -> None:
    mapping = mmap.mmap(-1, SIZE)
    try:
        with pytest.raises(RuntimeError, match="already initialised"):
            region.__init__(mapping)  # type: ignore[misc]
        assert region.size == SIZE
    finally:
        mapping.close()


def test_region_holds_the_buffer_until_released() -> None:
    mapping, region = new_region()
    with pytest.raises(BufferError):
        mapping.close()
    region.store(0, 7)
    region.release()
    region.release()  # twice is fine
    mapping.close()


def test_default_closed_error_is_value_error() -> None:
    mapping = mmap.mmap(-1, SIZE)
    region = _native.Region(mapping)
    region.release()
    mapping.close()
    with pytest.raises(ValueError, match="closed"):
        region.load(0)


USES: list[tuple[str, Callable[[_native.Region], object]]] = [
    ("load", lambda r: r.load(0)),
    ("store", lambda r: r.store(0, 1)),
    ("fetch_add", lambda r: r.fetch_add(0, 1)),
    ("add_many", lambda r: r.add_many(0, 1, 2)),
    ("cas", lambda r: r.cas(0, 0, 1)),
    ("add_bounded", lambda r: r.add_bounded(0, 1, 10)),
    ("first_reached", lambda r: r.first_reached(0, 64, 2)),
    ("read", lambda r: r.read(0, 8)),
    ("lock_init", lambda r: r.lock_init(0)),
    ("lock_acquire", lambda r: r.lock_acquire(0, 0.01)),
    ("lock_try", lambda r: r.lock_try(0)),
    ("lock_release", lambda r: r.lock_release(0)),
    ("lock_owner", lambda r: r.lock_owner(0)),
]


@pytest.mark.parametrize("use", [u for _, u in USES], ids=[n for n, _ in USES])
def test_use_after_release_raises_closed_error(use: Callable[[_native.Region], object]) -> None:
    mapping, region = new_region()
    region.release()
    mapping.close()
    assert region.closed is True
    assert region.size == 0
    with pytest.raises(Closed, match="closed"):
        use(region)


def test_uninitialised_region_raises_value_error() -> None:
    region = _native.Region.__new__(_native.Region)
    assert region.closed is True
    with pytest.raises(ValueError):
        region.load(0)


# ---- word atomics -----------------------------------------------------------------


def test_load_store_fetch_add(region: _native.Region) -> None:
    assert region.load(8) == 0
    region.store(8, 41)
    assert region.fetch_add(8, 1) == 41
    assert region.load(8) == 42
    assert region.fetch_add(8, -2) == 42
    assert region.load(8) == 40
    # Neighbouring words are untouched.
    assert region.load(0) == 0 and region.load(16) == 0


def test_negative_deltas_wrap(region: _native.Region) -> None:
    assert region.fetch_add(0, -1) == 0
    assert region.load(0) == MASK
    assert region.fetch_add(0, 2) == MASK
    assert region.load(0) == 1
    region.store(8, -1)
    assert region.load(8) == MASK
    region.store(8, -(2**63))
    assert region.load(8) == 2**63


@pytest.mark.parametrize("value", [2**63 - 1, 2**63, 2**63 + 1, MASK - 1, MASK])
def test_values_at_and_above_2_63_round_trip(region: _native.Region, value: int) -> None:
    region.store(0, value)
    assert region.load(0) == value
    assert region.read(0, 8) == value.to_bytes(8, "little")
    assert region.fetch_add(0, 0) == value
    assert region.cas(0, value, value - 1) is True
    assert region.load(0) == value - 1
    assert region.add_bounded(0, 1, value) == value - 1
    assert region.load(0) == value


@pytest.mark.parametrize("value", [2**64, 2**70, -(2**63) - 1])
def test_values_outside_64_bits_overflow(region: _native.Region, value: int) -> None:
    region.store(0, 5)
    with pytest.raises(OverflowError):
        region.store(0, value)
    with pytest.raises(OverflowError):
        region.fetch_add(0, value)
    with pytest.raises(OverflowError):
        region.cas(0, 5, value)
    assert region.load(0) == 5


def test_non_int_values_are_type_errors(region: _native.Region) -> None:
    with pytest.raises(TypeError):
        region.store(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        region.load("0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        region.store(0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        region.cas(0, 1)  # type: ignore[call-arg]
    assert region.load(0) == 0


@given(start=words, deltas=st.lists(st.integers(-(2**63), MASK), max_size=20))
def test_fetch_add_matches_model(start: int, deltas: list[int]) -> None:
    mapping, region = new_region(64)
    try:
        region.store(8, start)
        model = start
        for delta in deltas:
            assert region.fetch_add(8, delta) == model
            model = (model + delta) & MASK
            assert region.load(8) == model
    finally:
        region.release()
        mapping.close()


def test_cas(region: _native.Region) -> None:
    region.store(0, 10)
    assert region.cas(0, 11, 20) is False
    assert region.load(0) == 10
    assert region.cas(0, 10, 20) is True
    assert region.load(0) == 20
    assert region.cas(0, 20, -1) is True
    assert region.load(0) == MASK
    assert region.cas(0, -1, 3) is True  # expected wraps the same way
    assert region.load(0) == 3


def test_add_many(region: _native.Region) -> None:
    region.store(8, 100)
    region.add_many(8, 1, 0, -1, 2**63)
    assert [region.load(8 + 8 * i) for i in range(4)] == [101, 0, MASK, 2**63]
    region.add_many(8)  # no deltas: nothing to do
    region.add_many(SIZE - 8, 5)  # the last word
    assert region.load(SIZE - 8) == 5
    assert region.load(0) == 0 and region.load(40) == 0


def test_add_many_bounds_are_checked_before_adding(region: _native.Region) -> None:
    with pytest.raises(IndexError):
        region.add_many(SIZE - 8, 1, 1)
    assert region.load(SIZE - 8) == 0
    with pytest.raises(ValueError, match="aligned"):
        region.add_many(4, 1)
    with pytest.raises(TypeError):
        region.add_many()  # type: ignore[call-arg]


@pytest.mark.parametrize("bad", ["x", 2**64], ids=["type", "overflow"])
def test_add_many_with_a_bad_delta_changes_nothing(region: _native.Region, bad: object) -> None:
    with pytest.raises((TypeError, OverflowError)):
        region.add_many(8, 1, bad)  # type: ignore[arg-type]
    assert region.load(8) == 0


def test_add_bounded(region: _native.Region) -> None:
    assert region.add_bounded(0, 5, 10) == 0
    assert region.add_bounded(0, 5, 10) == 5  # exactly the limit is allowed
    assert region.load(0) == 10
    assert region.add_bounded(0, 1, 10) == -1  # over: refused, unchanged
    assert region.load(0) == 10
    assert region.add_bounded(0, 0, 10) == 10
    region.store(8, 20)  # already above the limit: even a zero delta is refused
    assert region.add_bounded(8, 0, 10) == -1
    assert region.load(8) == 20


def test_add_bounded_cannot_overflow(region: _native.Region) -> None:
    region.store(0, MASK - 1)
    assert region.add_bounded(0, 2, MASK) == -1
    assert region.load(0) == MASK - 1
    assert region.add_bounded(0, 1, MASK) == MASK - 1
    assert region.load(0) == MASK
    region.store(8, 5)
    assert region.add_bounded(8, MASK, MASK) == -1  # 5 + MASK wraps to 4 <= MASK: must refuse
    assert region.load(8) == 5


@given(start=small_or_any, ops=st.lists(st.tuples(small_or_any, small_or_any), max_size=30))
def test_add_bounded_matches_model(start: int, ops: list[tuple[int, int]]) -> None:
    mapping, region = new_region(64)
    try:
        region.store(16, start)
        model = start
        for delta, limit in ops:
            got = region.add_bounded(16, delta, limit)
            if model + delta <= limit:
                assert got == model
                model += delta
            else:
                assert got == -1
            assert region.load(16) == model
    finally:
        region.release()
        mapping.close()


def test_first_reached(region: _native.Region) -> None:
    counters, limits = 0, 1024
    for i, (count, limit) in enumerate([(1, 5), (4, 5), (9, 9), (10, 3)]):
        region.store(counters + 8 * i, count)
        region.store(limits + 8 * i, limit)
    assert region.first_reached(counters, limits, 4) == 2
    assert region.first_reached(counters, limits, 2) == -1
    assert region.first_reached(counters, limits, 0) == -1
    region.store(counters, 5)
    assert region.first_reached(counters, limits, 4) == 0
    # Unsigned comparison: 2**63 is a large count, not a negative one.
    region.store(counters + 8, 2**63)
    region.store(limits + 8, 2**63 - 1)
    region.store(counters, 0)
    assert region.first_reached(counters, limits, 4) == 1


def test_first_reached_bounds(region: _native.Region) -> None:
    assert region.first_reached(2048, 0, 256) == 0  # both arrays end inside: fine
    with pytest.raises(IndexError):
        region.first_reached(2048, 0, 257)
    with pytest.raises(IndexError):
        region.first_reached(0, 2048, 257)
    with pytest.raises(ValueError):
        region.first_reached(0, 8, -1)
    with pytest.raises(ValueError, match="aligned"):
        region.first_reached(4, 64, 1)
    with pytest.raises(ValueError, match="aligned"):
        region.first_reached(0, 68, 1)


_HUGE_COUNT_SCRIPT = """
import mmap
from carmp import _native
region = _native.Region(mmap.mmap(-1, 4096))
for offset in range(0, 2048, 8):
    region.store(offset, 1)
try:
    print("returned", region.first_reached(2048, 0, {n}))
except IndexError:
    print("IndexError")
"""


@pytest.mark.parametrize("n", [2**61, 2**62 + 1])
def test_first_reached_huge_count_is_an_index_error(n: int) -> None:
    # Limits (all 1) sit below counters (all 0), so nothing inside the buffer is reached and
    # any index the call returns came from memory past the end. A subprocess, as that read
    # may crash.
    result = subprocess.run(
        [sys.executable, "-c", _HUGE_COUNT_SCRIPT.format(n=n)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.stdout.strip() == "IndexError", (result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize(
    "offset, error",
    [
        (SIZE, IndexError),
        (SIZE - 4, IndexError),
        (SIZE + 8, IndexError),
        (-8, IndexError),
        (-1, IndexError),
        (4, ValueError),
        (1, ValueError),
        (SIZE - 12, ValueError),
    ],
)
def test_word_bounds_and_alignment(region: _native.Region, offset: int, error: type) -> None:
    with pytest.raises(error):
        region.load(offset)
    with pytest.raises(error):
        region.store(offset, 1)
    with pytest.raises(error):
        region.fetch_add(offset, 1)
    with pytest.raises(error):
        region.cas(offset, 0, 1)
    with pytest.raises(error):
        region.add_bounded(offset, 1, 2)
    assert region.read(0, SIZE) == bytes(SIZE)


def test_last_word_is_addressable(region: _native.Region) -> None:
    region.store(SIZE - 8, 9)
    assert region.load(SIZE - 8) == 9


def test_offset_too_large_for_ssize_t(region: _native.Region) -> None:
    with pytest.raises((IndexError, OverflowError)):
        region.load(2**70)


def test_read(region: _native.Region) -> None:
    region.store(8, 0x0102030405060708)
    assert region.read(8, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert region.read(9, 3) == bytes([7, 6, 5])  # reads need no alignment
    assert region.read(SIZE, 0) == b""
    assert len(region.read(SIZE - 6, 6)) == 6
    assert len(region.read(0, SIZE)) == SIZE
    for offset, n in [(SIZE - 6, 7), (0, SIZE + 1), (-1, 1), (SIZE + 1, 0), (1, 2**62)]:
        with pytest.raises(IndexError):
            region.read(offset, n)
    with pytest.raises(ValueError):
        region.read(0, -1)


def test_atomics_across_processes(mp_context) -> None:  # type: ignore[no-untyped-def]
    """Children add to one word of a shared segment; no increment is lost."""
    segment = Segment.create(KIND, 64, layout_version=1)
    try:
        segment.mark_ready()
        children = [
            mp_context.Process(target=_add_ones, args=(segment.name, 2000)) for _ in range(3)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(CHILD_WAIT)
            assert child.exitcode == 0
        assert segment.region.load(HEADER_SIZE) == 3 * 2000
        assert segment.region.load(HEADER_SIZE + 8) == 3 * 2000
    finally:
        segment.close()


def _add_ones(name: str, times: int) -> None:
    segment = Segment.attach(name, kind=KIND, layout_version=1)
    for _ in range(times):
        segment.region.fetch_add(HEADER_SIZE, 1)
        segment.region.add_many(HEADER_SIZE + 8, 1)
    segment.close()


# ---- robust lock: one process ----------------------------------------------------------


def test_lock_size() -> None:
    assert LOCK == 64


def test_lock_cycle(region: _native.Region) -> None:
    region.lock_init(64)
    assert region.lock_owner(64) == 0
    assert region.lock_try(64) is False
    assert region.lock_owner(64) == os.getpid()
    region.lock_release(64)
    assert region.lock_owner(64) == 0
    assert region.lock_acquire(64) is False
    region.lock_release(64)
    assert region.lock_acquire(64, 1.0) is False
    region.lock_release(64)
    assert region.lock_acquire(64, 0) is False  # a free lock needs no waiting
    region.lock_release(64)
    assert region.lock_owner(64) == 0


def test_relock_by_same_thread_raises(region: _native.Region) -> None:
    region.lock_init(0)
    region.lock_acquire(0)
    try:
        with pytest.raises(RuntimeError, match="already holds"):
            region.lock_acquire(0)
        with pytest.raises(RuntimeError, match="already holds"):
            region.lock_acquire(0, 0.05)
        with pytest.raises(RuntimeError, match="already holds"):
            region.lock_try(0)
        assert region.lock_owner(0) == os.getpid()
    finally:
        region.lock_release(0)
    # Still usable after the refused re-locks.
    assert region.lock_try(0) is False
    region.lock_release(0)


def test_release_when_not_held_raises(region: _native.Region) -> None:
    region.lock_init(0)
    with pytest.raises(RuntimeError, match="does not hold"):
        region.lock_release(0)
    assert region.lock_owner(0) == 0
    region.lock_acquire(0)
    region.lock_release(0)
    with pytest.raises(RuntimeError, match="does not hold"):
        region.lock_release(0)


def test_lock_bounds_and_alignment(region: _native.Region) -> None:
    region.lock_init(SIZE - LOCK)  # the last slot that fits
    for offset in (SIZE - LOCK + 8, SIZE, -64):
        with pytest.raises(IndexError):
            region.lock_init(offset)
        with pytest.raises(IndexError):
            region.lock_try(offset)
        with pytest.raises(IndexError):
            region.lock_acquire(offset, 0)
        with pytest.raises(IndexError):
            region.lock_release(offset)
        with pytest.raises(IndexError):
            region.lock_owner(offset)
    with pytest.raises(ValueError, match="aligned"):
        region.lock_init(4)


def test_lock_acquire_arguments(region: _native.Region) -> None:
    region.lock_init(0)
    with pytest.raises(ValueError, match="timeout"):
        region.lock_acquire(0, -0.5)
    with pytest.raises(TypeError):
        region.lock_acquire(0, "soon")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        region.lock_acquire()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        region.lock_acquire(0, 1.0, 2)  # type: ignore[call-arg]
    assert region.lock_owner(0) == 0
    assert region.lock_acquire(0, 1) is False  # an int timeout is fine
    region.lock_release(0)


@pytest.mark.parametrize("timeout", [float("nan"), float("-inf"), -1e-9])
def test_lock_acquire_bad_float_timeout_is_refused(region: _native.Region, timeout: float) -> None:
    region.lock_init(0)
    try:
        with pytest.raises(ValueError, match="timeout"):
            region.lock_acquire(0, timeout)
        assert region.lock_owner(0) == 0  # refused before taking the free lock
    finally:
        release_if_mine(region, 0)


def test_lock_acquire_infinite_timeout_on_free_lock(region: _native.Region) -> None:
    region.lock_init(0)
    assert region.lock_acquire(0, float("inf")) is False
    region.lock_release(0)


class _Holder:
    """Holds a lock on another thread of this process until stopped."""

    def __init__(self, region: _native.Region, offset: int) -> None:
        self.region, self.offset = region, offset
        self.held, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.region.lock_acquire(self.offset, CHILD_WAIT)
        self.held.set()
        self.stop.wait(CHILD_WAIT)
        self.region.lock_release(self.offset)

    def __enter__(self) -> _Holder:
        self.thread.start()
        assert self.held.wait(CHILD_WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(CHILD_WAIT)
        assert not self.thread.is_alive()


def test_lock_held_by_another_thread(region: _native.Region) -> None:
    region.lock_init(0)
    with _Holder(region, 0):
        assert region.lock_owner(0) == os.getpid()
        assert region.lock_try(0) is None
        with pytest.raises(TimeoutError):
            region.lock_acquire(0, 0.05)
        with pytest.raises(TimeoutError):
            region.lock_acquire(0, 0)
        with pytest.raises(RuntimeError, match="does not hold"):
            region.lock_release(0)
        assert region.lock_owner(0) == os.getpid()  # a refused release keeps the owner
    assert region.lock_owner(0) == 0
    assert region.lock_acquire(0, CHILD_WAIT) is False
    region.lock_release(0)


def test_blocked_acquire_wakes_when_released(region: _native.Region) -> None:
    region.lock_init(0)
    holder = _Holder(region, 0)
    with holder:
        releaser = threading.Timer(0.1, holder.stop.set)
        releaser.start()
        try:
            assert region.lock_acquire(0, None) is False
        finally:
            releaser.join()
        region.lock_release(0)


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def test_blocked_acquire_lets_signal_handler_exception_through(region: _native.Region) -> None:
    region.lock_init(0)
    old = signal.signal(signal.SIGUSR1, _raise_interrupted)
    try:
        with _Holder(region, 0):
            timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            try:
                with pytest.raises(_Interrupted):
                    region.lock_acquire(0, None)
            finally:
                timer.join()
            assert region.lock_owner(0) == os.getpid()
            assert region.lock_try(0) is None  # still the holder's, not ours
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert region.lock_acquire(0, CHILD_WAIT) is False
    region.lock_release(0)


# ---- robust lock: across processes ----------------------------------------------------


def _hold_lock(name: str, offset: int, held, stop) -> None:  # type: ignore[no-untyped-def]
    segment = Segment.attach(name, kind=KIND, layout_version=1)
    segment.region.lock_acquire(offset, CHILD_WAIT)
    held.set()
    stop.wait(CHILD_WAIT)  # SIGKILLed long before this returns


def test_lock_held_by_killed_process_is_recovered(mp_context) -> None:  # type: ignore[no-untyped-def]
    offset = HEADER_SIZE
    segment = Segment.create(KIND, 2 * LOCK, layout_version=1)
    region = segment.region
    child = None
    try:
        region.lock_init(offset)
        region.store(offset + LOCK, 123)  # a word the lock guards
        segment.mark_ready()
        held, stop = mp_context.Event(), mp_context.Event()
        child = mp_context.Process(target=_hold_lock, args=(segment.name, offset, held, stop))
        child.start()
        assert held.wait(CHILD_WAIT), "child never took the lock"

        assert region.lock_owner(offset) == child.pid
        assert region.lock_try(offset) is None
        with pytest.raises(TimeoutError):
            region.lock_acquire(offset, 0.05)
        with pytest.raises(RuntimeError, match="does not hold"):
            region.lock_release(offset)
        assert region.lock_owner(offset) == child.pid

        kill(child.pid)
        child.join(CHILD_WAIT)
        assert child.exitcode == -signal.SIGKILL

        assert region.lock_acquire(offset, CHILD_WAIT) is True  # recovered from the dead owner
        assert region.lock_owner(offset) == os.getpid()
        assert region.load(offset + LOCK) == 123
        region.lock_release(offset)
        # Consistent again: later acquires are ordinary.
        assert region.lock_try(offset) is False
        region.lock_release(offset)
        assert region.lock_acquire(offset, 1.0) is False
        region.lock_release(offset)
    finally:
        if child is not None and child.is_alive():
            kill(child.pid)
            child.join(CHILD_WAIT)
        segment.close()


def test_lock_try_recovers_from_killed_owner() -> None:
    ctx = multiprocess.get_context("fork")
    offset = HEADER_SIZE
    segment = Segment.create(KIND, LOCK, layout_version=1)
    child = None
    try:
        segment.region.lock_init(offset)
        segment.mark_ready()
        held, stop = ctx.Event(), ctx.Event()
        child = ctx.Process(target=_hold_lock, args=(segment.name, offset, held, stop))
        child.start()
        assert held.wait(CHILD_WAIT)
        kill(child.pid)
        child.join(CHILD_WAIT)
        assert segment.region.lock_try(offset) is True
        assert segment.region.lock_owner(offset) == os.getpid()
        segment.region.lock_release(offset)
    finally:
        if child is not None and child.is_alive():
            kill(child.pid)
            child.join(CHILD_WAIT)
        segment.close()


# ---- crc32c -----------------------------------------------------------------------------


def _crc32c_reference(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", 0),
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_crc32c_known_vectors(data: bytes, expected: int) -> None:
    assert _native.crc32c(data) == expected
    assert _native.crc32c(bytearray(data)) == expected
    assert _native.crc32c(memoryview(data)) == expected


@given(st.binary(max_size=300))
def test_crc32c_matches_reference(data: bytes) -> None:
    assert _native.crc32c(data) == _crc32c_reference(data)


@given(st.binary(max_size=300), st.data())
def test_crc32c_incremental_equals_one_shot(data: bytes, pick: st.DataObject) -> None:
    cut = pick.draw(st.integers(0, len(data)))
    partial = _native.crc32c(data[:cut])
    assert _native.crc32c(data[cut:], partial) == _native.crc32c(data)


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_crc32c_many_pieces(pieces: list[bytes]) -> None:
    crc = 0
    for piece in pieces:
        crc = _native.crc32c(piece, crc)
    assert crc == _native.crc32c(b"".join(pieces))


@given(st.text(max_size=100))
def test_crc32c_str_is_its_utf8(text: str) -> None:
    assert _native.crc32c(text) == _native.crc32c(text.encode("utf-8"))


def test_crc32c_str_examples() -> None:
    assert _native.crc32c("123456789") == 0xE3069283
    assert _native.crc32c("héllo ✓") == _native.crc32c("héllo ✓".encode())
    assert 0 <= _native.crc32c("x" * 1000) < 2**32


def test_crc32c_bad_input() -> None:
    with pytest.raises(TypeError):
        _native.crc32c(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.crc32c()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _native.crc32c(b"a", 0, 1)  # type: ignore[call-arg]
    with pytest.raises(UnicodeEncodeError):
        _native.crc32c("\ud800")


# ---- hash64 -------------------------------------------------------------------------------


@given(st.binary(max_size=100), words)
def test_hash64_is_deterministic(data: bytes, seed: int) -> None:
    first = _native.hash64(data, seed)
    assert 0 <= first <= MASK
    assert _native.hash64(data, seed) == first
    assert _native.hash64(bytearray(data), seed) == first
    assert _native.hash64(memoryview(data), seed) == first


def test_hash64_default_seed_is_zero() -> None:
    assert _native.hash64(b"abc") == _native.hash64(b"abc", 0)
    assert _native.hash64(b"abc", -1) == _native.hash64(b"abc", MASK)  # seeds wrap like words


def test_hash64_seed_changes_it() -> None:
    for data in (b"", b"a", b"12345678", b"carmp segment name", bytes(100)):
        hashes = {_native.hash64(data, seed) for seed in (0, 1, 2, 2**63, MASK)}
        assert len(hashes) == 5


@given(st.binary(max_size=64), st.integers(1, MASK))
def test_hash64_seed_changes_it_mostly(data: bytes, seed: int) -> None:
    # A 64-bit hash colliding across seeds by chance is ~2**-64; any hit here is a real defect.
    assert _native.hash64(data, seed) != _native.hash64(data, 0)


def test_hash64_distinguishes_close_inputs() -> None:
    inputs = [b"", b"\0", b"\0\0", b"a", b"a\0", b"b", b"ab", b"ba", bytes(8), bytes(9),
              b"12345678", b"123456789", b"abcdefgh" * 2, b"abcdefgh" * 2 + b"\0"]
    assert len({_native.hash64(x) for x in inputs}) == len(inputs)


@given(st.text(max_size=100), words)
def test_hash64_str_is_its_utf8(text: str, seed: int) -> None:
    assert _native.hash64(text, seed) == _native.hash64(text.encode("utf-8"), seed)


def test_hash64_bad_input() -> None:
    with pytest.raises(TypeError):
        _native.hash64(1.0)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _native.hash64(b"a", 2**64)
    with pytest.raises(UnicodeEncodeError):
        _native.hash64("\udfff")


# ---- module constants ---------------------------------------------------------------------


def test_flags() -> None:
    flags = _native.flags
    assert isinstance(flags, dict)
    assert flags["HAVE_ROBUST_MUTEX"] == 1
    assert set(flags) >= {"HAVE_ROBUST_MUTEX", "HAVE_CLOCKLOCK", "CRC32C_HARDWARE"}
    assert all(isinstance(v, int) for v in flags.values())
    assert flags["CRC32C_HARDWARE"] in (0, 1)


# ---- sleeping until a word changes ------------------------------------------------------


def test_wait_returns_at_once_when_the_word_differs_and_false_on_timeout(region: _native.Region) -> None:
    region.store(0, 7)
    assert region.wait(0, 6, None) is True
    assert region.wait(0, 7, 0.01) is False
    assert region.wait(0, 7, 0) is False
    assert region.wake(0) == 0
    with pytest.raises(ValueError):
        region.wait(0, 7, -1.0)


def test_wait_compares_the_low_32_bits(region: _native.Region) -> None:
    region.store(0, (5 << 32) | 9)
    assert region.wait(0, 9, 0.01) is False  # equal in the low half: it slept
    assert region.wait(0, (5 << 32) | 8, None) is True


def test_wake_reaches_a_waiting_thread(region: _native.Region) -> None:
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(region.wait(0, 0, CHILD_WAIT)))
    waiter.start()
    threading.Timer(0.05, lambda: (region.store(0, 1), region.wake(0))).start()
    waiter.join()
    assert woke == [True]


def test_blocked_wait_lets_signal_handler_exception_through(region: _native.Region) -> None:
    old = signal.signal(signal.SIGUSR1, _raise_interrupted)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(_Interrupted):
            region.wait(0, 0, None)
    finally:
        timer.join()
        signal.signal(signal.SIGUSR1, old)


def _wait_for_bump(name: str, ready) -> None:  # type: ignore[no-untyped-def]
    segment = Segment.attach(name, kind=KIND, layout_version=1)
    ready.set()
    while segment.region.load(HEADER_SIZE) == 0:
        if not segment.region.wait(HEADER_SIZE, 0, CHILD_WAIT):
            os._exit(3)
    os._exit(0)


def test_wake_reaches_a_sleeper_in_another_process(mp_context) -> None:  # type: ignore[no-untyped-def]
    segment = Segment.create(KIND, 64, layout_version=1)
    segment.mark_ready()
    try:
        ready = mp_context.Event()
        child = mp_context.Process(target=_wait_for_bump, args=(segment.name, ready))
        child.start()
        assert ready.wait(CHILD_WAIT)
        segment.region.store(HEADER_SIZE, 1)
        segment.region.wake(HEADER_SIZE)
        child.join(CHILD_WAIT)
        assert child.exitcode == 0
    finally:
        segment.close()


_CTRL_C_SCRIPT = """
import mmap, os, signal, threading, sys
from carmp import _native
region = _native.Region(mmap.mmap(-1, 4096))
region.lock_init(0)
held = threading.Event()
def hold():
    region.lock_acquire(0, None)
    held.set()
    threading.Event().wait()
threading.Thread(target=hold, daemon=True).start()
held.wait()
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    region.{call}
except KeyboardInterrupt:
    sys.exit(42)
sys.exit(1)
"""


@pytest.mark.parametrize("call", ["lock_acquire(0, None)", "wait(64, 0, None)"])
def test_ctrl_c_interrupts_a_blocked_call_with_keyboard_interrupt(call: str) -> None:
    done = subprocess.run([sys.executable, "-c", _CTRL_C_SCRIPT.format(call=call)],
                          timeout=CHILD_WAIT, capture_output=True)
    assert done.returncode == 42, done.stderr.decode()
