"""Fuzzing (issue 10 item 5, ROBUSTNESS R13): random and mutated bytes into every reader
of untrusted input. Each must give a clear carmp error (a CarmpError) or skip what it
cannot read, never crash the interpreter and never hang.

Inputs are valid documents with bytes flipped, overwritten, inserted, repeated, deleted
or cut off, and pure random bytes. Readers backed by native code (shared memory, CRCs)
run each example in a forked child: a crash or a hang there fails the example with the
signal or the time it ran, and hypothesis shrinks it, instead of killing the pytest
worker. The C core itself is fuzzed under ASan/UBSan by native/tests/test_fuzz.c."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
import tomllib
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import posix_ipc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from carmp.agents import jsonapi
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.cli.spec import load_spec
from carmp.errors import (
    CarmpError,
    EventJournalWarning,
    InvalidSpec,
    JournalCorrupt,
    SegmentError,
    StateJournalWarning,
)
from carmp.pool.dispatch import Dispatch
from carmp.pool.farm import Farm
from carmp.pool import dispatch as dispatch_layout
from carmp.shared import budget as budget_layout
from carmp.shared import mailbox as mailbox_layout
from carmp.shared import policy as policy_layout
from carmp.shared import segment as segment_module
from carmp.shared import state as state_layout
from carmp.shared.budget import BudgetLimits, CoordinationBudget
from carmp.shared.event import EventKind
from carmp.shared.eventlog import _RING, MAX_MISSING_SEQS, EventLog
from carmp.shared.mailbox import Mailbox
from carmp.shared.policy import PolicySet, Rule
from carmp.shared.segment import HEADER_SIZE, SHM_DIR, list_segment_names, new_run_id
from carmp.shared.state import StateStore, replay_journal

EXAMPLES = Path(__file__).parents[2] / "examples"
# Far beyond any example (milliseconds each): only a reader that hangs gets here.
HANG_LIMIT = 60.0
REPORT_BYTES = 16_000
# CARMP_FUZZ_EXAMPLES=5000 fuzzes deeper by hand; CI runs the default.
EXAMPLES_PER_TEST = int(os.environ.get("CARMP_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES_PER_TEST, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---- inputs -------------------------------------------------------------------------------

# Bytes that matter to the formats read here: line ends, JSON and TOML punctuation, digits.
SPECIAL = (b"\n", b'"', b"{", b"}", b"[", b"]", b",", b":", b"=", b"9", b"-", b"\\", b"\x00",
           b"\xff", b" ")


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` after a few random edits: the near misses a parser must still refuse."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        step = draw(st.sampled_from(("flip", "byte", "insert", "special", "repeat", "delete",
                                     "truncate")))
        if step == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif step == "special":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif step == "truncate":
            del data[at:]
        elif step == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif at < len(data):
            if step == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif step == "byte":
                data[at] = draw(st.integers(0, 255))
            else:
                del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


def corrupted(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(valid), st.binary(max_size=2 * len(valid)))


def corrupted_file(data: st.DataObject, valid: bytes, tmp_path: Path) -> Path:
    """A file holding a drawn corruption of `valid` (a journal for a loader to read)."""
    path = tmp_path / "fuzzed.jsonl"
    path.write_bytes(data.draw(corrupted(valid)))
    return path


def overwrites(size: int) -> st.SearchStrategy[list[tuple[int, bytes]]]:
    """XOR masks (offset, mask) inside a window of `size` bytes whose length must not
    change (a mapped segment): a few flipped bits or scrambled spots, or the whole window
    made random."""
    bit = st.integers(0, 7).map(lambda n: bytes([1 << n]))
    spots = st.lists(st.tuples(st.integers(0, size - 1), bit | st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=8)
    # from a drawn seed: hypothesis need not draw (and shrink) every byte of a large window
    whole = st.randoms(use_true_random=False).map(lambda rng: [(0, rng.randbytes(size))])
    return st.one_of(spots, whole)


# ---- a forked child per example --------------------------------------------------------------


def survives(body: Callable[[str], None], what: str) -> None:
    """Run body(run_id) in a forked child, which names what it creates with that run id.
    Its exception comes back as its traceback; a crash (killed by a signal) or a hang
    fails with that; the segments it left (corrupted headers too) are removed."""
    run_id = new_run_id()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe and its exit status
        os.close(reader)
        status = 0
        try:
            body(run_id)
        except BaseException:
            os.write(writer, traceback.format_exc()[-REPORT_BYTES:].encode(errors="replace"))
            status = 1
        os._exit(status)
    os.close(writer)
    try:
        status = _wait_or_kill(pid)
        with os.fdopen(reader, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
    finally:
        for name in list_segment_names():
            if name.startswith(f"/carmp-{run_id}-"):
                posix_ipc.unlink_shared_memory(name)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"{what} crashed the interpreter with "
                             f"{signal.Signals(os.WTERMSIG(status)).name} (its stack is in the "
                             "captured stderr)")
    if status == -1:
        raise AssertionError(f"{what} hung: still running after {HANG_LIMIT} s")
    assert os.WEXITSTATUS(status) == 0, f"{what} failed:\n{report}"


def _wait_or_kill(pid: int) -> int:
    """The child's wait status, or -1 once it ran HANG_LIMIT seconds (it is killed)."""
    deadline = time.monotonic() + HANG_LIMIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -1
        time.sleep(0.001)


