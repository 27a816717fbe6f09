"""Supervisor: parallel workers, reviews, feedback rounds, APPROVED, max_rounds, budget
(CAR-SPEC section 3 case 39)."""

from __future__ import annotations


import pytest

from carmp.agents.patterns.supervisor import (
    REVIEW_TEMPLATE,
    WORKER_TEMPLATE,
    Supervisor,
    SupervisorResult,
)
from carmp.errors import BudgetExhausted, InvalidPattern, NoOutput
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, agent, calls
from tests.conftest import make_farm





WORKERS = [agent("w1"), agent("w2")]


def reviewing(*replies: str) -> ScriptedRunner:
    return ScriptedRunner(answers={"boss": list(replies), "w1": ["one", "one again"],
                                   "w2": ["two", "two again"]})


def test_feedback_then_approval(flavor: str) -> None:
    """CAR case 39: "needs work" then "APPROVED": two rounds, approved; pinned: one
    feedback entry per review, so two; round 2's workers got the feedback."""
    with make_farm(flavor, workers=2) as farm:
        result = Supervisor(WORKERS, agent("boss")).run(
            "build", reviewing("needs work", "APPROVED"), farm)
        log = calls(farm.infra.state)
    assert result.approved
    assert result.total_rounds() == 2
    assert result.supervisor_feedback == ("needs work", "APPROVED")
    assert [[output.answer for output in outputs] for outputs in result.rounds] == \
        [["one", "two"], ["one again", "two again"]]
    assert [call["agent"] for call in log][2] == "boss"
    assert log[2]["task"] == REVIEW_TEMPLATE.format(task="build", round=1,
                                                    outputs="[w1]: one\n[w2]: two")
    second_round = [call for call in log[3:5]]
    assert {call["agent"] for call in second_round} == {"w1", "w2"}
    assert {call["task"] for call in second_round} == {
        WORKER_TEMPLATE.format(task="build", feedback="needs work")}
    assert result.final_answer == "[w1]: one again\n\n[w2]: two again"


def test_max_rounds_without_approval_returns_unapproved(farm: Farm, world: SharedInfra) -> None:
    """CAR case 39, pinned: max_rounds=3 reached: three rounds, approved False, and no
    MaxRoundsExceeded."""
    result = Supervisor(WORKERS, agent("boss"), max_rounds=3).run(
        "build", reviewing("no", "still no", "nope"), farm, infra=world)
    assert not result.approved
    assert result.total_rounds() == 3
    assert result.supervisor_feedback == ("no", "still no", "nope")
    assert [call["agent"] for call in calls(world.state)].count("boss") == 3


@pytest.mark.parametrize("reply, approved", [
    ("APPROVED", True), ("Looks good. APPROVED.", True), ("approved", False),
    ("Approved", False), ("UNAPPROVED", False),
])
def test_approval_is_the_word_approved_case_sensitive(farm: Farm, world: SharedInfra,
                                                      reply: str, approved: bool) -> None:
    result = Supervisor(WORKERS, agent("boss"), max_rounds=1).run(
        "build", reviewing(reply), farm, infra=world)
    assert result.approved is approved


def test_a_review_refused_by_the_budget_ends_the_run_unapproved(
        farm: Farm, world: SharedInfra) -> None:
    world.with_budget(BudgetLimits(max_agents=2))
    result = Supervisor(WORKERS, agent("boss")).run("build", reviewing("APPROVED"), farm,
                                                    infra=world)
    assert not result.approved
    assert result.total_rounds() == 1
    assert result.supervisor_feedback == ()
    assert result.final_answer == "[w1]: one\n\n[w2]: two"


def test_a_round_the_budget_refuses_entirely_raises_budget_exhausted(
        farm: Farm, world: SharedInfra) -> None:
    """Pinned: workers are load-bearing: round 2 with no worker allowed to start ends
    the run with BudgetExhausted."""
    world.with_budget(BudgetLimits(max_agents=3))
    with pytest.raises(BudgetExhausted, match="max_agents=3"):
        Supervisor(WORKERS, agent("boss")).run("build", reviewing("more"), farm, infra=world)
    assert [call["agent"] for call in calls(world.state)].count("boss") == 1


def test_a_round_whose_workers_all_fail_raises_no_output(farm: Farm, world: SharedInfra) -> None:
    runner = ScriptedRunner(errors={"w1": "down", "w2": "down"})
    with pytest.raises(NoOutput):
        Supervisor(WORKERS, agent("boss")).run("build", runner, farm, infra=world)
    assert "boss" not in [call["agent"] for call in calls(world.state)]


def test_configuration_and_json(farm: Farm) -> None:
    with pytest.raises(InvalidPattern, match="max_rounds"):
        Supervisor(WORKERS, agent("boss"), max_rounds=0)
    with pytest.raises(TypeError, match="AgentSpec"):
        Supervisor(WORKERS, "boss")  # type: ignore[arg-type]
    assert Supervisor(WORKERS, agent("boss")).with_max_rounds(5).max_rounds == 5
    result = Supervisor(WORKERS, agent("boss")).run("build", reviewing("APPROVED"), farm)
    assert set(result.to_dict()) == {"task", "rounds", "supervisor_feedback", "final_answer",
                                     "approved"}
    assert SupervisorResult.from_json(result.to_json()) == result
