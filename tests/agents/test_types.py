"""Agent types: CAR's cases 13-16 (CAR-SPEC 3), the JSON wire shapes and their round
trips, refusals naming the field, the tolerant outcome, and budget_skipped_output."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from carmp import (
    AdvisorExhausted,
    AgentFailed,
    AgentLimit,
    AgentOutcome,
    AgentOutput,
    AgentSpec,
    BudgetError,
    BudgetExhausted,
    BudgetLimits,
    BudgetSnapshot,
    CarmpError,
    ConcurrencyAbort,
    Evidence,
    EvidenceKind,
    InvalidAgentJson,
    InvalidBudget,
    MailboxSend,
    MailboxTimeout,
    MaxRoundsExceeded,
    MultiError,
    NoOutput,
    OutcomeMetrics,
    OutcomeStatus,
    RunLatency,
    TokenAccounting,
    UnknownSpecialist,
    budget_skipped_output,
)
from carmp.agents import types

# The AgentOutput of CAR's SPEC.md, as a runner returns it.
CAR_OUTPUT = {"name": "reviewer", "answer": "...final answer text...", "turns": 1,
              "tool_calls": 0, "duration_ms": 100.0, "error": None}
REQUIRED_OUTPUT_FIELDS = ("name", "answer", "turns", "tool_calls", "duration_ms")


def output(**changes: Any) -> AgentOutput:
    return AgentOutput.from_dict({**CAR_OUTPUT, **changes})


# ---- AgentSpec (case 13) ---------------------------------------------------------------------


def test_agent_spec_defaults_are_cars() -> None:
    for spec in (AgentSpec("a", "be brief"),
                 AgentSpec.from_dict({"name": "a", "system_prompt": "be brief"})):
        assert spec.max_turns == 10 == types.DEFAULT_MAX_TURNS
        assert spec.tools == () and spec.metadata == {} and spec.cache_control is False


def test_agent_spec_builders_return_changed_copies() -> None:
    spec = AgentSpec("a", "p")
    built = spec.with_tools(["grep", "read_file"]).with_max_turns(5) \
        .with_metadata("model", "m1").with_metadata("temperature", 0.3)
    assert built.tools == ("grep", "read_file") and built.max_turns == 5
    assert built.metadata == {"model": "m1", "temperature": 0.3}
    assert spec == AgentSpec("a", "p")  # the original is unchanged
    assert built.with_tools(["x"]).tools == ("x",)  # replaces, as CAR's with_tools does


def test_agent_spec_round_trips_cars_wire_shape() -> None:
    wire = {"name": "reviewer", "system_prompt": "You review code.", "tools": ["grep"],
            "max_turns": 5, "metadata": {"model": "m", "temperature": 0.3},
            "cache_control": True}
    spec = AgentSpec.from_json(orjson.dumps({**wire, "unknown": "ignored"}))
    assert spec.to_dict() == wire
    assert AgentSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("bad, field", [
    ({"system_prompt": "p"}, "name"), ({"name": "a"}, "system_prompt"),
    ({"name": "", "system_prompt": "p"}, "name"),
    ({"name": "a", "system_prompt": "p", "tools": "grep"}, "tools"),
    ({"name": "a", "system_prompt": "p", "max_turns": "5"}, "max_turns"),
    ({"name": "a", "system_prompt": "p", "max_turns": -1}, "max_turns"),
    ({"name": "a", "system_prompt": "p", "metadata": []}, "metadata"),
    ({"name": "a", "system_prompt": "p", "cache_control": 1}, "cache_control"),
])
def test_bad_agent_specs_are_refused_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidAgentJson, match=f"'?{field}'?"):
        AgentSpec.from_dict(bad)


def test_agent_spec_metadata_must_be_json() -> None:
    with pytest.raises(InvalidAgentJson, match="metadata"):
        AgentSpec("a", "p", metadata={"client": object()})
    with pytest.raises(InvalidAgentJson, match="not valid JSON"):
        AgentSpec.from_json("{")
    with pytest.raises(InvalidAgentJson, match="object"):
        AgentSpec.from_json("[1]")


# ---- AgentOutput (cases 14, 15) ------------------------------------------------------------------


def test_agent_output_reads_cars_strict_shape_and_writes_it_back() -> None:
    out = AgentOutput.from_json(orjson.dumps(CAR_OUTPUT))
    assert (out.name, out.turns, out.tool_calls, out.duration_ms, out.error) == \
        ("reviewer", 1, 0, 100.0, None)
    assert out.to_dict() == CAR_OUTPUT  # no optional extension appears when unset
    assert output(error="boom").to_dict()["error"] == "boom"


def test_tool_calls_given_as_a_list_is_refused() -> None:
    with pytest.raises(InvalidAgentJson, match="tool_calls") as caught:
        output(tool_calls=[{"tool": "grep"}])
    assert "count" in str(caught.value)


@pytest.mark.parametrize("missing", REQUIRED_OUTPUT_FIELDS)
def test_a_missing_required_output_field_is_refused_naming_it(missing: str) -> None:
    wire = {k: v for k, v in CAR_OUTPUT.items() if k != missing}
    with pytest.raises(InvalidAgentJson, match=f"'{missing}'"):
        AgentOutput.from_dict(wire)


@pytest.mark.parametrize("field, value", [
    ("name", 3), ("answer", None), ("turns", True), ("turns", 1.5), ("tool_calls", "2"),
    ("duration_ms", "fast"), ("duration_ms", -1), ("error", 5), ("tools_used", "grep"),
    ("tools_used", [1]), ("outcome", "done"), ("tokens", [1, 2]),
])
def test_wrong_output_field_types_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidAgentJson, match=f"AgentOutput.{field}"):
        output(**{field: value})


def test_optional_output_fields_may_be_missing_or_null() -> None:
    bare = {k: v for k, v in CAR_OUTPUT.items() if k != "error"}
    assert AgentOutput.from_dict(bare).error is None
    out = output(outcome=None, tokens=None, tools_used=None, response="ignored")
    assert (out.outcome, out.tokens, out.tools_used) == (None, None, ())
    assert output(duration_ms=7).duration_ms == 7.0  # an int is a number of milliseconds


def test_a_full_agent_output_round_trips() -> None:
    full = AgentOutput(
        name="a", answer="42", turns=3, tool_calls=2, duration_ms=12.5,
        outcome=AgentOutcome(OutcomeStatus.PARTIAL_SUCCESS, "half",
                             (Evidence(EvidenceKind.TOOL_RESULT, "grep found it", {"n": 1}),),
                             OutcomeMetrics(turns=3, tool_calls=2, duration_ms=12.5)),
        tokens=TokenAccounting(10, 20, 0.01).with_latency(8.0, 3),
        tools_used=("grep", "read_file"))
    wire = orjson.loads(full.to_json())
    assert wire["tools_used"] == ["grep", "read_file"]
    assert wire["tokens"] == {"input_tokens": 10, "output_tokens": 20, "cost_usd": 0.01,
                              "latency": {"generation_ms": 8.0, "ttft_ms": 3}}
    assert wire["outcome"]["status"] == "partial_success"
    assert AgentOutput.from_json(full.to_json()) == full
    assert pickle.loads(pickle.dumps(full)) == full


def test_succeeded_is_false_when_error_is_set() -> None:
    assert output().succeeded()
    assert not output(error="the model refused").succeeded()


@pytest.mark.parametrize("status, succeeded", [
    ("success", True), ("partial_success", True), ("done", True),
    ("failure", False), ("timeout", False), ("give_up", False),
])
def test_a_failing_outcome_also_makes_succeeded_false(status: str, succeeded: bool) -> None:
    assert output(outcome={"status": status}).succeeded() is succeeded


# ---- AgentOutcome ------------------------------------------------------------------------------


def test_outcome_status_is_snake_case_with_cars_predicates() -> None:
    assert [s.value for s in OutcomeStatus] == ["success", "partial_success", "give_up",
                                                "timeout", "failure", "done"]
    completed = {s.value for s in OutcomeStatus if s.is_completed()}
    terminal = {s.value for s in OutcomeStatus if s.is_terminal()}
    assert completed == {"success", "partial_success", "give_up", "done"}
    assert terminal == {"success", "give_up", "timeout", "failure", "done"}


def test_outcome_reading_is_tolerant() -> None:
    before = datetime.now(UTC)
    outcome = AgentOutcome.from_dict({"status": "success", "tools_called": ["x"]})
    assert (outcome.summary, outcome.evidence, outcome.metrics) == ("", (), OutcomeMetrics())
    assert before <= outcome.timestamp <= datetime.now(UTC)  # defaults to now
    harness = AgentOutcome.from_dict({
        "status": "failure", "summary": None, "evidence": [{"kind": "stop_reason"}],
        "metrics": {"turns": 4, "tool_calls": 2, "actions_succeeded": 1, "actions_failed": 1},
        "timestamp": "2025-01-31T12:00:00.123456789Z"})
    assert harness.evidence == (Evidence(EvidenceKind.STOP_REASON),)
    assert harness.metrics == OutcomeMetrics(turns=4, tool_calls=2, actions_succeeded=1,
                                             actions_failed=1)
    assert harness.timestamp == datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)


def test_outcome_writes_every_field_and_round_trips() -> None:
    stamp = datetime(2025, 6, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    outcome = AgentOutcome("done", "ok", metrics=OutcomeMetrics(retries=1), timestamp=stamp)
    wire = outcome.to_dict()
    assert wire == {"status": "done", "summary": "ok", "evidence": [],
                    "metrics": {"turns": 0, "tool_calls": 0, "duration_ms": 0.0, "retries": 1,
                                "actions_succeeded": 0, "actions_failed": 0},
                    "timestamp": "2025-06-01T06:30:00Z"}
    assert AgentOutcome.from_json(outcome.to_json()) == outcome


@pytest.mark.parametrize("bad, where", [
    ({}, "'status'"), ({"status": "won"}, "status"), ({"status": 1}, "status"),
    ({"status": "done", "evidence": {}}, "evidence"),
    ({"status": "done", "evidence": [{"kind": "hunch"}]}, r"evidence\[0\]"),
    ({"status": "done", "metrics": {"turns": -1}}, "turns"),
    ({"status": "done", "timestamp": "yesterday"}, "timestamp"),
    ({"status": "done", "timestamp": 5}, "timestamp"),
])
def test_bad_outcomes_are_refused_naming_the_field(bad: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidAgentJson, match=where):
        AgentOutcome.from_dict(bad)


def test_evidence_and_metrics_round_trip_on_their_own() -> None:
    evidence = Evidence("external_verification", "tests passed", [1, 2])
    assert evidence.kind is EvidenceKind.EXTERNAL_VERIFICATION
    assert Evidence.from_json(evidence.to_json()) == evidence
    metrics = OutcomeMetrics(1, 2, 3.5, 4, 5, 6)
    assert OutcomeMetrics.from_json(metrics.to_json()) == metrics


# ---- TokenAccounting and RunLatency -----------------------------------------------------------


def test_token_accounting_json_shows_latency_only_when_measured() -> None:
    plain = TokenAccounting(3, 4, 0.5)
    assert orjson.loads(plain.to_json()) == {"input_tokens": 3, "output_tokens": 4,
                                             "cost_usd": 0.5}
    timed = plain.with_latency(120.0)
    assert timed.latency == RunLatency(120.0, None) and timed.total_tokens == 7
    assert orjson.loads(timed.to_json())["latency"] == {"generation_ms": 120.0, "ttft_ms": None}
    for tokens in (plain, timed):
        assert TokenAccounting.from_json(tokens.to_json()) == tokens
    assert RunLatency.from_json(RunLatency(1.5, 2).to_json()) == RunLatency(1.5, 2)


@pytest.mark.parametrize("bad", [
    {"input_tokens": 1, "output_tokens": 2}, {"input_tokens": 1, "output_tokens": 2,
                                              "cost_usd": "free"},
    {"input_tokens": 1, "output_tokens": 2, "cost_usd": 0, "latency": {"ttft_ms": 3}},
    {"input_tokens": 1, "output_tokens": 2, "cost_usd": 0,
     "latency": {"generation_ms": 1, "ttft_ms": -3}},
])
def test_bad_token_accounting_json_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidBudget):
        TokenAccounting.from_dict(bad)
    with pytest.raises(InvalidAgentJson, match="AgentOutput.tokens"):
        output(tokens=bad)


def test_the_budget_counts_an_agent_outputs_tokens() -> None:
    from carmp import CoordinationBudget

    with CoordinationBudget(BudgetLimits(max_total_tokens=100)) as budget:
        budget.record_output(output(tokens={"input_tokens": 60, "output_tokens": 50,
                                            "cost_usd": 0.0}))
        budget.record_output(output())  # no tokens: no spend
        assert budget.snapshot().total_tokens == 110 and budget.snapshot().exhausted


# ---- MultiError (case 16) --------------------------------------------------------------------


def snapshot() -> BudgetSnapshot:
    return BudgetSnapshot(110, 0, 110, 0.0, 2, BudgetLimits(max_total_tokens=100), True)


@pytest.mark.parametrize("error, car_text", [
    (AgentFailed("writer", "the model refused"), "agent writer failed: the model refused"),
    (AdvisorExhausted(used=2, max_uses=2), "advisor exhausted: used 2 of 2"),
    (MailboxSend("no agent 'bob'"), "mailbox send error: no agent 'bob'"),
    (MailboxTimeout("bob"), "mailbox recv timeout for agent bob"),
    (UnknownSpecialist("lawyer"), "unknown specialist: lawyer"),
    (NoOutput(), "no agents produced output"),
    (MaxRoundsExceeded(3), "max rounds exceeded: 3"),
    (ConcurrencyAbort("write skew on k"), "concurrency abort: write skew on k"),
    (BudgetExhausted("total tokens 110 reached the limit of 100", snapshot()),
     "coordination budget exhausted: total tokens 110 reached the limit of 100"),
])
def test_multi_errors_start_with_cars_display_text(error: MultiError, car_text: str) -> None:
    assert str(error).startswith(car_text)
    assert isinstance(error, MultiError) and isinstance(error, CarmpError)
    copy = pickle.loads(pickle.dumps(error))  # errors travel home from workers
    assert type(copy) is type(error) and str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def test_budget_exhausted_is_both_a_budget_error_and_a_multi_error() -> None:
    error = BudgetExhausted("cost reached the limit", snapshot())
    assert isinstance(error, BudgetError) and isinstance(error, BudgetError.Exhausted)
    with pytest.raises(MultiError):
        raise error
    assert (error.reason, error.snapshot) == ("cost reached the limit", snapshot())


def test_multi_error_variants_keep_cars_fields() -> None:
    assert AgentFailed("w", "m").name == "w" and AgentFailed("w", "m").msg == "m"
    assert AdvisorExhausted(1, 3).used == 1 and AdvisorExhausted(1, 3).max_uses == 3
    assert MailboxTimeout("bob").agent == "bob" and MaxRoundsExceeded(4).n == 4
    assert UnknownSpecialist("x").name == "x" and ConcurrencyAbort("r").reason == "r"
    assert isinstance(MailboxTimeout("bob"), TimeoutError)
    assert isinstance(UnknownSpecialist("x"), LookupError)


# ---- budget_skipped_output ---------------------------------------------------------------------


@pytest.mark.parametrize("denial", [
    AgentLimit(max=2, started=2),
    BudgetExhausted("total tokens 110 reached the limit of 100", snapshot()),
])
def test_budget_skipped_output_stands_in_for_an_agent_never_started(denial: BudgetError) -> None:
    spec = AgentSpec("third", "p")
    skipped = budget_skipped_output(spec, denial)
    assert (skipped.name, skipped.answer, skipped.turns, skipped.tool_calls,
            skipped.duration_ms, skipped.tokens, skipped.outcome) == \
        ("third", "", 0, 0, 0.0, None, None)
    assert skipped.error is not None and "budget" in skipped.error
    assert str(denial) in skipped.error
    assert not skipped.succeeded()
    assert AgentOutput.from_json(skipped.to_json()) == skipped


def test_the_agent_namespace_offers_message_and_token_types() -> None:
    from carmp import Message, MessageKind

    assert types.Message is Message and types.MessageKind is MessageKind
    assert types.TokenAccounting is TokenAccounting and types.RunLatency is RunLatency
