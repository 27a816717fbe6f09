"""carmp._native.Channel: the SPSC message channel and its bells, from Python."""

from __future__ import annotations

import mmap
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carmp import _native
from carmp.errors import SegmentClosed
from carmp.shared.segment import HEADER_SIZE, Segment

CAPACITY = 4096
READABLE, WRITABLE = HEADER_SIZE, HEADER_SIZE + 64
CHANNEL = HEADER_SIZE + 128
SEGMENT_PAYLOAD = 128 + _native.CHANNEL_HEADER + CAPACITY
KIND = "chantest"
CHILD_WAIT = 30.0  # bounded waits on children; far above what they need


def new_channel(capacity: int = CAPACITY) -> tuple[mmap.mmap, _native.Channel]:
    mapping = mmap.mmap(-1, CHANNEL + _native.CHANNEL_HEADER + capacity)
    channel = _native.Channel(_native.Region(mapping), CHANNEL, READABLE, WRITABLE)
    channel.initialize(capacity)
    return mapping, channel


@pytest.fixture
def channel() -> Iterator[_native.Channel]:
    mapping, ch = new_channel()
    yield ch
    del ch


def test_send_and_receive_in_order(channel: _native.Channel) -> None:
    assert channel.recv() is None and not channel.readable
    assert channel.send(1, b"one") and channel.send(2, bytearray(b"two")) and channel.send(3, b"")
    assert channel.readable and channel.used == 3 * 16 - 8
    assert [channel.recv(), channel.recv(), channel.recv(), channel.recv()] == [
        (1, b"one"), (2, b"two"), (3, b""), None]


def test_full_channel_refuses_without_losing_anything(channel: _native.Channel) -> None:
    message = b"m" * 1000
    sent = 0
    while channel.send(sent, message):
        sent += 1
    assert sent == CAPACITY // 1008
    assert [tag for tag, _ in channel.recv_many(100)] == list(range(sent))


def test_oversize_message_is_a_clear_error(channel: _native.Channel) -> None:
    assert channel.max_message == CAPACITY // 2 - 8
    channel.send(0, b"x" * channel.max_message)
    with pytest.raises(ValueError, match="fragments"):
        channel.send(0, b"x" * (channel.max_message + 1))
    with pytest.raises(OverflowError):
        channel.send(2**32, b"")


def test_send_many_stops_at_the_first_that_does_not_fit(channel: _native.Channel) -> None:
    batch = [(i, b"y" * 500) for i in range(20)]
    sent = channel.send_many(batch)
    assert 0 < sent < 20
    assert [t for t, _ in channel.recv_many(3)] == [0, 1, 2]
    assert [t for t, _ in channel.recv_many(100)] == list(range(3, sent))
    with pytest.raises(TypeError):
        channel.send_many([b"not a pair"])


@given(st.lists(st.binary(max_size=700), max_size=60))
@settings(max_examples=50, deadline=None)
def test_any_traffic_arrives_intact(messages: list[bytes]) -> None:
    _mapping, channel = new_channel(1024)
    received: list[bytes] = []
    for i, message in enumerate(messages):
        while not channel.send(i, message):
            received += [data for _, data in channel.recv_many(4)]
    received += [data for _, data in channel.recv_many(len(messages))]
    assert received == messages


def test_waits_time_out_and_return_at_once_when_ready(channel: _native.Channel) -> None:
    assert channel.wait_readable(0.01) is False
    assert channel.wait_readable(0.0, spin=0.001) is False
    channel.send(1, b"x")
    assert channel.wait_readable(None) is True
    assert channel.wait_writable(100, 0.0) is True
    with pytest.raises(ValueError):
        channel.wait_writable(CAPACITY)


def test_a_thread_wakes_a_sleeping_consumer(channel: _native.Channel) -> None:
    threading.Timer(0.05, channel.send, (9, b"late")).start()
    assert channel.wait_readable(CHILD_WAIT) is True
    assert channel.recv() == (9, b"late")


def test_corrupt_record_raises(channel: _native.Channel) -> None:
    mapping = mmap.mmap(-1, CHANNEL + _native.CHANNEL_HEADER + CAPACITY)
    ch = _native.Channel(_native.Region(mapping), CHANNEL, READABLE, WRITABLE)
    ch.initialize(CAPACITY)
    ch.send(1, b"abc")
    start = CHANNEL + _native.CHANNEL_HEADER
    mapping[start:start + 4] = (10**6).to_bytes(4, "little")
    with pytest.raises(ValueError, match="corrupt"):
        ch.recv()


