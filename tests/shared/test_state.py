"""StateStore: CAR's semantics, versions and batches, bad input, the journal, a model of
the whole store, and the guarantees across processes (fork, forkserver, spawn)."""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from carmp import (
    DELETE,
    KeyTooLarge,
    SegmentClosed,
    SegmentCorrupt,
    StateFull,
    StateJournalWarning,
    StateStore,
    TransitionsDropped,
    ValueTooLarge,
)
from carmp.shared.state import TABLE
from tests.conftest import kill

SMALL = dict(max_keys=64, capacity_bytes=1 << 16, transition_log_bytes=1 << 14)


@pytest.fixture
def make_store() -> Any:
    made: list[StateStore] = []

    def make(**options: Any) -> StateStore:
        store = StateStore(**{**SMALL, **options})
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def assert_whole(store: StateStore) -> None:
    """Every structural invariant of the table holds (taken under the lock)."""
    with store._lock:
        assert store._table.check() == 0


# ---- CAR's behaviours (CAR-SPEC 3, state 17-19, 23) -----------------------------------------


def test_set_returns_a_transition_with_old_and_new_values_and_the_action(make_store: Any) -> None:
    store = make_store()
    before = time.time()
    first = store.set("k", {"n": 1}, "a1")
    assert (first.key, first.old_value, first.new_value, first.action_id) == ("k", None, {"n": 1}, "a1")
    assert before <= first.timestamp <= time.time()
    second = store.set("k", [1, "two"], "a2")
    assert (second.old_value, second.new_value, second.action_id) == ({"n": 1}, [1, "two"], "a2")
    assert store.transitions() == [first, second]


def test_delete_returns_a_transition_with_no_new_value_and_none_when_absent(make_store: Any) -> None:
    store = make_store()
    store.set("k", 5, "a1")
    gone = store.delete("k", "a2")
    assert gone is not None and (gone.old_value, gone.new_value, gone.action_id) == (5, None, "a2")
    assert store.delete("k", "a3") is None
    assert store.transition_count() == 2 and not store.exists("k")


def test_snapshot_then_restore_rolls_back_the_map_and_the_log(make_store: Any) -> None:
    store = make_store()
    store.set("keep", 1, "setup")
    snap, count = store.snapshot(), store.transition_count()
    store.set("temp", 2, "proposal")
    store.set("keep", 3, "proposal")
    store.restore(snap, count)
    assert store.snapshot() == {"keep": 1} and store.get("temp") is None
    assert store.transition_count() == 1
    assert [t.action_id for t in store.transitions()] == ["setup"]
    store.set("after", 4, "next")  # the log goes on from the restored count
    assert [t.key for t in store.transitions_since(1)] == ["after"]
    assert_whole(store)


def test_replace_all_records_nothing_and_clears_the_log(make_store: Any) -> None:
    store = make_store()
    store.set("a", 1, "x")
    store.set("b", 2, "x")
    store.replace_all({"c": {"deep": [1, 2]}, "d": None})
    assert store.snapshot() == {"c": {"deep": [1, 2]}, "d": None}
    assert store.transition_count() == 0 and store.transitions() == []
    assert store.exists("d") and store.get_or("d", "default") is None
    assert_whole(store)


def test_restore_beyond_the_recorded_count_is_refused_and_changes_nothing(make_store: Any) -> None:
    store = make_store()
    store.set("a", 1, "x")
    with pytest.raises(ValueError, match="transition_count 5 is more than the 1"):
        store.restore({}, 5)
    assert store.snapshot() == {"a": 1} and store.transition_count() == 1


def test_reads_keys_and_defaults(make_store: Any) -> None:
    store = make_store()
    assert store.get("missing") is None and store.get_or("missing", 7) == 7
    assert not store.exists("missing") and store.keys() == []
    for key in ("b", "a", "é☃"):
        store.set(key, key * 2, "x")
    assert store.keys() == ["a", "b", "é☃"] and store.get("é☃") == "é☃é☃"
    assert store.get_or("a", 7) == "aa"


