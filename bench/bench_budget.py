"""Budget gate throughput: carmp's CoordinationBudget against the usual ways to share a
counter between processes, in one run (see /work/shared/design/BENCHMARKS.md).

Workload, per worker process: repeat `begin()` (check the limits, count one agent) then
`record(tokens)` (add a report's tokens and cost); each call counts as one op. The
budget is limited but never trips, so the limit checks run on every begin. Peers do
the same work as carmp on five int64 words (agents started; input, output, total
tokens; cost in micro-USD) under one lock:

- mp.Value+lock: one multiprocessing Array of c_longlong guarded by its own lock
  (an RLock, the default), the words read through a memoryview of the raw array;
- posix_ipc sem: the words in a posix_ipc.SharedMemory segment (mmap + memoryview)
  guarded by a posix_ipc.Semaphore used as a mutex.

Workers attach each subject by name where it has one, as real workers would, and
start together on a barrier; see _harness.time_in_processes for what is timed.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import multiprocessing
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

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

from carmp import BudgetError, BudgetLimits, CoordinationBudget, TokenAccounting

MAX_AGENTS = 10**12
MAX_TOTAL_TOKENS = 10**15
LIMITS = BudgetLimits(max_total_tokens=MAX_TOTAL_TOKENS, max_agents=MAX_AGENTS)
TOKENS = TokenAccounting(input_tokens=1200, output_tokens=300, cost_usd=0.0042)
REPEATS = 3
DEFAULT_OPS = 1_000_000
QUICK_OPS = 20_000
PROCESS_COUNTS = (1, 2)
CARMP = "carmp"
MP_VALUE = "mp.Value+lock"
POSIX_SEM = "posix_ipc sem"
TARGET_VS_MP_VALUE = 3.0  # carmp / mp.Value+lock, 2 processes
TARGET_SINGLE = 5e6  # carmp ops/s, 1 process

Gate = tuple[Callable[[], None], Callable[[TokenAccounting], None]]
"""A subject's begin and record ops, bound in one worker process."""
Attach = Callable[[], Gate]
"""Runs in a worker: maps the subject's shared state and returns its ops."""

# Peer word indices: agents started, then the four spend dimensions in carmp's order.
AGENTS, INPUT, OUTPUT, TOTAL, COST = range(5)
WORDS = 5


class LockedCounters:
    """The peers' gate: carmp's checks and sums, on int64 words under one lock."""

    def __init__(self, words: memoryview, guard: AbstractContextManager[Any]) -> None:
        self._words = words
        self._guard = guard

    def begin(self) -> None:
        with self._guard:
            words = self._words
            if words[TOTAL] >= MAX_TOTAL_TOKENS or words[AGENTS] >= MAX_AGENTS:
                raise BudgetError("benchmark budget tripped; its limits are too low")
            words[AGENTS] += 1

    def record(self, tokens: TokenAccounting) -> None:
        with self._guard:
            words = self._words
            words[INPUT] += tokens.input_tokens
            words[OUTPUT] += tokens.output_tokens
            words[TOTAL] += tokens.total_tokens
            words[COST] += tokens.cost_micros


@contextmanager
def carmp_budget() -> Iterator[Attach]:
    """The subject; workers attach it by name, as carmp's own workers do."""
    budget = CoordinationBudget(LIMITS)
    try:
        def attach() -> Gate:
            mine = CoordinationBudget.attach(budget.name)
            return mine.try_begin_agent, mine.record_output

        yield attach
    finally:
        budget.close()


@contextmanager
def mp_value_peer() -> Iterator[Attach]:
    """Peer: the stdlib's shared ints under their own lock, what code reaches for first.
    The anonymous shared memory reaches workers through fork; there is nothing to unlink."""
    array = multiprocessing.get_context("fork").Array(ctypes.c_longlong, WORDS)

    def attach() -> Gate:
        words = memoryview(array.get_obj()).cast("B").cast("q")
        counters = LockedCounters(words, array.get_lock())
        return counters.begin, counters.record

    yield attach


