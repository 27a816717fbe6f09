"""Security checks (issue 10 item 6, ROBUSTNESS "Security"): segments are private to their
user, their names cannot be guessed, nothing read from shared memory or a file is ever
unpickled, and another user cannot attach.

Each check is a function that the tests also run against a scratch counter-example (a
world-readable segment, a counter for run ids, an unpickling snippet), so a check that
stopped checking would fail here too."""

from __future__ import annotations

import ast
import contextlib
import os
import stat
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

import carmp
from carmp.errors import SegmentError, SegmentExists
from carmp.pool import dispatch
from carmp.pool.farm import Farm
from carmp.shared import budget, eventlog, mailbox, policy, state
from carmp.shared.segment import SHM_DIR, Segment, new_run_id, segment_name

NOBODY = 65534
# Every kind of segment a farm and its patterns create, and how each is attached.
ATTACH: dict[str, Callable[[str], object]] = {
    state.KIND: state.StateStore.attach, eventlog.KIND: eventlog.EventLog.attach,
    budget.KIND: budget.CoordinationBudget.attach, policy.KIND: policy.PolicySet.attach,
    mailbox.KIND: mailbox.Mailbox.attach, dispatch.KIND: dispatch.Dispatch.attach,
}


@pytest.fixture
def farm() -> Iterator[Farm]:
    """A farm whose world also holds a mailbox, so every kind of segment exists."""
    with Farm(workers=1) as made, mailbox.Mailbox(run_id=made.run_id):
        assert made.submit(sum, (1, 2)).result(timeout=30) == 3  # the farm has served
        yield made


def run_entries(run_id: str) -> list[str]:
    return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(f"carmp-{run_id}-"))


def semaphores() -> set[str]:
    return {e for e in os.listdir(SHM_DIR) if e.startswith("sem.")}


# ---- modes ------------------------------------------------------------------------------


def assert_private(entry: str) -> None:
    """/dev/shm/<entry> is readable and writable by its owner only, and we own it."""
    info = os.stat(os.path.join(SHM_DIR, entry))
    assert stat.S_IMODE(info.st_mode) == 0o600, \
        f"{entry} has mode {stat.S_IMODE(info.st_mode):o}, not 600: other users can map it"
    assert info.st_uid == os.getuid(), f"{entry} belongs to uid {info.st_uid}, not to us"


def test_every_segment_and_semaphore_of_a_farm_is_private(
        request: pytest.FixtureRequest) -> None:
    """carmp's locks are robust mutexes inside its segments, so the segment modes are
    also the locks' modes; a named semaphore that appears meanwhile (made by carmp, or
    by multiprocess for it) must be private too."""
    before = semaphores()
    farm = request.getfixturevalue("farm")
    entries = run_entries(farm.run_id)
    assert {entry.rsplit("-", 1)[1] for entry in entries} == set(ATTACH)
    for entry in entries:
        assert_private(entry)
    for entry in semaphores() - before:
        with contextlib.suppress(FileNotFoundError):  # it may be unlinked meanwhile
            assert_private(entry)


def test_the_mode_check_catches_a_readable_segment() -> None:
    with Segment.create("scratch", 64, layout_version=1) as scratch:
        entry = scratch.name.lstrip("/")
        assert_private(entry)
        os.chmod(os.path.join(SHM_DIR, entry), 0o644)
        with pytest.raises(AssertionError, match="mode 644"):
            assert_private(entry)


# ---- names ------------------------------------------------------------------------------

RUN_ID_SAMPLE = 2000


def assert_unguessable(run_ids: list[str]) -> None:
    """At least 48 bits each, all distinct, and every position of the id takes every hex
    digit over the sample: a counter, a pid or a clock leaves positions fixed. (For 2000
    random ids a position misses a digit with probability about 16 * (15/16)^2000.)"""
    assert all(len(r) * 4 >= 48 and set(r) <= set(string.hexdigits.lower()) for r in run_ids), \
        f"run ids must be 12+ hex digits (48 random bits), e.g. {run_ids[0]!r}"
    assert len(set(run_ids)) == len(run_ids), "run ids repeat"
    for position in range(min(map(len, run_ids))):
        seen = {run_id[position] for run_id in run_ids}
        assert len(seen) == 16, \
            f"position {position} of the run id only takes {sorted(seen)}: it is predictable"


def test_run_ids_are_unguessable() -> None:
    assert_unguessable([new_run_id() for _ in range(RUN_ID_SAMPLE)])