@pytest.mark.parametrize("value", [0, -1, 2**63 - 1, 1.5, "", "text ☃", True, None, [],
                                   {"nested": {"list": [1, {"x": None}]}}, "x" * 5000])
def test_values_round_trip_as_json(make_store: Any, value: Any) -> None:
    store = make_store()
    store.set("k", value, "x")
    assert store.get("k") == value
    assert store.transitions()[0].new_value == value


def test_a_read_value_is_a_copy(make_store: Any) -> None:
    store = make_store()
    value = {"list": [1]}
    store.set("k", value, "x")
    value["list"].append(2)
    got = store.get("k")
    got["list"].append(3)
    assert store.get("k") == {"list": [1]}


# ---- beyond CAR: versions, batches, TTLs, statistics ---------------------------------------


def test_versions_name_writes(make_store: Any) -> None:
    store = make_store()
    assert store.get_with_version("k") == (None, 0) and store.version("k") == 0
    store.set("k", 1, "x")
    value, v1 = store.get_with_version("k")
    store.set("other", 1, "x")
    store.set("k", 2, "x")
    assert value == 1 and v1 > 0 and store.version("k") > store.version("other") > v1
    store.delete("k", "x")
    assert store.version("k") == 0


def test_compare_and_set_writes_only_over_the_expected_version(make_store: Any) -> None:
    store = make_store()
    assert store.compare_and_set("k", 0, "created")        # 0: only if absent
    assert not store.compare_and_set("k", 0, "again")
    version = store.version("k")
    assert not store.compare_and_set("k", version + 1, "wrong")
    assert store.compare_and_set("k", version, "updated", "my-action")
    assert store.get("k") == "updated"
    assert [t.action_id for t in store.transitions()] == ["compare_and_set", "my-action"]


def test_update_retries_until_no_one_else_wrote_in_between(make_store: Any) -> None:
    store = make_store()
    store.set("n", 0, "x")
    calls = []

    def add_one(value: int) -> int:
        calls.append(value)
        if len(calls) == 1:
            store.set("n", 10, "interloper")  # another writer wins the first attempt
        return value + 1

    transition = store.update("n", add_one, "inc")
    assert calls == [0, 10] and store.get("n") == 11
    assert (transition.old_value, transition.new_value, transition.action_id) == (10, 11, "inc")


def test_transaction_applies_all_writes_together(make_store: Any) -> None:
    store = make_store()
    store.set("gone", 1, "x")
    with store.transaction("batch") as tx:
        tx.set("a", 1)
        tx.set("b", 2)
        tx.delete("gone")
        tx.set("a", 3)
        assert tx.get("a") == 3 and tx.get("gone") is None and store.get("a") is None
    assert store.snapshot() == {"a": 3, "b": 2}
    assert {t.key for t in tx.transitions} == {"a", "b", "gone"}
    assert all(t.action_id == "batch" for t in store.transitions_since(1))


def test_a_transaction_that_raises_applies_nothing(make_store: Any) -> None:
    store = make_store()
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.set("a", 1)
            raise RuntimeError("abort")
    assert store.snapshot() == {} and store.transition_count() == 0


def test_a_transaction_that_does_not_fit_changes_nothing(make_store: Any) -> None:
    store = make_store(capacity_bytes=4096)
    store.set("a", "old", "x")
    with pytest.raises(StateFull, match="capacity_bytes"):
        with store.transaction() as tx:
            tx.set("a", "new")
            for i in range(10):
                tx.set(f"big{i}", "x" * 500)
    assert store.snapshot() == {"a": "old"} and store.transition_count() == 1
    assert_whole(store)


def test_apply_reports_changed_versions_and_can_refuse(make_store: Any) -> None:
    store = make_store()
    store.set("a", 1, "x")
    seen = store.version("a")
    store.set("a", 2, "someone else")
    refused = store.apply({"a": 10, "b": DELETE}, "mine", expected_versions={"a": seen},
                          abort_on_change=True)
    assert (refused.applied, refused.changed, refused.transitions) == (False, ("a",), [])
    assert store.get("a") == 2
    forced = store.apply({"a": 10}, "mine", expected_versions={"a": seen}, ttls={"a": 60})
    assert forced.applied and forced.changed == ("a",) and store.get("a") == 10


