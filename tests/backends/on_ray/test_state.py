"""The state store on Ray: the StateStore surface over 1 and 3 shard actors, cross-shard
batches all-or-nothing, no lost updates under concurrency, journal recovery of a killed
shard, idempotent resends across a restart, and a clean shutdown."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from carmp import DELETE, KeyTooLarge, StateFull, StateStore, ValueTooLarge
from carmp.backends.on_ray.state import shard_index, start_state
from carmp.errors import BackendUnsupported
from carmp.shared.segment import list_segment_names, peek_header

pytestmark = pytest.mark.ray


@pytest.fixture(params=[1, 3], ids=["1-shard", "3-shards"])
def store(request: pytest.FixtureRequest, ray_session: Any, tmp_path: Path) -> Iterator[Any]:
    state = start_state(str(tmp_path / "journals"), shards=request.param)
    yield state
    state.close_host()


def keys_on_distinct_shards(shards: int, count: int) -> list[str]:
    """`count` keys, each on a different shard (when there are that many shards)."""
    found: dict[int, str] = {}
    number = 0
    while len(found) < min(count, shards):
        key = f"key-{number}"
        found.setdefault(shard_index(key, shards), key)
        number += 1
    return list(found.values())


def shard_pids(state: Any, ray: Any) -> list[int]:
    return [ray.get(shard.handle.pid.remote()) for shard in state._shards]


def kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=30)


# ---- the surface --------------------------------------------------------------------


def test_reads_and_writes_behave_as_the_local_store(store: Any) -> None:
    transition = store.set("a", {"n": 1}, "w1")
    assert (transition.key, transition.old_value, transition.new_value, transition.action_id) \
        == ("a", None, {"n": 1}, "w1")
    store.set("b", None, "w2")
    assert store.get("a") == {"n": 1}
    assert store.get("missing") is None
    assert store.get_or("missing", 7) == 7
    assert store.get_or("b", 7) is None  # a stored null is a value
    value, version = store.get_with_version("a")
    assert value == {"n": 1} and version == store.version("a") != 0
    assert store.get_with_version("missing") == (None, 0)
    assert store.exists("a") and not store.exists("missing")
    assert store.keys() == ["a", "b"]
    assert store.snapshot() == {"a": {"n": 1}, "b": None}
    removed = store.delete("a", "w3")
    assert removed is not None and removed.old_value == {"n": 1} and removed.new_value is None
    assert store.delete("a", "w4") is None
    assert store.keys() == ["b"]
    assert store.name.startswith("ray-state-")
    assert store.journal_path is not None and os.path.isdir(store.journal_path)
    store.close()  # a client owns nothing: the store still answers
    assert store.get("b") is None and store.exists("b")


def test_bad_keys_and_values_fail_with_the_local_error_types(store: Any) -> None:
    with pytest.raises(KeyTooLarge):
        store.set("k" * 2000, 1, "w")
    with pytest.raises(ValueTooLarge):
        store.set("k", "x" * (2 * 1024 * 1024), "w")
    with pytest.raises(TypeError, match="not JSON"):
        store.set("k", object(), "w")
    with pytest.raises(TypeError):
        store.get(3)
    with pytest.raises(ValueError, match="ttl"):
        store.set("k", 1, "w", ttl=-1)
    assert store.keys() == []
    assert isinstance(store, StateStore)


def test_a_full_shard_raises_state_full(ray_session: Any, tmp_path: Path) -> None:
    state = start_state(str(tmp_path), shards=1, max_keys=16)
    try:
        with pytest.raises(StateFull, match="max_keys"):
            for number in range(32):
                state.set(f"k{number}", number, "fill")
    finally:
        state.close_host()


def test_compare_and_set_and_update(store: Any) -> None:
    assert store.compare_and_set("c", 0, 1, "create")
    assert not store.compare_and_set("c", 0, 2, "again")
    version = store.version("c")
    assert store.compare_and_set("c", version, 3)
    assert not store.compare_and_set("c", version, 4)
    assert store.get("c") == 3
    transition = store.update("c", lambda n: n + 1)
    assert (transition.old_value, transition.new_value) == (3, 4)
    assert store.update("fresh", lambda n: (n or 0) + 1).new_value == 1


def test_apply_with_deletes_ttls_and_expected_versions(store: Any) -> None:
    keys = keys_on_distinct_shards(3, 3)
    store.set(keys[0], "old", "w")
    outcome = store.apply({keys[0]: DELETE, keys[1]: 1, keys[2]: 2}, "batch",
                          ttls={keys[2]: 1000.0})
    assert outcome.applied and outcome.changed == ()
    assert sorted(t.key for t in outcome.transitions) == sorted(keys)
    assert store.snapshot() == {keys[1]: 1, keys[2]: 2}
    version = store.version(keys[1])
    refused = store.apply({keys[1]: 10, keys[2]: 20}, "stale",
                          expected_versions={keys[1]: version, keys[2]: 999},
                          abort_on_change=True)
    assert not refused.applied and refused.changed == (keys[2],) and refused.transitions == []
    assert store.snapshot() == {keys[1]: 1, keys[2]: 2}
    reported = store.apply({keys[1]: 10}, "told", expected_versions={keys[2]: 999})
    assert reported.applied and reported.changed == (keys[2],)
    assert store.reap_expired(now=time.time() + 2000) == [keys[2]]
    assert store.keys() == [keys[1]]


def test_a_transaction_applies_whole_or_not_at_all(store: Any) -> None:
    keys = keys_on_distinct_shards(3, 3)
    with store.transaction("tx") as tx:
        tx.set(keys[0], 1)
        tx.set(keys[1], 2, ttl=1000)
        tx.delete(keys[2])
        assert tx.get(keys[0]) == 1 and store.get(keys[0]) is None
    assert store.snapshot() == {keys[0]: 1, keys[1]: 2}
    assert sorted(t.key for t in tx.transitions) == sorted(keys[:2])
    with pytest.raises(RuntimeError), store.transaction("broken") as tx:
        tx.set(keys[0], 100)
        tx.set(keys[2], 100)
        raise RuntimeError("the block failed")
    assert store.snapshot() == {keys[0]: 1, keys[1]: 2}


def test_a_cross_shard_batch_with_one_stale_version_applies_nothing(ray_session: Any,
                                                                     tmp_path: Path) -> None:
    state = start_state(str(tmp_path), shards=3)
    try:
        keys = keys_on_distinct_shards(3, 3)
        assert len({shard_index(key, 3) for key in keys}) == 3
        for key in keys:
            state.set(key, 0, "init")
        versions = {key: state.version(key) for key in keys}
        state.set(keys[1], 5, "someone else")  # keys[1]'s version moves on
        outcome = state.apply(dict.fromkeys(keys, 1), "all", expected_versions=versions,
                              abort_on_change=True)
        assert not outcome.applied and outcome.changed == (keys[1],)
        assert state.snapshot() == {keys[0]: 0, keys[1]: 5, keys[2]: 0}
        # the refused batch left no lock behind: the next writers go straight through
        versions = {key: state.version(key) for key in keys}
        assert state.apply(dict.fromkeys(keys, 2), "all", expected_versions=versions,
                           abort_on_change=True).applied
        assert state.snapshot() == dict.fromkeys(keys, 2)
    finally:
        state.close_host()


def test_transitions_hide_the_bookkeeping_and_statistics_sum_the_shards(store: Any) -> None:
    start = store.transition_count()
    store.set("x", 1, "a1")
    store.set("y", 2, "a2")
    store.delete("x", "a3")
    transitions = store.transitions()
    assert [(t.key, t.action_id) for t in transitions] == [("x", "a1"), ("y", "a2"),
                                                           ("x", "a3")]
    assert all(not t.key.startswith("carmp.") for t in transitions)
    assert store.transition_count() > start
    statistics = store.statistics()
    assert statistics.keys == 1 and statistics.max_keys == len(store._shards) * store.max_keys
    assert statistics.transitions == store.transition_count()
    if len(store._shards) == 1:
        assert [t.key for t in store.transitions_since(start)] == ["x", "y", "x"]
        count = store.transition_count()
        store.set("z", 3, "a4")
        assert [t.key for t in store.transitions_since(count)] == ["z"]
    else:
        with pytest.raises(BackendUnsupported, match="shards=1"):
            store.transitions_since(start)


def test_restore_and_replace_all(store: Any) -> None:
    store.set("keep", 1, "a")
    snapshot, count = store.snapshot(), store.transition_count()
    store.set("keep", 2, "b")
    store.set("drop", 3, "c")
    if len(store._shards) == 1:
        store.restore(snapshot, count)
        assert store.snapshot() == {"keep": 1}
        assert [t.action_id for t in store.transitions()] == ["a"]
    else:
        with pytest.raises(BackendUnsupported, match="shards=1"):
            store.restore(snapshot, count)
    keys = keys_on_distinct_shards(3, 3)
    store.replace_all({keys[0]: "r0", keys[2]: "r2"})
    assert store.snapshot() == {keys[0]: "r0", keys[2]: "r2"}
    assert store.transitions() == []
    store.set(keys[1], "after", "w")  # the shards still take writes: no lock was left
    assert store.get(keys[1]) == "after"


def test_sync_and_compact_keep_one_journal_per_shard(store: Any) -> None:
    store.set("j", [1, 2], "w")
    store.sync()
    store.compact()
    journals = sorted(os.listdir(store.journal_path))
    assert journals == [f"state-{i}.journal" for i in range(len(store._shards))]
    text = b"".join((Path(store.journal_path) / name).read_bytes() for name in journals)
    assert b'"key":"j","value":[1,2]' in text


# ---- many writers, failures, travel ------------------------------------------------


def test_concurrent_updates_from_ray_tasks_lose_nothing(store: Any, ray_session: Any) -> None:
    ray = ray_session
    keys = keys_on_distinct_shards(3, 2)

    @ray.remote(num_cpus=0)
    def bump(state: Any, rounds: int) -> None:
        for _ in range(rounds):
            state.update("counter", lambda n: (n or 0) + 1, "bump")
            while True:  # both keys at once: two shards when there are three
                (a, version_a), (b, version_b) = (state.get_with_version(key) for key in keys)
                if state.apply({keys[0]: (a or 0) + 1, keys[1]: (b or 0) + 1}, "pair",
                               expected_versions={keys[0]: version_a, keys[1]: version_b},
                               abort_on_change=True).applied:
                    break

    ray.get([bump.remote(store, 25) for _ in range(4)])
    assert store.get("counter") == 100
    assert store.get(keys[0]) == store.get(keys[1]) == 100


def test_a_client_pickled_into_a_task_shares_the_world(store: Any, ray_session: Any) -> None:
    ray = ray_session
    assert len(pickle.dumps(store)) < 4096
    store.set("from-driver", 1, "driver")

    @ray.remote(num_cpus=0)
    def visit(state: Any) -> Any:
        state.set("from-task", state.get("from-driver") + 1, "task")
        return state.keys()

    assert ray.get(visit.remote(store)) == ["from-driver", "from-task"]
    assert store.get("from-task") == 2


def test_a_killed_shard_restarts_from_its_journal(store: Any, ray_session: Any) -> None:
    keys = keys_on_distinct_shards(len(store._shards), 3)
    for number, key in enumerate(keys):
        store.set(key, number, "before")
    store.set("versioned", "v1", "before")
    stale_version = store.version("versioned")
    with store.transaction("tx") as tx:
        for key in keys:
            tx.set(key, f"tx-{key}")
    before = shard_pids(store, ray_session)
    for pid in before:
        kill_and_wait(pid)
    assert store.snapshot() == {**{key: f"tx-{key}" for key in keys}, "versioned": "v1"}
    assert not set(shard_pids(store, ray_session)) & set(before)
    # versions from before the restart name no write of the new incarnation: a restart
    # renumbers the keys, yet versions still only grow
    assert store.version("versioned") > stale_version
    assert not store.compare_and_set("versioned", stale_version, "v2")
    assert store.compare_and_set("versioned", store.version("versioned"), "v2")
    # the dead incarnations' segments were removed by their successors
    assert not [name for name in list_segment_names()
                if (header := peek_header(name)) is not None and header.creator_pid in before]


def test_a_resent_mutation_is_not_applied_twice_after_a_restart(ray_session: Any,
                                                                  tmp_path: Path) -> None:
    ray = ray_session
    state = start_state(str(tmp_path), shards=1)
    try:
        state.set("counter", 1, "init")
        handle = state._shards[0].handle
        ops = [("counter", b"2", 0)]
        expected = {"counter": state.version("counter")}
        first = ray.get(handle.call.remote("apply", (ops, "cas", expected, True), {}, "w0-1"))
        assert first[0] and first[1].applied
        kill_and_wait(ray.get(handle.pid.remote()))
        assert state.keys() == ["counter"]  # the client waits for the restart
        again = ray.get(handle.call.remote("apply", (ops, "cas", expected, True), {}, "w0-1"))
        assert again[0] and again[1].applied  # answered from the journaled record
        assert [t.new_value for t in again[1].transitions] == [2]
        assert state.get("counter") == 2
        fresh = ray.get(handle.call.remote("apply", (ops, "cas", expected, True), {}, "w0-2"))
        assert fresh[0] and not fresh[1].applied  # a new key is a new mutation
        assert "carmp.shard/idem/w0" not in state.keys()
    finally:
        state.close_host()


def test_close_host_leaves_no_actor_processes_or_segments(ray_session: Any,
                                                             tmp_path: Path) -> None:
    state = start_state(str(tmp_path), shards=3)
    state.set("k", 1, "w")
    pids = shard_pids(state, ray_session)
    names = [name for name in list_segment_names()
             if (header := peek_header(name)) is not None and header.creator_pid in pids]
    assert len(names) == 3
    state.close_host()
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids
                                     if psutil.pid_exists(pid)], timeout=30)
    assert alive == []
    assert not set(names) & set(list_segment_names())


def test_a_prepared_lock_of_a_vanished_client_lapses(ray_session: Any, tmp_path: Path) -> None:
    ray = ray_session
    state = start_state(str(tmp_path), shards=1)
    try:
        state.set("k", 1, "w")
        version = state.version("k")
        handle = state._shards[0].handle
        # a client prepared a cross-shard batch on "k", then died before its commit
        assert ray.get(handle.call.remote(
            "prepare", ("txn-1", ["k"], {"k": version}, True), {}, None))[1][0] == "prepared"
        state.set("k", 2, "next writer")  # waits while the lock holds, then goes through
        assert state.get("k") == 2
        # the dead client's commit, arriving late, finds "k" moved on and applies nothing
        late = ray.get(handle.call.remote(
            "commit", ("txn-1", [("k", b"3", 0)], "late", {"k": version}, True), {}, None))
        assert late == (True, "lost")
        assert state.get("k") == 2
    finally:
        state.close_host()
