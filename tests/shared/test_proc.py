"""carmp/shared/proc.py: process identity and pausing the cyclic collector."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator

import pytest

from carmp.shared.proc import gc_paused, own_identity, process_start_time


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_own_identity_is_this_process() -> None:
    pid, start = own_identity()
    assert pid == os.getpid() and start == process_start_time(pid)


def test_a_pause_restores_the_collector_as_it_was() -> None:
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()  # the caller had it off: it stays off


def test_pauses_in_two_threads_nest() -> None:
    """The collector comes back when the last burst ends, not the first."""
    inside, release = threading.Event(), threading.Event()

    def burst() -> None:
        with gc_paused():
            inside.set()
            release.wait(60)

    other = threading.Thread(target=burst)
    other.start()
    inside.wait(60)
    with gc_paused():
        pass
    assert not gc.isenabled()  # the other thread's burst still runs
    release.set()
    other.join()
    assert gc.isenabled()


def test_a_child_forked_during_a_burst_gets_its_collector_back() -> None:
    read, write = os.pipe()
    with gc_paused():
        pid = os.fork()
        if pid == 0:  # the child: the burst's thread (this one) never ends it here
            os.close(read)
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
