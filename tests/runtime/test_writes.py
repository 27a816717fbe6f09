"""A proposal's writes and their rollback: own writes undone, others' writes kept and
reported, in a shared store and in an agent's overlay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carmp import DELETE, AgentContext, StateStore
from carmp.runtime.writes import OverlayWrites, StoreWrites, writes_for


@pytest.fixture
def store() -> Iterator[StateStore]:
    with StateStore(max_keys=64, capacity_bytes=1 << 16, transition_log_bytes=1 << 14) as made:
        yield made


def test_rollback_restores_values_and_removes_created_keys(store: StateStore) -> None:
    store.set("old", {"v": 1}, "setup")
    store.set("null", None, "setup")
    writes = StoreWrites(store, "p1")
    writes.write("old", {"v": 2}, "a1")
    writes.write("old", {"v": 3}, "a2")                   # twice: the first original counts
    writes.write("new", [1], "a1")
    writes.write("null", 5, "a1")
    rollback = writes.rollback()
    assert rollback.restored == ("old", "new", "null") and rollback.conflicts == ()
    assert store.snapshot() == {"old": {"v": 1}, "null": None}
    assert [t.action_id for t in store.transitions()[-3:]] == ["rollback:p1"] * 3
    assert writes.rollback().restored == ()               # nothing left to undo


def test_rollback_leaves_keys_others_changed_since_and_reports_them(store: StateStore) -> None:
    store.set("shared", 0, "setup")
    writes = StoreWrites(store, "p1")
    writes.write("shared", 1, "a1")
    writes.write("mine", 1, "a1")
    writes.write("gone", 1, "a1")
    store.set("shared", 2, "other-agent")                 # same key, someone else's write
    store.delete("gone", "other-agent")
    rollback = writes.rollback()
    assert rollback.restored == ("mine",) and set(rollback.conflicts) == {"shared", "gone"}
    assert store.snapshot() == {"shared": 2}


def test_a_foreign_rewrite_of_the_same_value_still_counts_as_a_change(store: StateStore) -> None:
    writes = StoreWrites(store, "p1")
    writes.write("k", "v", "a1")
    store.set("k", "v", "other-agent")                    # a new version, the same bytes
    assert writes.rollback().conflicts == ("k",)
    assert store.get("k") == "v"


def test_overlay_rollback_restores_each_entry(store: StateStore) -> None:
    store.set("parent", "p", "setup")
    context = AgentContext("agent", store)
    context.set("had", 1)
    context.delete("parent")
    writes = writes_for(context, "p1")
    assert isinstance(writes, OverlayWrites)
    for key in ("had", "parent", "fresh"):
        writes.write(key, "proposal", "a1")
    rollback = writes.rollback()
    assert rollback.restored == ("had", "parent", "fresh") and rollback.conflicts == ()
    assert context.changes() == {"had": 1, "parent": DELETE}
    assert context.get("parent") is None and context.get("fresh") is None
    assert store.snapshot() == {"parent": "p"}              # the parent never saw any of it


def test_overlay_rollback_keeps_entries_the_agent_changed_again(store: StateStore) -> None:
    context = AgentContext("agent", store)
    writes = writes_for(context, "p1")
    writes.write("k", 1, "a1")
    writes.write("j", 1, "a1")
    context.set("k", 2)                                   # outside the proposal
    rollback = writes.rollback()
    assert rollback.restored == ("j",) and rollback.conflicts == ("k",)
    assert context.changes() == {"k": 2}
