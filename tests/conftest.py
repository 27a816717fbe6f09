"""Fixtures every test gets: a deadlock watchdog, a leak check for shared-memory
names and child processes, and the start-method matrix for process tests."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from collections.abc import Iterator

import multiprocess
import psutil
import pytest

# Only hit on deadlock: no test comes near it. faulthandler dumps every thread's
# stack and exits the worker, so a hang becomes a failure with stacks.
TIMEOUT = 180.0
START_METHODS = ("fork", "forkserver", "spawn")
CHILD_GRACE = 5.0


def carmp_shm_names() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if "carmp" in e}


def _own_segment_names(names: set[str]) -> set[str]:
    """Names whose header says this process created them (other xdist workers run beside us)."""
    from carmp.shared.segment import peek_header

    own = set()
    for entry in names:
        try:
            header = peek_header(entry)
        except OSError:
            continue
        if header is not None and header.creator_pid == os.getpid():
            own.add(entry)
    return own


def _helper_pids() -> set[int]:
    """Long-lived helpers of the start methods themselves (forkserver, resource tracker)."""
    pids = set()
    for module in ("multiprocess", "multiprocessing"):
        lib = sys.modules.get(module)
        if lib is None:
            continue
        forkserver = sys.modules.get(f"{module}.forkserver")
        tracker = sys.modules.get(f"{module}.resource_tracker")
        if forkserver is not None:
            pids.add(getattr(forkserver._forkserver, "_forkserver_pid", None))
        if tracker is not None:
            pids.add(getattr(tracker._resource_tracker, "_pid", None))
    return {p for p in pids if p}


@pytest.fixture(autouse=True)
def watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """`@pytest.mark.watchdog(seconds)` gives a long test (thousands of process starts)
    more time on a loaded machine; it still ends in stacks rather than a hang."""
    marker = request.node.get_closest_marker("watchdog")
    faulthandler.dump_traceback_later(marker.args[0] if marker else TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = carmp_shm_names()
    yield
    leaked_names = _own_segment_names(carmp_shm_names() - before)
    me = psutil.Process()
    deadline = time.monotonic() + CHILD_GRACE
    while True:
        helpers = _helper_pids()
        children = [c for c in me.children(recursive=True) if c.pid not in helpers]
        children = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not children or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for child in children:
        child.kill()
    for entry in leaked_names:
        os.unlink(f"/dev/shm/{entry}")
    problems = []
    if leaked_names:
        problems.append(f"leaked shared-memory names: {sorted(leaked_names)}")
    if children:
        problems.append(f"leaked child processes: {[(c.pid, c.name()) for c in children]}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(params=START_METHODS)
def mp_context(request: pytest.FixtureRequest) -> multiprocess.context.BaseContext:
    """The same process test under fork, forkserver and spawn."""
    return multiprocess.get_context(request.param)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        session.config._carmp_shm_before = carmp_shm_names()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On the controller, after every worker: nothing this run created may remain. Names
    whose creator is alive outside this run (another test session) are not ours."""
    from carmp.shared.proc import is_alive
    from carmp.shared.segment import peek_header

    before = getattr(session.config, "_carmp_shm_before", None)
    if before is None:
        return
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    leftover = []
    for entry in sorted(carmp_shm_names() - before):
        try:
            header = peek_header(entry)
        except OSError:
            header = None
        if (header is not None and header.creator_pid not in ours
                and is_alive(header.creator_pid, header.creator_start)):
            continue
        leftover.append(entry)
    if leftover:
        print(f"\nFAILED: the test run left shared-memory names behind: {leftover}",
              file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def kill(pid: int) -> None:
    """SIGKILL, ignoring a process that is already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