@contextmanager
def posix_sem_peer() -> Iterator[Attach]:
    """Peer: the fastest lock-based gate measured before carmp (~2.5M ops/s, 2 processes).
    Its names are unique and outside carmp's "carmp-" namespace, so `carmp cleanup` and
    the tests' leak checks never see them; the creator unlinks them even on Ctrl-C."""
    base = f"/bench-budget-{os.getpid()}-{secrets.token_hex(4)}"
    shm_name, sem_name = base + "-shm", base + "-sem"
    creator = os.getpid()
    try:
        posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, size=8 * WORDS).close_fd()
        posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, initial_value=1).close()

        def attach() -> Gate:
            shm = posix_ipc.SharedMemory(shm_name)
            mapping = mmap.mmap(shm.fd, shm.size)
            shm.close_fd()
            counters = LockedCounters(memoryview(mapping).cast("q"), posix_ipc.Semaphore(sem_name))
            return counters.begin, counters.record

        yield attach
    finally:
        if os.getpid() == creator:
            for unlink, name in ((posix_ipc.unlink_shared_memory, shm_name),
                                 (posix_ipc.unlink_semaphore, sem_name)):
                try:
                    unlink(name)
                except posix_ipc.ExistentialError:
                    pass


SUBJECTS: dict[str, Callable[[], AbstractContextManager[Attach]]] = {
    CARMP: carmp_budget,
    MP_VALUE: mp_value_peer,
    POSIX_SEM: posix_sem_peer,
}


def workload(attach: Attach, iterations: int) -> Prepare:
    """One worker's prepare step: attach, then time `iterations` begin + record pairs."""

    def prepare() -> Body:
        begin, record = attach()
        tokens = TOKENS

        def body() -> None:
            for _ in range(iterations):
                begin()
                record(tokens)

        return body

    return prepare


def ops_per_second(attach: Attach, iterations: int, processes: int) -> Callable[[], float]:
    """A measure for interleaved(): total ops/s, both calls of each iteration counted."""
    prepare = workload(attach, iterations)
    ops = 2 * iterations * processes
    return lambda: ops / time_in_processes(prepare, processes)


def case_name(processes: int, subject: str) -> str:
    return f"{processes} process{'es' if processes > 1 else ''}, {subject}"


def report(spreads: dict[str, Spread], ops: int) -> str:
    """The table and the targets, as printed and as saved."""
    rows = []
    for processes in PROCESS_COUNTS:
        carmp = spreads[case_name(processes, CARMP)].median
        for subject in SUBJECTS:
            spread = spreads[case_name(processes, subject)]
            ratio = "-" if subject == CARMP else f"{carmp / spread.median:.2f}x"
            rows.append([case_name(processes, subject), si(spread.median), si(spread.low),
                         si(spread.high), ratio])
    table = markdown_table(["case", "median ops/s", "min", "max", "carmp / peer"], rows)
    versus_mp = spreads[case_name(2, CARMP)].median / spreads[case_name(2, MP_VALUE)].median
    single = spreads[case_name(1, CARMP)].median
    return "\n".join([
        "## Budget gate: try_begin_agent + record_output",
        "",
        f"{machine_line()}; fork",
        f"`{command_line()}`: {ops:,} ops per process, median of {REPEATS} interleaved repeats",
        "",
        table,
        "",
        target_line(f">= {TARGET_VS_MP_VALUE:g}x {MP_VALUE}, 2 processes", f"{versus_mp:.2f}x",
                    versus_mp >= TARGET_VS_MP_VALUE),
        target_line(f">= {si(TARGET_SINGLE)} ops/s, 1 process", si(single), single >= TARGET_SINGLE),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Budget gate throughput: carmp vs mp.Value+lock vs a posix_ipc semaphore.")
    parser.add_argument("--ops", type=int, default=DEFAULT_OPS,
                        help=f"ops per process per measurement (default {DEFAULT_OPS:,})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run with {QUICK_OPS:,} ops per process")
    args = parser.parse_args()
    iterations = (QUICK_OPS if args.quick else args.ops) // 2
    if iterations < 1:
        parser.error("--ops must be at least 2 (one begin and one record)")
    with ExitStack() as stack:
        measures = {}
        for subject, open_subject in SUBJECTS.items():
            attach = stack.enter_context(open_subject())
            for processes in PROCESS_COUNTS:
                measures[case_name(processes, subject)] = ops_per_second(attach, iterations, processes)
        samples = interleaved(measures, REPEATS)
    text = report({name: Spread.of(values) for name, values in samples.items()}, 2 * iterations)
    print(text)
    print(f"\nwritten to {write_result('budget', text)}")

if __name__ == "__main__":
    main()
