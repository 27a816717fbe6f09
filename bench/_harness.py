"""Helpers every bench script shares, so all of them time, repeat and report alike.

The rules they implement are in /work/shared/design/BENCHMARKS.md: carmp and its peers
run in the same process tree and the same run, each is repeated (interleaved, so that
machine drift hits every subject alike), and results are medians with min/max, stated
as ratios carmp / peer.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
START_TIMEOUT = 60.0  # seconds a worker waits at the start barrier for the others

Sample = TypeVar("Sample")
"""What one measure returns: a number, or a tuple of them (p50, p99)."""
Body = Callable[[], None]
"""The timed part of a worker."""
Prepare = Callable[[], Body]
"""Runs in each worker before the start signal (attach shared state, build inputs)
and returns the body to time; its own cost is never timed."""


def machine_line() -> str:
    """Date, machine and Python: absolute numbers mean nothing without them."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}; nproc {len(os.sched_getaffinity(0))}; {model}; "
            f"{platform.python_implementation()} {platform.python_version()}")


def command_line() -> str:
    """The command that produced a result, as README must quote it."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def _monotonic_ns() -> int:
    # CLOCK_MONOTONIC is one clock for the whole system on Linux, so stamps taken in
    # different worker processes can be compared.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _worker(prepare: Prepare, barrier: Barrier, report: Connection) -> None:
    body = prepare()
    barrier.wait()
    start = _monotonic_ns()
    body()
    report.send((start, _monotonic_ns()))
    report.close()


def time_in_processes(prepare: Prepare, processes: int) -> float:
    """Seconds from the start signal to the last of `processes` forked workers done.

    Every worker runs `prepare()` untimed, then all leave one barrier together; the
    span runs from the earliest worker's start to the latest one's end. Fork keeps
    closures usable as workers and makes start-up cheap; start-up is never timed."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes, timeout=START_TIMEOUT)
    pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    started: list[BaseProcess] = []
    try:
        for _, sender in pipes:
            process = context.Process(target=_worker, args=(prepare, barrier, sender), daemon=True)
            process.start()
            started.append(process)
        for _, sender in pipes:
            sender.close()  # the workers hold their own copies
        # Watch the sentinels as well as the pipes: a dead worker's pipe shows no EOF
        # while the other workers live, as each inherited every sender.
        owners: dict[Any, tuple[Connection, BaseProcess]] = {}  # receivers and sentinels
        for (receiver, _), worker in zip(pipes, started):
            owners[receiver] = owners[worker.sentinel] = (receiver, worker)
        stamps: dict[BaseProcess, tuple[int, int]] = {}
        while len(stamps) < processes:
            for ready in wait(owners):
                receiver, worker = owners.pop(ready)
                if worker not in stamps:
                    stamps[worker] = _receive(receiver, worker)
    except BaseException:
        for worker in started:  # failure or Ctrl-C: stop the others now, not at their end
            worker.terminate()
        raise
    finally:
        for worker in started:
            worker.join()
        for receiver, sender in pipes:
            receiver.close()
            sender.close()
    return (max(end for _, end in stamps.values()) - min(start for start, _ in stamps.values())) / 1e9


def _receive(receiver: Connection, worker: BaseProcess) -> tuple[int, int]:
    """The worker's (start, end) stamps; a worker that exited without them failed."""
    try:
        if receiver.poll():
            start, end = receiver.recv()
            return int(start), int(end)
    except EOFError:
        pass
    worker.join()
    raise RuntimeError(
        f"benchmark worker pid {worker.pid} exited with code {worker.exitcode} before "
        "reporting; its traceback is above"
    )


def interleaved(measures: Mapping[str, Callable[[], Sample]], repeats: int) -> dict[str, list[Sample]]:
    """Run every measure once per round, `repeats` rounds: drift then spreads over all
    subjects instead of favouring whichever ran first."""
    samples: dict[str, list[Sample]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            samples[name].append(measure())
    return samples


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of repeated samples; the median is what ratios use."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        return cls(statistics.median(samples), min(samples), max(samples))


def si(value: float) -> str:
    """A rate as 3 significant figures with k/M/G, the way BENCHMARKS.md writes them."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table whose columns line up in a terminal as well."""
    widths = [max(len(cells[i]) for cells in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in rows)])


def target_line(claim: str, achieved: str, met: bool) -> str:
    """One BENCHMARKS.md target and whether this run met it."""
    return f"- target {claim}: {achieved} -> {'met' if met else 'NOT met'}"


def write_result(name: str, text: str, directory: Path = RESULTS_DIR) -> Path:
    """Save a report as <directory>/<name>.md; bench/results/ holds the ones the README
    quotes, so trial runs go elsewhere."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.md"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path
