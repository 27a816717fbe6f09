"""Farm: the pool API, failure isolation (ROBUSTNESS R1, R2, R6, R9), timeouts, recycling."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from carmp.errors import (
    FarmBroken,
    FarmShutdown,
    PayloadError,
    RemoteTaskError,
    RemoteTraceback,
    TaskCancelled,
    TaskTimeout,
    WorkerCrashed,
)
from carmp.pool.farm import Farm, TaskFuture
from carmp.shared.budget import BudgetLimits
from carmp.shared.eventlog import EventLog
from tests.conftest import START_METHODS, make_farm
from tests.pool import tasks

WAIT = 60.0  # bounded waits on results: far above what any task here needs


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """For tests of the local backend only (processes, signals, shared memory)."""
    return str(request.param)


@pytest.fixture
def farm(flavor: str) -> Iterator[Farm]:
    with make_farm(flavor, workers=2) as f:
        yield f


@pytest.fixture
def local_farm(start_method: str) -> Iterator[Farm]:
    with Farm(workers=2, start_method=start_method) as f:
        yield f


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still running (zombies count as gone) once `timeout` passes or all are gone."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def worker_pids(farm: Farm) -> list[int]:
    """The pids of the farm's workers, once each is ready."""
    deadline = time.monotonic() + WAIT
    while len(farm.worker_pids()) < farm.workers and time.monotonic() < deadline:
        time.sleep(0.01)
    return farm.worker_pids()


def assert_serving(farm: Farm) -> None:
    """The farm still answers, with every worker slot alive again."""
    assert farm.map(tasks.square, range(20)) == [x * x for x in range(20)]
    deadline = time.monotonic() + WAIT
    while farm.statistics().alive < farm.workers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert farm.statistics().alive == farm.workers


# ---- the pool API ---------------------------------------------------------------------------


def test_pool_api(farm: Farm) -> None:
    assert farm.submit(tasks.add, 2, b=3).result(WAIT) == 5
    assert farm.apply(tasks.add, (4, 5)) == 9
    assert farm.map(tasks.square, range(100)) == [x * x for x in range(100)]
    assert farm.map(tasks.square, range(100), chunksize=7) == [x * x for x in range(100)]
    assert farm.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert list(farm.imap(tasks.square, iter(range(50)))) == [x * x for x in range(50)]
    assert sorted(farm.imap_unordered(tasks.square, range(50), chunksize=4)) == sorted(
        x * x for x in range(50))
    assert farm.map(tasks.square, []) == []


def test_lambdas_and_closures_travel_by_value(farm: Farm) -> None:
    offset = 10

    def shifted(x: int) -> int:
        return x + offset

    assert farm.map(lambda x: x * 3, range(5)) == [0, 3, 6, 9, 12]
    assert farm.map(shifted, range(3)) == [10, 11, 12]
    assert farm.submit(lambda: offset * 2).result(WAIT) == 20


def test_results_keep_their_types(farm: Farm) -> None:
    values: list[Any] = [None, True, 3, 2**70, -1.5, float("nan"), "s", b"bytes", (1, 2),
                         [1, (2, 3)], {"a": [1]}, {1: "int key"}, {1, 2}, frozenset({3})]
    out = farm.map(tasks.echo, values)
    for sent, got in zip(values, out):
        assert type(got) is type(sent)
        if sent == sent:  # NaN is not equal to itself
            assert got == sent


def test_futures_work_with_concurrent_futures(farm: Farm) -> None:
    futures = [farm.submit(tasks.square, i) for i in range(20)]
    done, not_done = concurrent.futures.wait(futures, timeout=WAIT)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == sorted(
        i * i for i in range(20))
    assert isinstance(futures[0], TaskFuture) and futures[0].ready() and futures[0].successful()
    assert futures[0].get() == 0


def test_apply_async_callbacks(farm: Farm) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    farm.apply_async(tasks.square, (3,), callback=got.append).result(WAIT)
    future = farm.apply_async(tasks.raise_value_error, ("no",), error_callback=errors.append)
    with pytest.raises(ValueError):
        future.result(WAIT)
    assert got == [9] and isinstance(errors[0], ValueError)


