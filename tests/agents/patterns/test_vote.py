"""Vote (CAR case 41): normalised majority, agreement over successful votes, ties, the
optional synthesizer and its fallbacks, budget."""

from __future__ import annotations

import os

import pytest

from carmp.agents.patterns.vote import SYNTHESIZER_TEMPLATE, Vote, VoteResult, majority, normalize
from carmp.agents.types import AgentSpec
from carmp.errors import BudgetExhausted, InvalidPattern, NoOutput
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, calls


def spec(name: str) -> AgentSpec:
    return AgentSpec(name=name, system_prompt="answer briefly")


VOTERS = [spec("v1"), spec("v2"), spec("v3")]


def test_normalised_majority_wins_in_its_first_form(any_farm: Farm) -> None:
    """CAR case 41."""
    runner = ScriptedRunner(answers={"v1": "Paris", "v2": " paris ", "v3": "Lyon"})
    result = Vote(VOTERS).run("capital of France?", runner, any_farm)
    assert result.winner == "Paris"
    assert result.agreement_ratio == pytest.approx(2 / 3)
    assert [v.answer for v in result.votes] == ["Paris", " paris ", "Lyon"]
    assert {c["task"] for c in calls(any_farm.infra.state)} == {"capital of France?"}


def test_a_reserving_vote_cannot_overshoot_its_cap(farm: Farm) -> None:
    """Beyond CAR: every voter reserves 60 tokens before it starts, so the second does not
    fit in 100 (CAR's gate alone would start all three)."""
    runner = ScriptedRunner(answers={"v1": "a"}, tokens={"v1": (60, 0, 0.0)})
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_total_tokens=100))
        result = Vote(VOTERS, reserve=TokenAccounting(60, 0, 0.0)).run(
            "q", runner, farm, infra=infra)
        assert [c["agent"] for c in calls(infra.state)] == ["v1"]
    assert (result.winner, result.agreement_ratio) == ("a", 1.0)


def test_voters_run_at_once_in_different_processes(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"v1": "x", "v2": "x"}, rendezvous={"v1": 2, "v2": 2})
    assert Vote(VOTERS[:2]).run("q", runner, farm).agreement_ratio == 1.0
    pids = {c["pid"] for c in calls(farm.infra.state)}
    assert len(pids) == 2 and os.getpid() not in pids


def test_normalize() -> None:
    assert normalize("  The   Eiffel\tTower.  ") == "the eiffel tower"
    assert normalize("Yes!?") == normalize("yes") == "yes"
    assert normalize("a, b") == "a, b"  # only trailing punctuation goes


def test_a_tie_goes_to_the_answer_that_reached_the_top_count_first() -> None:
    # b leads at first, a reaches two votes first, b only ties later
    assert majority(["B", "a", "A", "b"]) == "a"
    assert majority([" Paris ", "paris"]) == "Paris"
    assert majority([]) == ""


def test_agreement_counts_successful_votes_only(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"v1": "42", "v3": "42."}, errors={"v2": "crashed"})
    result = Vote(VOTERS).run("q", runner, farm)
    assert result.winner == "42"
    assert result.agreement_ratio == 1.0
    assert not result.votes[1].succeeded()


def test_the_synthesizer_sees_every_vote_and_decides(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"v1": "red", "v2": "blue", "v3": "red",
                                     "judge": " Blue "})
    result = Vote(VOTERS, synthesizer=spec("judge")).run("best colour?", runner, farm)
    (call,) = calls(farm.infra.state, "judge")
    assert call["task"] == SYNTHESIZER_TEMPLATE.format(task="best colour?", count=3,
                                                       votes="1. red\n2. blue\n3. red")
    assert result.winner == "Blue"
    assert result.agreement_ratio == pytest.approx(1 / 3)


def test_a_failed_synthesizer_falls_back_to_the_majority(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"v1": "red", "v2": "blue", "v3": "red"},
                            errors={"judge": "no opinion"})
    result = Vote(VOTERS).with_synthesizer(spec("judge")).run("q", runner, farm)
    assert len(calls(farm.infra.state, "judge")) == 1
    assert result.winner == "red" and result.agreement_ratio == pytest.approx(2 / 3)


def test_a_synthesizer_the_budget_refuses_falls_back_to_the_majority(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"v1": "red", "v2": "blue", "v3": "red"})
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=3))
        result = Vote(VOTERS, synthesizer=spec("judge")).run("q", runner, farm, infra=infra)
        assert calls(infra.state, "judge") == []
    assert result.winner == "red"


def test_no_successful_vote_is_no_output(farm: Farm) -> None:
    runner = ScriptedRunner(errors={"v1": "x", "v2": "y", "v3": "z"})
    with pytest.raises(NoOutput):
        Vote(VOTERS).run("q", runner, farm)


def test_a_budget_crossed_before_the_run_starts_no_voter(farm: Farm) -> None:
    """CAR case 8 for Vote: zero runner calls, and BudgetExhausted as a Swarm raises."""
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_total_tokens=10))
        infra.record_output(TokenAccounting(10, 0, 0.0))
        with pytest.raises(BudgetExhausted, match="total tokens 10"):
            Vote(VOTERS).run("q", ScriptedRunner(), farm, infra=infra)
        assert calls(infra.state) == []


def test_result_json_round_trip(farm: Farm) -> None:
    result = Vote(VOTERS[:2]).run("q", ScriptedRunner(answers={"v1": "a", "v2": "b"}), farm)
    again = VoteResult.from_json(result.to_json())
    assert again == result
    assert set(result.to_dict()) == {"task", "votes", "winner", "agreement_ratio"}


def test_bad_voters_are_refused() -> None:
    with pytest.raises(InvalidPattern, match="one or more agents"):
        Vote([])
    with pytest.raises(TypeError, match="synthesizer must be an AgentSpec"):
        Vote(VOTERS, synthesizer="judge")  # type: ignore[arg-type]
