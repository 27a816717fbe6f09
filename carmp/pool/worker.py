"""The worker process: attach the dispatch segment, run tasks, report results.

A worker ignores SIGINT (Ctrl-C is the supervisor's to handle), dies with its
supervisor (a native watchdog thread, plus PR_SET_PDEATHSIG under fork), and
marks the task it is on in its slot before decoding it, so that a crash at any
point is charged to exactly that task.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import signal
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import cloudpickle
import orjson

from carmp import _native
from carmp.errors import CarmpError, PayloadError
from carmp.pool import dispatch as d
from carmp.shared.proc import is_alive, rss_bytes

if TYPE_CHECKING:
    from carmp.runtime.infra import SharedInfra

EXIT_INIT_FAILED = 3
RECV_BATCH = 64
JSON_DEPTH_LIMIT = 32


@dataclass(frozen=True, slots=True)
class WorkerHandles:
    """What a worker needs to join the farm; pickled once when the process starts."""

    dispatch_name: str
    slot: int
    generation: int
    supervisor_pid: int
    supervisor_start: int
    result_pipe: Any  # the writing end of the worker's private result pipe
    initializer: bytes | None  # cloudpickle of (initializer, initargs)
    max_tasks: int | None
    max_rss_bytes: int | None
    spin: float
    under_fork: bool
    infra_names: tuple[str, str, str, str]  # SharedInfra.segment_names() of the farm's world
    task_events: bool  # record task_started events


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Who runs the current task: `carmp.current_worker()`."""

    slot: int
    pid: int
    generation: int


_current: WorkerInfo | None = None
_infra_names: tuple[str, str, str, str] | None = None
_infra: SharedInfra | None = None


def current_worker() -> WorkerInfo | None:
    """The worker running this code, or None outside a farm's worker."""
    return _current


def current_infra() -> SharedInfra | None:
    """The farm's shared world (state, event log, budget, policies) as seen from this worker,
    attached on first use; None outside a farm's worker."""
    global _infra
    if _infra is None and _infra_names is not None:
        # imported here: most tasks never touch the world, and workers start faster
        from carmp.runtime.infra import SharedInfra

        _infra = SharedInfra.attach(*_infra_names)
    return _infra


def bind_worker(info: WorkerInfo, infra: SharedInfra) -> None:
    """Make this process a farm worker whose world is `infra`: for backends whose workers
    receive their world ready-made (Ray actors) rather than by segment names."""
    global _current, _infra
    _current, _infra = info, infra