def test_two_tasks_that_wait_for_each_other_run_at_once(flavor: str, tmp_path: Any) -> None:
    """On a fresh farm of 2, neither task may queue behind the other while a worker idles
    or is still starting."""
    with make_farm(flavor, workers=2) as farm:
        meet = [farm.submit(tasks.rendezvous, str(tmp_path), name, 2) for name in "ab"]
        assert [future.result(WAIT) for future in meet] == [True, True]


def test_current_worker_inside_a_task(farm: Farm) -> None:
    pids = {pid for pid, slot in farm.map(lambda _: tasks.whoami(), range(50))}
    assert pids and os.getpid() not in pids


def test_slow_tasks_after_tiny_ones_spread_over_every_worker(local_farm: Farm) -> None:
    """The first map (tiny tasks) may end before the second worker is even ready; the
    queue depth each worker gets must still be learnt from its own tasks, so that the
    slow map after it is not dealt mostly to one worker (it once was, half the time)."""
    local_farm.map(tasks.square, range(2_000))
    ran = collections.Counter(local_farm.map(tasks.pid_after, [0.02] * 40))
    assert len(ran) == 2 and min(ran.values()) >= 10, ran


def test_worker_pids_are_the_processes_that_run_tasks(farm: Farm) -> None:
    ready = set(worker_pids(farm))
    assert len(ready) == farm.workers
    assert {pid for pid, slot in farm.map(lambda _: tasks.whoami(), range(50))} <= ready


# ---- errors come home typed, with the remote traceback (R1, R9) -----------------------------


def test_task_exception_has_its_remote_traceback_as_cause(farm: Farm) -> None:
    with pytest.raises(ValueError, match="bad input") as caught:
        farm.submit(tasks.raise_value_error, "bad input").result(WAIT)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in cause.text and "tasks.py" in cause.text


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "BaseException"])
def test_base_exceptions_land_on_the_future(farm: Farm, kind: str) -> None:
    expected = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
                "BaseException": BaseException}[kind]
    with pytest.raises(expected):
        farm.submit(tasks.raise_base, kind).result(WAIT)
    assert farm.submit(tasks.square, 4).result(WAIT) == 16


def test_unpicklable_argument_fails_the_call_at_once(farm: Farm) -> None:
    with pytest.raises(PayloadError, match="arguments could not be pickled"):
        farm.submit(tasks.echo, threading.Lock())
    lock = threading.Lock()
    with pytest.raises(PayloadError, match="function"):
        farm.submit(lambda: lock)
    assert farm.submit(tasks.square, 5).result(WAIT) == 25


def test_a_map_pickles_items_plainly_or_by_value_and_refuses_unpicklable_ones(farm: Farm) -> None:
    """A map's items go through plain pickle in one pass; when one needs cloudpickle (a
    lambda) every item still arrives, and an unpicklable one fails the whole call at once,
    before any task runs."""
    assert farm.map(tasks.square, range(300)) == [x * x for x in range(300)]
    assert farm.map(tasks.call_or_echo, [lambda: 1, lambda: 2, 3]) == [1, 2, 3]
    before = farm.statistics()
    with pytest.raises(PayloadError, match="arguments could not be pickled"):
        farm.map(tasks.echo, [1, threading.Lock(), 3])
    assert farm.statistics().done == before.done and farm.statistics().pending == 0
    assert farm.map(tasks.square, range(10), chunksize=3) == [x * x for x in range(10)]


def test_an_empty_map_keeps_nothing(farm: Farm) -> None:
    """Nothing would ever release the function of a map without tasks: it is not kept."""
    for _ in range(3):
        assert farm.map(lambda x: x, []) == []
        assert list(farm.imap(lambda x: x, [])) == []
    executor: Any = farm._supervisor
    assert executor.entries == {}


def test_payload_failures_in_the_worker_and_on_the_way_back(farm: Farm) -> None:
    with pytest.raises(PayloadError, match="result could not be pickled"):
        farm.submit(tasks.return_lock).result(WAIT)
    with pytest.raises(PayloadError, match="arguments could not be unpickled"):
        farm.submit(tasks.echo, tasks.FailsToUnpickle()).result(WAIT)
    with pytest.raises(PayloadError, match="could not be unpickled in the supervisor"):
        farm.submit(tasks.return_fails_to_unpickle).result(WAIT)
    with pytest.raises(RemoteTaskError, match="UnpicklableError") as caught:
        farm.submit(tasks.raise_unpicklable).result(WAIT)
    assert "raise_unpicklable" in caught.value.traceback_text
    assert_serving(farm)


