"""Worker pool: carmp's Farm against the usual Python pools, in one run (see
/work/shared/design/BENCHMARKS.md). Every pool has 2 workers and runs the same tasks:

(a) throughput: no-op tasks, one task per message (map with chunksize 1), tasks/s;
(b) round trip: submit one no-op, wait for its result, repeat; p50 and p99;
(c) CPU-bound scaling: ~20 ms pure-Python tasks on 1 worker, then on 2; efficiency
    = (1-worker time / 2-worker time) / 2, carmp and mp.Pool only;
(d) start-up: constructing the pool to the first result of a no-op, fresh pool each
    time; "cold" in a fresh interpreter (a forkserver, for one, starts there), "warm"
    in this process after pools of the same kind have run.

Peers: multiprocessing.Pool and ProcessPoolExecutor (fork, the Linux default on 3.11),
loky's ProcessPoolExecutor (its own loky start method) and mpire's WorkerPool (fork).
carmp uses its default, forkserver. Each measurement of (a)-(c) opens a fresh pool and
warms it up untimed.

Ray is a peer in (a), (b) and (d), as plain remote functions (a @ray.remote no-op) on a
local 2-CPU cluster, loopback only, cloud-metadata lookups refused (bench/_local_ray.py):
(a) ray.get([f.remote(x) for x in items]), (b) ray.get(f.remote()) in a loop, both on one
cluster started once for the two rows; (d) ray.init of a new cluster to the first no-op
result, "warm" after the previous cluster in this process was shut down. Without Ray
installed its rows are skipped.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from carmp.pool.farm import Farm

if __name__ == "__main__":
    # carmp's forkserver workers and loky's workers import this script (as __mp_main__)
    # as they start; what only this process uses stays out of their start-up time.
    import loky  # type: ignore[import-untyped]
    from _harness import (
        Spread,
        command_line,
        interleaved,
        machine_line,
        markdown_table,
        si,
        target_line,
        write_result,
    )
    from _local_ray import local_ray, ray_environment, ray_installed
    from mpire.pool import WorkerPool

    from carmp.backends.on_ray.cluster import ray_module

WORKERS = 2
REPEATS = 3
WARMUP_TASKS = 1_000  # untimed no-ops each pool maps before a timed map
WARMUP_CALLS = 300  # untimed round trips before the timed ones
TASK_SECONDS = 0.02  # what one CPU-bound task is calibrated to take here


@dataclass(frozen=True, slots=True)
class Counts:
    """How much work each case does."""

    tasks: int  # (a) no-op tasks per map
    calls: int  # (b) timed round trips
    cpu_tasks: int  # (c) CPU-bound tasks per map


FULL = Counts(tasks=50_000, calls=5_000, cpu_tasks=200)
QUICK = Counts(tasks=2_000, calls=300, cpu_tasks=20)

CARMP = "carmp Farm"
MP_POOL = "mp.Pool"
RAY = "Ray"
TARGET_THROUGHPUT = 3.0  # carmp / mp.Pool, tasks/s
TARGET_P50_US = 50.0
TARGET_P50_VS_POOL = 0.5  # carmp p50 / mp.Pool.apply p50
TARGET_P99_US = 200.0
TARGET_EFFICIENCY = 0.95
TARGET_START_S = 0.150


def noop(_: object = None) -> None:
    """The no-op task."""


def burn(iterations: int) -> int:
    """The CPU-bound task: a pure-Python loop."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def calibrate(seconds: float) -> int:
    """Iterations of burn() that take about `seconds` here (best of 5 probes)."""
    probe = 200_000
    took = min(_seconds(lambda: burn(probe)) for _ in range(5))
    return max(1, round(probe * seconds / took))


def _seconds(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


@dataclass(frozen=True, slots=True)
class Runner:
    """An open pool, reduced to the two calls the cases make."""

    map: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]
    """Results of fn over items, one task per message."""
    call: Callable[[Callable[[], Any]], Any]
    """Submit fn(), wait for its result."""


OpenPool = Callable[[int], AbstractContextManager[Runner]]
"""Opens a pool of that many workers; closing it stops them all."""


@contextmanager
def carmp_farm(workers: int) -> Iterator[Runner]:
    with Farm(workers=workers) as farm:
        yield Runner(lambda fn, items: farm.map(fn, items, chunksize=1),
                     lambda fn: farm.submit(fn).result())


@contextmanager
def mp_pool(workers: int) -> Iterator[Runner]:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield Runner(lambda fn, items: pool.map(fn, items, chunksize=1), pool.apply)