def test_ttl_keys_are_reaped_when_due(make_store: Any) -> None:
    store = make_store()
    store.set("now", 1, "x", ttl=0)
    store.set("later", 2, "x", ttl=3600)
    store.set("never", 3, "x")
    assert store.get("now") == 1  # visible until reaped, as in CAR
    assert store.reap_expired() == ["now"]
    assert store.keys() == ["later", "never"]
    assert store.transitions()[-1].action_id == "reap_expired"
    assert store.reap_expired(time.time() + 7200) == ["later"]
    assert store.reap_expired(time.time() + 10**6) == []
    for bad in (-1, float("nan"), "5"):
        with pytest.raises(ValueError, match="ttl"):
            store.set("k", 1, "x", ttl=bad)


def test_statistics(make_store: Any) -> None:
    store = make_store(max_keys=10, capacity_bytes=8192)
    store.set("a", "x" * 100, "x")
    stats = store.statistics()
    assert (stats.keys, stats.max_keys, stats.capacity_bytes, stats.transitions) == (1, 10, 8192, 1)
    assert 100 < stats.bytes_used < 200 and stats.transitions_dropped == 0
    assert stats.writer_recoveries == 0 and stats.lock_recoveries == 0


def test_the_log_is_bounded_and_says_when_it_dropped_entries(make_store: Any) -> None:
    store = make_store(transition_log_bytes=2048)
    for i in range(100):
        store.set("k", i, f"a{i}")
    stats = store.statistics()
    assert stats.transitions == 100 and stats.first_transition > 0
    assert stats.transitions_dropped == stats.first_transition
    with pytest.raises(TransitionsDropped, match="transition_log_bytes") as caught:
        store.transitions()
    assert caught.value.first_retained == stats.first_transition
    kept = store.transitions_since(stats.first_transition)
    assert [t.new_value for t in kept] == list(range(stats.first_transition, 100))
    assert store.transitions_since(100) == []
    with pytest.raises(ValueError):
        store.transitions_since(-1)


# ---- storage: space is reused --------------------------------------------------------------


def test_churn_reuses_space_instead_of_growing(make_store: Any) -> None:
    store = make_store(max_keys=16, capacity_bytes=4096)
    for round_ in range(300):  # 4800 distinct keys through a 16-key, 4 KiB store
        for i in range(16):
            store.set(f"r{round_}-{i}", "v" * (round_ % 97), "churn")
        for i in range(16):
            store.delete(f"r{round_}-{i}", "churn")
    assert store.statistics().bytes_used == 0 and store.statistics().keys == 0
    for i in range(300):  # updates of one key reuse its space too
        store.set("same", "v" * (i % 1000), "x")
    assert store.statistics().bytes_used < 1100
    assert_whole(store)


# ---- bad input changes nothing ---------------------------------------------------------------


def test_a_non_json_value_is_a_type_error_naming_the_key_and_the_type(make_store: Any) -> None:
    store = make_store()
    with pytest.raises(TypeError, match=r"'k'.* is a set, which is not JSON"):
        store.set("k", {1, 2}, "x")
    with pytest.raises(TypeError, match=r"'k'.* is a dict"):
        store.set("k", {"inner": object()}, "x")
    with pytest.raises(TypeError, match="state keys are str"):
        store.set(5, 1, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="action_id"):
        store.delete("k", 5)  # type: ignore[arg-type]
    assert store.snapshot() == {} and store.transition_count() == 0


def test_keys_and_values_over_the_limits_are_refused(make_store: Any) -> None:
    store = make_store(max_key_bytes=8, max_value_bytes=16)
    store.set("ok", 1, "x")
    with pytest.raises(KeyTooLarge, match="max_key_bytes=8"):
        store.set("123456789", 1, "x")
    with pytest.raises(KeyTooLarge):
        store.set("☃☃☃", 1, "x")  # 3 characters, 9 bytes
    with pytest.raises(ValueTooLarge, match="max_value_bytes=16"):
        store.set("ok", "x" * 20, "x")
    with pytest.raises(ValueTooLarge):
        store.replace_all({"a": "x" * 20})
    assert store.get("123456789") is None
    assert store.snapshot() == {"ok": 1} and store.transition_count() == 1


