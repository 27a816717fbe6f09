"""The agent types of CAR-SPEC 2.3 with CAR's JSON wire shapes: AgentSpec, AgentOutput,
AgentOutcome (OutcomeStatus, Evidence, OutcomeMetrics) and budget_skipped_output; also
TokenAccounting and RunLatency (from the budget, which counts them) and Message and
MessageKind (from the mailbox, which carries them).

Reading JSON follows CAR's serde: unknown keys are ignored, a missing required field is
an InvalidAgentJson that names it, and so is a field of the wrong type (`tool_calls` is a
count, so a list is refused). An optional field may be missing or null. Writing emits
every field CAR always emits (`error` as null when unset); the optional extensions of
AgentOutput (`outcome`, `tokens`, `tools_used`) appear only when set, so the JSON of a
runner that does not use them is what older CAR releases produced. AgentOutcome is
tolerant as in CAR: only `status` is required and `timestamp` defaults to now.

Each type builds from Python too, checked the same way: `AgentOutput(name=..., ...)`
raises InvalidAgentJson for a bad field just as `AgentOutput.from_dict` does.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from carmp.errors import BudgetError, InvalidAgentJson, InvalidBudget
from carmp.shared.budget import RunLatency, TokenAccounting
from carmp.shared.mailbox import Message, MessageKind
from carmp.shared.wire import Wire

DEFAULT_MAX_TURNS = 10

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.Enum)


# ---- checking fields ------------------------------------------------------------------------


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.80}"


def _text(owner: str, name: str, value: Any, *, empty: bool = True) -> str:
    if type(value) is not str or (not empty and not value):
        wanted = "a str" if empty else "a non-empty str"
        raise InvalidAgentJson(f"{owner}.{name} must be {wanted}, got {_shown(value)}")
    return value


def _count(owner: str, name: str, value: Any, hint: str = "") -> int:
    if type(value) is not int or value < 0:
        raise InvalidAgentJson(f"{owner}.{name} must be an int >= 0{hint}, got {_shown(value)}")
    return value


def _milliseconds(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise InvalidAgentJson(f"{owner}.{name} must be a finite number of milliseconds >= 0, "
                               f"got {_shown(value)}")
    return float(value)


def _names(owner: str, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(type(v) is str for v in value):
        raise InvalidAgentJson(f"{owner}.{name} must be a list of str (tool names), got "
                               f"{_shown(value)}")
    return tuple(value)


def _json_object(owner: str, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidAgentJson(f"{owner}.{name} must be a JSON object, got {_shown(value)}")
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise InvalidAgentJson(f"{owner}.{name} must hold only JSON (dicts with str keys, "
                               f"lists, str, numbers, bools, None): {exc}") from None
    return value


def _one_of(owner: str, name: str, kind: type[_E], value: Any) -> _E:
    try:
        return kind(value)
    except ValueError:
        choices = [member.value for member in kind]
        raise InvalidAgentJson(f"{owner}.{name} must be one of {choices}, got "
                               f"{_shown(value)}") from None


def _nested(owner: str, name: str, value: Any, kind: type[_T],
            parse: Callable[[Any], _T]) -> _T:
    """A field holding another type: its instance as is, or parsed from its JSON object;
    errors say where they are."""
    if isinstance(value, kind):
        return value
    try:
        return parse(value)
    except (InvalidAgentJson, InvalidBudget) as exc:
        raise InvalidAgentJson(f"{owner}.{name}: {exc}") from None


def wire_fields(owner: str, data: Any, required: tuple[str, ...],
                 known: tuple[str, ...]) -> dict[str, Any]:
    """The fields `owner` knows from its JSON object, read as CAR's serde reads them:
    unknown keys are ignored and an optional field may be null (it keeps its default); a
    missing required field is an InvalidAgentJson naming it."""
    if not isinstance(data, Mapping):
        raise InvalidAgentJson(f"{owner} JSON must be an object, got {_shown(data)}")
    for name in required:
        if name not in data:
            raise InvalidAgentJson(f"{owner} JSON lacks the required field {name!r}")
    return {name: data[name] for name in known
            if name in data and (data[name] is not None or name in required)}


# ---- AgentSpec ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentSpec(Wire):
    """The blueprint of one agent. carmp never reads the model choice in `metadata`
    (provider, model, temperature, ...): only the runner does."""

    name: str
    system_prompt: str
    tools: tuple[str, ...] = ()
    max_turns: int = DEFAULT_MAX_TURNS
    metadata: dict[str, Any] = field(default_factory=dict)
    cache_control: bool = False  # mark the system prompt for provider prompt caching

    def __post_init__(self) -> None:
        _text("AgentSpec", "name", self.name, empty=False)
        _text("AgentSpec", "system_prompt", self.system_prompt)
        object.__setattr__(self, "tools", _names("AgentSpec", "tools", self.tools))
        _count("AgentSpec", "max_turns", self.max_turns)
        _json_object("AgentSpec", "metadata", self.metadata)
        if type(self.cache_control) is not bool:
            raise InvalidAgentJson(f"AgentSpec.cache_control must be a bool, got "
                                   f"{_shown(self.cache_control)}")

    def with_tools(self, tools: Iterable[str]) -> AgentSpec:
        """A copy that may use these tools (instead of its own)."""
        return replace(self, tools=tuple(tools))

    def with_max_turns(self, max_turns: int) -> AgentSpec:
        return replace(self, max_turns=max_turns)

    def with_metadata(self, key: str, value: Any) -> AgentSpec:
        """A copy whose metadata also holds key = value."""
        return replace(self, metadata={**self.metadata, key: value})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "system_prompt": self.system_prompt,
                "tools": list(self.tools), "max_turns": self.max_turns,
                "metadata": dict(self.metadata), "cache_control": self.cache_control}

    @classmethod
    def from_dict(cls, data: Any) -> AgentSpec:
        """CAR's shape: name and system_prompt are required; tools, max_turns (10),
        metadata and cache_control (false) default."""
        return cls(**wire_fields("AgentSpec", data, ("name", "system_prompt"), _SPEC_FIELDS))


_SPEC_FIELDS = ("name", "system_prompt", "tools", "max_turns", "metadata", "cache_control")


# ---- AgentOutcome ---------------------------------------------------------------------------


class OutcomeStatus(enum.StrEnum):
    """How an agent's run ended (car-ir), snake_case on the wire."""

    SUCCESS = "success"                  # every goal met
    PARTIAL_SUCCESS = "partial_success"  # some goals met
    GIVE_UP = "give_up"                  # the agent decided it cannot complete the task
    TIMEOUT = "timeout"                  # time or step limit reached
    FAILURE = "failure"                  # errors stopped it
    DONE = "done"                        # the agent said it is done (neutral)

    def is_completed(self) -> bool:
        """Any form of completion: everything but failure and timeout (CAR's rule; an
        agent that gave up did finish, with a conclusion)."""
        return self not in (OutcomeStatus.FAILURE, OutcomeStatus.TIMEOUT)

    def is_terminal(self) -> bool:
        """No more work is possible: everything but partial_success, which leaves goals
        that more work could meet."""
        return self is not OutcomeStatus.PARTIAL_SUCCESS


