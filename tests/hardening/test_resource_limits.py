"""Resource limits (issue 10 item 4; ROBUSTNESS guarantees 11 and 12, scenario R8): a
/dev/shm too small for a farm's world, a /dev/shm that fills up under live segments, and
every size limit of the shared structures and of proposals, at and one over the limit.

Over a limit the error is typed, says what to do, and nothing changed; at the limit the
write succeeds. The small /dev/shm is real: a tmpfs of a chosen size mounted in a private
user + mount namespace (`unshare`), in which a scenario script runs and reports as JSON;
where namespaces are not permitted those tests skip. The same refusal is also checked
with an injected free size, which needs no namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from carmp import (
    ActionStatus,
    BudgetLimits,
    CoordinationBudget,
    EventLog,
    EventTooLarge,
    Farm,
    InvalidProposal,
    KeyTooLarge,
    LeaseTableFull,
    PolicySet,
    PolicySetFull,
    Runtime,
    SharedInfra,
    SharedMemoryFull,
    StateFull,
    StateStore,
    TokenAccounting,
    ValueTooLarge,
)
from carmp.pool import dispatch
from carmp.shared import budget as budget_module
from carmp.shared import eventlog as eventlog_module
from carmp.shared import policy as policy_module
from carmp.shared import segment as segment_module
from carmp.shared import state as state_module
from carmp.shared.event import encode_payload
from carmp.shared.segment import SHM_HEADROOM, Segment

MIB = 1 << 20
SCENARIO_WAIT = 120.0  # a scenario child runs for seconds; only hit when it hangs

# ---- a real small /dev/shm: a private tmpfs in a user + mount namespace -------------------

_namespace_probe: list[str | None] = []  # [] untried; [None] usable; [reason] not


def _namespace_unavailable() -> str | None:
    """Why a private tmpfs cannot be mounted on /dev/shm here, or None (checked once)."""
    if not _namespace_probe:
        unshare = shutil.which("unshare")
        if unshare is None:
            reason: str | None = "unshare(1) is not installed"
        else:
            try:
                probe = subprocess.run(
                    [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                     "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                    capture_output=True, text=True, timeout=SCENARIO_WAIT)
                reason = None if probe.returncode == 0 else (
                    "user and mount namespaces are not permitted here, so no small private "
                    f"/dev/shm can be mounted: {probe.stderr.strip() or probe.returncode}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                reason = f"unshare failed: {exc}"
        _namespace_probe.append(reason)
    return _namespace_probe[0]


def run_with_small_shm(script: str, size_mib: int, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Run `script` with this Python in a private mount namespace whose /dev/shm is a tmpfs
    of `size_mib` MiB; (exit code, the JSON object its last stdout line holds). The tmpfs,
    and whatever the script left in it, vanish with the namespace."""
    reason = _namespace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    path = tmp_path / "scenario.py"
    path.write_text(textwrap.dedent(script))
    mount = f'mount -t tmpfs -o size={size_mib}m tmpfs /dev/shm && exec "$0" "$1"'
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount,
         sys.executable, str(path)],
        capture_output=True, text=True, timeout=SCENARIO_WAIT, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        report = {}
    if done.returncode == 0:
        assert report, f"the scenario printed no report:\n{done.stdout}\n{done.stderr}"
    return done.returncode, {**report, "stderr": done.stderr}


_REPORT = """
import json, os
import psutil
def report(**fields):
    print(json.dumps(fields))
def shm():
    return sorted(os.listdir("/dev/shm"))
def children():
    return [c.pid for c in psutil.Process().children(recursive=True)]
"""


def test_a_world_too_large_for_dev_shm_fails_before_any_segment_or_process(
        tmp_path: Path) -> None:
    """A tmpfs that holds the state store's segment but not the whole world: the planned
    total is refused before the first segment is made and before the forkserver boots."""
    size_mib = (sum(_world_sizes().values()) + SHM_HEADROOM) // MIB
    assert _world_sizes()["state"] + SHM_HEADROOM <= size_mib * MIB
    code, seen = run_with_small_shm(_REPORT + """
from carmp import Farm, SharedMemoryFull
try:
    Farm(workers=2)
except SharedMemoryFull as exc:  # looked at while the error (and its frames) still live
    report(error=str(exc), shm=shm(), children=children())
else:
    report(error=None)
""", size_mib, tmp_path)
    assert code == 0, seen["stderr"]
    assert seen["error"] is not None, "the farm started in a /dev/shm too small for it"
    assert "planned segments (state" in seen["error"] and "carmp cleanup" in seen["error"]
    assert "enlarge /dev/shm" in seen["error"]
    assert seen["shm"] == [], "segments were made before the world was known not to fit"
    assert seen["children"] == [], "processes were started for a world that does not fit"