def patch_segment(name: str, places: Sequence[int], masks: list[tuple[int, bytes]]) -> None:
    """XOR the masks into the segment's /dev/shm file: byte k of a mask at position p goes
    to file offset places[(p + k) % len(places)], so the segment keeps its size and only
    the bytes under test change."""
    fd = os.open(os.path.join(SHM_DIR, name.lstrip("/")), os.O_RDWR)
    try:
        for at, mask in masks:
            for k, bits in enumerate(mask):
                offset = places[(at + k) % len(places)]
                os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ bits]), offset)
    finally:
        os.close(fd)


def test_a_crash_in_the_child_fails_the_example_and_names_the_signal() -> None:
    def segfaults(run_id: str) -> None:
        faulthandler.disable()  # its stack dump would only be noise here
        os.kill(os.getpid(), signal.SIGSEGV)

    with pytest.raises(AssertionError, match="crashed the interpreter with SIGSEGV"):
        survives(segfaults, "a segfaulting reader")


def test_a_hang_in_the_child_fails_the_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "HANG_LIMIT", 0.2)
    with pytest.raises(AssertionError, match="a stuck reader hung"):
        survives(lambda run_id: time.sleep(3600), "a stuck reader")


def test_an_error_in_the_child_comes_back_with_its_traceback() -> None:
    def fails(run_id: str) -> None:
        raise KeyError("not a carmp error")

    with pytest.raises(AssertionError, match="KeyError: 'not a carmp error'"):
        survives(fails, "a reader")


# ---- the state journal ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, set[bytes]]]:
    """A journal a durable store wrote (sets, a TTL, deletes, a transaction), and every
    value each key ever had, as JSON."""
    path = tmp_path_factory.mktemp("state") / "state.jsonl"
    written: dict[str, set[bytes]] = {}
    with StateStore.durable(path, max_keys=64, capacity_bytes=1 << 16) as store:
        for i in range(12):
            value = {"i": i, "text": "é" * (i % 4), "list": list(range(i % 5))}
            store.set(f"key-{i % 5}", value, f"action-{i}", ttl=3600 if i == 7 else None)
            written.setdefault(f"key-{i % 5}", set()).add(orjson.dumps(value))
        store.delete("key-2", "removal")
        with store.transaction("batch") as batch:
            batch.set("key-9", [1, 2.5, None, True])
        written.setdefault("key-9", set()).add(orjson.dumps([1, 2.5, None, True]))
    return path.read_bytes(), written


@FUZZ
@given(data=st.data())
def test_state_journal_replay_skips_what_it_cannot_trust(
        state_journal: tuple[bytes, dict[str, set[bytes]]], tmp_path: Path,
        data: st.DataObject) -> None:
    """Malformed lines are skipped (CRC, shape, JSON); no line ever yields a value that
    was not written, and replay raises nothing."""
    valid, written = state_journal
    path = corrupted_file(data, valid, tmp_path)

    def replay(run_id: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StateJournalWarning)
            replayed = replay_journal(str(path))
        for key, (value, _) in replayed.items():
            assert orjson.dumps(orjson.loads(value)) in written.get(key, set()), \
                f"replay invented {key!r} = {value!r}"

    survives(replay, "replaying a corrupted state journal")


# ---- the event journal ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def event_journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[dict[str, Any]]]:
    """A hash-chained journal of a few events, and their journal objects."""
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    with EventLog(1 << 16, max_event_size=1024, journal=path, hash_chain=True) as log:
        for i in range(8):
            log.append("fuzz", action_id=f"a{i}", data={"i": i, "text": "x" * i})
        log.begin_span("span", "trace")
        log.sync()
    lines = path.read_bytes()
    return lines, [orjson.loads(line) for line in lines.splitlines()]


