"""The Ray worker actor: a farm worker that runs in a Ray process.

It builds its runtime against the farm's world exactly as a local worker does: it binds
the RayInfra it received (clients of the world's actors, which pickle as actor handles)
as `carmp.current_infra()`, so agent runners and tools are the same code on both
backends. Functions arrive once per worker (cloudpickle bytes); each call runs one task and
answers with the same outcome encodings a local worker sends.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from carmp.errors import CarmpError
from carmp.pool.worker import (
    WorkerInfo,
    bind_worker,
    describe_failure,
    error_document,
    pickled_error,
)

if TYPE_CHECKING:
    from carmp.backends.on_ray.world import RayInfra


class FarmWorker:
    """The actor body. __init__ runs the farm's initializer; ready() reports whether it
    failed, which breaks the farm as it does locally."""

    def __init__(self, slot: int, generation: int, infra: RayInfra,
                 initializer: bytes | None, task_events: bool) -> None:
        self.infra = infra
        self.slot = slot
        self.task_events = task_events
        self.functions: dict[int, Callable[..., Any]] = {}
        self.init_failure: dict[str, str] | None = None
        bind_worker(WorkerInfo(slot=slot, pid=os.getpid(), generation=generation), infra)
        if initializer is not None:
            try:
                function, args = cloudpickle.loads(initializer)
                function(*args)
            except BaseException as exc:
                self.init_failure = error_document(exc, "".join(traceback.format_exception(exc)))

    def ready(self) -> tuple[int, dict[str, str] | None]:
        """(pid, None) once started; (pid, error document) when the initializer failed."""
        return os.getpid(), self.init_failure

    def run(self, task_id: int, function_id: int, function: bytes | None,
            payload: bytes) -> tuple[str, Any]:
        """("result", pickle), ("error", pickle of (exception, traceback text)) or
        ("error", document) for an exception that cannot be pickled: what a local worker
        sends, so the executor decodes outcomes with the local code."""
        if self.task_events:
            with contextlib.suppress(CarmpError):  # a full log costs the event, not the task
                self.infra.log.append("task_started", data={"task_id": task_id,
                                                            "pid": os.getpid()},
                                      writer=f"worker-{self.slot}")
        try:
            if function is not None:
                self.functions[function_id] = _unpickled(function, "function")
            args, kwargs = _unpickled(payload, "arguments")
            result = self.functions[function_id](*args, **kwargs)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they are the task's
            return "error", pickled_error(exc)
        finally:
            # the task's events leave with its result, in one batch; a log that cannot
            # take them costs the events, not the task
            with contextlib.suppress(CarmpError):
                self.infra.log.flush()
        try:
            return "result", cloudpickle.dumps(result)
        except BaseException as exc:
            return "error", pickled_error(
                describe_failure(exc, "the task's result could not be pickled"))

    def forget(self, function_id: int) -> None:
        self.functions.pop(function_id, None)



def _unpickled(data: bytes, what: str) -> Any:
    try:
        return pickle.loads(data)
    except BaseException as exc:
        raise describe_failure(exc, f"the task's {what} could not be unpickled") from exc