class EvidenceKind(enum.StrEnum):
    """What kind of fact supports an outcome (car-ir's EvidenceKind)."""

    SELF_ASSESSMENT = "self_assessment"              # the agent's own judgement
    TOOL_RESULT = "tool_result"                      # a tool call's result
    STATE_CHANGE = "state_change"                    # a change of the shared state
    EXTERNAL_VERIFICATION = "external_verification"  # e.g. a test that passed
    STOP_REASON = "stop_reason"                      # why execution stopped
    EVALUATOR = "evaluator"                          # a product-level evaluator's verdict


@dataclass(frozen=True, slots=True)
class Evidence(Wire):
    """One fact supporting an outcome. CAR documents the kind; `description` and `data`
    are carmp's reading of the rest (any JSON value). Unknown keys are ignored."""

    kind: EvidenceKind
    description: str = ""
    data: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _one_of("Evidence", "kind", EvidenceKind, self.kind))
        _text("Evidence", "description", self.description)
        try:
            orjson.dumps(self.data)
        except TypeError as exc:
            raise InvalidAgentJson(f"Evidence.data must be JSON: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "description": self.description, "data": self.data}

    @classmethod
    def from_dict(cls, data: Any) -> Evidence:
        return cls(**wire_fields("Evidence", data, ("kind",), ("kind", "description", "data")))


@dataclass(frozen=True, slots=True)
class OutcomeMetrics(Wire):
    """Counters of the run behind an outcome; every field defaults to 0 on the wire."""

    turns: int = 0
    tool_calls: int = 0
    duration_ms: float = 0.0
    retries: int = 0             # retries and replans attempted
    actions_succeeded: int = 0
    actions_failed: int = 0

    def __post_init__(self) -> None:
        for name in _METRIC_FIELDS:
            if name != "duration_ms":
                _count("OutcomeMetrics", name, getattr(self, name))
        object.__setattr__(self, "duration_ms",
                           _milliseconds("OutcomeMetrics", "duration_ms", self.duration_ms))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _METRIC_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> OutcomeMetrics:
        return cls(**wire_fields("OutcomeMetrics", data, (), _METRIC_FIELDS))


_METRIC_FIELDS = ("turns", "tool_calls", "duration_ms", "retries", "actions_succeeded",
                  "actions_failed")


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(value: Any) -> datetime:
    """An aware datetime from one, or from RFC 3339 text (no offset: UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidAgentJson(f"AgentOutcome.timestamp must be an RFC 3339 time such as "
                                   f"2025-01-31T12:00:00Z, got {value!r:.80}") from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidAgentJson(f"AgentOutcome.timestamp must be a timezone-aware datetime, "
                               f"got {_shown(value)}")
    return value


@dataclass(frozen=True, slots=True)
class AgentOutcome(Wire):
    """Structured completion semantics of a run (car-ir), preferred over checking an
    output's answer or error. On the wire `timestamp` is RFC 3339 in UTC; reading is
    tolerant: only `status` is required, the rest defaults (timestamp: now)."""

    status: OutcomeStatus
    summary: str = ""
    evidence: tuple[Evidence, ...] = ()
    metrics: OutcomeMetrics = field(default_factory=OutcomeMetrics)
    timestamp: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status",
                           _one_of("AgentOutcome", "status", OutcomeStatus, self.status))
        _text("AgentOutcome", "summary", self.summary)
        if not isinstance(self.evidence, (list, tuple)):
            raise InvalidAgentJson(f"AgentOutcome.evidence must be a list, got "
                                   f"{_shown(self.evidence)}")
        object.__setattr__(self, "evidence", tuple(
            _nested("AgentOutcome", f"evidence[{i}]", item, Evidence, Evidence.from_dict)
            for i, item in enumerate(self.evidence)))
        object.__setattr__(self, "metrics", _nested("AgentOutcome", "metrics", self.metrics,
                                                    OutcomeMetrics, OutcomeMetrics.from_dict))
        object.__setattr__(self, "timestamp", _timestamp(self.timestamp))

    def to_dict(self) -> dict[str, Any]:
        stamp = self.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {"status": self.status.value, "summary": self.summary,
                "evidence": [item.to_dict() for item in self.evidence],
                "metrics": self.metrics.to_dict(), "timestamp": stamp}

    @classmethod
    def from_dict(cls, data: Any) -> AgentOutcome:
        return cls(**wire_fields("AgentOutcome", data, ("status",),
                                  ("status", "summary", "evidence", "metrics", "timestamp")))


# ---- AgentOutput ----------------------------------------------------------------------------

_SUCCEEDING = (OutcomeStatus.SUCCESS, OutcomeStatus.PARTIAL_SUCCESS, OutcomeStatus.DONE)


@dataclass(frozen=True, slots=True)
class AgentOutput(Wire):
    """What one agent's run produced. `tool_calls` is a count; `tokens` is the runner's
    self-reported spend, which the budget adds up; `tools_used` lists tool names in the
    order of first use (empty when the runner does not track them)."""

    name: str
    answer: str
    turns: int
    tool_calls: int
    duration_ms: float
    error: str | None = None
    outcome: AgentOutcome | None = None
    tokens: TokenAccounting | None = None
    tools_used: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _text("AgentOutput", "name", self.name)
        _text("AgentOutput", "answer", self.answer)
        _count("AgentOutput", "turns", self.turns)
        _count("AgentOutput", "tool_calls", self.tool_calls,
               " (a count of tool calls, not a list of them)")
        object.__setattr__(self, "duration_ms",
                           _milliseconds("AgentOutput", "duration_ms", self.duration_ms))
        if self.error is not None:
            _text("AgentOutput", "error", self.error)
        if self.outcome is not None:
            object.__setattr__(self, "outcome", _nested("AgentOutput", "outcome", self.outcome,
                                                        AgentOutcome, AgentOutcome.from_dict))
        if self.tokens is not None:
            object.__setattr__(self, "tokens", _nested("AgentOutput", "tokens", self.tokens,
                                                       TokenAccounting,
                                                       TokenAccounting.from_dict))
        object.__setattr__(self, "tools_used",
                           _names("AgentOutput", "tools_used", self.tools_used))

    def succeeded(self) -> bool:
        """True when the agent reported no error and its outcome, if any, is success,
        partial_success or done. A failure, timeout or give_up outcome makes it False even
        without an error: CAR prefers the structured outcome over the error check."""
        return self.error is None and (self.outcome is None or self.outcome.status in _SUCCEEDING)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "answer": self.answer, "turns": self.turns,
                                "tool_calls": self.tool_calls, "duration_ms": self.duration_ms,
                                "error": self.error}
        if self.outcome is not None:
            data["outcome"] = self.outcome.to_dict()
        if self.tokens is not None:
            data["tokens"] = self.tokens.to_dict()
        if self.tools_used:
            data["tools_used"] = list(self.tools_used)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> AgentOutput:
        """CAR's strict shape: name, answer, turns, tool_calls (an int) and duration_ms are
        required; error, outcome, tokens and tools_used may be missing or null."""
        return cls(**wire_fields("AgentOutput", data, _REQUIRED_OUTPUT_FIELDS, _OUTPUT_FIELDS))


_REQUIRED_OUTPUT_FIELDS = ("name", "answer", "turns", "tool_calls", "duration_ms")
_OUTPUT_FIELDS = (*_REQUIRED_OUTPUT_FIELDS, "error", "outcome", "tokens", "tools_used")


def budget_skipped_output(spec: AgentSpec, err: BudgetError) -> AgentOutput:
    """The stand-in output of an agent the budget refused to start: empty answer, no turns,
    tool calls or spend, and an error naming the denial. Patterns that keep outputs in
    position (brackets, parallel fan-outs) use it, so later code sees a failed agent
    rather than a missing one."""
    return AgentOutput(name=spec.name, answer="", turns=0, tool_calls=0, duration_ms=0.0,
                       error=f"not started: the coordination budget refused it: {err}")


__all__ = [
    "DEFAULT_MAX_TURNS",
    "AgentOutcome",
    "AgentOutput",
    "AgentSpec",
    "Evidence",
    "EvidenceKind",
    "Message",
    "MessageKind",
    "OutcomeMetrics",
    "OutcomeStatus",
    "RunLatency",
    "TokenAccounting",
    "budget_skipped_output",
]
