"""carmp._native.Ring: the binding of the event ring (the core is tested in native/tests)."""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from carmp import _native

CAPACITY, SLOTS, READERS, MAX_RECORD = 4096, 64, 2, 256
OFFSET = 64
WAIT = 30.0  # bounded waits: only hit when something is broken


class Closed(Exception):
    """The closed_error of the test regions."""


@pytest.fixture
def mapping() -> Iterator[mmap.mmap]:
    size = OFFSET + _native.ring_size(CAPACITY, SLOTS, READERS)
    mapping = mmap.mmap(-1, size)
    yield mapping
    mapping.close()


@pytest.fixture
def region(mapping: mmap.mmap) -> Iterator[_native.Region]:
    region = _native.Region(mapping, Closed)
    yield region
    region.release()


@pytest.fixture
def ring(region: _native.Region) -> Iterator[_native.Ring]:
    ring = _native.Ring.create(region, OFFSET, region.size - OFFSET, CAPACITY, SLOTS, READERS,
                               MAX_RECORD, 0)
    yield ring
    assert ring.release() == 0


def payload(i: int) -> bytes:
    return orjson.dumps(["tick", None, None, None, None, {"i": i}, None, None])


def test_geometry_and_placement_are_checked(region: _native.Region) -> None:
    size = region.size - OFFSET
    assert _native.ring_size(4000, SLOTS, READERS) == 0
    with pytest.raises(ValueError, match="not a valid event ring"):
        _native.Ring.create(region, OFFSET, size, 4000, SLOTS, READERS, MAX_RECORD, 0)
    with pytest.raises(ValueError, match="not a valid event ring"):
        _native.Ring.create(region, OFFSET, size, CAPACITY, SLOTS, READERS, CAPACITY, 0)
    with pytest.raises(ValueError, match="64-byte aligned"):
        _native.Ring.create(region, 8, size, CAPACITY, SLOTS, READERS, MAX_RECORD, 0)
    with pytest.raises(ValueError, match="does not fit"):
        _native.Ring.create(region, OFFSET, size + 64, CAPACITY, SLOTS, READERS, MAX_RECORD, 0)
    with pytest.raises(TypeError, match="Region"):
        _native.Ring.attach(bytearray(size), 0, size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid event ring"):
        _native.Ring.attach(region, OFFSET, size)  # nothing was created there


def test_append_and_read_one_batch(ring: _native.Ring, region: _native.Region) -> None:
    assert (ring.capacity, ring.slots, ring.readers, ring.max_record, ring.first_seq) == (
        CAPACITY, SLOTS, READERS, MAX_RECORD, 0)
    assert [ring.append(payload(i), 1000 + i) for i in range(3)] == [0, 1, 2]
    assert ring.append(payload(3), 0, 0.0, 4242) == 3  # a replay keeps its writer's pid
    payloads, timestamps, pids, sizes, stop, next_seq = ring.read(0, 10)
    assert orjson.loads(payloads) == [orjson.loads(payload(i)) for i in range(4)]
    assert timestamps[:3] == [1000, 1001, 1002] and timestamps[3] > 0
    assert pids == [os.getpid()] * 3 + [4242]
    assert sizes == [len(payload(i)) for i in range(4)]
    assert (stop, next_seq) == (_native.RING_EMPTY, 4)
    assert ring.read(1, 2)[4:] == (_native.RING_RECORD, 3)  # stopped at max_count
    assert ring.next_seq() == 4 and ring.stats()[:3] == (4, 4 * 48, 0)
    # attached elsewhere (here: a second handle) it reads the same records
    other = _native.Ring.attach(region, OFFSET, region.size - OFFSET)
    assert other.read(0, 10)[0] == payloads
    assert other.release() == 0


def test_wrapped_reads_resume_at_the_oldest(ring: _native.Ring) -> None:
    for i in range(200):
        ring.append(payload(i))
    payloads, _, _, sizes, stop, next_seq = ring.read(0, 10)
    assert (payloads, sizes, stop) == (b"[]", [], _native.RING_LOST)
    assert next_seq == ring.stats()[2] > 0
    rest = orjson.loads(ring.read(next_seq, 1000)[0])
    assert [r[5]["i"] for r in rest] == list(range(next_seq, 200))


def test_holes_and_corrupt_records_come_as_placeholders(ring: _native.Ring,
                                                        mapping: mmap.mmap) -> None:
    ring.append(payload(0))
    hole = ring.append_unfinished(payload(1), 2)
    ring.append(payload(2))
    assert ring.read(0, 10)[4:] == (_native.RING_PENDING, 1)
    assert ring.resolve(hole, 60.0, 0) == 0      # its writer (us) is alive, no stall seen
    assert ring.resolve(hole, 60.0, hole + 1) == 1  # seen stalled past the caller's bound
    data = OFFSET + _native.ring_size(CAPACITY, SLOTS, READERS) - CAPACITY
    mapping[data + 5] ^= 0xFF  # inside record 0's payload
    payloads, _, pids, sizes, stop, _ = ring.read(0, 10)
    assert orjson.loads(payloads)[:2] == [2, 1] and sizes[:2] == [1, 1]
    assert pids[1] == os.getpid() and stop == _native.RING_EMPTY
    assert ring.stats()[3] == 1


def test_bad_appends_are_refused(ring: _native.Ring) -> None:
    with pytest.raises(ValueError, match="outside 1..256"):
        ring.append(b"x" * 257)
    with pytest.raises(ValueError, match="outside"):
        ring.append(b"")
    with pytest.raises(TypeError, match="bytes"):
        ring.append(bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        ring.append_unfinished(b"x", 4)
    assert ring.next_seq() == 0


def test_registered_readers_hold_room_until_they_read(ring: _native.Ring) -> None:
    slots = [ring.register(0), ring.register(0)]
    assert sorted(slots) == [0, 1] and ring.register(0) == -1  # both slots taken
    ring.unregister(slots[1])
    appended = 0
    with pytest.raises(TimeoutError):
        while True:
            ring.append(payload(appended), 0, 0.01)
            appended += 1
    assert appended == SLOTS  # the reader's first record keeps its descriptor
    ring.read(0, 10, slots[0])  # reading advances the cursor and wakes writers
    ring.append(payload(0), 0, 0.01)
    with pytest.raises(ValueError, match="no reader slot"):
        ring.unregister(5)
    ring.unregister(slots[0])


def test_wait_times_out_and_wakes_on_a_commit(ring: _native.Ring) -> None:
    assert ring.wait(0, 0.01) is False
    timer = threading.Timer(0.05, lambda: ring.append(payload(0)))
    timer.start()
    try:
        assert ring.wait(0, WAIT) is True
    finally:
        timer.join()


def test_release_wakes_waiting_threads_and_closes_the_ring(region: _native.Region) -> None:
    ring = _native.Ring.create(region, OFFSET, region.size - OFFSET, CAPACITY, SLOTS, READERS,
                               MAX_RECORD, 0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            ring.wait(0, WAIT)
        except Closed as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    remaining = ring.release()
    waiter.join(WAIT)
    assert remaining in (0, 1) and ring.release() == 0 and ring.closed
    assert len(errors) == 1 and "closed while waiting" in str(errors[0])
    with pytest.raises(Closed, match="closed"):
        ring.append(payload(0))