def test_uninitialised_channel_is_refused() -> None:
    mapping = mmap.mmap(-1, CHANNEL + _native.CHANNEL_HEADER + CAPACITY)
    ch = _native.Channel(_native.Region(mapping), CHANNEL, READABLE, WRITABLE)
    with pytest.raises(ValueError, match="not initialised"):
        ch.send(1, b"x")
    with pytest.raises(ValueError):
        _native.Channel(_native.Region(mapping), len(mapping), READABLE, WRITABLE)
    with pytest.raises(ValueError, match="power of two"):
        ch.initialize(1000)


def test_closed_segment_raises_its_closed_error() -> None:
    segment = Segment.create(KIND, SEGMENT_PAYLOAD, layout_version=1)
    ch = _native.Channel(segment.region, CHANNEL, READABLE, WRITABLE)
    ch.initialize(CAPACITY)
    segment.close()
    with pytest.raises(SegmentClosed):
        ch.send(1, b"x")


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise _Interrupted(signum)


def test_a_signal_handler_interrupts_a_sleeping_wait(channel: _native.Channel) -> None:
    old = signal.signal(signal.SIGUSR1, _raise_interrupted)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(_Interrupted):
            channel.wait_readable(None)
    finally:
        timer.join()
        signal.signal(signal.SIGUSR1, old)


def _produce(name: str, count: int) -> None:
    segment = Segment.attach(name, kind=KIND, layout_version=1)
    ch = _native.Channel(segment.region, CHANNEL, READABLE, WRITABLE)
    for i in range(count):
        payload = i.to_bytes(4, "little") * (1 + i % 50)
        while not ch.send(i, payload):
            if not ch.wait_writable(len(payload), CHILD_WAIT):
                os._exit(3)
    os._exit(0)


def test_a_producer_process_streams_to_a_sleeping_consumer(mp_context: Any) -> None:
    count = 20_000
    segment = Segment.create(KIND, SEGMENT_PAYLOAD, layout_version=1)
    try:
        ch = _native.Channel(segment.region, CHANNEL, READABLE, WRITABLE)
        ch.initialize(CAPACITY)
        segment.mark_ready()
        producer = mp_context.Process(target=_produce, args=(segment.name, count))
        producer.start()
        expected = 0
        while expected < count:
            assert ch.wait_readable(CHILD_WAIT, spin=0.0001)
            for tag, payload in ch.recv_many(64):
                assert tag == expected
                assert payload == expected.to_bytes(4, "little") * (1 + expected % 50)
                expected += 1
        producer.join(CHILD_WAIT)
        assert producer.exitcode == 0
    finally:
        segment.close()


def test_wait_any_wakes_for_whichever_channel_shares_the_bell() -> None:
    size = 2 * (_native.CHANNEL_HEADER + CAPACITY)
    mapping = mmap.mmap(-1, CHANNEL + size)
    region = _native.Region(mapping)
    first = _native.Channel(region, CHANNEL, READABLE, WRITABLE)
    second = _native.Channel(region, CHANNEL + _native.CHANNEL_HEADER + CAPACITY, READABLE,
                             WRITABLE + 16)
    first.initialize(CAPACITY)
    second.initialize(CAPACITY)
    assert _native.wait_any([first, second], 0.01) is False
    threading.Timer(0.05, second.send, (5, b"second")).start()
    assert _native.wait_any([first, second], CHILD_WAIT) is True
    assert second.recv() == (5, b"second") and first.recv() is None
    first.send(1, b"")
    assert _native.wait_any([first, second], 0) is True
    other = _native.Channel(region, CHANNEL, WRITABLE + 16, WRITABLE)
    with pytest.raises(ValueError, match="share one readable bell"):
        _native.wait_any([first, other], 0)
    with pytest.raises(ValueError):
        _native.wait_any([], 0)
    with pytest.raises(TypeError):
        _native.wait_any([object()], 0)  # type: ignore[list-item]


def test_wait_any_since_a_seq_sees_a_ring_that_came_before_it_slept() -> None:
    """The supervisor reads bell_seq(), looks at its own flags (deaths, cancels), then
    waits: a ring() between the look and the wait, with nobody asleep yet, must end the
    wait rather than be lost (it once cost a death up to the collector's idle wait)."""
    mapping = mmap.mmap(-1, CHANNEL + _native.CHANNEL_HEADER + CAPACITY)
    channel = _native.Channel(_native.Region(mapping), CHANNEL, READABLE, WRITABLE)
    channel.initialize(CAPACITY)
    since = channel.bell_seq()
    assert _native.wait_any([channel], 0.01, since=since) is False
    channel.ring()  # nobody sleeps on the bell now
    assert channel.bell_seq() != since
    assert _native.wait_any([channel], CHILD_WAIT, since=since) is True
    assert _native.wait_any([channel], 0.01, since=channel.bell_seq()) is False
    for bad in (2**40, -1, True, "0"):
        with pytest.raises(ValueError, match="bell_seq"):
            _native.wait_any([channel], 0, since=bad)  # type: ignore[arg-type]
