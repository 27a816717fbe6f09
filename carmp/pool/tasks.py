"""What every farm executor shares: tasks, the sinks their outcomes go to, the farm's
statistics, and the intake that pickles functions and arguments in the caller (so a bad
argument fails that call at once, whatever the backend)."""

from __future__ import annotations

import collections
import itertools
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from carmp.errors import (
    CarmpError,
    FarmBroken,
    FarmShutdown,
    PayloadError,
    RemoteTaskError,
    TaskCancelled,
)

FUNCTIONS_PER_WORKER = 512  # function definitions a worker keeps before it is told to forget
NO_KWARGS: dict[str, Any] = {}  # a map's calls pass none (pickled, never changed)


class Sink:
    """Where a task's outcome goes: a Future or a batch of a map."""

    def resolve(self, index: int, value: Any) -> None:
        raise NotImplementedError

    def resolve_many(self, outcomes: list[tuple[int, Any]]) -> None:
        """Several (index, value) results at once: a batch takes its lock once for them."""
        for index, value in outcomes:
            self.resolve(index, value)

    def fail(self, index: int, error: BaseException) -> None:
        raise NotImplementedError

    def start(self, index: int) -> bool:
        """Called as the task leaves `pending`; False drops it (cancelled)."""
        return True


@dataclass(slots=True, eq=False)
class Task:
    task_id: int
    function_id: int
    payload: bytes
    sink: Sink
    index: int
    retries: int
    timeout: float | None
    attempts: int = 0


@dataclass(slots=True, eq=False)
class FunctionEntry:
    function_id: int
    pickled: bytes
    users: int = 0  # unfinished tasks that call it


