"""AgentContext: CAR's overlay semantics, tombstones, lost-update detection and the merge
policies, finding the current context, and conflicts between agents in other processes.
Overlays merge into a shared-memory store and into a Ray world's store alike."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from carmp import (
    DELETE,
    AgentContext,
    MergeConflict,
    StateStore,
    TaskScope,
    current_context,
)


@pytest.fixture
def local_parent() -> Iterator[StateStore]:
    """A shared-memory store, for tests of the overlay alone and for other processes."""
    with StateStore(max_keys=64, capacity_bytes=1 << 16, transition_log_bytes=1 << 14) as store:
        yield store


@pytest.fixture
def parent(backend: str, request: pytest.FixtureRequest) -> StateStore:
    """The shared store an overlay merges into: a shared-memory one, or a Ray world's."""
    if backend == "ray":
        return request.getfixturevalue("ray_world").state  # type: ignore[no-any-return]
    return request.getfixturevalue("local_parent")  # type: ignore[no-any-return]


# ---- CAR's behaviours (CAR-SPEC 3, 20-22) -------------------------------------------------


def test_reads_fall_through_and_writes_stay_local_until_merged(parent: StateStore) -> None:
    parent.set("k", 1, "setup")
    parent.set("only_parent", "p", "setup")
    ctx = AgentContext("agent-1", parent)
    ctx.set("k", 2)
    assert ctx.get("k") == 2 and parent.get("k") == 1
    assert ctx.get("only_parent") == "p" and ctx.get("missing") is None
    report = ctx.merge_to_parent()
    assert parent.get("k") == 2 and report.merged == ("k",) and report.conflicts == ()
    assert [t.action_id for t in report.transitions] == ["merge:agent-1"]
    assert parent.transitions()[-1].action_id == "merge:agent-1"
    assert ctx.changes() == {}  # the overlay starts afresh after a merge


def test_only_succeeding_agents_overlays_reach_the_parent(parent: StateStore) -> None:
    """An isolated swarm merges the agents that succeeded and drops the rest."""
    parent.set("shared", 0, "setup")
    contexts = [AgentContext(f"agent-{i}", parent) for i in range(3)]
    for i, ctx in enumerate(contexts):
        ctx.set(f"out-{i}", i)
    succeeded = [True, False, True]
    for ctx, ok in zip(contexts, succeeded):
        if ok:
            ctx.merge_to_parent()
        else:
            ctx.discard()
    assert parent.snapshot() == {"shared": 0, "out-0": 0, "out-2": 2}


def test_task_scope_names_the_agent_only_inside_a_scope(local_parent: StateStore) -> None:
    ctx = AgentContext("scoped", local_parent)
    assert TaskScope.agent_name() is None and current_context() is None
    assert TaskScope.try_with(lambda c: c.agent_name) is None

    def deep_inside_the_agent() -> str | None:
        found = current_context()
        assert found is ctx
        return TaskScope.agent_name()

    assert TaskScope.run(ctx, deep_inside_the_agent) == "scoped"
    assert TaskScope.agent_name() is None
    with ctx.scope():
        assert TaskScope.try_with(lambda c: c.agent_name) == "scoped"