CRASHES = [
    ("os._exit", tasks.exit_hard, (3,), None, 3),
    ("SIGKILL", tasks.kill_self, (signal.SIGKILL,), "SIGKILL", -signal.SIGKILL),
    ("segfault", tasks.segfault, (), "SIGSEGV", -signal.SIGSEGV),
    ("libc exit", tasks.libc_exit, (0,), None, 0),
    ("exit while unpickling arguments", tasks.echo, (tasks.ExitsOnUnpickle(),), None, 5),
    ("exit while pickling the result", tasks.return_exits_on_pickle, (), None, 6),
]


def test_crash_matrix_fails_only_that_task(farm: Farm) -> None:
    for name, function, args, signal_name, exitcode in CRASHES:
        bystander = farm.submit(tasks.sleep_then, 0.2, "fine")
        with pytest.raises(WorkerCrashed) as caught:
            farm.submit(function, *args).result(WAIT)
        crashed = caught.value
        if farm.backend.capabilities.shared_memory:  # Ray does not say how a worker died
            assert (crashed.signal_name, crashed.exitcode) == (signal_name, exitcode), name
        assert crashed.task_id is not None and crashed.pid > 0
        assert bystander.result(WAIT) == "fine", name
        assert_serving(farm)
    assert farm.statistics().crashed == len(CRASHES)


def test_retries_rerun_a_task_whose_worker_crashed(farm: Farm, tmp_path: Any) -> None:
    marker = str(tmp_path / "crashed-once")
    assert farm.apply_async(tasks.crash_first_time, (marker, 42), retries=1).result(WAIT) == 42
    marker2 = str(tmp_path / "crashed-again")
    with pytest.raises(WorkerCrashed):
        farm.apply_async(tasks.crash_first_time, (marker2, 1), retries=0).result(WAIT)


def test_workers_killing_each_other_never_hang(start_method: str) -> None:
    """loky's kill_friend: every task kills some worker; outcomes are values or WorkerCrashed."""
    with Farm(workers=3, start_method=start_method) as farm:
        pids = {pid for pid, _ in farm.map(lambda _: tasks.whoami(), range(30))}
        futures = [farm.submit(tasks.kill_pid, pid) for pid in sorted(pids, reverse=True)]
        for future in futures:
            error = future.exception(WAIT)
            assert error is None or isinstance(error, WorkerCrashed)
        assert_serving(farm)


