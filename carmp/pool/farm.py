"""Farm: the public worker pool (and, later, the owner of the shared world).

    with Farm(workers=4) as farm:
        squares = farm.map(lambda x: x * x, range(10_000))
        future = farm.submit(pow, 2, 10)          # a concurrent.futures.Future

Functions travel by value (cloudpickle) under every start method and are pickled
once per function object; arguments are pickled in the caller, so a bad argument
fails that call at once. Per-task `retries` re-run a task whose worker crashed;
per-task `timeout` (seconds from the task's start) kills only that worker, and so does
`future.kill()` for a task that is running.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

from carmp.backends.base import Backend, Executor, WorkerOptions, WorldOptions
from carmp.errors import BackendUnsupported, FarmShutdown
from carmp.pool.supervisor import STOP_GRACE
from carmp.pool.tasks import FarmStatistics, FunctionEntry, Sink, Task
from carmp.shared.budget import BudgetLimits, CoordinationBudget
from carmp.shared.eventlog import EventLog
from carmp.shared.mailbox import Mailbox
from carmp.shared.proc import gc_paused
from carmp.shared.segment import new_run_id
from carmp.shared.state import StateStore

T = TypeVar("T")
BACKENDS = ("local", "ray")
IMAP_WINDOW_PER_WORKER = 256  # tasks imap keeps in flight per worker while it iterates
PROGRESS_INTERVAL = 0.1
WORKER_SPIN = 50e-6


class TaskFuture(Future[Any]):
    """A concurrent.futures.Future that also answers multiprocessing's AsyncResult calls.
    A thread waiting on it collects results itself when no other thread is doing so."""

    _supervisor: Executor | None = None
    _task_id = 0

    def kill(self, reason: str = "killed by its caller") -> bool:
        """Stop the task whether it waits or runs: one not started never starts; a running
        one has its worker killed and replaced. Either way the future fails with
        TaskCancelled naming `reason`. False when the task had already finished (a task
        that finishes while its worker is being killed keeps its result)."""
        supervisor = self._supervisor
        if supervisor is None or self.done():
            return False
        return supervisor.cancel_task(self._task_id, reason)

    def _help(self, timeout: float | None) -> float | None:
        """Collect until done or `timeout`; returns the time left of the timeout."""
        supervisor = self._supervisor
        if supervisor is None or self.done():
            return timeout
        start = time.monotonic()
        supervisor.help_until(self.done, timeout)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._help(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._help(timeout))

    def get(self, timeout: float | None = None) -> Any:
        return self.result(timeout)

    def ready(self) -> bool:
        return self.done()

    def successful(self) -> bool:
        if not self.done():
            raise ValueError("the task has not finished yet")
        return not self.cancelled() and self.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        with contextlib.suppress(TimeoutError, Exception):
            self.exception(timeout)


class _FutureSink(Sink):
    __slots__ = ("future",)

    def __init__(self, future: TaskFuture) -> None:
        self.future = future

    def start(self, index: int) -> bool:
        return self.future.set_running_or_notify_cancel()

    def resolve(self, index: int, value: Any) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(value)

    def fail(self, index: int, error: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(error)


class _Batch(Sink):
    """The outcomes of one map/imap call: by index (`ordered`) or as they complete."""

    def __init__(self, ordered: bool = True) -> None:
        self.cond = threading.Condition()
        self.ordered = ordered
        self.results: dict[int, Any] = {}
        self.completed: collections.deque[Any] = collections.deque()
        self.error: BaseException | None = None
        self.error_index = -1
        self.dropped: set[int] = set()
        self.finished = 0
        self.waiting = 0  # threads asleep on cond: a result wakes them only if there are any

    def start(self, index: int) -> bool:
        """After a failure the rest of the batch is dropped, not run."""
        if self.error is None:
            return True
        with self.cond:
            self.dropped.add(index)
            self.finished += 1
            self.cond.notify_all()
        return False

    def resolve(self, index: int, value: Any) -> None:
        self.resolve_many([(index, value)])

    def resolve_many(self, outcomes: list[tuple[int, Any]]) -> None:
        with self.cond:
            if self.ordered:
                self.results.update(outcomes)
            else:
                self.completed.extend(value for _, value in outcomes)
            self.finished += len(outcomes)
            if self.waiting:
                self.cond.notify_all()

    def fail(self, index: int, error: BaseException) -> None:
        with self.cond:
            if self.error is None or index < self.error_index:
                self.error, self.error_index = error, index
            self.finished += 1
            self.cond.notify_all()

    def wait_for(self, ready: Callable[[], bool], progress: _Progress | None,
                 supervisor: Executor) -> None:
        """Until ready(): collect results in this thread, or sleep while another thread does."""
        interval = PROGRESS_INTERVAL if progress else None
        while not ready():
            if not supervisor.help_until(ready, interval):
                with self.cond:
                    if not ready():
                        self.waiting += 1
                        try:
                            self.cond.wait(interval)
                        finally:
                            self.waiting -= 1
            if progress:
                progress.show(self.finished)


class _Progress:
    """A one-line progress bar on a terminal; silent when stderr is not one."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.last = -1

    @staticmethod
    def wanted(progress: bool) -> _Progress | None:
        return _Progress(None) if progress and sys.stderr.isatty() else None

    def show(self, done: int) -> None:
        if done == self.last:
            return
        self.last = done
        if self.total:
            filled = int(30 * done / self.total)
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}"
        else:
            line = f"\r{done} done"
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self, done: int) -> None:
        self.show(done)
        sys.stderr.write("\n")
        sys.stderr.flush()


