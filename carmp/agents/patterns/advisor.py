"""Advisor: a stronger model consulted on demand for a bounded verdict (CAR-SPEC 2.11).

The executor keeps control. `consult(prompt, runner, farm)` runs the advisor agent on
ADVISOR_TEMPLATE (the prompt, then the verdicts it may give) and reads its reply as one
JSON object `{"verdict", "rationale" | "guidance" | "reason"}`: continue{rationale},
plan{guidance}, correction{guidance}, stop{reason} or uncertain{reason}. A reply that is
not such an object (no JSON, an unknown verdict, its text field missing or empty), and an
advisor that failed, read as uncertain, never as a success. The advisor owns no task and
changes nothing: it runs on an isolated runtime whose overlay is dropped.

Uses are counted atomically across processes: the counter is a key of the shared state
store (`advisor:<name>:<id>:used`) raised by compare-and-set, in the store the Advisor
was built with (`state=`), or else the store of the world its first consult ran in. An
Advisor pickles, counter binding included, so an executor agent in a worker may consult
it too: without a farm, `consult` runs the advisor right there, in the caller's process,
against `infra` or the worker's world, with the caller's mailbox. A consult claims its
use before it starts the advisor; past max_uses it raises AdvisorExhausted{used,
max_uses} and starts nothing. The advisor is load-bearing for its consult: refused by the
budget, the consult raises BudgetExhausted (its use stays counted). A consult passes
CAR's gate only: the budget modes of the other patterns do not apply to it.

AdvisorTriggerPolicy.evaluate(context) tells an executor whether to consult:
no_consult once prior_advisor_calls reached max_calls_per_run; else must_consult for
repeated failures (at least repeated_failure_threshold), explicit uncertainty, or
high-risk work (when require_on_high_risk); else optional_consult when no approved
guidance matched (when consult_on_missing_guidance) or for a final completion check (the
label FINAL_CHECK_LABEL); else no_consult. The decision lists every reason that applied.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.adversarial_review import json_in_reply
from carmp.agents.patterns.delegator import run_sub_agent, world
from carmp.agents.patterns.common import as_exhausted, checked_spec, run_required, why_failed
from carmp.agents.runner import AgentLauncher, Runner
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import AdvisorExhausted, BudgetError, InvalidPattern
from carmp.shared.wire import JsonOut

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox
    from carmp.shared.state import StateStore

# The advisor's task: the executor's prompt, then the verdicts it may give.
ADVISOR_TEMPLATE = """An executor agent asks for your advice. You give a verdict; you do \
not act, use tools or change anything.

{prompt}

Reply with exactly one JSON object: {{"verdict": "continue", "rationale": <why>}} to go on \
as planned, {{"verdict": "plan", "guidance": <the plan>}}, {{"verdict": "correction", \
"guidance": <what to change>}}, {{"verdict": "stop", "reason": <why>}}, or \
{{"verdict": "uncertain", "reason": <why>}} when you cannot tell."""
FINAL_CHECK_LABEL = "final_completion_check"


class VerdictKind(enum.StrEnum):
    CONTINUE = "continue"
    PLAN = "plan"
    CORRECTION = "correction"
    STOP = "stop"
    UNCERTAIN = "uncertain"

    @property
    def detail_field(self) -> str:
        """The JSON field that carries this verdict's text."""
        return _DETAIL_FIELDS[self]


_DETAIL_FIELDS = {VerdictKind.CONTINUE: "rationale", VerdictKind.PLAN: "guidance",
                  VerdictKind.CORRECTION: "guidance", VerdictKind.STOP: "reason",
                  VerdictKind.UNCERTAIN: "reason"}


@dataclass(frozen=True, slots=True)
class AdvisorVerdict:
    """CAR's AdvisorVerdict: the verdict and its rationale, guidance or reason."""

    verdict: VerdictKind
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, self.verdict.detail_field: self.detail}

    @classmethod
    def uncertain(cls, reason: str) -> AdvisorVerdict:
        return cls(VerdictKind.UNCERTAIN, reason)

    @classmethod
    def from_reply(cls, reply: str) -> AdvisorVerdict:
        """The verdict in an advisor's reply; uncertain when it is malformed."""
        try:
            found = json_in_reply(reply)
        except ValueError:
            return cls.uncertain(f"the advisor's reply is not JSON: {reply[:200]!r}")
        if not isinstance(found, dict) or found.get("verdict") not in set(VerdictKind):
            return cls.uncertain(f"the advisor's reply names no verdict of "
                                 f"{[v.value for v in VerdictKind]}: {reply[:200]!r}")
        verdict = VerdictKind(found["verdict"])
        detail = found.get(verdict.detail_field)
        if not isinstance(detail, str) or not detail.strip():
            return cls.uncertain(f"the advisor's {verdict.value} verdict lacks its "
                                 f"{verdict.detail_field!r} text: {reply[:200]!r}")
        return cls(verdict, detail)


@dataclass(frozen=True, slots=True)
class AdvisorResult(JsonOut):
    """CAR's AdvisorResult: the verdict, the advisor's output, and the uses so far (this
    one included) of how many allowed."""

    verdict: AdvisorVerdict
    advisor_output: AgentOutput
    used: int
    max_uses: int

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "advisor_output": self.advisor_output.to_dict(),
                "used": self.used, "max_uses": self.max_uses}


