"""Event log throughput: carmp's EventLog against the usual ways to stream events between
processes, in one run (see /work/shared/design/BENCHMARKS.md).

Workload: writer processes each send the same ~100-byte event (kind, action_id and a small
data dict) as fast as they can; one reader process receives every event, decoded into an
object, and counts it. A measurement is all events appended and read, from the start
barrier to the last one received (see _harness.time_in_processes); cases are 1 writer ->
1 reader and 2 writers -> 1 reader.

- carmp: EventLog.append(kind, action_id, data=...) -> one ring commit; the reader is a
  registered EventReader taking batches (read()), in backpressure mode, so, like the
  bounded queues, writers wait instead of losing events (a run checks none was lost);
- mp.Queue and mp.SimpleQueue: put((kind, action_id, data)) / get(), pickled;
- posix_ipc MQ: a POSIX message queue carries orjson bytes; the reader decodes them;
- faster-fifo: put(obj) / get_many() (its batched reads), pickled.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import faster_fifo
import orjson
import posix_ipc
from _harness import (
    Body,
    Prepare,
    Spread,
    command_line,
    interleaved,
    machine_line,
    markdown_table,
    si,
    target_line,
    time_in_processes,
    write_result,
)

from carmp import EventLog

KIND = "action_succeeded"
ACTION_ID = "action-000123"
DATA = {"tool": "search", "attempt": 1, "latency_ms": 12.5, "ok": True}
EVENT = (KIND, ACTION_ID, DATA)
REPEATS = 3
WRITER_COUNTS = (1, 2)
READ_BATCH = 1024
WAIT = 60.0  # a reader waiting this long for one event means the run broke
CARMP, MP_QUEUE, SIMPLE_QUEUE, POSIX_MQ, FASTER_FIFO = (
    "carmp", "mp.Queue", "mp.SimpleQueue", "posix_ipc MQ", "faster-fifo")
DEFAULT_EVENTS = {CARMP: 600_000, MP_QUEUE: 200_000, SIMPLE_QUEUE: 200_000, POSIX_MQ: 200_000,
                  FASTER_FIFO: 200_000}
QUICK_EVENTS = 10_000
MQ_DEPTH = 1024  # messages a POSIX queue should hold; Linux caps it at fs.mqueue.msg_max
TARGET_RATE = 1e6  # events/s, appended and read
TARGET_VS_MP_QUEUE = 3.0

Send = Callable[[], None]
"""Sends one event."""
Receive = Callable[[], int]
"""Receives at least one event (waiting for it); returns how many."""
Subject = tuple[Callable[[], Send], Callable[[int], Receive]]
"""A subject's two ends: make a writer's send, and a reader's receive (given how many
events it will read in all). Each runs in its worker before the start barrier."""


class Stalled(RuntimeError):
    """The reader waited WAIT seconds for an event that never came."""


# ---- subjects ------------------------------------------------------------------------------


@contextmanager
def carmp_log() -> Iterator[Subject]:
    log = EventLog(backpressure=True, backpressure_timeout=WAIT)

    def writer() -> Send:
        append = log.append

        def send() -> None:
            append(KIND, ACTION_ID, data=DATA)

        return send

    def reader(total: int) -> Receive:
        events = log.reader(log.next_seq)

        def receive() -> int:
            batch = events.read(READ_BATCH, WAIT)
            if not batch:
                raise Stalled(f"carmp reader stalled at seq {events.next_seq}")
            if events.lost or events.holes:
                raise RuntimeError(f"carmp reader lost {events.lost} events, {events.holes} holes")
            return len(batch)

        return receive

    try:
        yield writer, reader
    finally:
        log.close()


@contextmanager
def mp_queue(simple: bool) -> Iterator[Subject]:
    context = multiprocessing.get_context("fork")
    queue: Any = context.SimpleQueue() if simple else context.Queue()

    def writer() -> Send:
        put = queue.put
        return lambda: put(EVENT)

    def reader(total: int) -> Receive:
        get = queue.get

        def receive() -> int:
            get()
            return 1

        return receive

    try:
        yield writer, reader
    finally:
        queue.close()


def mq_depth() -> int:
    """MQ_DEPTH, or the system's cap when that is lower (unprivileged: 10)."""
    try:
        with open("/proc/sys/fs/mqueue/msg_max", encoding="ascii") as cap:
            return min(MQ_DEPTH, int(cap.read()))
    except (OSError, ValueError):
        return 10


@contextmanager
def posix_mq() -> Iterator[Subject]:
    """A POSIX message queue outside carmp's names; the creator unlinks it even on Ctrl-C."""
    name = f"/bench-events-{os.getpid()}-{secrets.token_hex(4)}"
    creator = os.getpid()
    queue = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=mq_depth(),
                                   max_message_size=256)

    def writer() -> Send:
        send, dumps = queue.send, orjson.dumps
        return lambda: send(dumps(EVENT))

    def reader(total: int) -> Receive:
        receive_raw, loads = queue.receive, orjson.loads

        def receive() -> int:
            loads(receive_raw(WAIT)[0])
            return 1

        return receive

    try:
        yield writer, reader
    finally:
        queue.close()
        if os.getpid() == creator:
            queue.unlink()


