"""Advisor (CAR case 45): verdicts, malformed replies, the use counter across processes,
and the trigger policy."""

from __future__ import annotations

import os

import orjson
import pytest

from carmp.agents.patterns.advisor import (
    ADVISOR_TEMPLATE,
    FINAL_CHECK_LABEL,
    Advisor,
    AdvisorTriggerContext,
    AdvisorTriggerPolicy,
    AdvisorVerdict,
    ConsultDecision,
    TaskRisk,
    VerdictKind,
)
from carmp.agents.types import AgentSpec
from carmp.errors import AdvisorExhausted, BudgetExhausted, CarmpError, InvalidPattern
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits
from carmp.runtime.infra import SharedInfra
from carmp.shared.mailbox import Mailbox
from tests.agents.scripted import ScriptedRunner, calls

ADVISOR = AgentSpec(name="advisor", system_prompt="you advise")
GO_ON = '{"verdict": "continue", "rationale": "the plan holds"}'


def advised(reply: str) -> ScriptedRunner:
    return ScriptedRunner(answers={"advisor": reply})


def test_past_max_uses_the_advisor_is_exhausted(farm: Farm) -> None:
    """CAR case 45, part 1."""
    advisor = Advisor(ADVISOR, max_uses=2)
    first = advisor.consult("stuck on step 3", advised(GO_ON), farm)
    second = advisor.consult("stuck again", advised(GO_ON), farm)
    with pytest.raises(AdvisorExhausted) as exhausted:
        advisor.consult("and again", advised(GO_ON), farm)
    assert (exhausted.value.used, exhausted.value.max_uses) == (2, 2)
    assert (first.used, second.used, advisor.used()) == (1, 2, 2)
    assert len(calls(farm.infra.state, "advisor")) == 2  # the third never started
    assert first.verdict == AdvisorVerdict(VerdictKind.CONTINUE, "the plan holds")
    assert calls(farm.infra.state, "advisor")[0]["task"] == ADVISOR_TEMPLATE.format(
        prompt="stuck on step 3")


def consult_here(advisor: Advisor, mailbox: Mailbox) -> tuple[str, int]:
    """A farm task: an executor in a worker consults the advisor right there."""
    try:
        verdict = advisor.consult("go on?", advised(GO_ON), mailbox=mailbox).verdict.verdict
    except AdvisorExhausted as exhausted:
        return f"exhausted after {exhausted.used}", os.getpid()
    return verdict, os.getpid()


def test_uses_are_counted_atomically_across_worker_processes(any_farm: Farm) -> None:
    advisor = Advisor(ADVISOR, max_uses=3, state=any_farm.infra.state)
    with any_farm.new_mailbox() as mailbox:
        outcomes = [future.result() for future in
                    [any_farm.submit(consult_here, advisor, mailbox) for _ in range(7)]]
    assert sorted(said for said, _ in outcomes) == ["continue"] * 3 + ["exhausted after 3"] * 4
    assert advisor.used() == 3
    advisor_pids = {call["pid"] for call in calls(any_farm.infra.state, "advisor")}
    assert len(calls(any_farm.infra.state, "advisor")) == 3
    # each advisor ran in the worker that consulted it
    assert advisor_pids <= {pid for said, pid in outcomes if said == "continue"}


@pytest.mark.parametrize("reply, verdict, detail", [
    ('{"verdict": "plan", "guidance": "split it in two"}', VerdictKind.PLAN, "split it in two"),
    ('Here: {"verdict": "correction", "guidance": "use a set"}', VerdictKind.CORRECTION,
     "use a set"),
    ('```json\n{"verdict": "stop", "reason": "unsafe"}\n```', VerdictKind.STOP, "unsafe"),
    ('{"verdict": "uncertain", "reason": "no data"}', VerdictKind.UNCERTAIN, "no data"),
])
def test_verdicts(reply: str, verdict: VerdictKind, detail: str) -> None:
    assert AdvisorVerdict.from_reply(reply) == AdvisorVerdict(verdict, detail)


@pytest.mark.parametrize("reply", [
    "just keep going",                                   # not JSON
    '{"verdict": "continue"}',                           # its rationale is missing
    '{"verdict": "continue", "guidance": "x"}',          # the wrong text field
    '{"verdict": "retry", "reason": "x"}',               # no such verdict
    '["continue"]',
])
def test_a_malformed_reply_is_uncertain(reply: str) -> None:
    assert AdvisorVerdict.from_reply(reply).verdict is VerdictKind.UNCERTAIN