@FUZZ
@given(data=st.data(), strict=st.booleans())
def test_event_journal_load_refuses_or_skips_bad_lines(
        event_journal: tuple[bytes, list[dict[str, Any]]], tmp_path: Path,
        data: st.DataObject, strict: bool) -> None:
    """strict=True: the events, or JournalCorrupt. Otherwise bad lines are skipped and
    reported; a load that reports nothing holds exactly the journal's events."""
    valid, originals = event_journal
    path = corrupted_file(data, valid, tmp_path)

    def load(run_id: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EventJournalWarning)
            try:
                log = EventLog.load(path, strict=strict, run_id=run_id)
            except JournalCorrupt:
                return
            except CarmpError as exc:  # a sound journal too large for a ring of this host
                assert not strict or "capacity" in str(exc), exc
                return
        with log:
            events = log.events()
            assert log.load_report is not None
            if log.load_report.ok:  # then every event is one the journal was written with
                assert all(e.to_dict() == originals[e.seq] for e in events), events
            lost = EventKind.EVENTS_LOST.value
            assert len([e for e in events if e.kind != lost]) == log.load_report.events

    survives(load, f"loading a corrupted event journal (strict={strict})")


@pytest.mark.parametrize("field", [{"seq": 1 << 62}, {"pid": 1 << 32}], ids=["seq", "pid"])
def test_a_journal_line_no_ring_can_hold_is_a_bad_line(tmp_path: Path,
                                                       field: dict[str, int]) -> None:
    """Found by the fuzzer: such a line used to fail load() with a bare ValueError from
    the ring (or of the pid) instead of being a bad line."""
    good = {"seq": 0, "timestamp_ns": 1, "pid": 1, "kind": "k", "action_id": None,
            "proposal_id": None, "run_id": None, "writer": None, "data": {}}
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps({**good, **field}) + b"\n")
    with pytest.raises(JournalCorrupt, match="events.jsonl:2: not an event"):
        EventLog.load(path, strict=True)
    with pytest.warns(EventJournalWarning), EventLog.load(path) as log:
        assert [event.seq for event in log.events()] == [0]
        assert log.load_report is not None and log.load_report.skipped[0].line == 2


def test_a_journal_whose_seqs_jump_far_ahead_is_refused_quickly(tmp_path: Path) -> None:
    """load() stands a gap event in for each missing seq: a corrupt seq far ahead used to
    cost one append per missing seq (minutes) or a ring too large for /dev/shm."""
    good = {"timestamp_ns": 1, "pid": 1, "kind": "k", "action_id": None, "proposal_id": None,
            "run_id": None, "writer": None, "data": {}}
    path = tmp_path / "events.jsonl"
    jump = MAX_MISSING_SEQS + 3  # seqs 2 .. jump - 1 are missing: one too many
    path.write_bytes(b"".join(orjson.dumps({**good, "seq": seq}) + b"\n"
                              for seq in (0, 1, jump)))
    for strict in (True, False):
        with pytest.raises(JournalCorrupt, match="skip 1,000,001 sequence numbers"):
            EventLog.load(path, strict=strict)


# ---- segment attach -----------------------------------------------------------------------------


def _filled_store(run_id: str) -> StateStore:
    store = StateStore(max_keys=16, capacity_bytes=4096, run_id=run_id)
    store.set("k", {"v": [1, 2]}, "fuzz")
    return store


def _filled_log(run_id: str, events: int) -> EventLog:
    log = EventLog(1 << 14, max_event_size=1024, hole_timeout=0.05, run_id=run_id)
    for i in range(events):
        log.append("fuzz", data={"i": i, "pad": "p" * (i * 37 % 300)})
    return log


def _filled_policies(run_id: str) -> PolicySet:
    policies = PolicySet(run_id=run_id)
    policies.add(Rule("no-shell", "deny_tool", tool="shell"))
    return policies


def _filled_mailbox(run_id: str) -> Mailbox:
    mailbox = Mailbox(max_agents=4, run_id=run_id)
    mailbox.register("agent")
    return mailbox


def header_places(*payload_words: tuple[int, int]) -> list[int]:
    """Offsets of the segment header and of the payload's [start, end) words that say how
    the payload is laid out (sizes, counts, offsets): what attach must check."""
    return [*range(HEADER_SIZE), *(o for start, end in payload_words for o in range(start, end))]


class Kind(NamedTuple):
    create: Callable[[str], Any]     # a small one with content, under this run id
    attach: Callable[[str], Any]
    read: Callable[[Any], object]    # a read of the attached one
    header: list[int]                # offsets of its header and geometry words