@pytest.mark.parametrize("predictable", [
    lambda n: f"{n:012x}",                          # a counter
    lambda n: f"{os.getpid():06x}{n * 7919:06x}",   # the pid and a counter
], ids=["counter", "pid"])
def test_the_name_check_catches_predictable_ids(predictable: Callable[[int], str]) -> None:
    with pytest.raises(AssertionError, match="predictable"):
        assert_unguessable([predictable(n)[-12:] for n in range(RUN_ID_SAMPLE)])


def test_segment_names_carry_only_the_run_id_and_the_kind(farm: Farm) -> None:
    """No pid, counter or time in a name: knowing a run's other names tells nothing."""
    assert run_entries(farm.run_id) == sorted(
        segment_name(farm.run_id, kind).lstrip("/") for kind in ATTACH)


def test_two_farms_never_share_a_name() -> None:
    with Farm(workers=1) as first, Farm(workers=1) as second:
        assert first.run_id != second.run_id
        assert not set(run_entries(first.run_id)) & set(run_entries(second.run_id))
        assert first.infra.segment_names() != second.infra.segment_names()


def test_a_squatted_name_is_refused_not_adopted() -> None:
    """Someone who creates a run's name first gets no carmp process to use their segment."""
    with Segment.create("scratch", 64, layout_version=1) as squatter:
        with pytest.raises(SegmentExists):
            Segment.create("scratch", 64, layout_version=1, run_id=squatter.run_id)


# ---- nothing read from shared memory or a file is unpickled ---------------------------------

CARMP = Path(carmp.__file__).parent
UNPICKLING_MODULES = {"pickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve"}
UNPICKLING_FUNCTIONS = {"load", "loads", "Unpickler", "open"}  # shelve.open unpickles too
# Reviewed call sites, (file, enclosing function): what is unpickled, and why it was
# produced by carmp itself in a process of the same run, never read from a segment or file.
ALLOWED_UNPICKLING = {
    ("pool/tasks.py", "unpickle_outcome"):
        "a task's result or exception that its worker pickled: read from that worker's "
        "private result pipe (Supervisor.decode: recv_bytes), or the Ray worker's return "
        "value (the Ray executor)",
    ("pool/worker.py", "_Worker.run_task"):
        "the task's arguments, pickled by Farm.submit in the caller and handed to this "
        "worker through its task channel",
    ("pool/worker.py", "_Worker.define_function"):
        "the task's function, cloudpickled by the supervisor and handed through the task "
        "channel before the first task that needs it",
    ("pool/worker.py", "worker_main"):
        "the initializer, cloudpickled by the supervisor into the WorkerHandles the worker "
        "process starts with",
    ("backends/on_ray/worker.py", "_unpickled"):
        "a task's function or arguments that the Ray executor pickled and Ray delivered as "
        "the remote call's argument",
    ("backends/on_ray/worker.py", "FarmWorker.__init__"):
        "the initializer, cloudpickled by the Ray backend and passed to the actor's "
        "constructor",
}
# Calls whose arguments show that the bytes came from a file or a segment.
STORAGE_READERS = {"open", "read", "read_bytes", "readline", "readlines", "mmap", "region",
                   "recv", "peek"}