def json_exact(value: Any, depth: int = 0) -> bool:
    """True if a JSON round trip gives back exactly `value` (same types, same values)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-(2**63) <= value < 2**64)
    if kind is float:
        return math.isfinite(value)
    if depth >= JSON_DEPTH_LIMIT:
        return False
    if kind is list:
        return all(json_exact(item, depth + 1) for item in value)
    if kind is dict:
        return all(type(k) is str and json_exact(v, depth + 1) for k, v in value.items())
    return False


class _Worker:
    def __init__(self, handles: WorkerHandles) -> None:
        self.handles = handles
        self.dispatch = d.Dispatch.attach(handles.dispatch_name)
        self.slot = self.dispatch.slots[handles.slot]
        self.pipe = handles.result_pipe
        self.functions: dict[int, Callable[..., Any]] = {}
        self.reassembler = d.Reassembler()
        self.limit = self.slot.results.max_message
        self.finished = 0

    # ---- sending ------------------------------------------------------------------------

    def send(self, tag: int, payload: bytes) -> None:
        results = self.slot.results
        for piece_tag, piece in d.fragments(tag, payload, self.limit):
            while not results.send(piece_tag, piece):
                results.wait_writable(len(piece), 1.0)

    def send_json(self, tag: int, task_id: int, document: Any) -> None:
        self.send(tag, d.ID.pack(task_id) + orjson.dumps(document))

    def send_piped(self, tag: int, task_id: int, pickled: bytes) -> None:
        # the marker first: the collector reads the pipe only after seeing it, and a
        # large pickle blocks on the pipe until the collector reads
        self.send(tag, d.ID.pack(task_id))
        self.pipe.send_bytes(pickled)

    def send_result(self, task_id: int, value: Any) -> None:
        if json_exact(value):
            try:
                self.send(d.RESULT, d.ID.pack(task_id) + orjson.dumps(value))
                return
            except orjson.JSONEncodeError:
                pass  # e.g. a string with lone surrogates: pickle it instead
        try:
            pickled = cloudpickle.dumps(value)
        except BaseException as exc:
            self.send_error(task_id, describe_failure(exc, "the task's result could not be pickled"))
            return
        self.send_piped(d.RESULT_PIPED, task_id, pickled)

    def send_error(self, task_id: int, exc: BaseException) -> None:
        error = pickled_error(exc)
        if isinstance(error, dict):
            self.send_json(d.ERROR, task_id, error)
        else:
            self.send_piped(d.ERROR_PIPED, task_id, error)

    # ---- running ------------------------------------------------------------------------

    def run_task(self, payload: bytes) -> None:
        task_id, function_id = d.TASK_HEADER.unpack_from(payload)
        self.slot.mark_running(task_id, time.monotonic_ns())
        if self.handles.task_events:
            self.record_start(task_id)
        try:
            try:
                args, kwargs = pickle.loads(payload[d.TASK_HEADER.size:])
            except BaseException as exc:
                raise describe_failure(exc, "the task's arguments could not be unpickled") from exc
            result = self.functions[function_id](*args, **kwargs)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they are the task's
            self.send_error(task_id, exc)
        else:
            self.send_result(task_id, result)
        self.finished += 1
        self.slot.mark_idle()

    def record_start(self, task_id: int) -> None:
        infra = current_infra()
        assert infra is not None
        with contextlib.suppress(CarmpError):  # a full log costs the event, not the task
            infra.log.append("task_started", data={"task_id": task_id, "pid": os.getpid()},
                             writer=f"worker-{self.handles.slot}")

    def define_function(self, payload: bytes) -> None:
        (function_id,) = d.ID.unpack_from(payload)
        try:
            self.functions[function_id] = cloudpickle.loads(payload[d.ID.size:])
        except BaseException as exc:
            failure = describe_failure(exc, "the task's function could not be unpickled")
            self.functions[function_id] = _Raiser(failure)

    def retirement_reason(self) -> str | None:
        limits = self.handles
        if limits.max_tasks is not None and self.finished >= limits.max_tasks:
            return f"max_tasks_per_worker={limits.max_tasks} reached"
        if limits.max_rss_bytes is not None:
            rss = rss_bytes()
            if rss > limits.max_rss_bytes:
                return f"rss {rss // 2**20} MiB above max_rss_mb={limits.max_rss_bytes // 2**20}"
        return None

    def serve(self) -> None:
        tasks = self.slot.tasks
        spin = self.handles.spin
        while True:
            if not tasks.wait_readable(1.0, spin):
                continue
            for tag, piece in tasks.recv_many(RECV_BATCH):
                message = self.reassembler.feed(tag, piece)
                if message is None:
                    continue
                kind, payload = message
                if kind == d.TASK:
                    self.run_task(payload)
                    reason = self.retirement_reason()
                    if reason is not None:
                        self.send(d.RETIRING, orjson.dumps({"reason": reason}))
                        return
                elif kind == d.FUNCTION:
                    self.define_function(payload)
                elif kind == d.FORGET:
                    self.functions.pop(d.ID.unpack_from(payload)[0], None)
                elif kind == d.STOP:
                    return


class _Raiser:
    """Stands in for a function that failed to unpickle: every call re-raises why."""

    def __init__(self, failure: BaseException) -> None:
        self.failure = failure

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self.failure


def pickled_error(exc: BaseException) -> bytes | dict[str, str]:
    """A task's exception and its traceback text, pickled; when the exception cannot be
    pickled, a JSON document that describes it instead."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickled: bytes = cloudpickle.dumps((exc, text))
    except BaseException:
        return error_document(exc, text)
    return pickled


def describe_failure(exc: BaseException, what: str) -> PayloadError:
    failure = PayloadError(f"{what}: {type(exc).__name__}: {exc}")
    failure.__cause__ = exc
    return failure


def error_document(exc: BaseException, text: str) -> dict[str, str]:
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": text,
    }


def worker_main(handles: WorkerHandles) -> None:
    """Entry point of every worker process."""
    global _current, _infra_names
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it already was, since the process began
    if handles.under_fork:
        _native.set_parent_death_signal(signal.SIGKILL)
    _native.watchdog_start(handles.supervisor_pid)
    if not is_alive(handles.supervisor_pid, handles.supervisor_start):
        os._exit(1)  # the pid the watchdog watches was already reused: our supervisor is gone
    worker = _Worker(handles)
    worker.slot.set_pid(os.getpid())
    _current = WorkerInfo(slot=handles.slot, pid=os.getpid(), generation=handles.generation)
    _infra_names = handles.infra_names
    if handles.initializer is not None:
        try:
            initializer, initargs = cloudpickle.loads(handles.initializer)
            initializer(*initargs)
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc))
            worker.send(d.INIT_FAILED, orjson.dumps(error_document(exc, text)))
            os._exit(EXIT_INIT_FAILED)
    worker.send(d.READY, d.ID.pack(os.getpid()))
    worker.serve()
    worker.pipe.close()
    worker.dispatch.close()
    if _infra is not None:
        _infra.close()
