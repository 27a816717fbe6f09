"""Fixtures every test gets: a deadlock watchdog, a leak check for shared-memory
names and child processes, and the start-method matrix for process tests."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import multiprocess
import psutil
import pytest

if TYPE_CHECKING:
    from carmp.pool.farm import Farm

from carmp.backends.on_ray.cluster import SINGLE_NODE_SETTING

# Only hit on deadlock: no test comes near it. faulthandler dumps every thread's
# stack and exits the worker, so a hang becomes a failure with stacks.
TIMEOUT = 180.0
START_METHODS = ("fork", "forkserver", "spawn")
CHILD_GRACE = 5.0
# Ray's own processes (its GCS, raylet and their children, the worker processes): they
# live as long as the test session's Ray cluster, so they are no test's leak. carmp's Ray
# tests check their own actors' processes by pid.
RAY_PROCESS_ROOTS: set[int] = set()
# the tests' Ray clusters have one node, on 127.0.0.1 (read when ray is first imported)
os.environ.setdefault(SINGLE_NODE_SETTING, "0")


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
    """Long-lived helpers of the start methods themselves (forkserver, resource tracker),
    and the Ray cluster of this session."""
    pids = set(RAY_PROCESS_ROOTS)
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
        children = [c for c in me.children(recursive=True)
                    if c.pid not in helpers and not _under(c, RAY_PROCESS_ROOTS)]
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


def _under(process: psutil.Process, roots: set[int]) -> bool:
    try:
        return any(parent.pid in roots for parent in process.parents())
    except psutil.Error:
        return False


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A local Ray cluster with 2 CPUs for this test process, loopback only, with cloud
    metadata lookups refused in every process it starts. Ray tests run in their own
    pytest run (`-m ray`), so no fork-based test shares a process with Ray's threads."""
    if os.environ.get("CI"):
        import ray  # CI installs Ray: its tests must run there, never skip
    else:
        ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'carmp[ray]')")
    from tests.netguard import sitecustomize  # the guard, in this process too

    sitecustomize.guard_children()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    me = psutil.Process()
    before = {c.pid for c in me.children()}
    ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1",
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    RAY_PROCESS_ROOTS.update(c.pid for c in me.children() if c.pid not in before)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:"), \
        "the tests' Ray cluster must listen on loopback only"
    yield ray
    ray.shutdown()
    RAY_PROCESS_ROOTS.clear()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request: pytest.FixtureRequest) -> str:
    """The same test on the local backend and on Ray."""
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return str(request.param)


@pytest.fixture(params=[*START_METHODS, pytest.param("ray", marks=pytest.mark.ray)])
def flavor(request: pytest.FixtureRequest) -> str:
    """A start method of the local backend, or "ray": the same test on both backends."""
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return str(request.param)


def make_farm(flavor: str, **options: Any) -> Farm:
    """A farm of this flavor (see the `flavor` fixture)."""
    from carmp.pool.farm import Farm

    if flavor == "ray":
        return Farm(backend="ray", **options)
    return Farm(start_method=flavor, **options)


@pytest.fixture
def ray_world(ray_session: Any, tmp_path: Path) -> Iterator[Any]:
    """A world of the test's own whose parts are Ray actors (journals under tmp_path),
    ended after the test."""
    from carmp.backends.on_ray.world import open_world

    with open_world(str(tmp_path)) as made:
        yield made


@pytest.fixture
def any_world(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A world of the test's own on each backend: shared memory, or Ray actors."""
    if backend == "ray":
        yield request.getfixturevalue("ray_world")
        return
    from carmp.runtime.infra import SharedInfra

    with SharedInfra() as made:
        yield made


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