def _call_chunk(function: Callable[..., Any], star: bool, items: list[Any]) -> list[Any]:
    """Runs in the worker: one message carries `items`, one result carries their values."""
    return [function(*item) if star else function(item) for item in items]


def _call_star(function: Callable[..., Any], args: Any) -> Any:
    return function(*args)


class Farm:
    """A pool of workers with fast dispatch, typed failures and one shared world: local
    processes over shared memory (the default), or Ray actors (backend="ray")."""

    def __init__(self, workers: int | None = None, *, backend: str | Backend = "local",
                 address: str | None = None, start_method: str | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (),
                 max_tasks_per_worker: int | None = None, max_rss_mb: float | None = None,
                 retries: int = 0, timeout: float | None = None, spin: float | None = None,
                 budget: BudgetLimits | CoordinationBudget | None = None,
                 state: StateStore | None = None, log: EventLog | None = None,
                 log_path: str | os.PathLike[str] | None = None,
                 task_events: bool = False) -> None:
        workers = (os.cpu_count() or 1) if workers is None else workers
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        for name, value in (("max_tasks_per_worker", max_tasks_per_worker),):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if max_rss_mb is not None and not max_rss_mb > 0:
            raise ValueError(f"max_rss_mb must be > 0 or None, got {max_rss_mb!r}")
        self._check_task_options(retries, timeout)
        if log is not None and log_path is not None:
            raise ValueError("pass log= (an EventLog) or log_path= (a journal for a new one), not both")
        self._backend = choose_backend(backend, address, start_method, workers)
        self._backend.check({"timeout": timeout, "max_rss_mb": max_rss_mb,
                             "max_tasks_per_worker": max_tasks_per_worker})
        self.retries, self.timeout = retries, timeout
        if spin is None:
            # an idle worker spins this long for its next task before it sleeps: back-to-back
            # tasks skip a cross-CPU wake-up (tens of us here), and idling costs at most this
            spin = WORKER_SPIN
        self.workers = workers
        self.run_id = new_run_id()
        # what the farm made, and so closes, last first: the backend, then its world
        made: list[Any] = [self._backend]
        try:
            self.infra, parts = self._backend.open_world(WorldOptions(
                run_id=self.run_id, state=state, log=log, budget=budget,
                log_path=None if log_path is None else os.fspath(log_path), workers=workers))
            made.extend(parts)
            self._supervisor = self._backend.start(WorkerOptions(
                workers=workers, run_id=self.run_id, initializer=initializer,
                initargs=initargs, max_tasks_per_worker=max_tasks_per_worker,
                max_rss_mb=max_rss_mb, spin=spin, task_events=task_events), self.infra)
        except BaseException:
            for part in reversed(made):
                part.close()
            raise
        self._closed = False
        self._made = made
        self._finalizer = weakref.finalize(self, _stop_and_close, self._supervisor, made, 0.0)

    @property
    def backend(self) -> Backend:
        """Where the workers and the world live; `farm.backend.capabilities` says what
        this farm's options can do."""
        return self._backend

    @property
    def start_method(self) -> str | None:
        """How local workers start (fork, forkserver, spawn); None on Ray."""
        return getattr(self._backend, "start_method", None)

    def new_mailbox(self) -> Mailbox:
        """A mailbox that every worker of this farm can reach (the caller closes it)."""
        return self._backend.new_mailbox(self.run_id)

    # ---- single tasks -----------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run fn(*args, **kwargs) in a worker; the farm's retries and timeout apply."""
        return self.apply_async(fn, args, kwargs)

    def apply_async(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                    kwds: dict[str, Any] | None = None, *,
                    callback: Callable[[Any], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None,
                    retries: int | None = None, timeout: float | None = None) -> TaskFuture:
        retries, timeout = self._task_options(retries, timeout)
        supervisor = self._supervisor
        entry = supervisor.function_entry(fn)
        payload = supervisor.pickle_arguments(tuple(args), dict(kwds or {}))
        future = TaskFuture()
        future._supervisor = supervisor
        if callback is not None or error_callback is not None:
            future.add_done_callback(functools.partial(_run_callbacks, callback, error_callback))
        task = supervisor.make_task(entry, payload, _FutureSink(future), 0, retries, timeout)
        future._task_id = task.task_id
        supervisor.submit_tasks([task], entry)
        return future

    def apply(self, fn: Callable[..., T], args: tuple[Any, ...] = (),
              kwds: dict[str, Any] | None = None) -> T:
        return self.apply_async(fn, args, kwds).result()  # type: ignore[no-any-return]

    # ---- many tasks ----------------------------------------------------------------------------

    def map(self, fn: Callable[..., T], iterable: Iterable[Any], *, chunksize: int = 1,
            retries: int | None = None, timeout: float | None = None,
            progress: bool = False) -> list[T]:
        """[fn(x) for x in iterable], in order; raises the first task error."""
        return self._run_all(fn, iterable, False, chunksize, retries, timeout, progress)

    def starmap(self, fn: Callable[..., T], iterable: Iterable[Iterable[Any]], *,
                chunksize: int = 1, retries: int | None = None, timeout: float | None = None,
                progress: bool = False) -> list[T]:
        """[fn(*args) for args in iterable], in order."""
        return self._run_all(fn, iterable, True, chunksize, retries, timeout, progress)

    def imap(self, fn: Callable[..., T], iterable: Iterable[Any], *, chunksize: int = 1,
             retries: int | None = None, timeout: float | None = None) -> Iterator[T]:
        """fn(x) for each x, in order, while later items still run; the input is read lazily."""
        return self._iterate(fn, iterable, True, chunksize, retries, timeout)

    def imap_unordered(self, fn: Callable[..., T], iterable: Iterable[Any], *, chunksize: int = 1,
                       retries: int | None = None, timeout: float | None = None) -> Iterator[T]:
        """fn(x) for each x, in completion order."""
        return self._iterate(fn, iterable, False, chunksize, retries, timeout)

    def _prepare(self, fn: Callable[..., Any], star: bool, chunksize: int, retries: int | None,
                 timeout: float | None) -> tuple[FunctionEntry, int, float | None]:
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        retries, timeout = self._task_options(retries, timeout)
        if chunksize > 1:
            fn = functools.partial(_call_chunk, fn, star)
        elif star:
            fn = functools.partial(_call_star, fn)
        return self._supervisor.function_entry(fn), retries, timeout

    def _tasks(self, entry: FunctionEntry, items: Iterable[Any], chunksize: int, batch: _Batch,
               retries: int, timeout: float | None, first_index: int = 0) -> list[Task]:
        supervisor = self._supervisor
        items = list(items)
        if chunksize > 1:
            items = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        payloads = supervisor.pickle_each([(group,) for group in items])
        with gc_paused():  # every task made here lives until it finishes
            return supervisor.make_tasks(entry, payloads, batch, first_index, retries, timeout)

    def _run_all(self, fn: Callable[..., Any], iterable: Iterable[Any], star: bool, chunksize: int,
                 retries: int | None, timeout: float | None, progress: bool) -> list[Any]:
        entry, retries_, timeout_ = self._prepare(fn, star, chunksize, retries, timeout)
        batch = _Batch()
        tasks = self._tasks(entry, iterable, chunksize, batch, retries_, timeout_)
        count = len(tasks)
        display = _Progress.wanted(progress)
        if display is not None:
            display.total = count
        self._supervisor.submit_tasks(tasks, entry)
        batch.wait_for(lambda: batch.finished >= count or batch.error is not None, display,
                       self._supervisor)
        if display is not None:
            display.close(batch.finished)
        if batch.error is not None:
            raise batch.error
        results = batch.results
        if chunksize > 1:
            return [value for index in range(count) for value in results[index]]
        return [results[index] for index in range(count)]

    def _iterate(self, fn: Callable[..., Any], iterable: Iterable[Any], ordered: bool,
                 chunksize: int, retries: int | None, timeout: float | None) -> Iterator[Any]:
        entry, retries_, timeout_ = self._prepare(fn, False, chunksize, retries, timeout)
        batch = _Batch(ordered)
        window = self.workers * IMAP_WINDOW_PER_WORKER
        source = iter(iterable)
        submitted = yielded = 0
        exhausted = False
        while True:
            if not exhausted and submitted - yielded < window:
                chunk = [item for _, item in zip(range(window * chunksize), source)]
                exhausted = len(chunk) < window * chunksize
                tasks = self._tasks(entry, chunk, chunksize, batch, retries_, timeout_, submitted)
                if tasks:
                    self._supervisor.submit_tasks(tasks, entry)
                    submitted += len(tasks)
            if yielded == submitted and exhausted:
                return
            if ordered:
                batch.wait_for(lambda: yielded in batch.results or (
                    batch.error is not None
                    and (batch.error_index <= yielded or yielded in batch.dropped)), None,
                    self._supervisor)
                if yielded not in batch.results:
                    assert batch.error is not None
                    raise batch.error
                value = batch.results.pop(yielded)
            else:
                batch.wait_for(lambda: bool(batch.completed) or batch.error is not None, None,
                               self._supervisor)
                if not batch.completed:
                    assert batch.error is not None
                    raise batch.error
                value = batch.completed.popleft()
            yielded += 1
            if chunksize > 1:
                yield from value
            else:
                yield value

    # ---- options, lifecycle ------------------------------------------------------------------

    @staticmethod
    def _check_task_options(retries: int, timeout: float | None) -> None:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")

    def _task_options(self, retries: int | None, timeout: float | None) -> tuple[int, float | None]:
        if self._closed:
            raise FarmShutdown("the farm is shut down; create a new Farm to submit more work")
        retries = self.retries if retries is None else retries
        timeout = self.timeout if timeout is None else timeout
        self._check_task_options(retries, timeout)
        return retries, timeout

    def statistics(self) -> FarmStatistics:
        return self._supervisor.statistics()

    def worker_pids(self) -> list[int]:
        """The pids of the workers ready to run tasks now, for monitoring and for chaos
        tests (on Ray, each actor's pid on its own node)."""
        return self._supervisor.worker_pids()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: float | None = None) -> None:
        """Stop the farm. wait=True lets submitted work finish (at most `timeout` seconds);
        then workers get STOP, SIGTERM and SIGKILL in turn. Bounded by timeout + a few seconds."""
        if self._closed:
            return
        self._closed = True
        supervisor = self._supervisor
        if cancel_futures:
            supervisor.cancel_pending()
        if wait:
            supervisor.wait_idle(timeout)
        self._finalizer.detach()
        _stop_and_close(supervisor, self._made, STOP_GRACE if wait else 0.0)

    def terminate(self) -> None:
        """Stop at once: pending work is cancelled, running work is killed. Also ends a
        shutdown() that is still waiting (from another thread or after Ctrl-C)."""
        self._closed = True
        self._supervisor.cancel_pending()
        self._finalizer.detach()
        _stop_and_close(self._supervisor, self._made, 0.0)

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc_type is not KeyboardInterrupt:
            self.shutdown(wait=exc_type is None)
            return
        # Ctrl-C: cancel what has not started, give running work a grace period; a second
        # Ctrl-C during that grace kills everything at once.
        try:
            self.shutdown(wait=True, cancel_futures=True, timeout=STOP_GRACE)
        except KeyboardInterrupt:
            self.terminate()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.workers} workers"
        return f"<Farm {self.run_id} {self._backend.describe()} {state}>"


