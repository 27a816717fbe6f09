"""The concurrency gate at the merge barrier (CAR-SPEC 2.12, section 3 case 48): stale
generations fail closed, concurrent same-key writers merge in agent order, a broken
declared dependency aborts the whole merge. First on runs made in this process (exact
windows), then with agents in farm workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carmp.agents.gate import (
    CAUSAL_CASCADE,
    GATE_EVENT,
    STALE_GENERATION,
    TOOL_EFFECT_REORDERING,
    ConcurrencyControl,
    GateReport,
)
from carmp.agents.merge import merge_overlays
from carmp.agents.patterns.swarm import Swarm
from carmp.agents.types import AgentSpec
from carmp.errors import ConcurrencyAbort, InvalidPattern
from carmp.pool.farm import Farm
from carmp.runtime.infra import SharedInfra
from tests.agents.state_script import StateScript, overlay_run
from tests.conftest import make_farm


@pytest.fixture
def world() -> Iterator[SharedInfra]:
    with SharedInfra() as made:
        yield made


def gated(world: SharedInfra, *runs: object, depends_on: dict[str, list[str]] | None = None
          ) -> tuple[list[object], GateReport]:
    outcome = merge_overlays(world, runs, ConcurrencyControl(depends_on))  # type: ignore[arg-type]
    assert outcome.report is not None
    return list(outcome.runs), outcome.report


def audit(world: SharedInfra) -> dict[str, object]:
    return world.log.filter(kind=GATE_EVENT)[-1].data


# ---- the gate's decisions, on runs with exact windows ---------------------------------------


def test_concurrent_blind_writers_both_commit_in_batch_order(world: SharedInfra) -> None:
    """CAR case 48: overlapping windows, both write k, no dependency: both commit, in
    the batch's order whatever order they finished in: the last in it wins."""
    second = overlay_run(world.state, "second", (1, 4), writes={"k": "from second"})
    first = overlay_run(world.state, "first", (2, 3), writes={"k": "from first", "f": 1})
    runs, report = gated(world, first, second)
    assert world.state.get("k") == "from second" and world.state.get("f") == 1
    assert all(run.output.succeeded() for run in runs)  # type: ignore[attr-defined]
    assert report.merged == ("first", "second")
    assert report.serialised == {"k": ("first", "second")}
    assert [a.kind for a in report.anomalies] == [TOOL_EFFECT_REORDERING]
    assert not report.is_clean() and report.may_commit("second")
    assert report.anomaly_summary() == ("tool_effect_reordering: 'k' written concurrently by "
                                        "first, second: merged in that order, second last")
    assert [t.action_id for t in world.state.transitions()] == \
        ["merge:first", "merge:first", "merge:second"]
    assert audit(world)["serialised"] == {"k": ["first", "second"]}


def test_same_key_writers_one_after_the_other_are_no_anomaly(world: SharedInfra) -> None:
    first = overlay_run(world.state, "first", (1, 2), writes={"k": 1})
    second = overlay_run(world.state, "second", (3, 4), writes={"k": 2})
    _, report = gated(world, first, second)
    assert report.is_clean() and report.serialised == {}
    assert world.state.get("k") == 2


def test_a_stale_read_modify_write_fails_closed(world: SharedInfra) -> None:
    """Both read k at the same version and changed it: the first in order merges; the
    second's writes (all of them) are not merged and its output is marked errored."""
    world.state.set("k", 0, "setup")
    first = overlay_run(world.state, "first", (1, 4), reads=["k"], writes={"k": 1})
    second = overlay_run(world.state, "second", (2, 3), reads=["k"], writes={"k": 1, "s": 1})
    runs, report = gated(world, first, second)
    assert world.state.get("k") == 1 and not world.state.exists("s")
    rejected = runs[1].output  # type: ignore[attr-defined]
    assert not rejected.succeeded()
    assert rejected.error.startswith("concurrency gate: stale generation: second read ['k']")
    assert "but first changed them" in rejected.error
    assert runs[1].overlay is None  # type: ignore[attr-defined]
    assert report.merged == ("first",)
    assert report.rejection_reason("second") == rejected.error.removeprefix("concurrency gate: ")
    assert [a.kind for a in report.anomalies] == [STALE_GENERATION]


def test_a_writer_outside_the_batch_makes_a_read_modify_write_stale(world: SharedInfra) -> None:
    world.state.set("k", 0, "setup")
    run = overlay_run(world.state, "agent", (1, 2), reads=["k"], writes={"k": 1})
    world.state.set("k", 10, "someone else")
    runs, report = gated(world, run)
    assert world.state.get("k") == 10
    assert "a writer outside this merge" in (runs[0].output.error or "")  # type: ignore[attr-defined]


def test_a_blind_write_over_a_changed_key_is_not_stale(world: SharedInfra) -> None:
    """Only a key read before it was written can be a lost update."""
    world.state.set("k", 0, "setup")
    run = overlay_run(world.state, "agent", (1, 2), writes={"k": 1})
    world.state.set("k", 10, "someone else")
    _, report = gated(world, run)
    assert report.is_clean() and world.state.get("k") == 1


def test_keys_only_read_that_changed_are_reported_not_rejected(world: SharedInfra) -> None:
    first = overlay_run(world.state, "first", (1, 4), writes={"k": 1})
    reader = overlay_run(world.state, "reader", (2, 3), reads=["k"], writes={"r": 1})
    _, report = gated(world, first, reader)
    assert report.merged == ("first", "reader")
    assert report.stale_reads == {"reader": ("k",)}


