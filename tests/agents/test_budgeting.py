"""Budget modes beyond CAR, through the patterns' launcher: reservations that keep a
parallel fan-out within its cap, and cancelling running agents once a cap is crossed, on
both backends (a Ray farm's budget is a ledger actor)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from carmp.agents.patterns.swarm import Swarm
from carmp.agents.runner import AgentLauncher
from carmp.agents.types import AgentSpec
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, calls

WAIT = 60.0
NAMES = [f"agent-{i}" for i in range(8)]


@pytest.fixture
def farm(backend_farm: Farm) -> Farm:
    """Every test here runs on each backend."""
    return backend_farm


@pytest.fixture
def world(any_world: SharedInfra) -> SharedInfra:
    """The test's own world on the farm's backend, with a cap of 100 tokens."""
    return any_world.with_budget(BudgetLimits(max_total_tokens=100))


def specs(names: list[str]) -> list[AgentSpec]:
    return [AgentSpec(name=name, system_prompt="") for name in names]


@pytest.fixture
def release(world: SharedInfra) -> Iterator[Callable[[int], None]]:
    """Sets the state key "go" (which holding agents wait for) once as many agents as
    the test expects have passed the gate, so no agent finishes before every spawn was
    gated: the test, not timing, decides the order."""
    threads = []

    def start(started: int) -> None:
        def watch() -> None:
            deadline = time.monotonic() + WAIT
            while world.budget.snapshot().agents_started < started \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
            world.state.set("go", True, "test")

        threads.append(threading.Thread(target=watch))
        threads[-1].start()

    yield start
    for thread in threads:
        thread.join(WAIT)


def holding_spenders() -> ScriptedRunner:
    return ScriptedRunner(tokens={name: (30, 0, 0.0) for name in NAMES},
                          holds={name: "go" for name in NAMES})


def test_reservations_keep_a_parallel_fan_out_within_the_cap(
        farm: Farm, world: SharedInfra, release: Callable[[int], None]) -> None:
    """8 parallel agents of 30 tokens each, cap 100, estimate 30: three leases fit, so
    three agents run and the spend stays within the cap; the others are budget-skipped.
    The worker does not record spend the lease commits (no double count)."""
    release(3)
    result = Swarm(specs(NAMES), reserve=TokenAccounting(input_tokens=30)).run(
        "t", holding_spenders(), farm, infra=world)
    assert len(calls(world.state)) == 3
    assert sum(output.succeeded() for output in result.outputs) == 3
    skipped = [output for output in result.outputs if not output.succeeded()]
    assert len(skipped) == 5
    assert all("reservation denied" in (output.error or "") for output in skipped)
    assert world.budget.snapshot().total_tokens == 90
    statistics = world.budget.statistics()
    assert statistics.leases_held == 0 and statistics.reserved.total_tokens == 0


def test_without_reservations_a_parallel_fan_out_overshoots(
        farm: Farm, world: SharedInfra, release: Callable[[int], None]) -> None:
    """Pinned CAR behaviour: every spawn passes the gate before any spend is reported,
    so all 8 run and the spend overshoots the cap by the whole batch."""
    release(8)
    Swarm(specs(NAMES)).run("t", holding_spenders(), farm, infra=world)
    assert len(calls(world.state)) == 8
    assert world.budget.snapshot().total_tokens == 240


def test_a_lease_is_committed_with_the_reported_spend_or_released(
        farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(tokens={"greedy": (50, 0, 0.0)}, crashes=frozenset({"lost"}))
    estimate = TokenAccounting(input_tokens=30)
    with AgentLauncher(farm, runner, infra=world, reserve=estimate) as launcher:
        lost = launcher.run(AgentSpec(name="lost", system_prompt=""), "t")
        assert "WorkerCrashed" in (lost.output.error or "")
        assert world.budget.snapshot().total_tokens == 0  # released: nothing reported
        greedy = launcher.run(AgentSpec(name="greedy", system_prompt=""), "t")
        assert greedy.output.succeeded()
        assert world.budget.snapshot().total_tokens == 50  # beyond the estimate: counted
        assert launcher.begin() is None  # admitted, never submitted
        assert world.budget.statistics().leases_held == 1
    assert world.budget.statistics().leases_held == 0  # closing returned it


def test_cancel_on_exhaustion_stops_the_agents_still_running(farm: Farm,
                                                            world: SharedInfra) -> None:
    """One agent holds until a key nobody sets; the other waits until both run, then
    reports 150 tokens against a cap of 100: the holding one is killed, a failed output
    naming the budget, and the swarm completes."""
    runner = ScriptedRunner(holds={"slow": "never"}, rendezvous={"spender": 2},
                            tokens={"spender": (150, 0, 0.0)})
    result = Swarm(specs(["slow", "spender"]), cancel_on_exhaustion=True).run(
        "t", runner, farm, infra=world)
    slow, spender = result.outputs
    assert spender.succeeded()
    assert not slow.succeeded()
    assert "TaskCancelled" in (slow.error or "")
    assert ("the coordination budget was exhausted while it ran: total tokens 150 "
            "reached the limit of 100") in (slow.error or "")
    assert result.final_summary == spender.answer
    assert farm.submit(abs, -1).result(WAIT) == 1  # the killed worker was replaced


def test_budget_mode_options_are_checked(farm: Farm) -> None:
    with pytest.raises(TypeError, match="reserve must be a TokenAccounting"):
        AgentLauncher(farm, ScriptedRunner(), reserve=30)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancel_on_exhaustion must be a bool"):
        AgentLauncher(farm, ScriptedRunner(), cancel_on_exhaustion="yes")  # type: ignore[arg-type]