class _UnpicklingFinder(ast.NodeVisitor):
    """Every call that unpickles, with the qualified name of the function around it."""

    def __init__(self) -> None:
        self.modules: set[str] = set()     # names bound to an unpickling module
        self.functions: set[str] = set()   # names bound to one of their functions
        self.scope: list[str] = []
        self.found: list[tuple[str, int, ast.Call]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in UNPICKLING_MODULES:
                self.modules.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = (node.module or "").split(".")[0]
        for alias in node.names:
            if module in UNPICKLING_MODULES and alias.name in UNPICKLING_FUNCTIONS:
                self.functions.add(alias.asname or alias.name)
            elif alias.name == "ForkingPickler":
                self.modules.add(alias.asname or alias.name)

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        unpickles = (
            isinstance(func, ast.Name) and func.id in self.functions
            or isinstance(func, ast.Attribute) and func.attr in UNPICKLING_FUNCTIONS
            and ast.unparse(func.value) in self.modules
            # a multiprocess Connection's recv() unpickles what the other end sent
            or isinstance(func, ast.Attribute) and func.attr == "recv" and not node.args
            and any(word in ast.unparse(func.value).lower() for word in ("pipe", "conn"))
        )
        if unpickles:
            self.found.append((".".join(self.scope) or "<module>", node.lineno, node))
        self.generic_visit(node)


def unpickling_sites(source: str, file: str) -> list[tuple[str, str, int, str]]:
    """(file, function, line, call) of every call in `source` that unpickles."""
    finder = _UnpicklingFinder()
    finder.visit(ast.parse(source))
    return [(file, function, line, ast.unparse(call)) for function, line, call in finder.found]


def reads_storage(call: str) -> bool:
    """Whether the unpickled bytes are read from a file or a segment in the call itself."""
    names = {node.attr if isinstance(node, ast.Attribute) else node.id
             for node in ast.walk(ast.parse(call))
             if isinstance(node, (ast.Attribute, ast.Name))}
    return bool(names & STORAGE_READERS)


def unreviewed(sites: list[tuple[str, str, int, str]]) -> list[str]:
    return [f"{file}:{line} in {function}: {call}" for file, function, line, call in sites
            if (file, function) not in ALLOWED_UNPICKLING or reads_storage(call)]


def carmp_unpickling_sites() -> list[tuple[str, str, int, str]]:
    return [site for path in sorted(CARMP.rglob("*.py"))
            for site in unpickling_sites(path.read_text(), path.relative_to(CARMP).as_posix())]


def test_nothing_is_unpickled_but_the_reviewed_call_sites() -> None:
    sites = carmp_unpickling_sites()
    assert not unreviewed(sites), (
        "new unpickling in carmp: nothing read from shared memory or a file may be "
        "unpickled (JSON only). Review these and add them to ALLOWED_UNPICKLING with why "
        f"they are safe: {unreviewed(sites)}")
    stale = set(ALLOWED_UNPICKLING) - {(file, function) for file, function, _, _ in sites}
    assert not stale, f"ALLOWED_UNPICKLING names call sites that are gone: {sorted(stale)}"


@pytest.mark.parametrize("snippet", [
    "import pickle\ndef unpickle_outcome(segment):\n    return pickle.loads(segment.region.read(0, 64))\n",
    "from cloudpickle import loads as thaw\ndef f(path):\n    return thaw(open(path, 'rb').read())\n",
    "import marshal as m\ndef g(data):\n    return m.loads(data)\n",
    "def h(pipe):\n    return pipe.recv()\n",
    "import shelve\ndef i(path):\n    return shelve.open(path)\n",
], ids=["segment-in-an-allowed-function", "aliased-file", "marshal", "connection", "shelve"])
def test_the_unpickling_check_catches_new_sites(snippet: str) -> None:
    assert unreviewed(unpickling_sites(snippet, "pool/tasks.py"))


# ---- another user ---------------------------------------------------------------------------


def attach_as(uid: int, names: list[str]) -> dict[str, str]:
    """name -> what attaching it did in a child that runs as `uid`: "attached", or the
    error's type and message. Plain reads of /dev/shm count as attaching too."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        outcomes = {}
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for name in names:
                kind = name.rsplit("-", 1)[1]
                try:
                    ATTACH[kind](name)
                    outcomes[name] = "attached"
                except Exception as exc:
                    outcomes[name] = f"{type(exc).__name__}: {exc}"
                try:
                    with open(os.path.join(SHM_DIR, name.lstrip("/")), "rb") as raw:
                        raw.read(1)
                    outcomes[name] = "read its bytes"
                except PermissionError:
                    pass
        finally:
            os.write(writer, orjson.dumps(outcomes))
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    outcomes: dict[str, str] = orjson.loads(report)
    return outcomes


def assert_refused(outcomes: dict[str, str]) -> None:
    for name, outcome in outcomes.items():
        assert outcome.startswith(SegmentError.__name__), \
            f"another user attached {name}: {outcome}"


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="attaching as a second user needs root (setuid to nobody); "
                              "run the tests as root (e.g. in the CI container) to check it")


@needs_root
def test_another_user_cannot_attach(farm: Farm) -> None:
    names = ["/" + entry for entry in run_entries(farm.run_id)]
    outcomes = attach_as(NOBODY, names)
    assert set(outcomes) == set(names)
    assert_refused(outcomes)
    assert all("another user" in outcome for outcome in outcomes.values())


@needs_root
def test_the_attach_check_catches_a_shared_segment() -> None:
    with state.StateStore(max_keys=8, capacity_bytes=4096) as store:
        os.chmod(os.path.join(SHM_DIR, store.name.lstrip("/")), 0o666)
        with pytest.raises(AssertionError, match="another user attached"):
            assert_refused(attach_as(NOBODY, [store.name]))