def test_a_broken_dependency_aborts_the_whole_merge(world: SharedInfra) -> None:
    """CAR case 48: b declared to build on a, but their windows overlap: nothing merges."""
    a = overlay_run(world.state, "a", (1, 4), writes={"ka": 1})
    b = overlay_run(world.state, "b", (2, 3), writes={"kb": 1})
    with pytest.raises(ConcurrencyAbort, match=r"b started at t=2, before a finished \(t=4\)"):
        gated(world, a, b, depends_on={"b": ["a"]})
    assert world.state.keys() == []
    assert audit(world)["aborted"] is True
    assert [a["kind"] for a in audit(world)["anomalies"]] == [CAUSAL_CASCADE]  # type: ignore[index, union-attr]


@pytest.mark.parametrize("failure", ["failed", "stale"])
def test_a_dependency_that_failed_or_was_rejected_aborts(world: SharedInfra, failure: str) -> None:
    world.state.set("k", 0, "setup")
    if failure == "failed":
        a = overlay_run(world.state, "a", (1, 2), failed=True)
    else:
        a = overlay_run(world.state, "a", (1, 2), reads=["k"], writes={"k": 1})
        world.state.set("k", 5, "someone else")
    b = overlay_run(world.state, "b", (3, 4), writes={"kb": 1})
    with pytest.raises(ConcurrencyAbort, match="b depends on a, which has no run to merge"):
        gated(world, a, b, depends_on={"b": ["a"]})
    assert not world.state.exists("kb")


def test_a_kept_dependency_merges(world: SharedInfra) -> None:
    a = overlay_run(world.state, "a", (1, 2), writes={"ka": 1})
    b = overlay_run(world.state, "b", (3, 4), writes={"kb": 1})
    _, report = gated(world, a, b, depends_on={"b": ["a"]})
    assert report.is_clean() and report.merged == ("a", "b")


def test_an_agent_running_twice_gets_two_ops(world: SharedInfra) -> None:
    first = overlay_run(world.state, "a", (1, 2), writes={"k": 1})
    again = overlay_run(world.state, "a", (3, 4), writes={"k": 2})
    _, report = gated(world, first, again)
    assert [op.op_id for op in report.ops] == ["a", "a#2"]
    assert world.state.get("k") == 2


def test_dependencies_are_checked_when_declared() -> None:
    with pytest.raises(InvalidPattern, match="cannot depend on itself"):
        ConcurrencyControl({"a": ["a"]})
    with pytest.raises(InvalidPattern, match=r"write \['a'\]"):
        ConcurrencyControl({"b": "a"})  # type: ignore[dict-item]
    with pytest.raises(InvalidPattern, match=r"\['zed'\]"):
        Swarm([AgentSpec(name="a", system_prompt="")], isolated=True,
              gate=ConcurrencyControl({"a": ["zed"]}))


# ---- agents in farm workers --------------------------------------------------------------------


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm(workers=2) as made:
        yield made


def swarm(*names: str, mode: str = "parallel", **options: object) -> Swarm:
    return Swarm([AgentSpec(name=name, system_prompt="") for name in names], mode,
                 isolated=True, **options)  # type: ignore[arg-type]


def test_concurrent_writers_in_workers_merge_in_agent_order_not_finishing_order(
        farm: Farm) -> None:
    """CAR case 48 with real agents: first and second overlap (each waits for the
    other), second finishes first, yet the merge serialises them in agent order."""
    script = StateScript({"first": [("arrive", 2), ("set", "k", "first"), ("after", "second")],
                          "second": [("arrive", 2), ("set", "k", "second")]})
    result = swarm("first", "second", gate=True).run("t", script, farm)
    assert all(output.succeeded() for output in result.outputs)
    assert farm.infra.state.get("k") == "second"
    report = farm.infra.log.filter(kind=GATE_EVENT)[-1].data
    assert report["serialised"] == {"k": ["first", "second"]}
    ops = {op["op"]: op for op in report["ops"]}
    assert ops["first"]["commit_at"] > ops["second"]["commit_at"]


def test_a_lost_update_between_workers_is_caught(flavor: str) -> None:
    """Both agents read the counter and write it + 1 at the same time, in two workers:
    one update merges, the other is caught instead of lost silently."""
    script = StateScript({name: [("arrive", 2), ("incr", "counter")] for name in ("a", "b")})
    with make_farm(flavor, workers=2) as farm:
        result = swarm("a", "b", gate=True).run("t", script, farm)
        assert farm.infra.state.get("counter") == 1
    a, b = result.outputs
    assert a.succeeded() and not b.succeeded()
    assert "stale generation" in (b.error or "")


def test_a_dependency_broken_by_parallel_agents_aborts_the_swarm(farm: Farm) -> None:
    script = StateScript({"a": [("arrive", 2), ("set", "ka", 1)],
                          "b": [("arrive", 2), ("set", "kb", 1)]})
    with pytest.raises(ConcurrencyAbort, match="before a finished"):
        swarm("a", "b", gate=ConcurrencyControl({"b": ["a"]})).run("t", script, farm)
    assert not farm.infra.state.exists("ka") and not farm.infra.state.exists("kb")


def test_a_dependency_kept_by_a_sequence_merges(farm: Farm) -> None:
    script = StateScript({"a": [("set", "ka", 1)], "b": [("set", "kb", 2)]})
    swarm("a", "b", mode="sequential", gate=ConcurrencyControl({"b": ["a"]})).run(
        "t", script, farm)
    assert farm.infra.state.get("ka") == 1 and farm.infra.state.get("kb") == 2
    assert farm.infra.log.filter(kind=GATE_EVENT)[-1].data["anomalies"] == []