def test_sigkill_random_workers_while_10k_tasks_run(start_method: str) -> None:
    """R2: every task finishes or fails typed; none lost or duplicated; workers restored."""
    count = 2_000 if start_method == "spawn" else 10_000
    with Farm(workers=2, start_method=start_method, retries=3) as farm:
        stop = threading.Event()
        rng = random.Random(7)

        def chaos() -> None:
            # every few ms a worker that finished starting dies (one still starting cannot
            # run anything, so killing it only slows the test)
            while not stop.wait(rng.uniform(0.002, 0.01)):
                ready = farm.worker_pids()
                if ready:
                    try:
                        os.kill(rng.choice(ready), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            futures = [farm.submit(tasks.square, i) for i in range(count)]
            outcomes = [f.exception(WAIT) or f.result() for f in futures]
        finally:
            stop.set()
            killer.join()
        for i, outcome in enumerate(outcomes):
            assert outcome == i * i or isinstance(outcome, WorkerCrashed), (i, outcome)
        stats = farm.statistics()
        assert stats.done + stats.failed == count
        assert stats.crashed > 0
        assert_serving(farm)


# ---- timeouts, shutdown, recycling (R6, R7, R9/R10) ----------------------------------------------


def test_task_timeout_kills_only_that_worker(farm: Farm) -> None:
    slow = farm.apply_async(tasks.sleep_then, (60,), timeout=0.3)
    other = farm.submit(tasks.sleep_then, 0.5, "unharmed")
    with pytest.raises(TaskTimeout, match="timeout of 0.3"):
        slow.result(WAIT)
    assert other.result(WAIT) == "unharmed"
    assert_serving(farm)


def test_kill_stops_running_and_waiting_tasks(farm: Farm) -> None:
    running = farm.submit(tasks.sleep_then, 3600)
    tasks.until_running(farm, 1)
    waiting = [farm.submit(tasks.sleep_then, 3600) for _ in range(6)]  # queued or pending
    assert running.kill("the budget ran out")
    assert all(future.kill("the budget ran out") for future in waiting)
    with pytest.raises(TaskCancelled, match="killed and replaced: the budget ran out"):
        running.result(WAIT)
    for future in waiting:
        with pytest.raises(TaskCancelled, match="the budget ran out"):
            future.result(WAIT)
    finished = farm.submit(tasks.square, 3)
    assert finished.result(WAIT) == 9
    assert not finished.kill()
    assert_serving(farm)


def test_shutdown_with_hung_tasks_is_bounded(flavor: str) -> None:
    farm = make_farm(flavor, workers=2)
    hung = [farm.submit(tasks.sleep_then, 3600) for _ in range(4)]
    pids = worker_pids(farm)
    farm.shutdown(wait=True, timeout=0.2)
    for future in hung:
        assert isinstance(future.exception(WAIT), FarmShutdown)
    assert not wait_gone(pids, 0)
    with pytest.raises(FarmShutdown):
        farm.submit(tasks.square, 1)


def test_shutdown_cancel_futures(flavor: str) -> None:
    farm = make_farm(flavor, workers=1)
    # long enough to be seen running on a loaded machine: what is queued behind it has
    # not started when the farm shuts down, and is cancelled (a Ray worker takes a second
    # to start, so the test waits for this one to run first)
    first = farm.submit(tasks.sleep_then, 2.0, "ran")
    tasks.until_running(farm, 1)
    queued = [farm.submit(tasks.square, i) for i in range(2000)]
    farm.shutdown(wait=True, cancel_futures=True)
    assert first.result(WAIT) == "ran"
    outcomes = [f.exception(WAIT) for f in queued]
    assert any(isinstance(o, FarmShutdown) for o in outcomes)


# R9: a 10k-task queue far deeper than any worker's lifetime, so the farm recycles
# thousands of workers while the queue is full (a few ms each under fork and forkserver).
# A spawned worker boots a fresh interpreter (~50 ms), so spawn gets a shorter queue to
# keep the suite within its time budget.
RECYCLE_QUEUES = {"fork": (10_000, 10_000), "forkserver": (10_000, 10_000), "spawn": (100, 300)}


@pytest.fixture
def log() -> Iterator[EventLog]:
    """An event log the test owns, so it outlives the farm that writes to it."""
    with EventLog(capacity=16 * 2**20) as event_log:
        yield event_log


@pytest.mark.watchdog(900)  # 10k worker starts: about a minute alone, more under load
@pytest.mark.parametrize("max_tasks", [1, 3])
def test_recycling_with_a_full_queue(start_method: str, max_tasks: int, log: EventLog) -> None:
    count = RECYCLE_QUEUES[start_method][max_tasks > 1]
    with Farm(workers=2, start_method=start_method, max_tasks_per_worker=max_tasks,
              log=log) as farm:
        assert farm.map(tasks.square, range(count)) == [x * x for x in range(count)]
    recycled = farm.statistics().recycled
    assert recycled >= count // max_tasks - 2
    assert len(log.filter(kind="worker_recycled")) == recycled


def test_rss_limit_recycles_the_worker(start_method: str, log: EventLog) -> None:
    with Farm(workers=1, start_method=start_method, max_rss_mb=150, log=log) as farm:
        outcome = farm.submit(tasks.allocate_mb, 400).exception(WAIT)
        assert isinstance(outcome, WorkerCrashed) or outcome is None
        if outcome is not None:  # the supervisor saw the RSS first and killed the worker
            assert "max_rss_mb" in str(outcome)
            assert any(e.data["reason"] == "max_rss_mb exceeded"
                       for e in log.filter(kind="worker_crashed"))
        else:  # the worker noticed after the task and retired
            assert any("rss" in e.data["reason"] for e in log.filter(kind="worker_recycled"))
        assert_serving(farm)


# ---- start-up and the world around the farm --------------------------------------------------


def test_initializer_runs_in_every_worker(flavor: str) -> None:
    with make_farm(flavor, workers=2, initializer=tasks.remember,
                   initargs=("ready",)) as farm:
        assert set(map(tuple, farm.map(lambda _: tasks.initialized(), range(10)))) == {("ready",)}


def test_failing_initializer_breaks_the_farm_with_a_clear_error(flavor: str) -> None:
    with make_farm(flavor, workers=1, initializer=tasks.failing_initializer) as farm:
        try:  # the failure may be known before or after the submit
            error = farm.submit(tasks.square, 2).exception(WAIT)
        except FarmBroken as raised:
            error = raised
        assert isinstance(error, FarmBroken) and "initializer refuses" in str(error)
        with pytest.raises(FarmBroken, match="initializer refuses"):
            farm.submit(tasks.square, 3)


def test_parent_threads_at_start_are_harmless(start_method: str) -> None:
    """R10: forkserver and spawn never fork a multi-threaded parent."""
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait) for _ in range(4)]
    for thread in busy:
        thread.start()
    try:
        with Farm(workers=2, start_method=start_method) as farm:
            assert farm.map(tasks.square, range(10)) == [x * x for x in range(10)]
    finally:
        stop.set()
        for thread in busy:
            thread.join()