def test_a_malformed_reply_from_a_real_consult_is_uncertain(farm: Farm) -> None:
    """CAR case 45, part 2."""
    result = Advisor(ADVISOR, 1).consult("?", advised("{not json"), farm)
    assert result.verdict.verdict is VerdictKind.UNCERTAIN
    assert result.advisor_output.answer == "{not json"
    assert orjson.loads(result.to_json())["verdict"]["verdict"] == "uncertain"


def test_a_failed_advisor_is_uncertain(farm: Farm) -> None:
    result = Advisor(ADVISOR, 1).consult("?", ScriptedRunner(errors={"advisor": "down"}), farm)
    assert result.verdict.verdict is VerdictKind.UNCERTAIN and "down" in result.verdict.detail


def test_the_advisor_changes_no_state(farm: Farm) -> None:
    write = {"id": "p", "actions": [{"id": "w", "type": "state_write",
                                     "parameters": {"key": "plan", "value": "mine"}}]}
    runner = ScriptedRunner(answers={"advisor": GO_ON}, proposals={"advisor": [write]})
    assert Advisor(ADVISOR, 1).consult("?", runner, farm).verdict.verdict is VerdictKind.CONTINUE
    assert not farm.infra.state.exists("plan")


def test_an_advisor_the_budget_refuses_is_budget_exhausted(farm: Farm) -> None:
    advisor = Advisor(ADVISOR, 2)
    with SharedInfra() as infra:
        infra.with_budget(BudgetLimits(max_agents=0))
        with pytest.raises(BudgetExhausted):
            advisor.consult("?", advised(GO_ON), farm, infra=infra)
        assert advisor.used() == 1  # the use was claimed before the gate
        assert calls(infra.state) == []


def test_a_consult_without_a_farm_needs_a_world_and_a_mailbox() -> None:
    with pytest.raises(ValueError, match="mailbox"):
        Advisor(ADVISOR, 1).consult("?", advised(GO_ON))
    with Mailbox() as mailbox, pytest.raises(CarmpError, match="outside a farm worker"):
        Advisor(ADVISOR, 1).consult("?", advised(GO_ON), mailbox=mailbox)


def test_max_uses_must_be_a_count() -> None:
    with pytest.raises(InvalidPattern, match="max_uses"):
        Advisor(ADVISOR, -1)


POLICY = AdvisorTriggerPolicy(max_calls_per_run=2, repeated_failure_threshold=2)


@pytest.mark.parametrize("context, decision, reasons", [
    (AdvisorTriggerContext(), ConsultDecision.NO_CONSULT, ()),
    (AdvisorTriggerContext(repeated_failures=1), ConsultDecision.NO_CONSULT, ()),
    (AdvisorTriggerContext(repeated_failures=2), ConsultDecision.MUST_CONSULT,
     ("repeated_failures",)),
    (AdvisorTriggerContext(explicit_uncertainty=True, task_risk=TaskRisk.HIGH),
     ConsultDecision.MUST_CONSULT, ("explicit_uncertainty", "high_risk")),
    (AdvisorTriggerContext(task_risk=TaskRisk.MEDIUM), ConsultDecision.NO_CONSULT, ()),
    (AdvisorTriggerContext(missing_guidance=True, labels=(FINAL_CHECK_LABEL,)),
     ConsultDecision.OPTIONAL_CONSULT, ("missing_guidance", FINAL_CHECK_LABEL)),
    (AdvisorTriggerContext(repeated_failures=5, prior_advisor_calls=2),
     ConsultDecision.NO_CONSULT, ("max_calls_per_run",)),
])
def test_trigger_policy(context: AdvisorTriggerContext, decision: ConsultDecision,
                        reasons: tuple[str, ...]) -> None:
    evaluated = POLICY.evaluate(context)
    assert (evaluated.decision, evaluated.reasons) == (decision, reasons)


def test_trigger_policy_switches() -> None:
    relaxed = AdvisorTriggerPolicy(consult_on_missing_guidance=False, require_on_high_risk=False)
    context = AdvisorTriggerContext(missing_guidance=True, task_risk=TaskRisk.HIGH)
    assert relaxed.evaluate(context).decision is ConsultDecision.NO_CONSULT
    assert AdvisorTriggerPolicy().evaluate(context).decision is ConsultDecision.MUST_CONSULT
    with pytest.raises(InvalidPattern, match="repeated_failure_threshold"):
        AdvisorTriggerPolicy(repeated_failure_threshold=0)