# One of each kind of segment. Not the locks: a scribbled robust mutex makes acquirers wait
# for their timeout (then LockTimeout), which is bounded but no attach check.
KINDS = {
    "state": Kind(_filled_store, StateStore.attach, lambda s: s.snapshot(),
                  header_places((state_layout.JOURNAL_GENERATION, state_layout.JOURNAL_PATH + 8),
                                (state_layout.TABLE, state_layout.TABLE + 64))),
    "events": Kind(lambda run_id: _filled_log(run_id, 16), EventLog.attach,
                   lambda log: log.events(), header_places((HEADER_SIZE, _RING + 64))),
    "budget": Kind(lambda run_id: CoordinationBudget(BudgetLimits(max_total_tokens=100),
                                                     run_id=run_id),
                   CoordinationBudget.attach, lambda b: b.snapshot(),
                   header_places((HEADER_SIZE, budget_layout.SPENT))),
    "policy": Kind(_filled_policies, PolicySet.attach, lambda p: p.rules(),
                   header_places((HEADER_SIZE, policy_layout.LOCK))),
    "mailbox": Kind(_filled_mailbox, Mailbox.attach, lambda m: m.registered(),
                    header_places((HEADER_SIZE, mailbox_layout.TABLE_LOCK))),
    "dispatch": Kind(lambda run_id: Dispatch.create(2, run_id=run_id), Dispatch.attach,
                     lambda d: [slot for slot in d],
                     header_places((HEADER_SIZE, dispatch_layout.SLOTS))),
}
HEADER_MASKS = 512  # masks land at positions 0..511 of a kind's header places, wrapping


@FUZZ
@given(kind=st.sampled_from(sorted(KINDS)), masks=overwrites(HEADER_MASKS))
# found by hand: a journal path that is not UTF-8 (state's places are file offsets up to it)
@example(kind="state", masks=[(state_layout.JOURNAL_PATH_LENGTH, b"\x01"),
                              (state_layout.JOURNAL_PATH, b"\xff")])
def test_attach_refuses_a_corrupted_header(kind: str, masks: list[tuple[int, bytes]]) -> None:
    """Attach checks magic, versions, kind, size and geometry: SegmentError, or (where the
    bytes changed only what any value may be) an attach that reads like any other."""
    spec = KINDS[kind]

    def corrupt_and_attach(run_id: str) -> None:
        segment_module.ATTACH_READY_WAIT = 0.0  # a cleared ready word fails at once
        original = spec.create(run_id)
        name = original.segment.name if isinstance(original, Dispatch) else original.name
        patch_segment(name, spec.header, masks)
        try:
            attached = spec.attach(name)
        except SegmentError:
            return
        try:
            spec.read(attached)
        except CarmpError:
            pass

    survives(corrupt_and_attach, f"attaching a {kind} segment with a corrupted header")


def test_dispatch_attach_checks_its_geometry() -> None:
    from carmp.pool.dispatch import TASK_CAPACITY

    original = Dispatch.create(2, run_id=new_run_id())
    try:
        patch_segment(original.segment.name, [TASK_CAPACITY + 3], [(0, b"\x01")])
        with pytest.raises(SegmentError):
            Dispatch.attach(original.segment.name)
    finally:
        original.close()


# Masks land over the ring after its header (descriptors, reader slots, data) of the log
# _filled_log makes, at positions up to this, wrapping.
RING_MASKS = 32 * 1024
RING_BODY = _RING + 256  # the event ring's descriptors start after its 256-byte header


@FUZZ
@given(masks=overwrites(RING_MASKS))
@example(masks=[(0, b"\xff" * RING_MASKS)])
def test_event_ring_reader_skips_corrupt_records(masks: list[tuple[int, bytes]]) -> None:
    """Bytes scribbled over a live ring's descriptors and data: readers deliver the
    events that are intact, and events_lost in place of the rest, or a carmp error."""

    def corrupt_and_read(run_id: str) -> None:
        log = _filled_log(run_id, 40)
        originals = {event.seq: event for event in log.events()}
        size = os.stat(os.path.join(SHM_DIR, log.name.lstrip("/"))).st_size
        patch_segment(log.name, range(RING_BODY, size), masks)
        try:
            events = log.events()
            with log.reader(from_seq=0) as reader:
                read = [event for batch in iter(lambda: reader.read(64), []) for event in batch]
        except CarmpError:
            return
        for event in events + read:
            if event.kind == EventKind.EVENTS_LOST.value:
                continue
            original = originals.get(event.seq)
            assert original is not None and (event.kind, event.data) == \
                (original.kind, original.data), f"a corrupt record was delivered: {event}"

    survives(corrupt_and_read, "reading a corrupted event ring")


# ---- run spec files ---------------------------------------------------------------------------

