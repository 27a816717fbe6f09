"""Task functions the farm tests send to workers (a light module: workers import it)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

import carmp.pool.worker as worker_module


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def echo(value: Any) -> Any:
    return value


def call_or_echo(value: Any) -> Any:
    """value() for a callable (one that travelled by value), else the value."""
    return value() if callable(value) else value


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def whoami() -> tuple[int, int]:
    info = worker_module.current_worker()
    assert info is not None
    return info.pid, info.slot


def rendezvous(folder: str, name: str, count: int, wait: float = 30.0) -> bool:
    """Arrive in `folder` as `name`; True once `count` tasks arrived, False if they did
    not within `wait` seconds (they were not running at the same time)."""
    open(os.path.join(folder, name), "w").close()
    deadline = time.monotonic() + wait
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def until_running(farm: Any, count: int, wait: float = 60.0) -> None:
    """Wait (in the supervisor) until `count` of the farm's tasks are running."""
    deadline = time.monotonic() + wait
    while farm.statistics().running < count and time.monotonic() < deadline:
        time.sleep(0.01)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_base(kind: str) -> None:
    if kind == "SystemExit":
        raise SystemExit(7)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise BaseException("plain BaseException")


def exit_hard(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(30)


def segfault() -> None:
    ctypes.string_at(0)


def libc_exit(code: int) -> None:
    ctypes.CDLL(None).exit(code)


def return_lock() -> Any:
    return threading.Lock()


class UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise UnpicklableError()


def _explode(message: str) -> Any:
    raise RuntimeError(message)


class FailsToUnpickle:
    """Pickles fine; unpickling raises (in the supervisor, or in the worker for arguments)."""

    def __reduce__(self) -> Any:
        return (_explode, ("refuses to be unpickled",))


def return_fails_to_unpickle() -> FailsToUnpickle:
    return FailsToUnpickle()


class ExitsOnUnpickle:
    def __reduce__(self) -> Any:
        return (os._exit, (5,))


class ExitsOnPickle:
    def __reduce__(self) -> Any:
        os._exit(6)


def return_exits_on_pickle() -> ExitsOnPickle:
    return ExitsOnPickle()


def crash_first_time(marker: str, value: int) -> int:
    """Kills its worker on the first attempt only (the marker file remembers)."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def allocate_mb(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.5)
    return len(block)


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(0.01)


_initialized: list[Any] = []


def remember(value: Any) -> None:
    _initialized.append(value)


def initialized() -> list[Any]:
    return list(_initialized)


def failing_initializer() -> None:
    raise RuntimeError("initializer refuses")


def read_goal(_: Any) -> int:
    infra = worker_module.current_infra()
    assert infra is not None
    return int(infra.state.get("goal")["n"])


def begin_agent(_: Any) -> str:
    from carmp.errors import AgentLimit

    infra = worker_module.current_infra()
    assert infra is not None
    try:
        infra.begin_agent()
    except AgentLimit:
        return "AgentLimit"
    return "started"


def note(i: int) -> None:
    infra = worker_module.current_infra()
    assert infra is not None
    infra.log.append("note", data={"i": i, "from": os.getpid()})


def outside_a_worker() -> Any:
    return worker_module.current_infra()