@contextmanager
def faster_fifo_queue() -> Iterator[Subject]:
    queue = faster_fifo.Queue(max_size_bytes=4 * 1024 * 1024)

    def writer() -> Send:
        put = queue.put
        return lambda: put(EVENT, timeout=WAIT)

    def reader(total: int) -> Receive:
        get_many = queue.get_many

        def receive() -> int:
            return len(get_many(timeout=WAIT, max_messages_to_get=READ_BATCH))

        return receive

    try:
        yield writer, reader
    finally:
        queue.close()


SUBJECTS: dict[str, Callable[[], AbstractContextManager[Subject]]] = {
    CARMP: carmp_log,
    MP_QUEUE: lambda: mp_queue(simple=False),
    SIMPLE_QUEUE: lambda: mp_queue(simple=True),
    POSIX_MQ: posix_mq,
    FASTER_FIFO: faster_fifo_queue,
}


# ---- workload --------------------------------------------------------------------------------


def workload(subject: Subject, writers: int, per_writer: int) -> Prepare:
    """Prepare for one worker: the first to arrive reads, the others write."""
    make_writer, make_reader = subject
    arrivals = multiprocessing.get_context("fork").Value("i", 0)
    total = writers * per_writer

    def prepare() -> Body:
        with arrivals.get_lock():
            role = arrivals.value
            arrivals.value += 1
        if role == 0:
            receive = make_reader(total)

            def read_all() -> None:
                got = 0
                while got < total:
                    got += receive()

            return read_all
        send = make_writer()

        def write_all() -> None:
            for _ in range(per_writer):
                send()

        return write_all

    return prepare


def events_per_second(subject: Subject, writers: int, per_writer: int) -> Callable[[], float]:
    total = writers * per_writer
    return lambda: total / time_in_processes(workload(subject, writers, per_writer), writers + 1)


def case_name(writers: int, subject: str) -> str:
    return f"{writers} writer{'s' if writers > 1 else ''} -> 1 reader, {subject}"


def report(spreads: dict[str, Spread], counts: dict[str, int], event_bytes: int) -> str:
    rows = []
    for writers in WRITER_COUNTS:
        carmp = spreads[case_name(writers, CARMP)].median
        for subject in SUBJECTS:
            spread = spreads[case_name(writers, subject)]
            ratio = "-" if subject == CARMP else f"{carmp / spread.median:.2f}x"
            rows.append([case_name(writers, subject), si(spread.median), si(spread.low),
                         si(spread.high), ratio])
    table = markdown_table(["case", "median events/s", "min", "max", "carmp / peer"], rows)
    one = spreads[case_name(1, CARMP)].median
    two = spreads[case_name(2, CARMP)].median
    versus = one / spreads[case_name(1, MP_QUEUE)].median
    sizes = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    return "\n".join([
        "## Event log: writers -> 1 reader, ~100-byte events",
        "",
        f"{machine_line()}; fork",
        f"`{command_line()}`: events per measurement: {sizes}; median of {REPEATS} "
        f"interleaved repeats; carmp's event encodes to {event_bytes} bytes; the POSIX queue "
        f"holds {mq_depth()} messages (fs.mqueue.msg_max)",
        "",
        table,
        "",
        target_line(f">= {si(TARGET_RATE)} events/s appended and read, 1 writer -> 1 reader",
                    si(one), one >= TARGET_RATE),
        target_line(f">= {TARGET_VS_MP_QUEUE:g}x {MP_QUEUE}, 1 writer -> 1 reader",
                    f"{versus:.2f}x", versus >= TARGET_VS_MP_QUEUE),
        target_line(f">= {si(TARGET_RATE)} events/s total, 2 writers -> 1 reader", si(two),
                    two >= TARGET_RATE),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Event log throughput: carmp vs mp.Queue, SimpleQueue, posix_ipc, faster-fifo.")
    parser.add_argument("--events", type=int, default=0,
                        help="events per measurement for every subject (default: per subject, "
                             f"{DEFAULT_EVENTS[CARMP]:,} for carmp)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run with {QUICK_EVENTS:,} events per measurement")
    args = parser.parse_args()
    counts = {name: QUICK_EVENTS if args.quick else args.events or default
              for name, default in DEFAULT_EVENTS.items()}
    if min(counts.values()) < max(WRITER_COUNTS):
        parser.error(f"--events must be at least {max(WRITER_COUNTS)}")
    with ExitStack() as stack:
        measures = {}
        for name, open_subject in SUBJECTS.items():
            subject = stack.enter_context(open_subject())
            for writers in WRITER_COUNTS:
                measures[case_name(writers, name)] = events_per_second(
                    subject, writers, counts[name] // writers)
        samples = interleaved(measures, REPEATS)
    event_bytes = len(orjson.dumps([KIND, ACTION_ID, None, None, None, DATA, None, None]))
    text = report({name: Spread.of(values) for name, values in samples.items()}, counts,
                  event_bytes)
    print(text)
    print(f"\nwritten to {write_result('eventlog', text)}")


if __name__ == "__main__":
    main()
