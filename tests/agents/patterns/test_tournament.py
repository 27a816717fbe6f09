"""Tournament (CAR case 43): single elimination, byes, rounds, ranking, n - 1 judge calls,
forfeits and judge fallbacks."""

from __future__ import annotations

import re

import pytest

from carmp.agents.patterns.tournament import (
    JUDGE_TEMPLATE,
    MatchDecision,
    Tournament,
    TournamentResult,
    verdict,
)
from carmp.agents.types import AgentSpec
from carmp.errors import BudgetExhausted, InvalidPattern, NoOutput
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, calls

JUDGE = AgentSpec(name="judge", system_prompt="compare two answers")


def spec(name: str) -> AgentSpec:
    return AgentSpec(name=name, system_prompt="compete")


def higher_score(task: str) -> str:
    """The judge: the candidate whose answer 'score N' is higher (A on a tie)."""
    a, b = (int(score) for score in re.findall(r"<<<[AB]\nscore (\d+)", task))
    return "A" if a >= b else "B"


def scored(**scores: int) -> ScriptedRunner:
    return ScriptedRunner(answers={"judge": higher_score,
                                   **{name: f"score {n}" for name, n in scores.items()}})


def test_five_competitors(any_farm: Farm) -> None:
    """CAR case 43: one winner, ranking of 5, 3 rounds, a bye in round 1, 4 judge calls."""
    competitors = [spec(f"c{i}") for i in range(5)]
    result = Tournament(competitors, JUDGE).run(
        "write a haiku", scored(c0=3, c1=5, c2=1, c3=4, c4=2), any_farm)
    assert result.rounds == 3
    assert result.winner_name == "c1" and result.winner_answer == "score 5"
    assert len(calls(any_farm.infra.state, "judge")) == 4 == len(result.matches)
    assert [(m.round, m.left, m.right, m.winner) for m in result.matches] == [
        (1, "c0", "c1", "c1"), (1, "c2", "c3", "c3"),  # c4 has the bye
        (2, "c1", "c3", "c1"),
        (3, "c1", "c4", "c1")]
    assert all(m.decided_by is MatchDecision.JUDGE for m in result.matches)
    assert result.ranking == ("c1", "c4", "c3", "c0", "c2")


def test_the_judge_sees_the_task_and_both_answers(farm: Farm) -> None:
    Tournament([spec("x"), spec("y")], JUDGE).run("task T", scored(x=1, y=2), farm)
    (call,) = calls(farm.infra.state, "judge")
    assert call["task"] == JUDGE_TEMPLATE.format(task="task T", left="x", left_answer="score 1",
                                                 right="y", right_answer="score 2")


@pytest.mark.parametrize("reply, winner, decided_by", [
    ("B", "y", MatchDecision.JUDGE),
    ("  y. ", "y", MatchDecision.JUDGE),         # the right candidate's name
    ("a", "x", MatchDecision.JUDGE),
    ("both are fine", "x", MatchDecision.JUDGE_FAILED),  # names neither: left advances
])
def test_the_judges_reply(farm: Farm, reply: str, winner: str, decided_by: MatchDecision) -> None:
    runner = ScriptedRunner(answers={"judge": reply})
    (match,) = Tournament([spec("x"), spec("y")], JUDGE).run("t", runner, farm).matches
    assert (match.winner, match.decided_by, match.judge_reply) == (winner, decided_by, reply)


def test_a_failed_judge_advances_the_left_candidate(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"judge": "B"}, errors={"judge": "judge crashed"})
    result = Tournament([spec("x"), spec("y")], JUDGE).run("t", runner, farm)
    assert result.winner_name == "x"
    assert result.matches[0].decided_by is MatchDecision.JUDGE_FAILED


def test_a_judge_the_budget_refuses_advances_the_left_candidate(farm: Farm) -> None:
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=2))  # both competitors, then no judge
        result = Tournament([spec("x"), spec("y")], JUDGE).run(
            "t", ScriptedRunner(answers={"judge": "B"}), farm, infra=infra)
        assert calls(infra.state, "judge") == []
    assert result.winner_name == "x"
    assert result.matches[0].decided_by is MatchDecision.JUDGE_FAILED


def test_a_failed_competitor_forfeits_without_a_judge(farm: Farm) -> None:
    runner = ScriptedRunner(answers={"judge": "A"}, errors={"x": "no idea"})
    result = Tournament([spec("x"), spec("y")], JUDGE).run("t", runner, farm)
    assert result.winner_name == "y"
    assert result.matches[0].decided_by is MatchDecision.FORFEIT
    assert calls(farm.infra.state, "judge") == []
    assert result.ranking == ("y", "x")


def test_competitors_without_an_answer_rank_last_whatever_their_byes(farm: Farm) -> None:
    # z gets the round-1 bye, then forfeits the final to the winner of x-y
    runner = ScriptedRunner(answers={"judge": higher_score, "x": "score 2", "y": "score 1"},
                            errors={"z": "crashed"})
    result = Tournament([spec("x"), spec("y"), spec("z")], JUDGE).run("t", runner, farm)
    assert [(m.round, m.winner, m.loser, m.decided_by) for m in result.matches] == [
        (1, "x", "y", MatchDecision.JUDGE), (2, "x", "z", MatchDecision.FORFEIT)]
    assert result.ranking == ("x", "y", "z")


def test_no_successful_competitor_is_no_output(farm: Farm) -> None:
    with pytest.raises(NoOutput):
        Tournament([spec("x"), spec("y")], JUDGE).run(
            "t", ScriptedRunner(errors={"x": "a", "y": "b"}), farm)


def test_competitors_the_budget_refuses_all_is_budget_exhausted(farm: Farm) -> None:
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=0))
        with pytest.raises(BudgetExhausted, match="max_agents=0"):
            Tournament([spec("x"), spec("y")], JUDGE).run("t", ScriptedRunner(), farm,
                                                          infra=infra)
        assert calls(infra.state) == []


def test_a_lone_competitor_wins_without_a_match(farm: Farm) -> None:
    result = Tournament([spec("x")], JUDGE).run("t", ScriptedRunner(), farm)
    assert (result.winner_name, result.rounds, result.matches, result.ranking) == (
        "x", 0, (), ("x",))


def test_verdict() -> None:
    assert verdict("A", "x", "y") is True
    assert verdict("b.", "x", "y") is False
    assert verdict("Y", "x", "y") is False
    assert verdict("maybe", "x", "y") is None


def test_result_json_round_trip(farm: Farm) -> None:
    result = Tournament([spec("x"), spec("y"), spec("z")], JUDGE).run(
        "t", scored(x=1, y=2, z=3), farm)
    assert TournamentResult.from_json(result.to_json()) == result
    assert {"winner_name", "ranking", "matches"} <= set(result.to_dict())


def test_competitor_names_must_be_unique() -> None:
    with pytest.raises(InvalidPattern, match="unique"):
        Tournament([spec("x"), spec("x")], JUDGE)
