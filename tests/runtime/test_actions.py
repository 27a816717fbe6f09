"""Actions and proposals: CAR's wire shape, field errors that name the field and the
action, `$<id>.output` references, and the dependency plan."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from carmp import (
    Action,
    ActionResult,
    ActionStatus,
    ActionType,
    FailureBehavior,
    InvalidProposal,
    Proposal,
    ProposalResult,
)
from carmp.runtime.actions import references, resolve


def tool_call(action_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": action_id, "type": "tool_call", "tool": "t", **fields}


# ---- the wire shape --------------------------------------------------------------------------


def test_a_proposal_round_trips_through_cars_wire_shape() -> None:
    wire = {"id": "p1", "actions": [
        {"id": "a1", "type": "tool_call", "tool": "search", "parameters": {"q": "x"},
         "dependencies": []},
        {"id": "a2", "type": "state_write", "parameters": {"key": "k", "value": [1, {"b": None}]},
         "dependencies": ["a1"], "state_dependencies": ["other"], "idempotent": True,
         "max_retries": 5, "failure_behavior": "retry", "timeout_ms": 250,
         "expected_effects": {"done": True}, "metadata": {"why": "test"}},
    ]}
    proposal = Proposal.from_json(orjson.dumps(wire))
    second = proposal.actions[1]
    assert second.type is ActionType.STATE_WRITE and second.dependencies == ("a1",)
    assert second.failure_behavior is FailureBehavior.RETRY and second.timeout_ms == 250
    again = Proposal.from_json(proposal.to_json())
    assert again == proposal
    assert again.to_dict()["actions"][1] == {**wire["actions"][1], "tool": None}  # type: ignore[index]


def test_every_field_but_type_has_a_default() -> None:
    proposal = Proposal.from_dict({"actions": [{"type": "tool_call", "tool": "t"}]})
    action = proposal.actions[0]
    assert proposal.id and action.id and action.id != proposal.id
    assert (action.parameters, action.dependencies, action.state_dependencies) == ({}, (), ())
    assert (action.idempotent, action.max_retries, action.failure_behavior, action.timeout_ms,
            action.expected_effects, action.metadata) == (False, 3, FailureBehavior.ABORT,
                                                          None, {}, {})
    assert Proposal.from_dict({}).actions == ()


@pytest.mark.parametrize("field, value, said", [
    ("type", "shell", "field 'type' must be one of 'tool_call', 'state_write'"),
    ("failure_behavior", "explode", "field 'failure_behavior' must be one of 'abort'"),
    ("parameters", [1], "field 'parameters' must be a JSON object, got list"),
    ("dependencies", "a0", "field 'dependencies' must be a list of non-empty strings"),
    ("dependencies", [""], "field 'dependencies' must be a list of non-empty strings"),
    ("state_dependencies", [3], "field 'state_dependencies' must be a list"),
    ("idempotent", 1, "field 'idempotent' must be true or false, got 1"),
    ("max_retries", -1, "field 'max_retries' must be an int >= 0, got -1"),
    ("max_retries", True, "field 'max_retries' must be an int >= 0, got True"),
    ("timeout_ms", 0, "field 'timeout_ms' must be an int > 0 or null, got 0"),
    ("timeout_ms", 1.5, "field 'timeout_ms' must be an int > 0 or null"),
    ("expected_effects", {"": 1}, "field 'expected_effects' must map non-empty state keys"),
    ("metadata", "x", "field 'metadata' must be a JSON object, got str"),
    ("tool", "", "field 'tool' must name a tool for a tool_call"),
    ("colour", "red", "unknown field(s) 'colour'"),
])
def test_a_bad_field_is_named_with_its_action(field: str, value: Any, said: str) -> None:
    with pytest.raises(InvalidProposal) as caught:
        Proposal.from_dict({"id": "p", "actions": [tool_call("good"), tool_call("bad", **{field: value})]})
    assert caught.value.proposal_id == "p"
    assert [action_id for action_id, _ in caught.value.problems] == ["bad"]
    assert said in caught.value.problems[0][1]
    assert "action 'bad'" in str(caught.value) and "nothing of it ran" in str(caught.value)


def test_every_bad_action_is_reported_at_once() -> None:
    with pytest.raises(InvalidProposal) as caught:
        Proposal.from_dict({"actions": [tool_call("a", max_retries="3"), {"id": "b"},
                                        "not an object"]})
    problems = caught.value.problems
    assert [p[0] for p in problems] == ["a", "b", None]
    assert "field 'type' is missing" in problems[1][1]
    assert "action #2 must be a JSON object, not str" in problems[2][1]


@pytest.mark.parametrize("wire, said", [
    ([], "a proposal must be a JSON object"),
    ({"actions": {}}, "proposal field 'actions' must be a list"),
    ({"id": 7, "actions": []}, "proposal field 'id' must be a non-empty string"),
    ({"actions": [], "author": "me"}, "unknown proposal field 'author'"),
    ({"actions": [], "metadata": []}, "proposal field 'metadata' must be a JSON object"),
])
def test_a_bad_proposal_shape_is_refused(wire: Any, said: str) -> None:
    with pytest.raises(InvalidProposal, match=said):
        Proposal.from_dict(wire)


def test_bad_json_is_refused() -> None:
    with pytest.raises(InvalidProposal, match="not valid JSON"):
        Proposal.from_json('{"actions": [')


@pytest.mark.parametrize("action, said", [
    ({"type": "state_write", "parameters": {"key": "k"}}, "missing 'value'"),
    ({"type": "state_read", "parameters": {"key": "k", "value": 1}}, "unknown 'value'"),
    ({"type": "assertion", "parameters": {"key": "k"}}, "missing 'expected'"),
    ({"type": "state_read", "parameters": {"key": 5}}, "parameter 'key' must be a non-empty string"),
    ({"type": "state_read", "tool": "t", "parameters": {"key": "k"}}, "only for tool_call"),
])
def test_state_actions_take_exactly_their_parameters(action: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidProposal, match=said):
        Proposal.from_dict({"actions": [{"id": "s", **action}]})


def test_actions_built_in_code_are_checked_and_normalised() -> None:
    action = Action("a1", "state_write", parameters={"key": "k", "value": 1},  # type: ignore[arg-type]
                    dependencies=["a0"], failure_behavior="skip")  # type: ignore[arg-type]
    assert action.type is ActionType.STATE_WRITE and action.dependencies == ("a0",)
    assert action.failure_behavior is FailureBehavior.SKIP and action.writes() == ("k",)
    with pytest.raises(InvalidProposal, match="field 'max_retries'"):
        Action("a1", ActionType.TOOL_CALL, tool="t", max_retries=-2)
    assert Proposal(actions=[action]).actions == (action,)  # type: ignore[arg-type]


# ---- references ---------------------------------------------------------------------------


OUTPUTS = {"a1": {"path": "/tmp/x", "items": [{"name": "first"}, 2], "n": 3}, "a-2": "text"}


def test_a_whole_string_reference_is_replaced_by_the_value_itself() -> None:
    assert resolve("$a1.output", OUTPUTS) == OUTPUTS["a1"]
    assert resolve("$a1.output.n", OUTPUTS) == 3
    assert resolve("$a1.output.items.0.name", OUTPUTS) == "first"
    assert resolve({"deep": ["$a-2.output", 1]}, OUTPUTS) == {"deep": ["text", 1]}


def test_an_embedded_reference_interpolates_text() -> None:
    assert resolve("open $a1.output.path/y now", OUTPUTS) == "open /tmp/x/y now"
    assert resolve("n=$a1.output.n, items=$a1.output.items.1.", OUTPUTS) == "n=3, items=2."
    assert resolve("all: $a1.output.items", OUTPUTS) == 'all: [{"name":"first"},2]'
    assert resolve("costs $5 and $a-2.output", OUTPUTS) == "costs $5 and text"


def test_a_missing_field_of_a_result_is_named() -> None:
    with pytest.raises(LookupError, match="'a1' has no field 'nope'"):
        resolve("$a1.output.nope", OUTPUTS)
    with pytest.raises(LookupError, match="has no field '7'"):
        resolve("x $a1.output.items.7", OUTPUTS)


def test_references_are_found_in_values_only() -> None:
    assert references({"$a.output": "$b.output.x", "l": ["pre $c.output post", 4]}) == {"b", "c"}


# ---- the plan ------------------------------------------------------------------------------


def levels_of(proposal: Proposal) -> list[list[str]]:
    return [[a.id for a in level] for level in proposal.plan().levels]


def test_levels_follow_dependencies_and_state_dependencies() -> None:
    proposal = Proposal.from_dict({"actions": [
        tool_call("fetch"),
        {"id": "save", "type": "state_write", "parameters": {"key": "doc", "value": "$fetch.output"},
         "dependencies": ["fetch"]},
        tool_call("independent"),
        tool_call("use", state_dependencies=["doc"]),      # after the writer of "doc"
        tool_call("effects", expected_effects={"seen": 1}),
        tool_call("reader", state_dependencies=["seen", "unwritten"]),
    ]})
    assert levels_of(proposal) == [["fetch", "independent", "effects"], ["save", "reader"], ["use"]]
    assert proposal.plan().parents["use"] == frozenset({"save"})


@pytest.mark.parametrize("actions, expected", [
    ([tool_call("a"), tool_call("a")], [("a", "id 'a' is used by more than one action")]),
    ([tool_call("a", dependencies=["ghost"])], [("a", "depends on 'ghost', which is not an action")]),
    ([tool_call("a", dependencies=["a"])], [("a", "depends on itself")]),
    ([tool_call("a", dependencies=["b"]), tool_call("b", dependencies=["c"]),
      tool_call("c", dependencies=["a"]), tool_call("free")],
     [("a", "dependency cycle"), ("b", "dependency cycle"), ("c", "dependency cycle")]),
    ([tool_call("a"), tool_call("b", parameters={"x": "$a.output"})],
     [("b", "names an action that is not among 'b''s dependencies")]),
    ([tool_call("b", parameters={"x": "see $ghost.output"})],
     [("b", "'$ghost.output' names no action of this proposal")]),
    ([tool_call("a"), tool_call("b", expected_effects={"k": "$a.output"})],
     [("b", "expected_effects reference '$a.output' names an action that is not among")]),
])
def test_graph_problems_are_refused(actions: list[dict[str, Any]],
                                    expected: list[tuple[str, str]]) -> None:
    proposal = Proposal.from_dict({"id": "p", "actions": actions})
    with pytest.raises(InvalidProposal) as caught:
        proposal.plan()
    problems = caught.value.problems
    assert [p[0] for p in problems] == [e[0] for e in expected]
    for (_, reason), (_, said) in zip(problems, expected):
        assert said in reason


def test_references_to_indirect_dependencies_and_to_its_own_output_in_effects_are_fine() -> None:
    proposal = Proposal.from_dict({"actions": [
        tool_call("a"), tool_call("b", dependencies=["a"]),
        tool_call("c", dependencies=["b"], parameters={"x": "$a.output"},
                  expected_effects={"k": "$c.output", "j": "$b.output"}),
    ]})
    assert levels_of(proposal) == [["a"], ["b"], ["c"]]


# ---- results -------------------------------------------------------------------------------------


def test_a_proposal_result_answers_questions_and_is_json() -> None:
    result = ProposalResult("p", (
        ActionResult("a", ActionStatus.SUCCEEDED, {"v": 1}, attempts=1),
        ActionResult("b", ActionStatus.FAILED, error="boom", attempts=3),
        ActionResult("c", ActionStatus.SKIPPED, error="not run"),
    ), aborted=True, error="action 'b' failed: boom", rolled_back=("k",))
    assert not result.succeeded and result.outputs == {"a": {"v": 1}}
    assert result.result("b").error == "boom"
    with pytest.raises(KeyError, match="no action 'z'"):
        result.result("z")
    assert orjson.loads(orjson.dumps(result.to_dict()))["results"][1]["status"] == "failed"