def test_a_dispatch_segment_that_does_not_fit_fails_before_any_worker_starts(
        tmp_path: Path) -> None:
    """The world fits but 16 workers' dispatch segment does not: the farm fails before
    spawning, and the world it made is gone."""
    size_mib = -(-(sum(_world_sizes().values()) + SHM_HEADROOM) // MIB)
    dispatch_size = dispatch.SLOTS + 16 * dispatch.slot_size(dispatch.DEFAULT_TASK_CAPACITY,
                                                           dispatch.DEFAULT_RESULT_CAPACITY)
    assert size_mib * MIB - sum(_world_sizes().values()) < dispatch_size + SHM_HEADROOM
    code, seen = run_with_small_shm(_REPORT + """
from carmp import Farm, SharedMemoryFull
try:
    Farm(workers=16, start_method="fork")
except SharedMemoryFull as exc:
    report(error=str(exc), shm=shm(), children=children())
else:
    report(error=None)
""", size_mib, tmp_path)
    assert code == 0, seen["stderr"]
    assert seen["error"] is not None and "carmp cleanup" in seen["error"]
    assert seen["shm"] == [] and seen["children"] == []


_FILL_THEN_WRITE = """
import errno
from carmp import EventLog, SharedMemoryFull, StateFull, StateStore
if UNRESERVED:  # the counter-example: pages left to be allocated on first touch
    os.posix_fallocate = lambda fd, offset, size: os.ftruncate(fd, offset + size)
store = StateStore(max_keys=4096, capacity_bytes=2 << 20, transition_log_bytes=256 << 10)
log = EventLog(1 << 20, max_event_size=16 << 10)
made = shm()
filled = None
with open("/dev/shm/filler", "wb", buffering=0) as filler:  # fill the rest of the tmpfs
    try:
        while True:
            filler.write(b"f" * (64 << 10))
    except OSError as exc:
        filled = errno.errorcode[exc.errno]
left = os.statvfs("/dev/shm").f_bavail
stored, full = 0, None
try:  # write the store to capacity: every page it touches must already be its own
    while True:
        store.set(f"key-{stored}", "v" * 30000, "fill")
        stored += 1
except StateFull as exc:
    full = str(exc)
for n in range(2):  # make room, then rewrite the rest: churn in the arena and the log
    store.delete(f"key-{n}", "rewrite")
for n in range(2, stored):
    store.set(f"key-{n}", "w" * 29000, "rewrite")
appended = 0
while appended < 4 * log.capacity:  # events until the ring has wrapped several times
    appended += len(log.append("tick", data={"blob": "x" * 1000}).data["blob"])
newest = [e.data["blob"] == "x" * 1000 for e in log.tail(10)]
try:
    StateStore(max_keys=16, capacity_bytes=4096)
    refused = None
except SharedMemoryFull as exc:
    refused = str(exc)
report(made=made, filled=filled, left=left, stored=stored, full=full,
       intact=store.get(f"key-{stored - 1}") == "w" * 29000, wrapped=log.oldest_seq > 0,
       newest=newest, refused=refused, after=shm())
"""


def test_a_full_dev_shm_never_kills_a_writer_with_sigbus(tmp_path: Path) -> None:
    """Structures made in a 16 MiB /dev/shm, which an ordinary file then fills to ENOSPC,
    are written to their own capacity: typed errors only, exit code 0, never SIGBUS."""
    code, seen = run_with_small_shm(_REPORT + "UNRESERVED = False\n" + _FILL_THEN_WRITE,
                                    16, tmp_path)
    assert code == 0, f"the writer died (exit {code}; -{signal.SIGBUS} is SIGBUS): " \
                      f"{seen['stderr']}"
    assert len(seen["made"]) == 2 and seen["filled"] == "ENOSPC" and seen["left"] == 0
    assert seen["stored"] > 10 and "larger capacity_bytes" in seen["full"]
    assert seen["intact"] and seen["wrapped"] and seen["newest"] == [True] * 10
    assert "carmp cleanup" in seen["refused"], "a new segment in a full /dev/shm"
    assert seen["after"] == sorted([*seen["made"], "filler"]), "a refused segment stayed"


def test_without_reserved_pages_the_same_scenario_dies_of_sigbus(tmp_path: Path) -> None:
    """The counter-example that shows the test above can fail: segments whose pages are
    not reserved at creation (ftruncate instead of posix_fallocate) take SIGBUS."""
    code, seen = run_with_small_shm(_REPORT + "UNRESERVED = True\n" + _FILL_THEN_WRITE,
                                    16, tmp_path)
    assert code == -signal.SIGBUS, seen["stderr"]


# ---- the same refusal with an injected free size --------------------------------------


def _world_sizes() -> dict[str, int]:
    return {"state": state_module.segment_size(), "events": eventlog_module.segment_size(),
            "budget": budget_module.segment_size(), "policy": policy_module.segment_size()}


def _free_space(monkeypatch: pytest.MonkeyPatch, free: Callable[[], int]) -> None:
    monkeypatch.setattr("carmp.shared.segment.os.statvfs",
                        lambda path: SimpleNamespace(f_bavail=free(), f_frsize=1))


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of the segments created from now on, in order."""
    kinds: list[str] = []
    create = Segment.create.__func__  # type: ignore[attr-defined]

    def recording(cls: type[Segment], kind: str, *args: Any, **kwargs: Any) -> Segment:
        kinds.append(kind)
        return create(cls, kind, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Segment, "create", classmethod(recording))
    return kinds


def test_the_planned_sizes_are_the_sizes_of_the_segments_made() -> None:
    """The up-front check adds up what the parts will take: it must be what they take."""
    with SharedInfra() as infra:
        made = {kind: os.stat(f"{segment_module.SHM_DIR}{part.name}").st_size
                for kind, part in (("state", infra.state), ("events", infra.log),
                                   ("budget", infra.budget), ("policy", infra._policy_set))}
    assert made == _world_sizes()


def test_a_farm_whose_world_does_not_fit_makes_nothing_and_starts_nothing(
        monkeypatch: pytest.MonkeyPatch, created: list[str]) -> None:
    """Free space for the largest part but not for all of them: every segment alone would
    pass its own check, so only the check of the whole world refuses the farm."""
    _free_space(monkeypatch, lambda: max(_world_sizes().values()) + SHM_HEADROOM + MIB)
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    with pytest.raises(SharedMemoryFull, match=r"planned segments \(state") as caught:
        Farm(workers=2)
    assert "carmp cleanup" in str(caught.value) and "--shm-size" in str(caught.value)
    assert created == [], "segments were created before the world was known not to fit"
    assert {c.pid for c in psutil.Process().children(recursive=True)} <= before


def test_a_world_that_runs_out_midway_removes_the_parts_it_made(
        monkeypatch: pytest.MonkeyPatch, created: list[str]) -> None:
    """Room for the state store only (as when another run takes the rest meanwhile): the
    event log is refused and the store already made is removed at once, not at GC."""
    checks = iter([100 * MIB])
    _free_space(monkeypatch, lambda: next(checks, 0))
    with pytest.raises(SharedMemoryFull) as caught:
        SharedInfra()
    assert created == ["state", "events"]
    assert _own_segments() == [], f"a part outlived {caught.value!r}"


def _own_segments() -> list[str]:
    """carmp segments this process created (other test processes make theirs meanwhile)."""
    own = []
    for name in segment_module.list_segment_names():
        try:
            header = segment_module.peek_header(name)
        except OSError:
            continue
        if header is not None and header.creator_pid == os.getpid():
            own.append(name)
    return own


# ---- state store limits ---------------------------------------------------------------------

LIMITS = dict(max_keys=4, capacity_bytes=1024, max_key_bytes=16, max_value_bytes=600,
              transition_log_bytes=1 << 14)


@pytest.fixture
def store() -> Iterator[StateStore]:
    """A small store holding a, b and c (one key slot left)."""
    with StateStore(**LIMITS) as made:  # type: ignore[arg-type]
        made.apply({"a": 1, "b": 2, "c": 3}, "setup")
        yield made


def _state_of(store: StateStore) -> tuple[Any, ...]:
    stats = store.statistics()
    with store._lock:
        whole = store._table.check() == 0
    return (store.snapshot(), {k: store.version(k) for k in "abcd"},
            store.transition_count(), stats.keys, stats.bytes_used, whole)


def _json_of_length(length: int) -> str:
    """A str whose JSON encoding is `length` bytes (two of them the quotes)."""
    return "x" * (length - 2)


@pytest.mark.parametrize("write", [
    pytest.param(lambda s: s.set("k" * 16, 1, "at"), id="key-at-max-bytes"),
    pytest.param(lambda s: s.set("☃" * 5 + "k", 1, "at"), id="utf8-key-at-max-bytes"),
    pytest.param(lambda s: s.set("a", _json_of_length(600), "at"), id="value-at-max-bytes"),
    pytest.param(lambda s: s.apply({"a": _json_of_length(600), "k" * 16: 0}, "at"),
                 id="batch-at-both-limits"),
    pytest.param(lambda s: s.apply({"d": 4}, "at"), id="last-key-slot"),
])
def test_a_write_exactly_at_a_limit_is_stored(store: StateStore,
                                              write: Callable[[StateStore], Any]) -> None:
    write(store)
    assert store.transition_count() > 3 and store.transitions()[-1].action_id == "at"
    with store._lock:
        assert store._table.check() == 0


def _transaction(store: StateStore) -> None:
    with store.transaction("tx") as tx:
        tx.set("a", 10)
        tx.set("b", _json_of_length(601))


@pytest.mark.parametrize("write, error, advice", [
    (lambda s: s.set("k" * 17, 1, "over"), KeyTooLarge, "larger max_key_bytes"),
    (lambda s: s.delete("k" * 17, "over"), KeyTooLarge, "use a shorter key"),
    (lambda s: s.set("a", _json_of_length(601), "over"), ValueTooLarge, "split it over"),
    (lambda s: s.apply({"a": 10, "b": _json_of_length(601)}, "over"), ValueTooLarge,
     "larger max_value_bytes"),
    (lambda s: s.apply({"a": 10, "k" * 17: 1}, "over"), KeyTooLarge, "shorter key"),
    (_transaction, ValueTooLarge, "larger max_value_bytes"),
    (lambda s: s.compare_and_set("a", s.version("a"), _json_of_length(601)), ValueTooLarge,
     "split it over"),
    (lambda s: s.update("a", lambda _: _json_of_length(601)), ValueTooLarge, "split it over"),
    (lambda s: s.apply({"d": 4, "e": 5}, "over"), StateFull, "larger max_keys"),
    (lambda s: s.apply({"a": _json_of_length(560), "b": _json_of_length(560)}, "over"),
     StateFull, "larger capacity_bytes"),
    (lambda s: s.replace_all({"a": 1, "b": _json_of_length(601)}), ValueTooLarge,
     "larger max_value_bytes"),
], ids=["key", "delete-key", "value", "batch-value", "batch-key", "transaction",
        "compare-and-set", "update", "batch-max-keys", "batch-capacity", "replace-all"])
def test_a_write_over_a_limit_is_refused_and_changes_nothing(
        store: StateStore, write: Callable[[StateStore], Any], error: type[Exception],
        advice: str) -> None:
    before = _state_of(store)
    with pytest.raises(error, match=advice):
        write(store)
    assert _state_of(store) == before


@pytest.mark.parametrize("smaller, error, advice", [
    (dict(max_value_bytes=100), ValueTooLarge, "larger max_value_bytes"),
    (dict(max_key_bytes=8), KeyTooLarge, "larger max_key_bytes"),
    (dict(max_keys=1), StateFull, "larger max_keys"),
])
def test_a_journal_over_the_limits_of_the_store_reopening_it_is_refused_untouched(
        tmp_path: Path, smaller: dict[str, int], error: type[Exception], advice: str) -> None:
    """Replaying a journal that a store with larger limits wrote: a typed error that says
    which limit to raise, the journal as it was, and no segment left behind."""
    journal = tmp_path / "state.jsonl"
    geometry = dict(capacity_bytes=1 << 14, transition_log_bytes=1 << 12)
    with StateStore.durable(journal, max_keys=16, **geometry) as store:
        store.apply({"value": "x" * 500, "a-long-state-key": 1}, "written")
    written = journal.read_bytes()
    with pytest.raises(error, match=advice):
        StateStore.durable(journal, **{"max_keys": 16, **geometry, **smaller})
    assert journal.read_bytes() == written and _own_segments() == []


# ---- event log limit --------------------------------------------------------------------------


def _event_of_size(size: int) -> dict[str, str]:
    probe = len(encode_payload("blob", None, None, None, None, {"blob": ""}))
    return {"blob": "x" * (size - probe)}


@pytest.mark.parametrize("max_event_size", [256, 1024, eventlog_module.DEFAULT_MAX_EVENT_SIZE])
def test_an_event_of_exactly_max_event_size_fits_and_one_byte_more_changes_nothing(
        max_event_size: int) -> None:
    with EventLog(4 * max(max_event_size, 1024), max_event_size=max_event_size) as log:
        at = log.append("blob", data=_event_of_size(max_event_size))
        assert len(encode_payload("blob", None, None, None, None, at.data)) == max_event_size
        next_seq, held = log.next_seq, log.events()
        with pytest.raises(EventTooLarge, match="larger max_event_size"):
            log.append("blob", data=_event_of_size(max_event_size + 1))
        assert (log.next_seq, log.events()) == (next_seq, held)
        assert log.append("after").seq == next_seq  # no gap where the refused one was


# ---- policy set and budget limits ---------------------------------------------------------------


def test_a_rule_that_fills_the_policy_set_exactly_fits_and_one_byte_more_changes_nothing() -> None:
    with PolicySet(capacity_bytes=512, call_counters=1) as policies:
        policies.add_deny_tool("kept", "tool")
        policies.add_deny_tool("probe", "tool")
        room = 512 - policies.statistics().bytes_used
        policies.remove("probe")
        policies.add_deny_tool("fills", "tool", description="d" * room)
        assert policies.statistics().bytes_used == 512
        policies.remove("fills")
        before = (policies.rules(), policies.version, policies.statistics())
        with pytest.raises(PolicySetFull, match="larger capacity_bytes"):
            policies.add_deny_tool("fills", "tool", description="d" * (room + 1))
        with pytest.raises(PolicySetFull, match="remove rules"):
            policies.add_deny_tool("huge", "tool", description="d" * 10_000)
        assert (policies.rules(), policies.version, policies.statistics()) == before


def test_a_full_lease_table_changes_nothing_and_its_leases_still_settle() -> None:
    with CoordinationBudget(BudgetLimits(max_total_tokens=100), lease_slots=2) as budget:
        held = [budget.reserve(TokenAccounting(10, 0)) for _ in range(2)]  # every lease slot held
        before = (budget.ledger(), budget.leases(), budget.snapshot())
        with pytest.raises(LeaseTableFull, match="more lease_slots"):
            budget.reserve(TokenAccounting(1, 0))
        assert (budget.ledger(), budget.leases(), budget.snapshot()) == before
        assert budget.statistics().reservations_denied == 1  # counted as the event says
        for lease in held:
            budget.commit(lease, TokenAccounting(5, 0))
        assert budget.snapshot().total_tokens == 10 and budget.statistics().leases_held == 0


# ---- proposals at and over the limits of the state and the log they write ------------------------


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    """A runtime over a small store and a log with 1 KiB events."""
    with StateStore(max_keys=3, capacity_bytes=1 << 14, max_key_bytes=16,
                    max_value_bytes=100, transition_log_bytes=1 << 12) as state, \
            EventLog(1 << 16, max_event_size=1024) as log, Runtime(state, log) as made:
        state.set("kept", "old", "setup")
        yield made


def _snapshot(runtime: Runtime) -> dict[str, Any]:
    assert isinstance(runtime.state, StateStore)
    return runtime.state.snapshot()


def _write(key: str, value: Any, action_id: str, *after: str) -> dict[str, Any]:
    return {"id": action_id, "type": "state_write", "dependencies": list(after),
            "parameters": {"key": key, "value": value}}


def _kinds(runtime: Runtime) -> list[str]:
    return [event.kind for event in runtime.log.events()]


@pytest.mark.parametrize("key, value, fits, advice", [
    ("k" * 16, "v", True, ""),
    ("k" * 17, "v", False, "larger max_key_bytes"),
    ("k", _json_of_length(100), True, ""),
    ("k", _json_of_length(101), False, "larger max_value_bytes"),
    ("third", "v", True, ""),  # the last key slot of three
], ids=["key-at-max", "key-over", "value-at-max", "value-over", "last-key"])
def test_a_proposal_writing_at_a_state_limit_commits_and_over_it_leaves_nothing(
        runtime: Runtime, key: str, value: Any, fits: bool, advice: str) -> None:
    """The second write of the proposal hits the limit; over it, the first is undone too."""
    before = _snapshot(runtime)
    result = runtime.execute({"actions": [_write("first", 1, "a"),
                                          _write(key, value, "b", "a")]})
    if fits:
        assert not result.aborted and _snapshot(runtime) == {
            **before, "first": 1, key: value}
        return
    assert result.aborted and advice in (result.error or "")
    assert result.results[1].status is ActionStatus.FAILED
    assert _snapshot(runtime) == before
    assert _kinds(runtime)[-1] == "state_rollback"


def test_a_proposal_filling_the_store_past_max_keys_leaves_nothing(runtime: Runtime) -> None:
    before = _snapshot(runtime)
    result = runtime.execute({"actions": [_write("first", 1, "a"), _write("second", 2, "b", "a"),
                                          _write("third", 3, "c", "b")]})
    assert result.aborted and "larger max_keys" in (result.error or "")
    assert _snapshot(runtime) == before


BIG = 5000  # characters: a text that does not fit in one 1 KiB event


@pytest.mark.parametrize("proposal", [
    {"actions": [{"type": "state_write", "parameters": {"key": ["x" * BIG], "value": 1}}]},
    {"actions": [{"type": "state_write", "x" * BIG: 1, "parameters": {"key": "k", "value": 1}}]},
    {"id": "p" * BIG, "actions": [{"type": "bogus"}]},
    {"actions": [{"id": "a" * BIG, "type": "state_write", "parameters": {"key": "k"}}]},
    {"actions": [_write("k", 1, "a", "missing-" + "m" * BIG)]},
], ids=["bad-value", "unknown-field", "long-proposal-id", "long-action-id", "unknown-dependency"])
def test_a_malformed_proposal_with_oversize_text_is_invalid_proposal_not_event_too_large(
        runtime: Runtime, proposal: dict[str, Any]) -> None:
    """A rejection reason or id longer than an event holds is cut in the event, so the
    caller still gets InvalidProposal and the log still records every rejection."""
    before = _snapshot(runtime)
    with pytest.raises(InvalidProposal, match="Fix these and propose it again") as caught:
        runtime.execute(proposal)
    rejected = runtime.log.filter("action_rejected")
    assert len(rejected) == len(caught.value.problems) > 0
    assert any("characters)" in str(event.data) + str(event.action_id) + str(event.proposal_id)
               for event in rejected)
    assert _snapshot(runtime) == before


def test_a_tool_error_longer_than_an_event_fails_its_action_not_the_runtime(
        runtime: Runtime) -> None:
    def shout() -> None:
        raise RuntimeError("x" * BIG)

    runtime.register_tool("shout", shout)
    before = _snapshot(runtime)
    result = runtime.execute({"actions": [
        _write("first", 1, "a"),
        {"id": "b", "type": "tool_call", "tool": "shout", "dependencies": ["a"]}]})
    assert result.aborted and result.results[1].status is ActionStatus.FAILED
    assert len(result.results[1].error or "") > BIG  # the result keeps the whole message
    (failed,) = runtime.log.filter("action_failed")
    assert f"({BIG + len('RuntimeError: ')} characters)" in failed.data["error"]
    assert _snapshot(runtime) == before and _kinds(runtime)[-1] == "state_rollback"


def test_a_rollback_of_more_keys_than_an_event_holds_is_logged_cut() -> None:
    """A proposal that wrote 80 keys, then failed: the state_rollback event lists the first
    restored keys and how many there were, and the caller gets the aborted result."""
    def fail() -> None:
        raise RuntimeError("no")

    with StateStore() as state, EventLog(1 << 16, max_event_size=1024) as log, \
            Runtime(state, log) as runtime:
        runtime.register_tool("fail", fail)
        writes = [_write(f"key-{i:03}-{'x' * 20}", i, f"w{i}") for i in range(80)]
        result = runtime.execute({"actions": [
            *writes, {"id": "boom", "type": "tool_call", "tool": "fail",
                      "dependencies": [w["id"] for w in writes]}]})
        assert result.aborted and state.snapshot() == {}
        rollback = log.events()[-1]
        assert rollback.kind == "state_rollback"
        assert rollback.data["restored"][-1] == "... (80 items)"
        assert len(rollback.data["restored"]) == 9


def test_ids_longer_than_an_event_holds_still_run_and_log_every_step(runtime: Runtime) -> None:
    result = runtime.execute({"id": "p" * BIG, "actions": [_write("first", 1, "a" * BIG)]})
    assert not result.aborted and runtime.state.get("first") == 1
    assert _kinds(runtime)[-5:] == ["proposal_received", "action_validated", "action_executing",
                                    "state_changed", "action_succeeded"]
    assert all(len(event.proposal_id or "") < BIG for event in runtime.log.events())