@dataclass(frozen=True, slots=True)
class FarmStatistics:
    workers: int
    alive: int
    pending: int
    running: int
    done: int
    failed: int
    respawns: int
    recycled: int
    crashed: int
    events_dropped: int  # farm events a full log could not take


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A task outcome that could not be decoded: the task fails with `error`."""

    error: BaseException


def unpickle_outcome(pickled: bytes, is_result: bool) -> Any:
    """A task's result, or its exception with the remote traceback as __cause__, from
    the pickle a worker sent; Undecodable when it cannot be unpickled here."""
    try:
        value = pickle.loads(pickled)
    except BaseException as exc:
        return Undecodable(PayloadError(
            f"the task's {'result' if is_result else 'exception'} could not be unpickled in "
            f"the supervisor ({type(exc).__name__}: {exc}); make it importable in the "
            "supervisor's process"))
    if is_result:
        return value
    error, text = value
    return RemoteTaskError.attach(error, text)


class TaskBook:
    """The task bookkeeping every executor shares: it turns a caller's function and
    arguments into Tasks (one pickle per distinct function object, reused by every task
    that calls it), queues them, settles them and records farm events. An executor adds
    how tasks reach workers: pump(), which starts pending tasks, forget_queued(),
    stop_started() and wake_collector() for kill(), and worker_counts() for statistics."""

    def __init__(self, run_id: str, log: Any, task_events: bool) -> None:
        self.run_id = run_id
        self.log = log  # the world's event log (a local EventLog or a Ray client)
        self.task_events = task_events
        self.lock = threading.RLock()
        self.idle = threading.Condition(self.lock)
        self.task_ids = itertools.count(1)
        self.function_ids = itertools.count(1)
        self.functions: dict[int, tuple[Any, FunctionEntry]] = {}  # by id() of the function
        self.entries: dict[int, FunctionEntry] = {}  # by function id, while tasks use them
        self.pending: collections.deque[Task] = collections.deque()
        self.unfinished: dict[int, Task] = {}
        self.timed_tasks = 0  # unfinished tasks with a timeout: only then is there one to enforce
        self.doomed: dict[int, str] = {}  # task id -> why kill() stopped it (its worker must not run it)
        self.counts = collections.Counter[str]()
        self.broken: BaseException | None = None
        self.closing = False
        self.final_statistics: FarmStatistics | None = None  # set once the executor stopped

    def pump(self) -> None:
        raise NotImplementedError

    def forget_queued(self) -> None:
        """Drop the tasks queued at workers (they are failed or requeued by the caller)."""
        raise NotImplementedError

    def stop_started(self, task: Task, reason: str) -> None:
        """kill() of a task that already left `pending` (lock held, task in `doomed`): fail
        it now if its worker has not started it, else have that worker killed."""
        raise NotImplementedError

    def wake_collector(self) -> None:
        """Make the thread that collects results look again (a kill, a death, a stop)."""
        raise NotImplementedError

    def worker_counts(self) -> tuple[int, int, int]:
        """(workers, alive, running a task) for statistics(); the lock is held."""
        raise NotImplementedError

    def cancel_task(self, task_id: int, reason: str) -> bool:
        """TaskFuture.kill(): False if the task already finished."""
        with self.lock:
            task = self.unfinished.get(task_id)
            if task is None:
                return False
            if task in self.pending:
                self.pending.remove(task)
                self.fail_cancelled(task, 0, reason)
                return True
            self.doomed[task_id] = reason
            self.stop_started(task, reason)
        self.wake_collector()
        return True

    def statistics(self) -> FarmStatistics:
        with self.lock:
            if self.final_statistics is not None:
                return self.final_statistics
            workers, alive, running = self.worker_counts()
            counts = self.counts
            return FarmStatistics(
                workers=workers, alive=alive, pending=len(self.pending), running=running,
                done=counts["done"], failed=counts["failed"], respawns=counts["respawns"],
                recycled=counts["recycled"], crashed=counts["crashed"],
                events_dropped=counts["events_dropped"])

    def function_entry(self, function: Callable[..., Any]) -> FunctionEntry:
        """One pickle per distinct function object, reused by every task that calls it."""
        key = id(function)
        with self.lock:
            known = self.functions.get(key)
        if known is not None and known[0] is function:
            return known[1]
        try:
            pickled = cloudpickle.dumps(function)
        except Exception as exc:
            raise PayloadError(
                f"the function {function!r} could not be pickled ({type(exc).__name__}: {exc}); "
                "pass a function whose closure holds only picklable objects"
            ) from exc
        with self.lock:
            entry = FunctionEntry(next(self.function_ids), pickled)
            if len(self.functions) >= FUNCTIONS_PER_WORKER:
                self.functions.pop(next(iter(self.functions)))
            self.functions[key] = (function, entry)
        return entry

    @staticmethod
    def pickle_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        try:
            return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # lambdas, local classes: cloudpickle handles them by value
        try:
            pickled: bytes = cloudpickle.dumps((args, kwargs))
            return pickled
        except Exception as exc:
            raise PayloadError(
                f"the task's arguments could not be pickled ({type(exc).__name__}: {exc}); "
                "pass picklable arguments"
            ) from exc

    @classmethod
    def pickle_each(cls, arguments: list[tuple[Any, ...]]) -> list[bytes]:
        """pickle_arguments(args, {}) of each tuple (a map's items): in one comprehension
        when plain pickle takes them all, as it does for most maps."""
        try:
            return [pickle.dumps((args, NO_KWARGS), protocol=pickle.HIGHEST_PROTOCOL)
                    for args in arguments]
        except Exception:
            return [cls.pickle_arguments(args, {}) for args in arguments]

    def make_task(self, entry: FunctionEntry, payload: bytes, sink: Sink, index: int,
                  retries: int, timeout: float | None) -> Task:
        return self.make_tasks(entry, [payload], sink, index, retries, timeout)[0]

    def make_tasks(self, entry: FunctionEntry, payloads: list[bytes], sink: Sink,
                   first_index: int, retries: int, timeout: float | None) -> list[Task]:
        """make_task for each payload, indexed from first_index (a map's tasks)."""
        ids, function_id = self.task_ids, entry.function_id
        return [Task(next(ids), function_id, payload, sink, index, retries, timeout)
                for index, payload in enumerate(payloads, first_index)]

    def submit_tasks(self, tasks: Iterable[Task], entry: FunctionEntry) -> None:
        with self.lock:
            if self.broken is not None:
                raise FarmBroken(f"the farm is broken: {self.broken}") from self.broken
            if self.closing:
                raise FarmShutdown("the farm is shut down; create a new Farm to submit more work")
            tasks = list(tasks)
            if not tasks:  # an empty map: nothing would ever release the entry
                return
            self.entries[entry.function_id] = entry  # every task of one call runs it
            entry.users += len(tasks)
            self.unfinished.update((task.task_id, task) for task in tasks)
            self.timed_tasks += sum(task.timeout is not None for task in tasks)
            self.pending.extend(tasks)
            self.counts["submitted"] += len(tasks)
            if self.task_events:
                for task in tasks:
                    self.emit("task_submitted", task_id=task.task_id)
            self.pump()

    def next_startable(self) -> Task | None:
        """The next pending task whose sink still wants it run (cancelled ones are dropped)."""
        while self.pending:
            task = self.pending.popleft()
            if task.attempts or task.sink.start(task.index):
                return task
            self.settle(task)
        return None

    def settle(self, task: Task) -> None:
        """Forget a task that reached its outcome (or was dropped)."""
        if self.unfinished.pop(task.task_id, None) is not None:
            self.timed_tasks -= task.timeout is not None
        entry = self.entries.get(task.function_id)
        if entry is not None:
            entry.users -= 1
            if entry.users <= 0:
                del self.entries[task.function_id]
        if not self.unfinished:
            self.idle.notify_all()

    def fail_task(self, task: Task, error: BaseException, pid: int) -> None:
        """A task's final failure: counted, recorded as task_failed, handed to its sink."""
        self.counts["failed"] += 1
        self.emit("task_failed", task_id=task.task_id, pid=pid, error=type(error).__name__,
                  message=str(error)[:500])
        task.sink.fail(task.index, error)

    def fail_everything(self, error: BaseException) -> None:
        tasks = list(self.unfinished.values())
        self.pending.clear()
        self.forget_queued()
        for task in tasks:
            self.settle(task)
            task.sink.fail(task.index, error)
        self.idle.notify_all()

    def emit(self, kind: str, **data: Any) -> None:
        """Record a farm event; a full or closed log costs the event, never the farm."""
        try:
            self.log.append(kind, data=data, run_id=self.run_id, writer="supervisor")
        except CarmpError:
            self.counts["events_dropped"] += 1

    def fail_cancelled(self, task: Task, pid: int, reason: str) -> None:
        self.settle(task)
        where = f"; its worker (pid {pid}) was killed and replaced" if pid else " before it started"
        self.fail_task(task, TaskCancelled(f"task {task.task_id} was cancelled{where}: {reason}"),
                       pid)

    def cancel_pending(self) -> None:
        with self.lock:
            for task in self.pending:
                self.settle(task)
                task.sink.fail(task.index, FarmShutdown(
                    "the farm shut down with cancel_futures=True before this task started"))
            self.pending.clear()

    def wait_idle(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self.unfinished and self.broken is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.idle.wait(left)
            return True