SPEC_TOML = (EXAMPLES / "swarm.toml").read_bytes()
SPEC_JSON = orjson.dumps(tomllib.loads(SPEC_TOML.decode()))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@st.composite
def respecified(draw: st.DrawFn) -> bytes:
    """The JSON spec with one field (anywhere in it) replaced by a random JSON value."""
    document = orjson.loads(SPEC_JSON)
    node: Any = document
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if not isinstance(node[key], (dict, list)):
            break
        node = node[key]
    if isinstance(node, dict):
        node[draw(st.sampled_from([*sorted(node), "extra"]))] = draw(json_values)
    elif isinstance(node, list) and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return orjson.dumps(document)


@FUZZ
@given(suffix_and_raw=st.one_of(
    corrupted(SPEC_TOML).map(lambda raw: (".toml", raw)),
    corrupted(SPEC_JSON).map(lambda raw: (".json", raw)),
    respecified().map(lambda raw: (".json", raw))))
@example(suffix_and_raw=(".toml", b"task = " + b"[" * 100_000 + b"]" * 100_000))
@example(suffix_and_raw=(".toml", b"a = " + b"{b=" * 10_000 + b"1" + b"}" * 10_000))
@example(suffix_and_raw=(".json", b"[" * 100_000))
def test_a_spec_file_loads_or_names_its_problem(tmp_path: Path,
                                                suffix_and_raw: tuple[str, bytes]) -> None:
    suffix, raw = suffix_and_raw
    path = tmp_path / f"spec{suffix}"
    path.write_bytes(raw)
    try:
        spec = load_spec(path)
    except InvalidSpec as exc:
        assert str(exc).startswith(f"{path}: "), exc
        return
    assert spec.pattern is not None and spec.launch is not None


# ---- the JSON entry points ---------------------------------------------------------------------


def answer(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    """A runner that answers at once, whatever the agent."""
    return AgentOutput(name=spec.name, answer=f"{spec.name} says 7", turns=1, tool_calls=0,
                       duration_ms=0.0)


VALID = {
    "agents": b'[{"name": "a", "system_prompt": ""}, {"name": "b", "system_prompt": "x"}]',
    "agent": b'{"name": "s", "system_prompt": "", "max_turns": 2}',
    "budget": b'{"max_total_tokens": 1000, "max_agents": 10}',
    "items": b'["one", "two"]',
}


def argument(kind: str) -> st.SearchStrategy[bytes]:
    """A JSON argument: valid, mutated, any JSON value, or random bytes."""
    return st.one_of(st.just(VALID[kind]), mutated(VALID[kind]),
                     json_values.map(orjson.dumps), st.binary(max_size=40))


ENTRY_POINTS: dict[str, Callable[[st.DrawFn], Callable[[Farm], str]]] = {
    "swarm": lambda draw: lambda farm: jsonapi.run_swarm(
        draw(st.sampled_from(["parallel", "sequential", "debate"]) | st.text(max_size=10)),
        draw(argument("agents")), "task", draw(st.none() | argument("agent")),
        draw(st.none() | argument("budget")), runner=answer, farm=farm),
    "pipeline": lambda draw: lambda farm: jsonapi.run_pipeline(
        draw(argument("agents")), "task", draw(st.none() | argument("budget")),
        runner=answer, farm=farm),
    "supervisor": lambda draw: lambda farm: jsonapi.run_supervisor(
        draw(argument("agents")), draw(argument("agent")), "task", 2,
        draw(st.none() | argument("budget")), runner=answer, farm=farm),
    "map_reduce": lambda draw: lambda farm: jsonapi.run_map_reduce(
        draw(argument("agent")), draw(argument("agent")), "task", draw(argument("items")),
        draw(st.none() | argument("budget")), runner=answer, farm=farm),
    "vote": lambda draw: lambda farm: jsonapi.run_vote(
        draw(argument("agents")), "task", draw(st.none() | argument("agent")),
        draw(st.none() | argument("budget")), runner=answer, farm=farm),
    "tournament": lambda draw: lambda farm: jsonapi.run_tournament(
        draw(argument("agents")), draw(argument("agent")), "task",
        draw(st.none() | argument("budget")), runner=answer, farm=farm),
}


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm(workers=2) as made:
        yield made


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
@settings(FUZZ, max_examples=max(1, EXAMPLES_PER_TEST // 3))
@given(data=st.data())
def test_a_json_entry_point_runs_or_refuses_its_input(farm: Farm, entry_point: str,
                                                       data: st.DataObject) -> None:
    call = ENTRY_POINTS[entry_point](data.draw)
    try:
        result = call(farm)
    except CarmpError:
        return
    assert isinstance(orjson.loads(result), dict)