def test_a_full_store_raises_and_changes_nothing(make_store: Any) -> None:
    store = make_store(max_keys=3, capacity_bytes=1024)
    for key in "abc":
        store.set(key, 1, "x")
    with pytest.raises(StateFull, match="maximum of 3 keys") as caught:
        store.set("d", 1, "x")
    assert isinstance(caught.value, MemoryError)
    store.set("a", 2, "x")  # replacing a key in a full store is fine
    with pytest.raises(StateFull, match="arena bytes"):
        store.set("b", "x" * 2000, "x")
    assert store.snapshot() == {"a": 2, "b": 1, "c": 1} and store.transition_count() == 4
    assert_whole(store)


# ---- handles ---------------------------------------------------------------------------------


def test_pickles_by_name_and_reattaches(make_store: Any) -> None:
    store = make_store(max_key_bytes=100)
    copy = pickle.loads(pickle.dumps(store))
    try:
        copy.set("from copy", [1], "x")
        assert store.get("from copy") == [1] and copy.max_key_bytes == 100
    finally:
        copy.close()
    assert os.path.exists("/dev/shm/" + store.name[1:])


def test_a_closed_store_says_so(make_store: Any) -> None:
    store = make_store()
    other = StateStore.attach(store.name)
    other.close()
    for use in (lambda: other.get("k"), lambda: other.set("k", 1, "x"), other.keys):
        with pytest.raises(SegmentClosed, match="closed"):
            use()
    assert store.get("k") is None  # the creator's handle is unaffected


def test_attach_refuses_a_corrupt_table(make_store: Any) -> None:
    store = make_store()
    store._segment.region.store(TABLE, 0)  # the table's magic word
    with pytest.raises(SegmentCorrupt, match="cleanup"):
        StateStore.attach(store.name)


def test_bad_geometry_is_refused() -> None:
    for bad in (dict(max_keys=0), dict(capacity_bytes=10), dict(max_key_bytes=0),
                dict(transition_log_bytes=True)):
        with pytest.raises(ValueError):
            StateStore(**bad)


# ---- the journal -------------------------------------------------------------------------------