def test_progress_is_silent_off_a_terminal(farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    assert farm.map(tasks.square, range(50), progress=True) == [x * x for x in range(50)]
    assert capsys.readouterr().err == ""


def test_progress_bar_on_a_terminal(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []

    class Terminal:
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            written.append(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Terminal())
    farm.map(tasks.sleep_then, [0.05] * 8, progress=True)
    assert written and "8/8" in "".join(written)


def test_bad_arguments_are_clear_errors() -> None:
    for kwargs in ({"workers": 0}, {"start_method": "thread"}, {"max_tasks_per_worker": 0},
                   {"max_rss_mb": -1}, {"retries": -1}, {"timeout": 0}):
        with pytest.raises(ValueError):
            Farm(**kwargs)  # type: ignore[arg-type]


# ---- the supervisor dies, Ctrl-C (R5, R6) ----------------------------------------------------------

_SUPERVISOR = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from carmp.pool.farm import Farm
    from tests.pool import tasks
    if __name__ == "__main__":
        farm = Farm(workers=2, start_method={method!r})
        farm.map(tasks.square, range(10))
        while not all(s.ready for s in farm._supervisor.states):  # each worker past its start
            time.sleep(0.01)
        print(" ".join(str(s.pid) for s in farm._supervisor.states), farm.run_id, flush=True)
        {action}
""")


def run_supervisor(tmp_path: Any, method: str, action: str) -> tuple[subprocess.Popen[str], list[int], str]:
    script = tmp_path / "supervisor.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(_SUPERVISOR.format(root=root, method=method, action=action))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    *pids, run_id = proc.stdout.readline().split()
    return proc, [int(p) for p in pids], run_id


def test_supervisor_sigkill_leaves_no_worker_and_sweep_cleans_up(start_method: str,
                                                                  tmp_path: Any) -> None:
    """R5, in the middle of a run: both workers are running tasks when the supervisor dies."""
    from carmp.shared.segment import list_segment_names, sweep

    proc, pids, run_id = run_supervisor(tmp_path, start_method, "; ".join([
        "busy = [farm.submit(tasks.sleep_then, 3600) for _ in range(6)]",
        "tasks.until_running(farm, 2)", "print('running', flush=True)", "time.sleep(3600)"]))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
    proc.kill()
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    alive = wait_gone(pids, 2.0)  # R5: gone within 2 s
    assert not alive, f"workers outlived their supervisor: {alive}"
    left = [n for n in list_segment_names() if run_id in n]
    assert left  # the dead supervisor could not clean up ...
    sweep()
    assert not [n for n in list_segment_names() if run_id in n]  # ... the sweep does


_MAIN_WITH_SIDE_EFFECT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    if __name__ != "__main__":  # an import of this script anywhere but as the program
        open({marker!r}, "a").write(__name__ + "\\n")
    from carmp.pool.farm import Farm

    def cube(x):  # defined in __main__: travels by value
        return x ** 3

    if __name__ == "__main__":
        with Farm(workers=2, start_method={method!r}) as farm:
            print(farm.map(cube, range(4)))
""")


def test_workers_never_import_the_main_module(start_method: str, tmp_path: Any) -> None:
    """multiprocess re-imports the parent's main script in forkserver and spawn children;
    carmp's callables travel by value, so its workers skip that import (and its cost)."""
    marker = tmp_path / "imports.txt"
    script = tmp_path / "main_script.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(_MAIN_WITH_SIDE_EFFECT.format(root=root, marker=str(marker),
                                                    method=start_method))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[0, 1, 8, 27]"
    assert not marker.exists(), f"the main script was imported again: {marker.read_text()}"