def _executor_runner(executor: Executor) -> Runner:
    return Runner(lambda fn, items: list(executor.map(fn, items, chunksize=1)),
                  lambda fn: executor.submit(fn).result())


@contextmanager
def process_pool_executor(workers: int) -> Iterator[Runner]:
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as executor:
        yield _executor_runner(executor)


@contextmanager
def loky_executor(workers: int) -> Iterator[Runner]:
    with loky.ProcessPoolExecutor(max_workers=workers) as executor:
        yield _executor_runner(executor)


@contextmanager
def mpire_pool(workers: int) -> Iterator[Runner]:
    with WorkerPool(n_jobs=workers, start_method="fork", keep_alive=True) as pool:
        yield Runner(lambda fn, items: pool.map(fn, items, chunk_size=1),
                     lambda fn: pool.apply_async(fn).get())


def ray_runner(ray: ModuleType) -> Runner:
    """Plain Ray remote functions on the cluster this process joined, one task per item."""
    as_task = functools.cache(ray.remote)  # one remote function per Python function

    def map_tasks(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        task = as_task(fn)
        return ray.get([task.remote(item) for item in items])

    return Runner(map_tasks, lambda fn: ray.get(as_task(fn).remote()))


def running_ray(ray: ModuleType) -> OpenPool:
    """(a), (b): Ray on the cluster main() started once for both rows (its CPUs are the
    workers); each measurement defines its remote function anew, exported on its first,
    untimed, call."""
    return lambda _workers: nullcontext(ray_runner(ray))


@contextmanager
def started_ray(workers: int) -> Iterator[Runner]:
    """(d): a new local Ray cluster with `workers` CPUs, shut down on closing."""
    with local_ray(workers) as ray:
        yield ray_runner(ray)


SUBJECTS: dict[str, OpenPool] = {
    CARMP: carmp_farm,
    MP_POOL: mp_pool,
    "ProcessPoolExecutor": process_pool_executor,
    "loky": loky_executor,
    "mpire": mpire_pool,
}
START_SUBJECTS: dict[str, OpenPool] = {**SUBJECTS, RAY: started_ray}
SCALING_SUBJECTS = (CARMP, MP_POOL)

# ---- measures: each opens a fresh pool and returns one sample ------------------------------


def map_seconds(open_pool: OpenPool, workers: int, fn: Callable[[Any], Any],
                items: Sequence[Any]) -> float:
    """Seconds one map of fn over items takes on a warmed-up pool."""
    with open_pool(workers) as runner:
        runner.map(noop, range(WARMUP_TASKS))
        return _seconds(lambda: runner.map(fn, items))


def throughput(open_pool: OpenPool, tasks: int) -> Callable[[], float]:
    """(a) no-op tasks/s."""
    return lambda: tasks / map_seconds(open_pool, WORKERS, noop, range(tasks))


def round_trip(open_pool: OpenPool, calls: int) -> Callable[[], tuple[float, float]]:
    """(b) p50 and p99 of submit-and-wait, in microseconds."""

    def measure() -> tuple[float, float]:
        with open_pool(WORKERS) as runner:
            call = runner.call
            for _ in range(WARMUP_CALLS):
                call(noop)
            samples = []
            for _ in range(calls):
                began = time.perf_counter_ns()
                call(noop)
                samples.append(time.perf_counter_ns() - began)
        cuts = statistics.quantiles(samples, n=100)
        return cuts[49] / 1e3, cuts[98] / 1e3

    return measure


def scaling(open_pool: OpenPool, iterations: int, tasks: int) -> Callable[[], tuple[float, float]]:
    """(c) seconds for the CPU-bound map on 1 worker, then on 2."""
    items = [iterations] * tasks
    return lambda: (map_seconds(open_pool, 1, burn, items), map_seconds(open_pool, 2, burn, items))


def start_seconds(open_pool: OpenPool) -> float:
    """(d) seconds from constructing a pool to the first result of a no-op."""
    began = time.perf_counter()
    with open_pool(WORKERS) as runner:
        runner.call(noop)
        return time.perf_counter() - began


def cold_start(subject: str) -> Callable[[], float]:
    """(d) start_seconds() in a fresh interpreter, this script run with --cold-start."""

    def measure() -> float:
        # Ray's probe has the network guard and Ray's settings from its interpreter's start
        with ray_environment() if subject == RAY else nullcontext():
            probe = subprocess.run([sys.executable, __file__, "--cold-start", subject],
                                   check=True, stdout=subprocess.PIPE, text=True, timeout=120)
        return float(probe.stdout)

    return measure


# ---- report ------------------------------------------------------------------------------------


def figure(value: float) -> str:
    """3 significant figures, whole numbers from 1,000 on (no exponents)."""
    return f"{value:,.0f}" if abs(value) >= 1e3 else f"{value:.3g}"


def milliseconds(seconds: float) -> str:
    return figure(seconds * 1e3)


def spread_cells(spread: Spread, show: Callable[[float], str]) -> list[str]:
    return [show(spread.median), show(spread.low), show(spread.high)]


def ratio(carmp: float, peer: float) -> str:
    return f"{carmp / peer:.2f}x"


def spreads_of(samples: Sequence[tuple[float, ...]], field: int) -> Spread:
    return Spread.of([sample[field] for sample in samples])


def efficiency(times: tuple[float, float]) -> float:
    one, two = times
    return one / two / 2


def ray_note(ray_start_seconds: float | None) -> str:
    if ray_start_seconds is None:
        return "Ray: no rows; not installed here (pip install -e '.[bench]')."
    return (f"Ray: plain remote functions (a @ray.remote no-op) on a local cluster "
            f"(127.0.0.1, {WORKERS} CPUs, no dashboard). (a) ray.get([f.remote(x) for x in "
            "items]), (b) ray.get(f.remote()) in a loop: on one cluster started once for both "
            f"rows ({ray_start_seconds:.1f} s, not timed), idle while the other pools ran; "
            "each measurement defines f anew and warms it up untimed, as the pools are. "
            "(d) ray.init of a new cluster to the first no-op result (its loopback check "
            "included), ray imported first; warm: after the previous cluster in this process "
            "was shut down. Not in (c).")


def report(rates: dict[str, list[float]], trips: dict[str, list[tuple[float, float]]],
           scales: dict[str, list[tuple[float, float]]], cold: dict[str, list[float]],
           warm: dict[str, list[float]], counts: Counts, iterations: int,
           ray_start_seconds: float | None) -> str:
    """The tables and the targets, as printed and as saved; `ray_start_seconds` is None
    when Ray was not measured."""
    rate = {name: Spread.of(values) for name, values in rates.items()}
    p50 = {name: spreads_of(values, 0) for name, values in trips.items()}
    p99 = {name: spreads_of(values, 1) for name, values in trips.items()}
    scale = {name: Spread.of([efficiency(times) for times in values]) for name, values in scales.items()}
    one = {name: spreads_of(values, 0) for name, values in scales.items()}
    two = {name: spreads_of(values, 1) for name, values in scales.items()}
    cold_s = {name: Spread.of(values) for name, values in cold.items()}
    warm_s = {name: Spread.of(values) for name, values in warm.items()}

    def ratio_cell(name: str, spreads: dict[str, Spread]) -> str:
        return "-" if name == CARMP else ratio(spreads[CARMP].median, spreads[name].median)

    throughput_table = markdown_table(
        ["pool", "median tasks/s", "min", "max", "carmp / peer"],
        [[name, *spread_cells(rate[name], si), ratio_cell(name, rate)] for name in rates])
    trip_table = markdown_table(
        ["pool", "p50 us", "min", "max", "p99 us", "min", "max", "carmp / peer p50"],
        [[name, *spread_cells(p50[name], figure), *spread_cells(p99[name], figure),
          ratio_cell(name, p50)] for name in trips])
    scaling_table = markdown_table(
        ["pool", "1 worker s", "2 workers s", "efficiency", "min", "max", "carmp / peer, 2 workers"],
        [[name, f"{one[name].median:.2f}", f"{two[name].median:.2f}",
          *spread_cells(scale[name], lambda value: f"{value:.1%}"), ratio_cell(name, two)]
         for name in SCALING_SUBJECTS])
    start_table = markdown_table(
        ["pool", "cold ms", "min", "max", "warm ms", "min", "max", "carmp / peer, cold"],
        [[name, *spread_cells(cold_s[name], milliseconds), *spread_cells(warm_s[name], milliseconds),
          ratio_cell(name, cold_s)] for name in cold])

    versus_pool = rate[CARMP].median / rate[MP_POOL].median
    carmp_p50, carmp_p99 = p50[CARMP].median, p99[CARMP].median
    p50_vs_pool = carmp_p50 / p50[MP_POOL].median
    carmp_efficiency = scale[CARMP].median
    carmp_cold, carmp_warm = cold_s[CARMP].median, warm_s[CARMP].median
    return "\n".join([
        "## Worker pool: carmp Farm vs Python pools, 2 workers",
        "",
        f"{machine_line()}; start methods: carmp forkserver; mp.Pool, ProcessPoolExecutor, "
        "mpire fork; loky its own (fork + exec)",
        f"`{command_line()}`: median of {REPEATS} interleaved repeats, a fresh pool per measurement",
        "",
        f"### (a) Throughput: {counts.tasks:,} no-op tasks, one per message (map, chunksize 1)",
        "",
        throughput_table,
        "",
        f"### (b) Round trip: submit one no-op, wait for it; {counts.calls:,} times after "
        f"{WARMUP_CALLS} untimed (lower is better)",
        "",
        trip_table,
        "",
        f"### (c) CPU-bound: {counts.cpu_tasks} tasks of ~{TASK_SECONDS * 1e3:g} ms "
        f"({iterations:,} loop iterations), map chunksize 1",
        "",
        "efficiency = (1-worker time / 2-worker time) / 2, per repeat",
        "",
        scaling_table,
        "",
        "### (d) Start-up: construct the pool, first no-op result (lower is better)",
        "",
        "cold: in a fresh interpreter, imports done first; warm: in this process, after "
        "pools of the same kind ran",
        "",
        start_table,
        "",
        ray_note(ray_start_seconds),
        "",
        target_line(f">= {TARGET_THROUGHPUT:g}x {MP_POOL}.map chunksize 1, tasks/s",
                    f"{versus_pool:.2f}x", versus_pool >= TARGET_THROUGHPUT),
        target_line(f"round trip p50 <= {TARGET_P50_US:g} us", f"{figure(carmp_p50)} us",
                    carmp_p50 <= TARGET_P50_US),
        target_line(f"round trip p50 <= {TARGET_P50_VS_POOL:g}x {MP_POOL}.apply's",
                    f"{p50_vs_pool:.2f}x", p50_vs_pool <= TARGET_P50_VS_POOL),
        target_line(f"round trip p99 <= {TARGET_P99_US:g} us", f"{figure(carmp_p99)} us",
                    carmp_p99 <= TARGET_P99_US),
        target_line(f"2-worker efficiency >= {TARGET_EFFICIENCY:.0%}", f"{carmp_efficiency:.1%}",
                    carmp_efficiency >= TARGET_EFFICIENCY),
        target_line(f"start-up <= {TARGET_START_S * 1e3:g} ms, cold",
                    f"{milliseconds(carmp_cold)} ms (warm {milliseconds(carmp_warm)} ms)",
                    carmp_cold <= TARGET_START_S),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Worker pool: carmp Farm vs mp.Pool, ProcessPoolExecutor, loky, mpire and Ray.")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK.tasks:,} tasks, {QUICK.calls} round trips, "
                             f"{QUICK.cpu_tasks} CPU-bound tasks; printed, not saved")
    parser.add_argument("--cold-start", choices=START_SUBJECTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_start:
        if args.cold_start == RAY:
            ray_module(single_node=True)  # imports done first, as for the other pools
        print(repr(start_seconds(START_SUBJECTS[args.cold_start])))
        return
    counts = QUICK if args.quick else FULL
    with_ray = ray_installed()
    if not with_ray:
        print("Ray is not installed: skipping its rows (pip install -e '.[bench]')")
    iterations = calibrate(TASK_SECONDS)
    began = time.perf_counter()
    with local_ray(WORKERS) if with_ray else nullcontext() as ray:
        ray_start_seconds = time.perf_counter() - began if with_ray else None
        pools = {**SUBJECTS, RAY: running_ray(ray)} if with_ray else SUBJECTS
        rates = interleaved({name: throughput(pool, counts.tasks) for name, pool in pools.items()},
                            REPEATS)
        trips = interleaved({name: round_trip(pool, counts.calls) for name, pool in pools.items()},
                            REPEATS)
    scales = interleaved({name: scaling(SUBJECTS[name], iterations, counts.cpu_tasks)
                          for name in SCALING_SUBJECTS}, REPEATS)
    starts = START_SUBJECTS if with_ray else SUBJECTS
    cold = interleaved({name: cold_start(name) for name in starts}, REPEATS)
    warm = interleaved({name: functools.partial(start_seconds, pool) for name, pool in starts.items()},
                       REPEATS)
    text = report(rates, trips, scales, cold, warm, counts, iterations, ray_start_seconds)
    print(text)
    if args.quick:
        print("\nquick run: not saved (bench/results/ holds full runs only)")
    else:
        print(f"\nwritten to {write_result('pool', text)}")


if __name__ == "__main__":
    main()