def test_a_durable_store_reopens_with_the_same_map(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    with StateStore.durable(path, **SMALL) as store:
        store.set("a", {"n": 1}, "x")
        store.set("b", 2, "x")
        store.set("a", {"n": 3}, "x")  # last write wins
        store.delete("b", "x")
        store.set("ttl", 1, "x", ttl=3600)
        with store.transaction() as tx:
            tx.set("t1", 1)
            tx.set("t2", 2)
        store.sync()
        expected = store.snapshot()
    with StateStore(journal=path, **SMALL) as reopened:
        assert reopened.snapshot() == expected
        assert reopened.transition_count() == 0
        reopened.set("more", 1, "x")
    with StateStore(journal=path, **SMALL) as again:
        assert again.snapshot() == {**expected, "more": 1}


def test_replay_honours_ttls(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    with StateStore(journal=path, **SMALL) as store:
        store.set("expired", 1, "x", ttl=0)
        store.set("alive", 2, "x", ttl=3600)
    with StateStore(journal=path, **SMALL) as reopened:
        assert reopened.snapshot() == {"alive": 2}
        assert reopened.reap_expired(time.time() + 7200) == ["alive"]


def test_malformed_journal_lines_are_skipped_with_a_warning_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    with StateStore(journal=path, **SMALL) as store:
        for key in "abcd":
            store.set(key, key, "x")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = b"not json at all\n"
    lines[1] = lines[1].replace(b'"b"', b'"B"')          # JSON still, CRC no longer matches
    lines[2] = lines[2][:30] + b"\n"                      # truncated
    path.write_bytes(b"".join(lines) + b'{"crc":"00000000","rec":{}}\n')
    with pytest.warns(StateJournalWarning) as caught:
        reopened = StateStore(journal=path, **SMALL)
    with reopened:
        assert reopened.snapshot() == {"d": "d"}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4
    for number, reason in ((1, "not a journal record"), (2, "CRC mismatch"),
                           (3, "not a journal record"), (5, "CRC mismatch")):
        assert any(f"{path}:{number}: " in m and reason in m for m in messages), messages


def test_compaction_rewrites_the_journal_as_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    with StateStore(journal=path, **SMALL) as store:
        for i in range(20):
            store.set("k", i, "x")
        store.set("other", 1, "x")
        assert len(path.read_bytes().splitlines()) == 21
        store.compact()
        records = [orjson.loads(line)["rec"] for line in path.read_bytes().splitlines()]
        assert [(r["key"], r["value"]) for r in records] == [("k", 19), ("other", 1)]
        store.replace_all({"fresh": True})  # restore and replace_all compact too
        assert len(path.read_bytes().splitlines()) == 1
        assert store.journal_path == str(path)
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def write_through_another_process(store: StateStore, key: str, done: Any) -> None:
    store.set(key, os.getpid(), "child")
    done.set()


def test_other_processes_journal_into_the_same_file_after_a_compaction(
        tmp_path: Path, mp_context: Any) -> None:
    path = tmp_path / "state.jsonl"
    with StateStore(journal=path, **SMALL) as store:
        store.set("parent", 1, "x")
        store.compact()  # a new file: the child must append to it, not to the old one
        done = mp_context.Event()
        child = mp_context.Process(target=write_through_another_process,
                                   args=(store, "child", done))
        child.start()
        assert done.wait(60)
        child.join(60)
        store.set("parent", 2, "x")
    with StateStore(journal=path, **SMALL) as reopened:
        assert reopened.snapshot() == {"child": child.pid, "parent": 2}


# ---- a model of the whole store ----------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "d", "é"])
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


class StoreModel(RuleBasedStateMachine):
    """Every operation against a dict and a list of transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.store = StateStore(max_keys=8, capacity_bytes=1 << 14, transition_log_bytes=1 << 16)
        self.model: dict[str, Any] = {}
        self.log: list[tuple[str, Any, Any, str]] = []
        self.saved: list[tuple[dict[str, Any], int]] = []

    def teardown(self) -> None:
        self.store.close()

    def record(self, key: str, new: Any, action: str, present: bool = True) -> None:
        self.log.append((key, self.model.get(key), new if present else None, action))

    @rule(key=_keys, value=_values)
    def set(self, key: str, value: Any) -> None:
        transition = self.store.set(key, value, "set")
        assert transition.old_value == self.model.get(key)
        self.record(key, value, "set")
        self.model[key] = value

    @rule(key=_keys)
    def delete(self, key: str) -> None:
        transition = self.store.delete(key, "del")
        assert (transition is None) == (key not in self.model)
        if key in self.model:
            self.record(key, None, "del", present=False)
            del self.model[key]

    @rule(writes=st.lists(st.tuples(_keys, st.none() | _values), max_size=4), fail=st.booleans())
    def transaction(self, writes: list[tuple[str, Any]], fail: bool) -> None:
        try:
            with self.store.transaction("tx") as tx:
                for key, value in writes:
                    if value is None:
                        tx.delete(key)
                    else:
                        tx.set(key, value)
                if fail:
                    raise LookupError("abort")
        except LookupError:
            return
        final = dict(writes)  # the last write to each key, in first-write order
        for key in dict.fromkeys(k for k, _ in writes):
            if final[key] is None:
                if key in self.model:
                    self.record(key, None, "tx", present=False)
                    del self.model[key]
            else:
                self.record(key, final[key], "tx")
                self.model[key] = final[key]

    @rule(key=_keys, value=_values, stale=st.booleans())
    def compare_and_set(self, key: str, value: Any, stale: bool) -> None:
        version = self.store.version(key) + (1 if stale else 0)
        assert self.store.compare_and_set(key, version, value, "cas") == (not stale)
        if not stale:
            self.record(key, value, "cas")
            self.model[key] = value

    @rule()
    def save(self) -> None:
        self.saved.append((self.store.snapshot(), self.store.transition_count()))

    @precondition(lambda self: self.saved)
    @rule(pick=st.integers(min_value=0))
    def restore(self, pick: int) -> None:
        snapshot, count = self.saved[pick % len(self.saved)]
        if count > self.store.transition_count():
            return
        self.store.restore(snapshot, count)  # CAR: the map back, the log cut to `count`
        self.model, self.log = dict(snapshot), self.log[:count]

    @rule(snapshot=st.dictionaries(_keys, _values, max_size=4))
    def replace_all(self, snapshot: dict[str, Any]) -> None:
        self.store.replace_all(snapshot)
        self.model, self.log, self.saved = dict(snapshot), [], []

    @invariant()
    def matches_the_model(self) -> None:
        assert self.store.snapshot() == self.model
        for key in ("a", "é", "z"):
            assert self.store.get(key) == self.model.get(key)
        seen = [(t.key, t.old_value, t.new_value, t.action_id) for t in self.store.transitions()]
        assert seen == self.log
        assert self.store.statistics().keys == len(self.model)
        assert_whole(self.store)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


# ---- across processes (fork, forkserver, spawn) ---------------------------------------------------


def increment_with_cas(store: StateStore, times: int) -> None:
    for _ in range(times):
        store.update("counter", lambda n: n + 1, "inc")


def test_processes_incrementing_with_compare_and_set_lose_no_update(
        make_store: Any, mp_context: Any) -> None:
    store = make_store()
    store.set("counter", 0, "init")
    procs = [mp_context.Process(target=increment_with_cas, args=(store, 150)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert store.get("counter") == 600
    assert store.transition_count() == 601


READER_KEYS = 16


def self_checking_value(key: str, generation: int) -> dict[str, Any]:
    return {"key": key, "gen": generation, "pad": key[-1] * (generation % 700)}


def write_generations(store: StateStore, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    for generation in range(rounds):
        key = f"key-{rng.randrange(READER_KEYS)}"
        # one writer owns the pair, so pair generations only grow and "b >= a" is the check
        # (with two pair writers a reader could see one's a, then the other's older b)
        if seed == 0 and rng.random() < 0.2:
            with store.transaction("pair") as tx:  # a pair that must be seen together
                tx.set("pair-a", generation)
                tx.set("pair-b", generation)
        else:
            store.set(key, self_checking_value(key, generation), "w")


def read_and_check(store: StateStore, stop: Any, report: Any) -> None:
    problems, reads = [], 0
    report.put("reading")
    while not stop.is_set() and not problems:
        for i in range(READER_KEYS):
            key = f"key-{i}"
            value = store.get(key)
            reads += 1
            if value is not None and value != self_checking_value(key, value.get("gen", -1)):
                problems.append(f"{key}: {value!r:.80}")
        a = store.get_or("pair-a", -1)
        b = store.get_or("pair-b", -1)
        if b < a:  # read a then b: b must be at least as new (all-or-nothing batches)
            problems.append(f"pair seen half-written: a={a} b={b}")
    report.put((reads, problems))


def test_readers_never_see_a_torn_foreign_or_half_batch_value(make_store: Any, mp_context: Any) -> None:
    store = make_store(capacity_bytes=1 << 18)
    stop, report = mp_context.Event(), mp_context.Queue()
    readers = [mp_context.Process(target=read_and_check, args=(store, stop, report))
               for _ in range(2)]
    writers = [mp_context.Process(target=write_generations, args=(store, 3000, seed))
               for seed in range(2)]
    for p in readers:
        p.start()
    assert [report.get(timeout=60) for _ in readers] == ["reading", "reading"]
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
    stop.set()
    results = [report.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(60)
    assert [p.exitcode for p in writers + readers] == [0, 0, 0, 0]
    for reads, problems in results:
        assert problems == [] and reads > 0
    assert_whole(store)


def write_until_killed(store: StateStore, started: Any, seed: int) -> None:
    rng = random.Random(seed)
    started.set()
    generation = 0
    while True:
        generation += 1
        key = f"key-{rng.randrange(READER_KEYS)}"
        if rng.random() < 0.3:
            with store.transaction("burst") as tx:
                for i in range(rng.randrange(1, 6)):
                    other = f"key-{rng.randrange(READER_KEYS)}"
                    tx.set(other, self_checking_value(other, generation + i))
                tx.set("pair-a", generation)
                tx.set("pair-b", generation)
        elif rng.random() < 0.1:
            store.delete(key, "d")
        else:
            store.set(key, self_checking_value(key, generation), "w")


KILL_ROUNDS = {"fork": 60, "forkserver": 15, "spawn": 8}


def test_sigkill_mid_write_never_corrupts_and_the_lock_recovers(
        make_store: Any, mp_context: Any) -> None:
    """ROBUSTNESS R3, repeated: old or new values only, lock back within 1 s, table whole."""
    store = make_store(capacity_bytes=1 << 18, transition_log_bytes=1 << 12)
    rng = random.Random(7)
    for round_ in range(KILL_ROUNDS[mp_context.get_start_method()]):
        started = mp_context.Event()
        writer = mp_context.Process(target=write_until_killed, args=(store, started, round_))
        writer.start()
        assert started.wait(60)
        time.sleep(rng.uniform(0.0, 0.01))
        kill(writer.pid)
        writer.join(60)
        store._lock.acquire(timeout=1.0)
        try:
            assert store._table.check() == 0
        finally:
            store._lock.release()
        for i in range(READER_KEYS):
            key = f"key-{i}"
            value = store.get(key)
            assert value is None or value == self_checking_value(key, value["gen"])
        assert store.get_or("pair-a", -1) == store.get_or("pair-b", -1)
    stats = store.statistics()
    assert stats.lock_recoveries >= stats.writer_recoveries
    if mp_context.get_start_method() == "fork":  # 60 kills: some land inside a batch
        assert stats.writer_recoveries > 0


def hold_the_state_lock(store: StateStore, ready: Any) -> None:
    store._lock.acquire()
    ready.set()
    while True:
        signal.pause()


def test_reads_go_on_while_another_process_holds_the_lock_and_a_dead_holder_is_recovered(make_store: Any, mp_context: Any) -> None:
    store = make_store()
    store.set("k", 1, "x")
    ready = mp_context.Event()
    holder = mp_context.Process(target=hold_the_state_lock, args=(store, ready))
    holder.start()
    assert ready.wait(60)
    # reads take no lock: they go on while another process holds the write lock
    assert store.get("k") == 1 and store.get_with_version("k")[0] == 1 and store.exists("k")
    kill(holder.pid)
    holder.join()
    store._lock.acquire(timeout=1.0)  # the next acquirer proceeds within 1 s
    store._lock.release()
    store.set("k", 2, "x")
    assert store.get("k") == 2 and store.statistics().lock_recoveries == 1


def test_a_read_that_finds_a_bucket_busy_reads_again_under_the_lock(make_store: Any) -> None:
    """The native read gives up on a bucket a writer keeps busy (maybe a dead one); the
    store then takes the lock, which waits for the writer or repairs its batch."""
    store = make_store()
    store.set("k", "old", "x")
    real_read = store._read
    calls = []

    def busy_once(key: str) -> bytes | None:
        calls.append(key)
        if len(calls) == 1:
            raise BlockingIOError("a writer holds this key's bucket")
        assert store._lock.statistics().owner_pid == os.getpid()  # read under the lock
        return real_read(key)

    store._read = busy_once  # type: ignore[method-assign]
    assert store.get("k") == "old" and calls == ["k", "k"]


def test_transitions_carry_the_version_they_left(make_store: Any) -> None:
    """A writer learns the version its own write left (to undo exactly that write later)
    from the transition, without a second read that another writer could race."""
    store = make_store()
    first = store.set("k", 1, "a1")
    assert first.version == store.version("k") > 0
    batch = store.apply({"k": 2, "j": 3}, "a2").transitions
    assert [t.version for t in batch] == [store.version("k"), store.version("j")]
    assert batch[0].version > first.version
    assert [t.version for t in store.transitions()] == [first.version, *(t.version for t in batch)]