@pytest.mark.parametrize("presses", [1, 2], ids=["once: stop after a grace", "twice: kill"])
def test_ctrl_c_stops_the_farm_and_leaves_nothing(tmp_path: Any, presses: int) -> None:
    action = "with farm:\n        farm.map(tasks.sleep_then, [3600] * 4)"
    proc, pids, run_id = run_supervisor(tmp_path, "forkserver", action)
    for _ in range(presses):
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT) != 0
    proc.stdout.close()  # type: ignore[union-attr]
    assert not wait_gone(pids, WAIT)
    from carmp.shared.segment import list_segment_names
    assert not [n for n in list_segment_names() if run_id in n]


# ---- large payloads take the spill path (fragments through the channel, or the pipe) ------------


def test_large_arguments_and_results(farm: Farm) -> None:
    blob = os.urandom(3 * 2**20)  # far above one channel record
    assert farm.submit(tasks.echo, blob).result(WAIT) == blob
    numbers = list(range(400_000))  # a large JSON result
    assert farm.submit(tasks.echo, numbers).result(WAIT) == numbers
    futures = [farm.submit(len, blob) for _ in range(8)]
    assert [f.result(WAIT) for f in futures] == [len(blob)] * 8


def test_worker_and_task_events_land_in_the_event_log(start_method: str, log: EventLog) -> None:
    with Farm(workers=2, start_method=start_method, log=log, task_events=True) as farm:
        assert farm.infra.log is log
        with pytest.raises(WorkerCrashed):
            farm.submit(tasks.exit_hard, 9).result(WAIT)
        farm.submit(tasks.square, 3).result(WAIT)
        assert_serving(farm)
    kinds = [event.kind for event in log.events()]
    assert kinds.count("worker_started") == 3  # two, then the replacement
    crashes = [e.data for e in log.filter(kind="worker_crashed") if e.data["exitcode"] == 9]
    assert len(crashes) == 1 and crashes[0]["task_id"] is not None
    # the two that were stopped at shutdown (after STOP, or SIGTERM under heavy load)
    assert kinds.count("worker_exited") + kinds.count("worker_crashed") == 3
    failed = log.filter(kind="task_failed")
    assert len(failed) == 1 and failed[0].data["error"] == "WorkerCrashed"
    assert kinds.count("task_submitted") == kinds.count("task_started") >= 22
    assert kinds.count("task_finished") == kinds.count("task_submitted") - 1


def test_tasks_see_the_farms_world(flavor: str) -> None:
    with make_farm(flavor, workers=2, budget=BudgetLimits(max_agents=3)) as farm:
        farm.infra.state.set("goal", {"n": 8}, action_id="setup")
        assert farm.map(tasks.read_goal, range(4)) == [8] * 4
        outcomes = farm.map(tasks.begin_agent, range(5))
        assert outcomes.count("started") == 3 and outcomes.count("AgentLimit") == 2
        assert farm.infra.budget.snapshot().agents_started == 3
        farm.map(tasks.note, range(3))
        notes = farm.infra.log.filter(kind="note")
        assert sorted(e.data["i"] for e in notes) == [0, 1, 2]
        assert os.getpid() not in {e.data["from"] for e in notes}
    assert tasks.outside_a_worker() is None


def test_workers_ignore_sigint(local_farm: Farm) -> None:
    """Ctrl-C reaches the whole process group; only the supervisor decides what it means."""
    farm = local_farm
    assert farm.map(tasks.square, range(10)) == [x * x for x in range(10)]
    deadline = time.monotonic() + WAIT
    while not all(s.ready for s in farm._supervisor.states) and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = [s.pid for s in farm._supervisor.states]
    running = farm.submit(tasks.sleep_then, 0.3, "survived")
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    assert running.result(WAIT) == "survived"
    assert farm.statistics().crashed == 0
    assert_serving(farm)
