"""The Ray executor: a Farm's tasks on worker actors, with the local farm's semantics.

    caller threads                 this process (driver)                        worker actor k
    ──────────────                 ─────────────────────                        ──────────────
    submit()/map() ──pickle──► pending deque ──pump──► actor.run.remote() ─────► run task
                                    ▲                  (at most PIPELINE calls        │
                                    │ requeue unstarted  in flight per actor)         │
    Future / batch ◄── resolve ── collector thread ◄── completions queue ◄── ObjectRef done

- Each worker is an actor with one CPU and one thread, so its calls run one at a time in
  the order they were sent. When an actor dies, the oldest of its unanswered calls is
  the task it was running (WorkerCrashed, TaskTimeout or TaskCancelled, or run again if
  it has retries left); the calls behind it never started and go back to pending.
- The collector thread is woken by each call's completion (ObjectRef futures), settles
  outcomes, replaces dead or retired actors, and enforces per-task timeouts and kill()
  by killing the actor that runs the task.
- A worker that dies releases its budget leases (`release_holder` on the world's budget),
  so what it had reserved is refunded.
- Tasks are not batched into one call: a crash must be charged to exactly one task. A
  Ray call costs about a millisecond, so give Ray tasks that run for 10 ms or more
  (chunksize= groups small ones).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cloudpickle

from carmp.backends.on_ray.worker import FarmWorker
from carmp.errors import (
    FarmBroken,
    FarmShutdown,
    PayloadError,
    RemoteTaskError,
    TaskTimeout,
    WorkerCrashed,
)
from carmp.pool.tasks import (
    FUNCTIONS_PER_WORKER,
    Task,
    TaskBook,
    Undecodable,
    unpickle_outcome,
)

if TYPE_CHECKING:
    from carmp.backends.base import WorkerOptions
    from carmp.backends.on_ray.world import RayInfra

PIPELINE = 2                 # calls in flight per actor: the one it runs, the next behind it
QUEUE_BELOW = 0.005          # a call waits behind another only when tasks take less than this
KILL_POLL = 0.02             # how often timeouts and kills are checked while some are due
START_FAILURES_TO_BREAK = 3  # actors in a row that die before they are ready break the farm
STOP_WAIT = 10.0             # how long stop() waits for killed actors to be reported dead
KILL_REASONS = {"timeout": "task timeout", "cancel": "task cancelled"}


@dataclass(slots=True, eq=False)
class _Call:
    """One call to a worker actor: a task, or (task None) the probe that says it is ready."""

    future: Future[Any]
    task: Task | None
    done: bool = False


@dataclass(slots=True, eq=False)
class _Worker:
    slot: int
    generation: int
    actor: Any
    actor_id: str
    calls: collections.deque[_Call] = field(default_factory=collections.deque)
    functions: collections.OrderedDict[int, None] = field(default_factory=collections.OrderedDict)
    pid: int = 0
    ready: bool = False
    dead: bool = False
    finished: int = 0
    running_since: float = 0.0  # when the oldest unanswered call began to run
    mean_task_seconds: float | None = None  # moving average, once a task has run here
    kill_reason: tuple[str, int] | None = None

    @property
    def accepting(self) -> bool:
        return self.ready and not self.dead and self.kill_reason is None


class RayExecutor(TaskBook):
    def __init__(self, ray: ModuleType, options: WorkerOptions, infra: RayInfra) -> None:
        super().__init__(options.run_id, infra.log, options.task_events)
        self.ray = ray
        self.infra = infra
        self.max_tasks_per_worker = options.max_tasks_per_worker
        self.initializer = None if options.initializer is None else \
            cloudpickle.dumps((options.initializer, options.initargs))
        self.actor_class = ray.remote(num_cpus=1, max_restarts=0)(FarmWorker)
        self.completions: queue.SimpleQueue[tuple[_Worker, _Call] | None] = queue.SimpleQueue()
        self.start_failures = 0
        self.stopped = False
        with self.lock:
            self.workers = [self.spawn(slot, 0) for slot in range(options.workers)]
        self.collector = threading.Thread(target=self.collect, name="carmp-ray-collector",
                                          daemon=True)
        self.collector.start()

    # ---- actors ---------------------------------------------------------------------------------

    def spawn(self, slot: int, generation: int) -> _Worker:
        actor = self.actor_class.remote(slot, generation, self.infra, self.initializer,
                                        self.task_events)
        worker = _Worker(slot, generation, actor, actor._actor_id.hex())
        self.call(worker, actor.ready.remote(), None)
        return worker

    def call(self, worker: _Worker, ref: Any, task: Task | None) -> None:
        if not worker.calls:
            worker.running_since = time.monotonic()
        call = _Call(ref.future(), task)
        worker.calls.append(call)
        call.future.add_done_callback(lambda _: self.completions.put((worker, call)))

    def kill(self, worker: _Worker, reason: tuple[str, int] | None = None) -> None:
        """End the worker's actor; `reason` (a KILL_REASONS key and the task id) charges
        the task it runs when its death is seen."""
        worker.kill_reason = reason
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(worker.actor, no_restart=True)

    def replace(self, worker: _Worker) -> None:
        if self.closing or self.broken is not None:
            return
        self.counts["respawns"] += 1
        self.workers[worker.slot] = self.spawn(worker.slot, worker.generation + 1)

    # ---- dispatching ------------------------------------------------------------------------

    def pump(self) -> None:
        """A task to every idle worker first; then a second call behind a running one, but
        only where that pays (see may_queue)."""
        for depth in range(1, PIPELINE + 1):
            for worker in self.workers:
                if len(worker.calls) < depth and worker.accepting and self.has_room(worker) \
                        and (depth == 1 or self.may_queue(worker)):
                    task = self.next_startable()
                    if task is None:
                        return
                    self.send(worker, task)

    def may_queue(self, worker: _Worker) -> bool:
        """Queue a call behind a running one only for short tasks (a Ray call costs about a
        millisecond: the queued call hides it) and only while every other worker is ready
        and busy, so that no task waits behind another while a worker idles or starts."""
        mean = worker.mean_task_seconds
        return mean is not None and mean < QUEUE_BELOW and all(
            other.dead or (other.ready and other.calls) for other in self.workers
            if other is not worker)

    def has_room(self, worker: _Worker) -> bool:
        """False once the worker has been sent all the tasks of its life."""
        limit = self.max_tasks_per_worker
        return limit is None or worker.finished + len(worker.calls) < limit

    def send(self, worker: _Worker, task: Task) -> None:
        function = None
        if task.function_id not in worker.functions:
            function = self.entries[task.function_id].pickled
            worker.functions[task.function_id] = None
            if len(worker.functions) > FUNCTIONS_PER_WORKER:
                forgotten, _ = worker.functions.popitem(last=False)
                worker.actor.forget.remote(forgotten)
        else:
            worker.functions.move_to_end(task.function_id)
        task.attempts += 1
        self.call(worker, worker.actor.run.remote(task.task_id, task.function_id, function,
                                                  task.payload), task)

    def help_until(self, done: Any, timeout: float | None) -> bool:
        """The collector thread does all the work; callers wait on their own futures."""
        return False

    # ---- collecting ---------------------------------------------------------------------------

    def collect(self) -> None:
        while True:
            due = self.timed_tasks or self.doomed
            try:
                item = self.completions.get(timeout=KILL_POLL if due else None)
            except queue.Empty:
                item = None
            with self.lock:
                if self.stopped:
                    return
                try:
                    while item is not None:
                        worker, call = item
                        call.done = True
                        self.answered(worker)
                        try:
                            item = self.completions.get_nowait()
                        except queue.Empty:
                            item = None
                    self.enforce_kills()
                    self.pump()
                    self.flush_events()
                except Exception as exc:  # a bug here must fail the farm's tasks, not hang them
                    self.broken = exc
                    self.fail_everything(FarmBroken(
                        f"the farm is broken: its collector failed ({type(exc).__name__}: "
                        f"{exc}); create a new Farm, and report this"))
                    raise

    def answered(self, worker: _Worker) -> None:
        """Settle the worker's calls that are answered, oldest first (they ran in order)."""
        if worker.dead:
            return
        while worker.calls and worker.calls[0].done:
            call = worker.calls[0]
            try:
                answer = call.future.result()
            except self.ray.exceptions.RayActorError as exc:
                self.on_death(worker, exc)
                return
            except self.ray.exceptions.RayError as exc:  # Ray lost the answer
                if call.task is None:  # a worker that cannot say it is ready is replaced
                    self.on_death(worker, exc)
                    self.kill(worker)
                    return
                answer = "lost", exc
            worker.calls.popleft()
            now = time.monotonic()
            if call.task is not None:
                took, mean = now - worker.running_since, worker.mean_task_seconds
                worker.mean_task_seconds = took if mean is None else mean + (took - mean) * 0.2
            worker.running_since = now
            if call.task is None:
                self.on_ready(worker, answer)
            else:
                self.finish(worker, call.task, *answer)
        if worker.kill_reason is None and self.max_tasks_per_worker is not None \
                and worker.finished >= self.max_tasks_per_worker and not worker.calls:
            self.retire(worker)

    def retire(self, worker: _Worker) -> None:
        """Replace a worker that ran max_tasks_per_worker tasks (it has no call in flight)."""
        self.counts["recycled"] += 1
        self.emit("worker_recycled", slot=worker.slot, pid=worker.pid,
                  reason=f"max_tasks_per_worker={self.max_tasks_per_worker} reached")
        self.kill(worker)
        worker.dead = True
        self.release_leases(worker)
        self.replace(worker)

    def on_ready(self, worker: _Worker, value: tuple[int, dict[str, str] | None]) -> None:
        worker.pid, failure = value
        if failure is not None:
            self.broken = RemoteTaskError.from_document(failure, "the farm's initializer failed")
            self.fail_everything(FarmBroken(f"the farm is broken: {self.broken}"))
            return
        worker.ready = True
        self.start_failures = 0
        self.emit("worker_started", slot=worker.slot, pid=worker.pid,
                  generation=worker.generation, actor_id=worker.actor_id)

    def finish(self, worker: _Worker, task: Task, kind: str, body: Any) -> None:
        worker.finished += 1
        self.doomed.pop(task.task_id, None)
        if task.task_id not in self.unfinished:
            return  # kill() already failed it
        self.settle(task)
        if kind == "result":
            outcome = unpickle_outcome(body, True)
        elif kind == "lost":
            outcome = PayloadError(f"Ray could not return task {task.task_id}'s outcome: {body}")
        elif isinstance(body, dict):
            outcome = RemoteTaskError.from_document(body, "the task failed")
        else:
            outcome = unpickle_outcome(body, False)
        if kind == "result" and not isinstance(outcome, Undecodable):
            self.counts["done"] += 1
            if self.task_events:
                self.emit("task_finished", task_id=task.task_id, pid=worker.pid)
            task.sink.resolve(task.index, outcome)
        else:
            error = outcome.error if isinstance(outcome, Undecodable) else outcome
            self.fail_task(task, error, worker.pid)

    def on_death(self, worker: _Worker, cause: BaseException) -> None:
        """The actor died: charge its running task, requeue the rest, release its leases,
        replace it. Once per actor."""
        worker.dead = True
        calls = list(worker.calls)
        worker.calls.clear()
        running = calls[0].task if calls else None
        unstarted = [c.task for c in calls[1:] if c.task is not None
                     and c.task.task_id in self.unfinished]
        reason = worker.kill_reason
        if running is not None and running.task_id in self.unfinished:
            self.charge(worker, running, reason, cause, unstarted)
        for task in unstarted:
            self.doomed.pop(task.task_id, None)
        self.pending.extendleft(reversed(unstarted))
        self.release_leases(worker)
        self.counts["crashed"] += 1
        self.emit("worker_crashed", slot=worker.slot, pid=worker.pid,
                  task_id=running.task_id if running else None,
                  reason=None if reason is None else KILL_REASONS[reason[0]],
                  actor_id=worker.actor_id)
        if not worker.ready and reason is None and self.broken is None:
            self.start_failures += 1
            if self.start_failures >= START_FAILURES_TO_BREAK:
                self.broken = WorkerCrashed(
                    f"{self.start_failures} worker actors in a row died before they were ready "
                    f"(last: {cause}); check that carmp and the task's modules import on the "
                    "Ray nodes", pid=worker.pid, exitcode=None, signal_name=None, task_id=None)
                self.fail_everything(FarmBroken(f"the farm is broken: {self.broken}"))
                return
        self.replace(worker)

    def charge(self, worker: _Worker, task: Task, reason: tuple[str, int] | None,
               cause: BaseException, unstarted: list[Task]) -> None:
        """The outcome of the task an actor was running when it died."""
        if self.closing:
            self.settle(task)
            task.sink.fail(task.index, FarmShutdown(
                f"the farm shut down while task {task.task_id} ran; its worker was stopped"))
        elif reason == ("timeout", task.task_id):
            self.settle(task)
            self.fail_task(task, TaskTimeout(
                f"task {task.task_id} ran longer than its timeout of {task.timeout} s; its "
                f"worker actor (pid {worker.pid}) was killed and replaced"), worker.pid)
        elif reason == ("cancel", task.task_id):
            self.fail_cancelled(task, worker.pid, self.doomed.pop(task.task_id))
        elif not worker.ready or task.retries > 0:
            if worker.ready:
                task.retries -= 1
            unstarted.insert(0, task)  # it never ran, or runs again
        else:
            self.settle(task)
            self.fail_task(task, WorkerCrashed.from_exit(
                worker.pid, None, task.task_id, f"(Ray: {type(cause).__name__})"), worker.pid)

    def release_leases(self, worker: _Worker) -> None:
        try:
            released = self.infra.budget.release_holder(worker.actor_id)
        except Exception as exc:  # the budget's own trouble must not stop the farm
            self.emit("lease_release_failed", actor_id=worker.actor_id, error=str(exc)[:300])
            return
        if released:
            self.emit("leases_released", actor_id=worker.actor_id, leases=released)

    def enforce_kills(self) -> None:
        """Kill each actor whose running task outran its timeout or was kill()ed."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.dead or worker.kill_reason is not None or not worker.calls:
                continue
            task = worker.calls[0].task
            if task is None:
                continue
            if task.task_id in self.doomed:
                self.kill(worker, ("cancel", task.task_id))
            elif task.timeout is not None and now - worker.running_since > task.timeout:
                self.kill(worker, ("timeout", task.task_id))

    def flush_events(self) -> None:
        """Send the farm's buffered events (a no-op when there are none); a log that
        cannot take them costs the events, never the farm."""
        try:
            self.infra.log.flush()
        except Exception:
            self.counts["events_dropped"] += 1

    # ---- cancelling -----------------------------------------------------------------------

    def stop_started(self, task: Task, reason: str) -> None:
        running = any(w.calls and w.calls[0].task is task for w in self.workers)
        if not running:  # queued behind another call: fails now, never runs
            self.fail_cancelled(task, 0, reason)
        # else the collector kills its actor (see enforce_kills)

    def wake_collector(self) -> None:
        self.completions.put(None)

    def forget_queued(self) -> None:
        for worker in self.workers:
            worker.calls.clear()

    # ---- stopping -----------------------------------------------------------------------------

    def stop(self, grace: float) -> None:
        """Kill every worker actor and fail what is left. Tasks that run get `grace`
        seconds to finish first."""
        deadline = time.monotonic() + grace
        with self.lock:
            if self.stopped:
                return
            self.closing = True
        self.wait_idle(max(0.0, deadline - time.monotonic()))
        with self.lock:
            workers = list(self.workers)
            for worker in workers:
                worker.dead = True
                with contextlib.suppress(Exception):
                    self.ray.kill(worker.actor, no_restart=True)
            self.fail_everything(FarmShutdown(
                "the farm shut down before this task finished; its worker was stopped"))
            self.final_statistics = self.statistics()
            self.stopped = True
        self.wake_collector()
        self.collector.join()
        self.wait_dead(workers)
        self.flush_events()

    def wait_dead(self, workers: list[_Worker]) -> None:
        """Until Ray reports each killed actor dead, so its process is gone when stop()
        returns."""
        probes = [w.actor.ready.remote() for w in workers]
        with contextlib.suppress(Exception):
            self.ray.wait(probes, num_returns=len(probes), timeout=STOP_WAIT)

    def worker_pids(self) -> list[int]:
        with self.lock:
            return [w.pid for w in self.workers if w.ready and not w.dead]

    def worker_counts(self) -> tuple[int, int, int]:
        workers = self.workers
        return (len(workers), sum(1 for w in workers if w.ready and not w.dead),
                sum(1 for w in workers if w.calls and w.calls[0].task is not None))