def choose_backend(backend: str | Backend, address: str | None, start_method: str | None,
                   workers: int) -> Backend:
    """The Backend a Farm's `backend=` names; Ray is imported only when asked for."""
    if isinstance(backend, Backend):
        chosen = backend
    elif backend == "local":
        from carmp.backends.local import LocalBackend

        if address is not None:
            raise BackendUnsupported(
                f"address={address!r} names a Ray cluster, but backend='local' runs on this "
                "machine; pass backend='ray' to join that cluster")
        return LocalBackend("forkserver" if start_method is None else start_method)
    elif backend == "ray":
        from carmp.backends.on_ray.backend import RayBackend

        chosen = RayBackend(address, num_cpus=workers)
    else:
        raise ValueError(f"backend must be one of {BACKENDS} or a Backend, got {backend!r}")
    if start_method is not None:
        chosen.check({"start_method": start_method})
    return chosen


def _stop_and_close(supervisor: Executor, made: list[Any], grace: float) -> None:
    """Stop the workers, then close the world parts the farm made (the log drains last)."""
    supervisor.stop(grace)
    while made:
        made.pop().close()


def _run_callbacks(callback: Callable[[Any], object] | None,
                   error_callback: Callable[[BaseException], object] | None,
                   future: Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is None:
        if callback is not None:
            callback(future.result())
    elif error_callback is not None:
        error_callback(error)


__all__ = ["Farm", "FarmStatistics", "TaskFuture"]