def test_each_thread_and_task_sees_its_own_context(local_parent: StateStore) -> None:
    names: dict[str, str | None] = {}

    def agent(name: str) -> None:
        with AgentContext(name, local_parent).scope():
            threading.Event().wait(0.01)
            names[name] = TaskScope.agent_name()

    threads = [threading.Thread(target=agent, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert names == {f"t{i}": f"t{i}" for i in range(4)}

    async def task_name() -> str | None:
        await asyncio.sleep(0)
        return TaskScope.agent_name()

    async def both() -> list[str | None]:
        return list(await asyncio.gather(
            TaskScope.run_async(AgentContext("a", local_parent), task_name()),
            TaskScope.run_async(AgentContext("b", local_parent), task_name())))

    assert asyncio.run(both()) == ["a", "b"]


# ---- beyond CAR: tombstones, versions, conflicts ----------------------------------------------


def test_a_delete_is_a_tombstone_until_the_merge_deletes_in_the_parent(parent: StateStore) -> None:
    parent.set("k", 1, "setup")
    parent.set("kept", 2, "setup")
    ctx = AgentContext("deleter", parent)
    ctx.delete("k")
    ctx.set("new", 3)
    assert ctx.get("k") is None and not ctx.exists("k") and ctx.get_or("k", "gone") == "gone"
    assert ctx.keys() == ["kept", "new"] and parent.get("k") == 1
    assert ctx.changes() == {"k": DELETE, "new": 3}
    ctx.merge_to_parent()
    assert parent.snapshot() == {"kept": 2, "new": 3}
    ctx.delete("never-existed")
    assert ctx.merge_to_parent().transitions == []


def test_last_writer_wins_merges_and_reports_lost_updates(parent: StateStore) -> None:
    parent.set("counter", 10, "setup")
    parent.set("config", "v1", "setup")
    ctx = AgentContext("slow-agent", parent)
    ctx.set("counter", ctx.get("counter") + 1)   # read 10, write 11
    assert ctx.get("config") == "v1"               # read only
    parent.set("counter", 50, "fast-agent")        # someone else wins in between
    parent.set("config", "v2", "operator")
    report = ctx.merge_to_parent()                 # CAR's default: overwrite, but say so
    assert parent.get("counter") == 11
    assert report.conflicts == ("counter",) and report.stale_reads == ("config",)


def test_reject_merges_nothing_and_names_the_conflicting_keys(parent: StateStore) -> None:
    parent.set("a", 1, "setup")
    parent.set("b", 1, "setup")
    ctx = AgentContext("careful", parent, policy="reject")
    ctx.set("a", ctx.get("a") + 1)
    ctx.set("b", 5)                               # written blind: version taken at the write
    ctx.set("c", "new")
    parent.set("b", 2, "someone")
    count = parent.transition_count()
    with pytest.raises(MergeConflict, match="'b'") as caught:
        ctx.merge_to_parent()
    assert caught.value.keys == ("b",) and caught.value.agent_name == "careful"
    assert "last_writer_wins" in str(caught.value)
    assert parent.snapshot() == {"a": 1, "b": 2} and parent.transition_count() == count
    assert ctx.changes() == {"a": 2, "b": 5, "c": "new"}  # kept, to retry or discard
    report = ctx.merge_to_parent(policy="last_writer_wins")
    assert report.conflicts == ("b",) and parent.get("b") == 5


def test_a_key_created_elsewhere_after_the_overlay_saw_it_absent_conflicts(parent: StateStore) -> None:
    ctx = AgentContext("creator", parent, policy="reject")
    assert ctx.get("slot") is None
    ctx.set("slot", "mine")
    parent.set("slot", "theirs", "other")
    with pytest.raises(MergeConflict):
        ctx.merge_to_parent()


def test_bad_values_fail_at_set_naming_the_key(local_parent: StateStore) -> None:
    ctx = AgentContext("agent", local_parent)
    with pytest.raises(TypeError, match="'k'.*set"):
        ctx.set("k", {1})
    with pytest.raises(ValueError, match="merge policy"):
        AgentContext("agent", local_parent, policy="first_wins")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="merge policy"):
        ctx.merge_to_parent(policy="nope")  # type: ignore[arg-type]
    value = {"list": [1]}
    ctx.set("copy", value)
    value["list"].append(2)
    assert ctx.get("copy") == {"list": [1]}


# ---- agents in other processes ---------------------------------------------------------------


def agent_increments(parent: StateStore, name: str, have_read: Any, go: Any, report: Any) -> None:
    ctx = AgentContext(name, parent, policy="reject")
    with ctx.scope():
        current = current_context()
        assert current is not None
        current.set("counter", current.get("counter") + 1)
    have_read.set()
    go.wait(60)
    try:
        ctx.merge_to_parent()
        report.put((name, "merged", ()))
    except MergeConflict as conflict:
        report.put((name, "conflict", conflict.keys))


def test_agents_in_two_processes_detect_the_lost_update(local_parent: StateStore,
                                                        mp_context: Any) -> None:
    local_parent.set("counter", 0, "setup")
    report = mp_context.Queue()
    first_go, second_go = mp_context.Event(), mp_context.Event()
    agents = []
    for name, go in (("first", first_go), ("second", second_go)):
        have_read = mp_context.Event()
        agent = mp_context.Process(target=agent_increments,
                                   args=(local_parent, name, have_read, go, report))
        agent.start()
        agents.append((agent, have_read))
    for _, have_read in agents:
        assert have_read.wait(60)  # both read counter == 0 before either merges
    first_go.set()
    assert report.get(timeout=60) == ("first", "merged", ())
    second_go.set()
    assert report.get(timeout=60) == ("second", "conflict", ("counter",))
    for agent, _ in agents:
        agent.join(60)
    assert local_parent.get("counter") == 1
    assert [t.action_id for t in local_parent.transitions()] == ["setup", "merge:first"]
