"""AdversarialReview: a fresh reviewer judges a piece of work against acceptance criteria
(CAR-SPEC 2.11).

The reviewer knows nothing of the author: its task (REVIEW_TEMPLATE) holds only the work
output and the criteria, and the pattern is never given the author's prompt or spec to
leak. It runs in a farm worker on an isolated runtime whose overlay is dropped, so a
review never changes the shared state. It must reply with JSON findings, one per
criterion: `{"findings": [{"criterion", "passed", "evidence", "severity"}]}` (a bare list
is accepted too, and so is JSON inside a ```json fence or surrounded by prose). The
severity is blocker, major, minor or info; left out, it is info for a passed finding and
major for a failed one.

Fail closed, never open:
- an unparseable reply (no JSON, a finding without criterion or a boolean `passed`, an
  unknown severity) is one finding of severity `inconclusive`, passed false, whose
  evidence is the reply cut to EVIDENCE_LIMIT characters: "not adversarially verified";
- a reviewer that fails is the same, with its error as the evidence;
- a criterion the findings do not name gets an inconclusive finding of its own.
`passed` = at least one finding, every finding passed, and, with fail_on_blockers, no
finding of severity blocker (even one the reviewer marked passed). The reviewer is
load-bearing: refused by the budget, the review raises BudgetExhausted. The budget modes
and `timeout` are the PatternOptions of swarm.py.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from carmp.agents.patterns.common import PatternOptions, checked_spec, run_required, why_failed
from carmp.agents.runner import Runner
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import InvalidPattern
from carmp.shared.wire import JsonOut

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

EVIDENCE_LIMIT = 1024  # characters of an unparseable reply kept as evidence
# The reviewer's task: the criteria and the work, nothing about who made it or how.
REVIEW_TEMPLATE = """Review the work below against every acceptance criterion. You did not \
write it and know nothing about how it was made: judge only what is here, and look for \
what is wrong.

Acceptance criteria:
{criteria}

Work to review:
<<<WORK
{work}
WORK>>>

Reply with one JSON object and nothing else: {{"findings": [{{"criterion": <the criterion's \
text>, "passed": true or false, "evidence": <file:line, or a quote>, "severity": "blocker", \
"major", "minor" or "info"}}, ...]}}, one finding per criterion."""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def json_in_reply(reply: str) -> Any:
    """The JSON value in a model's reply: all of it, a ``` fence, or the span from the
    first '{' or '[' to the last matching bracket. ValueError when there is none."""
    text = reply.strip()
    candidates = [text, *(block.strip() for block in _FENCE.findall(text))]
    for opening, closing in (("{", "}"), ("[", "]")):
        start, end = text.find(opening), text.rfind(closing)
        if 0 <= start < end:
            candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            return orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
    raise ValueError("the reply holds no JSON value")


class ReviewSeverity(enum.StrEnum):
    BLOCKER = "blocker"
    MAJOR = "major"
    MINOR = "minor"
    INFO = "info"
    INCONCLUSIVE = "inconclusive"  # the review could not judge: neither approve nor reject


@dataclass(frozen=True, slots=True)
class ReviewFinding:
    """CAR's ReviewFinding: one criterion judged, with evidence."""

    criterion: str
    passed: bool
    evidence: str
    severity: ReviewSeverity

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "passed": self.passed, "evidence": self.evidence,
                "severity": self.severity.value}

    @classmethod
    def inconclusive(cls, criterion: str, evidence: str) -> ReviewFinding:
        return cls(criterion, False, evidence[:EVIDENCE_LIMIT], ReviewSeverity.INCONCLUSIVE)


def parse_findings(reply: str) -> list[ReviewFinding] | None:
    """The reviewer's findings, or None when the reply is not the JSON asked for."""
    try:
        found = json_in_reply(reply)
    except ValueError:
        return None
    items = found.get("findings") if isinstance(found, dict) else found
    if not isinstance(items, list):
        return None
    findings = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("criterion"), str) \
                or not isinstance(item.get("passed"), bool) \
                or not isinstance(item.get("evidence", ""), str):
            return None
        default = ReviewSeverity.INFO if item["passed"] else ReviewSeverity.MAJOR
        try:
            severity = ReviewSeverity(item.get("severity", default))
        except ValueError:
            return None
        if severity is ReviewSeverity.INCONCLUSIVE:
            return None  # the reviewer's verdicts are pass or fail; inconclusive is ours
        findings.append(ReviewFinding(item["criterion"], item["passed"],
                                      item.get("evidence", ""), severity))
    return findings


@dataclass(frozen=True, slots=True)
class AdversarialReviewResult(JsonOut):
    """CAR's AdversarialReviewResult: the reviewer's spec, the criteria, the verdict, the
    findings, the reviewer's output and how many findings are blockers."""

    spec: AgentSpec
    criteria: tuple[str, ...]
    passed: bool
    findings: tuple[ReviewFinding, ...]
    reviewer_output: AgentOutput
    blocker_count: int

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "criteria": list(self.criteria),
                "passed": self.passed, "findings": [f.to_dict() for f in self.findings],
                "reviewer_output": self.reviewer_output.to_dict(),
                "blocker_count": self.blocker_count}


@dataclass(frozen=True)
class AdversarialReview(PatternOptions):
    """A fresh reviewer, with no author context, judges work against criteria."""

    reviewer: AgentSpec
    criteria: Sequence[str]
    fail_on_blockers: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        checked_spec("AdversarialReview's reviewer", self.reviewer)
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if not self.criteria or not all(isinstance(c, str) and c.strip() for c in self.criteria):
            raise InvalidPattern("AdversarialReview needs one or more criteria, each a "
                                 "non-empty str")

    def review_task(self, work_output: str) -> str:
        criteria = "\n".join(f"{i}. {criterion}" for i, criterion in enumerate(self.criteria, 1))
        return REVIEW_TEMPLATE.format(criteria=criteria, work=work_output)

    def run(self, work_output: str, runner: Runner, farm: Farm, *,
            infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> AdversarialReviewResult:
        """Review `work_output` with a fresh reviewer in a farm worker; `infra` runs it
        against another world."""
        if not isinstance(work_output, str):
            raise TypeError(f"work_output must be a str, got {type(work_output).__name__}")
        with self.launcher(farm, runner, infra, mailbox, isolated=True) as launcher:
            output = run_required(launcher, self.reviewer, self.review_task(work_output)).output
        findings = self.findings_of(output)
        blockers = sum(finding.severity is ReviewSeverity.BLOCKER for finding in findings)
        passed = bool(findings) and all(finding.passed for finding in findings) \
            and not (self.fail_on_blockers and blockers)
        return AdversarialReviewResult(self.reviewer, tuple(self.criteria), passed,
                                       tuple(findings), output, blockers)

    def findings_of(self, output: AgentOutput) -> list[ReviewFinding]:
        """The reviewer's findings, failing closed (see the module docstring)."""
        if not output.succeeded():
            return [ReviewFinding.inconclusive("review",
                                               f"the reviewer failed: {why_failed(output)}")]
        findings = parse_findings(output.answer)
        if findings is None:
            return [ReviewFinding.inconclusive("review", output.answer)]
        named = {finding.criterion.strip() for finding in findings}
        return [*findings, *(ReviewFinding.inconclusive(criterion, "the reviewer gave no "
                                                        "finding for this criterion")
                             for criterion in self.criteria if criterion.strip() not in named)]