class Advisor:
    """An advisor agent that may be consulted at most `max_uses` times, from any process."""

    def __init__(self, advisor: AgentSpec, max_uses: int = 3, *,
                 state: StateStore | None = None) -> None:
        if type(max_uses) is not int or max_uses < 0:
            raise InvalidPattern(f"max_uses must be an int >= 0, got {max_uses!r}")
        self.advisor = checked_spec("Advisor's advisor", advisor)
        self.max_uses = max_uses
        self.key = f"advisor:{advisor.name}:{uuid.uuid4().hex}:used"
        self._state = state

    def used(self) -> int:
        """Consults so far, in every process."""
        return 0 if self._state is None else int(self._state.get(self.key) or 0)

    def _claim(self, state: StateStore) -> int:
        """Count one use atomically; AdvisorExhausted when none is left."""
        if self._state is None:
            self._state = state
        while True:
            used, version = self._state.get_with_version(self.key)
            used = used or 0
            if used >= self.max_uses:
                raise AdvisorExhausted(used, self.max_uses)
            if self._state.compare_and_set(self.key, version, used + 1, "advisor"):
                return int(used + 1)

    def consult(self, prompt: str, runner: Runner, farm: Farm | None = None, *,
                infra: SharedInfra | None = None, mailbox: Mailbox | None = None,
                timeout: float | None = None) -> AdvisorResult:
        """Ask the advisor: in a farm worker when `farm` is given (`infra` runs it against
        another world, `timeout` bounds it), else here, inside a worker (or against
        `infra`), with the caller's `mailbox`."""
        task = ADVISOR_TEMPLATE.format(prompt=prompt)
        if farm is not None:
            with AgentLauncher(farm, runner, infra=infra, isolated=True, mailbox=mailbox,
                               timeout=timeout) as launcher:
                used = self._claim(launcher.infra.state)
                output = run_required(launcher, self.advisor, task).output
        else:
            if mailbox is None or timeout is not None:
                raise ValueError("a consult without a farm runs in this process: pass the "
                                 "caller's mailbox= and no timeout=, or pass farm=")
            here = world(infra)
            used = self._claim(here.state)
            try:
                output = run_sub_agent(runner, self.advisor, task, here, mailbox,
                                       isolated=True).output
            except BudgetError as refusal:
                raise as_exhausted(refusal, here)
        verdict = AdvisorVerdict.from_reply(output.answer) if output.succeeded() \
            else AdvisorVerdict.uncertain(f"the advisor failed: {why_failed(output)}")
        return AdvisorResult(verdict, output, used, self.max_uses)


# ---- when to consult ------------------------------------------------------------------------


class TaskRisk(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class ConsultDecision(enum.StrEnum):
    NO_CONSULT = "no_consult"
    OPTIONAL_CONSULT = "optional_consult"
    MUST_CONSULT = "must_consult"


@dataclass(frozen=True, slots=True)
class AdvisorTriggerContext:
    """Where the executor stands when it wonders whether to consult."""

    repeated_failures: int = 0
    explicit_uncertainty: bool = False
    missing_guidance: bool = False
    prior_advisor_calls: int = 0
    task_risk: TaskRisk = TaskRisk.LOW
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_risk", TaskRisk(self.task_risk))
        object.__setattr__(self, "labels", tuple(self.labels))


@dataclass(frozen=True, slots=True)
class TriggerDecision:
    decision: ConsultDecision
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdvisorTriggerPolicy:
    """When an executor should consult its advisor (see the module docstring)."""

    max_calls_per_run: int = 3
    repeated_failure_threshold: int = 2
    consult_on_missing_guidance: bool = True
    require_on_high_risk: bool = True

    def __post_init__(self) -> None:
        if type(self.max_calls_per_run) is not int or self.max_calls_per_run < 0:
            raise InvalidPattern(f"max_calls_per_run must be an int >= 0, got "
                             f"{self.max_calls_per_run!r}")
        if type(self.repeated_failure_threshold) is not int or self.repeated_failure_threshold < 1:
            raise InvalidPattern(f"repeated_failure_threshold must be an int >= 1, got "
                             f"{self.repeated_failure_threshold!r}")

    def evaluate(self, context: AdvisorTriggerContext) -> TriggerDecision:
        if context.prior_advisor_calls >= self.max_calls_per_run:
            return TriggerDecision(ConsultDecision.NO_CONSULT, ("max_calls_per_run",))
        must = [reason for reason, applies in (
            ("repeated_failures", context.repeated_failures >= self.repeated_failure_threshold),
            ("explicit_uncertainty", context.explicit_uncertainty),
            ("high_risk", self.require_on_high_risk and context.task_risk is TaskRisk.HIGH),
        ) if applies]
        if must:
            return TriggerDecision(ConsultDecision.MUST_CONSULT, tuple(must))
        optional = [reason for reason, applies in (
            ("missing_guidance", self.consult_on_missing_guidance and context.missing_guidance),
            (FINAL_CHECK_LABEL, FINAL_CHECK_LABEL in context.labels),
        ) if applies]
        if optional:
            return TriggerDecision(ConsultDecision.OPTIONAL_CONSULT, tuple(optional))
        return TriggerDecision(ConsultDecision.NO_CONSULT)
