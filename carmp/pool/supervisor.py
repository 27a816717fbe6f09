"""The supervisor: owns the dispatch segment, feeds the workers, collects results,
and replaces workers that die, time out, or retire.

    caller threads                  supervisor process                       worker k
    ──────────────                  ──────────────────                       ────────
    submit()/map() ──pickle──► pending deque ──pump──► task channel k ─────► run task
                                     ▲                  (shared memory)          │
                                     │ requeue unstarted                        │
    Future / batch ◄── resolve ── collector thread ◄── result channel k ◄───────┤ JSON
                                     ▲              ◄── result pipe k ◄─────────┘ pickles
                                     │ "slot k died"
                                 monitor thread ◄── process sentinels

- Caller threads serialise (cloudpickle) in the caller, so a bad argument fails that
  call at once, then append to `pending` and pump under `lock`.
- The pump assigns pending tasks to workers with room (an adaptive in-flight limit
  per worker keeps slow tasks from piling up behind one worker) and streams their
  records, FUNCTION definitions first, through each worker's outbox.
- The collector thread is the only reader of result channels and pipes. It resolves
  futures, pumps, enforces per-task timeouts and the RSS limit, and handles deaths:
  the task a dead worker was running fails with WorkerCrashed (or TaskTimeout) unless
  it has retries left; tasks queued behind it never started and go back to pending.
  TaskFuture.kill() fails a task with TaskCancelled: a running one once its worker is
  killed; one still pending or queued at a worker at once, and that worker is killed
  should it start the task before the collector has told it otherwise.
- The monitor thread blocks on the workers' process sentinels and wakes the collector
  the moment one exits.
- Everything that changes task or worker bookkeeping holds `lock`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import orjson
from multiprocess import connection
from multiprocess import spawn as mp_spawn

from carmp import _native
from carmp.errors import (
    FarmBroken,
    FarmShutdown,
    PayloadError,
    RemoteTaskError,
    TaskTimeout,
    WorkerCrashed,
)
from carmp.pool import dispatch as d
from carmp.pool.tasks import (
    FUNCTIONS_PER_WORKER,
    Sink,
    Task,
    TaskBook,
    Undecodable,
    unpickle_outcome,
)
from carmp.pool.worker import WorkerHandles, worker_main
from carmp.shared.eventlog import EventLog
from carmp.shared.proc import own_identity, rss_bytes

WORKER_NAME_PREFIX = "carmp-worker-"


def _preparation_without_main(name: str) -> dict[str, Any]:
    """multiprocess's data for a child it starts under forkserver or spawn, minus the
    main module for carmp's workers. multiprocess re-imports the parent's main module in
    each such child (the forkserver, and every worker, paid tens of ms or far more for a
    script with heavy imports) so that pickles naming `__main__` objects resolve; carmp
    sends callables by value with cloudpickle, so its workers never need it."""
    data: dict[str, Any] = _parent_preparation_data(name)
    if name.startswith(WORKER_NAME_PREFIX):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


_parent_preparation_data = mp_spawn.get_preparation_data
mp_spawn.get_preparation_data = _preparation_without_main

RESULT_BATCH = 256
IDLE_WAIT = 0.25            # the collector's longest sleep when nothing is due
RSS_CHECK_INTERVAL = 0.25
STOP_GRACE = 2.0            # how long workers get to exit after STOP, then SIGTERM
TERM_GRACE = 1.0            # and after SIGTERM, then SIGKILL
START_FAILURES_TO_BREAK = 3  # workers in a row that die before READY break the farm
MIN_IN_FLIGHT, MAX_IN_FLIGHT = 2, 256
HELPER_SPIN = 50e-6         # a caller waiting for its result spins this long before sleeping
HANDOFF_GRACE = 0.002      # the collector thread stays parked this long after a caller helped
QUEUED_WORK_TARGET = 0.002  # seconds of queued work per worker the pump aims for
DOOMED_POLL = 0.005         # how often the collector looks for a doomed task to start running
KILL_REASONS = {"timeout": "task timeout", "rss": "max_rss_mb exceeded", "cancel": "task cancelled"}
FINISHING = frozenset((d.RESULT, d.RESULT_PIPED, d.ERROR, d.ERROR_PIPED))  # end a task
NO_SINK = Sink()  # what drain's pending results belong to while it holds none


def corrupt_result(task: Task, exc: orjson.JSONDecodeError) -> PayloadError:
    return PayloadError(f"the result of task {task.task_id} arrived corrupt ({exc}): the farm's "
                        "shared memory was overwritten; restart the farm and check for code "
                        "that writes into /dev/shm")


class WorkerState:
    """The supervisor's view of one slot's current process."""

    def __init__(self, slot: d.Slot) -> None:
        self.slot = slot
        self.process: Any = None
        self.pipe: Any = None
        self.queued: collections.deque[Task] = collections.deque()
        self.outbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self.functions: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.reassembler = d.Reassembler()
        self.accepting = False
        self.kill_reason: tuple[str, int] | None = None  # (KILL_REASONS key, task id or 0)
        self.ready = False  # the process ran its initializer and said READY
        self.exit_handled = False
        self.busy_since = 0.0  # when the clock of adapt() started (0: the worker is idle)
        self.exited = False

    @property
    def pid(self) -> int:
        return int(self.process.pid) if self.process is not None else 0


class Supervisor(TaskBook):
    def __init__(self, *, workers: int, context: Any, run_id: str,
                 initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                 max_tasks_per_worker: int | None, max_rss_mb: float | None,
                 spin: float, log: EventLog, infra_names: tuple[str, str, str, str],
                 task_events: bool) -> None:
        self.context = context
        self.spin = spin
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_rss_bytes = None if max_rss_mb is None else int(max_rss_mb * 2**20)
        self.initializer = None if initializer is None else cloudpickle.dumps((initializer, initargs))
        self.infra_names = infra_names
        super().__init__(run_id, log, task_events)
        self.collecting = threading.Lock()  # held by whichever thread collects results now
        self.helpers_changed = threading.Condition()
        self.helpers = 0  # callers collecting for themselves (at most one at a time)
        self.last_help = 0.0
        self.dispatch = d.Dispatch.create(workers, run_id=run_id)
        self.states = [WorkerState(slot) for slot in self.dispatch.slots]
        self.result_channels = [slot.results for slot in self.dispatch.slots]
        self.deaths: collections.deque[int] = collections.deque()
        self.stopped = False
        self.next_rss_check = 0.0
        self.start_failures = 0
        # how many tasks the pump keeps queued at each worker: one figure for all of them
        # (a map's tasks are alike), so a batch is dealt evenly (see adapt())
        self.in_flight_limit = MIN_IN_FLIGHT * 2
        self.mean_task_seconds = 0.0
        self.supervisor_identity = own_identity()
        self.monitor_wakeup = os.pipe()
        for state in self.states:
            self.spawn(state)
        self.collector = threading.Thread(target=self.collect, name="carmp-collector", daemon=True)
        self.monitor = threading.Thread(target=self.watch_processes, name="carmp-monitor",
                                        daemon=True)
        self.collector.start()
        self.monitor.start()

    # ---- processes ---------------------------------------------------------------------------

    def spawn(self, state: WorkerState) -> None:
        generation = state.slot.reset(self.dispatch.task_capacity, self.dispatch.result_capacity)
        reader, writer = self.context.Pipe(duplex=False)
        pid, start = self.supervisor_identity
        handles = WorkerHandles(
            dispatch_name=self.dispatch.segment.name, slot=state.slot.index,
            generation=generation, supervisor_pid=pid, supervisor_start=start,
            result_pipe=writer, initializer=self.initializer,
            max_tasks=self.max_tasks_per_worker, max_rss_bytes=self.max_rss_bytes,
            spin=self.spin, under_fork=self.context.get_start_method() == "fork",
            infra_names=self.infra_names, task_events=self.task_events,
        )
        process = self.context.Process(target=worker_main, args=(handles,), daemon=True,
                                       name=f"{WORKER_NAME_PREFIX}{state.slot.index}")
        with sigint_ignored():
            process.start()
        writer.close()
        state.process, state.pipe = process, reader
        state.slot.set_pid(process.pid)
        state.queued.clear()
        state.outbox.clear()
        state.functions.clear()
        state.reassembler.reset()
        state.accepting, state.kill_reason, state.exited, state.ready = True, None, False, False
        state.exit_handled = False
        state.busy_since = 0.0
        self.emit("worker_started", slot=state.slot.index, pid=process.pid, generation=generation)
        os.write(self.monitor_wakeup[1], b"x")  # the monitor watches the new sentinel

    def watch_processes(self) -> None:
        wakeup = self.monitor_wakeup[0]
        while not self.stopped:
            with self.lock:
                watched = {s.process.sentinel: s for s in self.states
                           if s.process is not None and not s.exited}
            ready = connection.wait([*watched, wakeup])
            for fd in ready:
                if fd == wakeup:
                    os.read(wakeup, 4096)
                    continue
                state = watched[fd]
                with self.lock:
                    if not state.exited:
                        state.exited = True
                        self.deaths.append(state.slot.index)
                self.wake_collector()

    # ---- submitting ---------------------------------------------------------------------------

    # ---- dispatching ------------------------------------------------------------------------

    def pump(self) -> None:
        """Deal pending tasks to workers with room, one each in turn (fewest queued first) so
        that a batch spreads evenly, then flush every outbox. Holds `lock`."""
        pending, limit = self.pending, self.in_flight_limit
        with_room = [s for s in self.states
                     if s.accepting and len(s.queued) < limit] if pending else []
        with_room.sort(key=lambda s: len(s.queued))
        while pending and with_room:
            for state in with_room:
                task = self.next_startable()
                if task is None:
                    break
                self.assign(state, task)
            with_room = [s for s in with_room if len(s.queued) < limit]
        for state in self.states:
            if state.outbox:
                self.flush(state)

    def assign(self, state: WorkerState, task: Task) -> None:
        limit = state.slot.tasks.max_message
        if task.function_id in state.functions:
            state.functions.move_to_end(task.function_id)
        else:
            entry = self.entries[task.function_id]
            state.outbox.extend(d.fragments(d.FUNCTION, d.ID.pack(entry.function_id) + entry.pickled, limit))
            state.functions[task.function_id] = None
            if len(state.functions) > FUNCTIONS_PER_WORKER:
                forgotten, _ = state.functions.popitem(last=False)
                state.outbox.append((d.FORGET, d.ID.pack(forgotten)))
        body = d.TASK_HEADER.pack(task.task_id, task.function_id) + task.payload
        state.outbox.extend(d.fragments(d.TASK, body, limit))
        if not state.queued and state.ready:  # work for an idle worker: its clock starts
            state.busy_since = time.monotonic()
        state.queued.append(task)
        task.attempts += 1

    def flush(self, state: WorkerState) -> None:
        outbox = state.outbox
        if len(outbox) == 1:
            if state.slot.tasks.send(*outbox[0]):
                outbox.popleft()
            return
        batch = list(outbox)
        sent = state.slot.tasks.send_many(batch)
        if sent == len(batch):
            outbox.clear()
        else:
            for _ in range(sent):
                outbox.popleft()

    # ---- collecting --------------------------------------------------------------------------

    def collect_once(self) -> tuple[bool, float]:
        """One round of collecting: results, deaths, dispatch, limits. The caller holds
        `collecting`. Returns whether anything happened and when limits are next due."""
        progressed = False
        for state in self.states:
            if state.slot.results.readable:
                progressed = True
                with self.lock:
                    self.drain(state)
        with self.lock:
            while self.deaths:
                self.on_exit(self.states[self.deaths.popleft()])
                progressed = True
            if not self.stopped:
                self.pump()
            return progressed, self.enforce_limits()

    def collect(self) -> None:
        """The collector thread: collects whenever no waiting caller is doing it. While a
        caller helps (and for HANDOFF_GRACE after), it parks off the bell so that a result
        wakes one thread, not two."""
        while True:
            with self.helpers_changed:
                while True:
                    parked_for = self.last_help + HANDOFF_GRACE - time.monotonic()
                    if self.stopped or (not self.helpers and parked_for <= 0):
                        break
                    self.helpers_changed.wait(None if self.helpers else parked_for)
            # read before looking: a death or cancel announced after this ends the wait
            since = self.result_channels[0].bell_seq()
            with self.collecting:
                if self.stopped:
                    return
                progressed, wait = self.collect_once()
            if not progressed and not self.helpers:
                _native.wait_any(self.result_channels, wait, since=since)

    def help_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Collect in the calling thread until done() or the timeout: a waiter that does the
        collector's work itself saves a thread hand-off per result. False when another
        caller is collecting right now (then wait the ordinary way)."""
        with self.helpers_changed:
            if self.helpers:
                return False
            self.helpers += 1
        try:
            with self.collecting:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not done() and not self.stopped:
                    since = self.result_channels[0].bell_seq()
                    progressed, wait = self.collect_once()
                    if progressed or done():
                        continue
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            break
                    _native.wait_any(self.result_channels, wait, HELPER_SPIN, since)
        finally:
            with self.helpers_changed:
                self.helpers -= 1
                self.last_help = time.monotonic()
                self.helpers_changed.notify_all()
        return True

    def drain(self, state: WorkerState) -> None:
        """Handle a batch of the worker's messages. Whole JSON results (most messages) take
        a short path: consecutive ones for one sink (a map's batch) are handed over
        together, before any other message is handled, so outcomes keep their order."""
        reassembler, unpack_id, loads = state.reassembler, d.ID.unpack_from, orjson.loads
        sink: Sink = NO_SINK
        outcomes: list[tuple[int, Any]] = []
        finished = 0
        try:
            for tag, piece in state.slot.results.recv_many(RESULT_BATCH):
                if tag == d.RESULT and reassembler.idle:
                    finished += 1
                    task = self.finish(state, unpack_id(piece)[0])
                    if task is None:
                        continue
                    try:
                        value = loads(piece[d.ID.size:])
                    except orjson.JSONDecodeError as exc:
                        self.fail_task(task, corrupt_result(task, exc), state.pid)
                        continue
                    if task.sink is not sink:
                        ready, outcomes = outcomes, []
                        self.resolve_all(sink, ready)
                        sink = task.sink
                    outcomes.append((task.index, value))
                    if self.task_events:
                        self.emit("task_finished", task_id=task.task_id, pid=state.pid)
                    continue
                ready, outcomes = outcomes, []
                self.resolve_all(sink, ready)
                sink = NO_SINK
                message = reassembler.feed(tag, piece)
                if message is not None:
                    finished += message[0] in FINISHING
                    self.on_message(state, *message)
        finally:  # what was settled reaches its sink, whatever a later message did
            self.resolve_all(sink, outcomes)
            if finished:
                self.adapt(state, finished)

    def resolve_all(self, sink: Sink, outcomes: list[tuple[int, Any]]) -> None:
        """Hand a sink its results (the short path of drain(); task_finished events, when
        asked for, went out as each result was read)."""
        if outcomes:
            self.counts["done"] += len(outcomes)
            sink.resolve_many(outcomes)

    def on_message(self, state: WorkerState, kind: int, payload: bytes) -> None:
        if kind == d.RESULT:  # a JSON result that came in fragments
            task = self.finish(state, d.ID.unpack_from(payload)[0])
            if task is not None:
                self.resolve(state, task, orjson.loads(memoryview(payload)[d.ID.size:]))
        elif kind in (d.RESULT_PIPED, d.ERROR, d.ERROR_PIPED):
            (task_id,) = d.ID.unpack_from(payload)
            task = self.finish(state, task_id)
            outcome = self.decode(state, kind, payload[d.ID.size:])  # reads the pipe
            if task is None:
                return
            if kind == d.RESULT_PIPED and not isinstance(outcome, Undecodable):
                self.resolve(state, task, outcome)
            else:
                error = outcome.error if isinstance(outcome, Undecodable) else outcome
                self.fail_task(task, error, state.pid)
        elif kind == d.READY:
            state.ready = True
            self.start_failures = 0
            if state.queued:  # tasks waited for it to start: its clock starts now
                state.busy_since = time.monotonic()
        elif kind == d.RETIRING:
            state.accepting = False
            reason = orjson.loads(payload).get("reason", "")
            self.counts["recycled"] += 1
            self.emit("worker_recycled", slot=state.slot.index, pid=state.pid, reason=reason)
        elif kind == d.INIT_FAILED:
            info = orjson.loads(payload)
            state.accepting = False
            self.broken = RemoteTaskError.from_document(info, "the farm's initializer failed")

    def resolve(self, state: WorkerState, task: Task, value: Any) -> None:
        self.counts["done"] += 1
        if self.task_events:
            self.emit("task_finished", task_id=task.task_id, pid=state.pid)
        task.sink.resolve(task.index, value)

    def decode(self, state: WorkerState, kind: int, body: bytes) -> Any:
        """The exception, or the piped result, a message carries (pickles come over the
        pipe)."""
        if kind == d.ERROR:
            return RemoteTaskError.from_document(orjson.loads(body), "the task failed")
        try:
            pickled = state.pipe.recv_bytes()
        except (EOFError, OSError):
            return Undecodable(WorkerCrashed.from_exit(state.pid, None, None, "while sending a result"))
        return unpickle_outcome(pickled, kind == d.RESULT_PIPED)

    def finish(self, state: WorkerState, task_id: int) -> Task | None:
        """Take a finished task off its worker's queue; None if it was already settled."""
        if self.doomed:  # rare: only after TaskFuture.kill()
            self.doomed.pop(task_id, None)
        task = self.unfinished.get(task_id)
        if task is not None:
            self.settle(task)
        queued = state.queued
        if queued and queued[0].task_id == task_id:
            queued.popleft()
        elif task is not None:
            with contextlib.suppress(ValueError):
                queued.remove(task)
        return task

    def adapt(self, state: WorkerState, finished: int) -> None:
        """After `finished` tasks came back from a worker: keep about QUEUED_WORK_TARGET
        seconds of work queued at each worker, from a moving average of the time per task
        (each worker's clock runs only while it has work queued). One average for all
        workers: per-worker ones drifted apart (a worker that started late measured its
        first tasks with their imports) and then a slow map after a fast one was dealt
        mostly to the worker whose figure was stale."""
        now = time.monotonic()
        if state.busy_since:
            per_task = (now - state.busy_since) / finished
            self.mean_task_seconds = 0.8 * self.mean_task_seconds + 0.2 * per_task
            ideal = QUEUED_WORK_TARGET / max(self.mean_task_seconds, 1e-7)
            self.in_flight_limit = int(min(MAX_IN_FLIGHT, max(MIN_IN_FLIGHT, ideal)))
        state.busy_since = now if state.queued else 0.0

    def enforce_limits(self) -> float:
        """Kill workers past a task's timeout or the RSS limit; seconds until the next check."""
        now_ns = time.monotonic_ns()
        wait = IDLE_WAIT
        if self.doomed:
            self.kill_doomed()
            wait = DOOMED_POLL
        for state in self.states if self.timed_tasks else ():  # most farms set no timeouts
            running, started = state.slot.running()
            if not running or state.exited or state.kill_reason is not None:
                continue
            task = self.unfinished.get(running)
            if task is None or task.timeout is None:
                continue
            left = task.timeout - (now_ns - started) / 1e9
            if left <= 0:
                self.kill(state, ("timeout", running))
            else:
                wait = min(wait, left)
        if self.max_rss_bytes is not None and time.monotonic() >= self.next_rss_check:
            self.next_rss_check = time.monotonic() + RSS_CHECK_INTERVAL
            for state in self.states:
                if not state.exited and state.kill_reason is None and rss_bytes(state.pid) > self.max_rss_bytes:
                    self.kill(state, ("rss", 0))
            wait = min(wait, RSS_CHECK_INTERVAL)
        return wait

    def stop_started(self, task: Task, reason: str) -> None:
        runner = next((s for s in self.states
                       if s.slot.running()[0] == task.task_id and not s.exited), None)
        if runner is None:  # queued at a worker: fails now; the collector watches it
            self.fail_cancelled(task, 0, reason)
        elif runner.kill_reason is None:
            self.kill(runner, ("cancel", task.task_id))

    def wake_collector(self) -> None:
        self.result_channels[0].ring()

    def kill_doomed(self) -> None:
        """Kill each worker that started a task kill() stopped."""
        for state in self.states:
            running, _ = state.slot.running()
            if running in self.doomed and not state.exited and state.kill_reason is None:
                self.kill(state, ("cancel", running))

    def kill(self, state: WorkerState, reason: tuple[str, int]) -> None:
        state.kill_reason = reason
        state.accepting = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)

    def on_exit(self, state: WorkerState) -> None:
        """A worker's process ended: settle its tasks, then replace it. Once per process."""
        if state.exit_handled:
            return
        state.exit_handled = state.exited = True
        self.drain(state)  # what it published before dying still counts
        state.process.join(5)
        exitcode = state.process.exitcode
        running, _ = state.slot.running()
        queued = list(state.queued)
        state.queued.clear()
        state.accepting = False
        unstarted = []
        crashed = False
        for task in queued:
            if task.task_id not in self.unfinished:
                continue
            if task.task_id != running:
                unstarted.append(task)
                continue
            crashed = True
            if self.closing:
                self.settle(task)
                task.sink.fail(task.index, FarmShutdown(
                    f"the farm shut down while task {task.task_id} ran; its worker was stopped"))
            elif state.kill_reason == ("timeout", task.task_id):
                self.settle(task)
                self.fail_task(task, TaskTimeout(
                    f"task {task.task_id} ran longer than its timeout of {task.timeout} s; its "
                    f"worker (pid {state.pid}) was killed and replaced"), state.pid)
            elif state.kill_reason == ("cancel", task.task_id):
                self.fail_cancelled(task, state.pid, self.doomed[task.task_id])
            elif task.retries > 0:
                task.retries -= 1
                unstarted.append(task)
            else:
                self.settle(task)
                detail = "after exceeding max_rss_mb" if state.kill_reason == ("rss", 0) else ""
                self.fail_task(task, WorkerCrashed.from_exit(state.pid, exitcode, task.task_id,
                                                             detail), state.pid)
        self.pending.extendleft(reversed(unstarted))
        for task in queued:  # none of them can run in this worker any more
            self.doomed.pop(task.task_id, None)
        retired = exitcode == 0 and not crashed
        kind = "worker_exited" if retired else "worker_crashed"
        if not retired:
            self.counts["crashed"] += 1
        reason = None if state.kill_reason is None else KILL_REASONS[state.kill_reason[0]]
        self.emit(kind, slot=state.slot.index, pid=state.pid, exitcode=exitcode,
                  task_id=running or None, reason=reason)
        if state.pipe is not None:
            state.pipe.close()
        if not state.ready and self.broken is None:
            self.start_failures += 1
            if self.start_failures >= START_FAILURES_TO_BREAK:
                self.broken = WorkerCrashed.from_exit(
                    state.pid, exitcode, None,
                    f"before it was ready, {self.start_failures} workers in a row; the worker "
                    "process cannot start (check that the main module can be imported: run "
                    "scripts from a file, not stdin)")
        if not self.closing and self.broken is None:
            self.counts["respawns"] += 1
            self.spawn(state)
        elif self.broken is not None:
            self.fail_everything(FarmBroken(f"the farm is broken: {self.broken}"))

    def forget_queued(self) -> None:
        for state in self.states:
            state.queued.clear()

    # ---- shutting down ------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every worker (STOP, then SIGTERM, then SIGKILL), fail what is left, release all."""
        with self.lock:
            if self.stopped:
                return
            self.closing = True
            for state in self.states:
                state.accepting = False
                state.slot.tasks.send(d.STOP, b"")
        deadline = time.monotonic() + grace
        for state in self.states:
            state.process.join(max(0.0, deadline - time.monotonic()))
        for signum, wait in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, TERM_GRACE)):
            alive = [s for s in self.states if s.process.exitcode is None]
            for state in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signum)
            deadline = time.monotonic() + wait
            for state in alive:
                state.process.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            for state in self.states:
                self.on_exit(state)  # exits the collector has not seen yet
            self.deaths.clear()
            self.fail_everything(FarmShutdown(
                "the farm shut down before this task finished; its worker was stopped"))
            self.final_statistics = self.statistics()
            self.stopped = True
        self.wake_collector()
        with self.helpers_changed:
            self.helpers_changed.notify_all()
        os.write(self.monitor_wakeup[1], b"x")
        self.collector.join()
        self.monitor.join()
        for state in self.states:
            if state.pipe is not None:
                state.pipe.close()
            state.process.join(0)
        for fd in self.monitor_wakeup:
            os.close(fd)
        self.dispatch.close()

    def worker_pids(self) -> list[int]:
        with self.lock:
            return [s.pid for s in self.states if s.ready and not s.exited]

    def worker_counts(self) -> tuple[int, int, int]:
        states = self.states
        return (len(states),
                sum(1 for s in states if not s.exited and s.process.exitcode is None),
                sum(1 for s in states if s.slot.running()[0]))


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while processes start (from any thread): a child begins with it ignored,
    across fork and exec, so a Ctrl-C cannot kill a worker before it has chosen to ignore
    SIGINT itself. A Ctrl-C that lands in these milliseconds is lost; press it again."""
    _native.sigint_ignore()
    try:
        yield
    finally:
        _native.sigint_restore()


