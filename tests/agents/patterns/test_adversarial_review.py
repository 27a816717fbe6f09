"""AdversarialReview (CAR case 44): a fresh reviewer without author context, findings
parsed as JSON, failing closed."""

from __future__ import annotations

import orjson
import pytest

from carmp.agents.patterns.adversarial_review import (
    EVIDENCE_LIMIT,
    AdversarialReview,
    AdversarialReviewResult,
    ReviewSeverity,
    json_in_reply,
)
from carmp.agents.patterns.fleet import Fleet
from carmp.agents.types import AgentSpec
from carmp.errors import BudgetExhausted, InvalidPattern
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits
from carmp.runtime.infra import SharedInfra
from tests.agents.scripted import ScriptedRunner, calls

REVIEWER = AgentSpec(name="reviewer", system_prompt="find what is wrong")
CRITERIA = ["has tests", "no TODOs left"]


def findings(*items: tuple[str, bool, str]) -> str:
    return orjson.dumps({"findings": [
        {"criterion": c, "passed": p, "evidence": "src/x.py:3", "severity": s}
        for c, p, s in items]}).decode()


def review(farm: Farm, reply: str, *, fail_on_blockers: bool = True) -> AdversarialReviewResult:
    return AdversarialReview(REVIEWER, CRITERIA, fail_on_blockers=fail_on_blockers).run(
        "the work", ScriptedRunner(answers={"reviewer": reply}), farm)


def test_the_reviewer_sees_the_work_and_criteria_but_not_the_author(any_farm: Farm) -> None:
    """CAR case 44, part 1: the work comes from an author agent with its own prompt."""
    author = AgentSpec(name="author", system_prompt="AUTHOR-SYSTEM-PROMPT")
    runner = ScriptedRunner(answers={"author": "def f(): return 1  # the work",
                                     "reviewer": findings(("has tests", True, "info"),
                                                          ("no TODOs left", True, "info"))})
    work = Fleet([(author, "AUTHOR-TASK: write f")]).run(runner, any_farm).outputs[0].answer
    result = AdversarialReview(REVIEWER, CRITERIA).run(work, runner, any_farm)
    (call,) = calls(any_farm.infra.state, "reviewer")
    assert work in call["task"]
    assert all(criterion in call["task"] for criterion in CRITERIA)
    assert "AUTHOR" not in call["task"]
    assert result.passed and result.blocker_count == 0
    assert [f.criterion for f in result.findings] == CRITERIA


def test_a_review_never_changes_the_shared_state(farm: Farm) -> None:
    write = {"id": "p", "actions": [{"id": "w", "type": "state_write",
                                     "parameters": {"key": "verdict", "value": "mine"}}]}
    runner = ScriptedRunner(answers={"reviewer": findings(("has tests", True, "info"),
                                                          ("no TODOs left", True, "info"))},
                            proposals={"reviewer": [write]})
    assert AdversarialReview(REVIEWER, CRITERIA).run("w", runner, farm).passed
    assert not farm.infra.state.exists("verdict")


def test_an_unparseable_reply_is_one_inconclusive_finding(farm: Farm) -> None:
    """CAR case 44, part 2."""
    reply = "Looks mostly fine to me, " + "blah " * 1000
    result = review(farm, reply)
    (finding,) = result.findings
    assert finding.severity is ReviewSeverity.INCONCLUSIVE and not finding.passed
    assert finding.evidence == reply[:EVIDENCE_LIMIT]
    assert not result.passed


@pytest.mark.parametrize("reply", [
    '{"findings": [{"criterion": "has tests"}]}',                               # no passed
    '{"findings": [{"criterion": "has tests", "passed": true, "severity": "fatal"}]}',
    '{"findings": [{"criterion": "has tests", "passed": "yes"}]}',
    '{"verdict": "fine"}',
])
def test_malformed_findings_are_inconclusive(farm: Farm, reply: str) -> None:
    result = review(farm, reply)
    assert [f.severity for f in result.findings] == [ReviewSeverity.INCONCLUSIVE]


def test_a_blocker_fails_the_review_only_with_fail_on_blockers(farm: Farm) -> None:
    """CAR case 44, part 3: the blocker here is even marked passed by the reviewer."""
    reply = findings(("has tests", True, "blocker"), ("no TODOs left", True, "minor"))
    strict = review(farm, reply)
    lenient = review(farm, reply, fail_on_blockers=False)
    assert strict.blocker_count == lenient.blocker_count == 1
    assert not strict.passed
    assert lenient.passed


def test_a_failed_criterion_fails_the_review(farm: Farm) -> None:
    result = review(farm, findings(("has tests", True, "info"), ("no TODOs left", False, "minor")))
    assert not result.passed


def test_a_criterion_without_a_finding_gets_an_inconclusive_one(farm: Farm) -> None:
    result = review(farm, "Here you go:\n```json\n" + findings(("has tests", True, "info"))
                    + "\n```")
    assert [(f.criterion, f.severity) for f in result.findings] == [
        ("has tests", ReviewSeverity.INFO), ("no TODOs left", ReviewSeverity.INCONCLUSIVE)]
    assert not result.passed


def test_severity_defaults_by_verdict(farm: Farm) -> None:
    reply = orjson.dumps([{"criterion": "has tests", "passed": True},
                          {"criterion": "no TODOs left", "passed": False}]).decode()
    result = review(farm, reply)
    assert [f.severity for f in result.findings] == [ReviewSeverity.INFO, ReviewSeverity.MAJOR]


def test_a_failed_reviewer_is_inconclusive(farm: Farm) -> None:
    result = AdversarialReview(REVIEWER, CRITERIA).run(
        "w", ScriptedRunner(errors={"reviewer": "model offline"}), farm)
    (finding,) = result.findings
    assert finding.severity is ReviewSeverity.INCONCLUSIVE and "model offline" in finding.evidence
    assert not result.passed


def test_a_reviewer_the_budget_refuses_is_budget_exhausted(farm: Farm) -> None:
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=0))
        with pytest.raises(BudgetExhausted, match="max_agents=0"):
            AdversarialReview(REVIEWER, CRITERIA).run("w", ScriptedRunner(), farm, infra=infra)
        assert calls(infra.state) == []


def test_json_in_reply() -> None:
    assert json_in_reply(' {"a": 1} ') == {"a": 1}
    assert json_in_reply("Sure:\n```json\n[1, 2]\n```\nbye") == [1, 2]
    assert json_in_reply('I think {"a": {"b": 2}} is it') == {"a": {"b": 2}}
    with pytest.raises(ValueError):
        json_in_reply("no json here")


def test_result_json(farm: Farm) -> None:
    result = review(farm, findings(("has tests", True, "info"), ("no TODOs left", True, "info")))
    data = orjson.loads(result.to_json())
    assert data["passed"] is True and data["spec"]["name"] == "reviewer"
    assert data["findings"][0] == {"criterion": "has tests", "passed": True,
                                   "evidence": "src/x.py:3", "severity": "info"}


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(InvalidPattern, match="criteria"):
        AdversarialReview(REVIEWER, [])
    review = AdversarialReview(REVIEWER, CRITERIA)
    with pytest.raises(TypeError, match="work_output"):
        review.run(None, ScriptedRunner(), None)  # type: ignore[arg-type]
