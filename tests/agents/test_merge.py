"""The merge barrier without a gate: CAR's last-writer-wins merge of the agents that
succeeded, in run order (CAR-SPEC section 3 case 21)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carmp.agents.merge import merge_overlays
from carmp.agents.patterns.swarm import Swarm
from carmp.agents.types import AgentSpec
from carmp.pool.farm import Farm
from carmp.runtime.infra import SharedInfra
from tests.agents.state_script import StateScript, overlay_run


@pytest.fixture
def world() -> Iterator[SharedInfra]:
    with SharedInfra() as made:
        yield made


def test_only_agents_that_succeeded_merge_in_run_order(world: SharedInfra) -> None:
    world.state.set("k", 0, "setup")
    runs = [overlay_run(world.state, "late", (2, 3), reads=["k"], writes={"k": "late"}),
            overlay_run(world.state, "failed", (1, 4), writes={"k": "failed", "f": 1},
                        failed=True),
            overlay_run(world.state, "early", (1, 2), reads=["k"], writes={"k": "early"})]
    outcome = merge_overlays(world, runs)
    assert outcome.report is None and list(outcome.runs) == runs
    assert world.state.get("k") == "early"  # last in run order; the lost update goes unseen
    assert not world.state.exists("f")
    assert [t.action_id for t in world.state.transitions()[1:]] == ["merge:late", "merge:early"]


def test_an_isolated_swarm_drops_the_writes_of_a_failing_agent(backend: str) -> None:
    """CAR case 21, with agents in workers: nothing reaches the shared state until the
    barrier, and then only what the agents that succeeded wrote."""
    script = StateScript({"good": [("set", "k-good", 1)],
                          "bad": [("set", "k-bad", 1), ("fail",)]})
    with Farm(workers=2, backend=backend) as farm:
        result = Swarm([AgentSpec(name=name, system_prompt="") for name in ("good", "bad")],
                       isolated=True).run("t", script, farm)
        state = farm.infra.state
        assert state.get("k-good") == 1 and not state.exists("k-bad")
    assert [output.succeeded() for output in result.outputs] == [True, False]
