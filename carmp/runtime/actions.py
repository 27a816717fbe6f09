"""Actions and proposals (CAR-SPEC 2.8): what a model proposes and what running it gave.

Wire shape (CAR's), one JSON object per proposal:

    {"id": "p1", "actions": [{"id": "a1", "type": "tool_call", "tool": "search",
                              "parameters": {"q": "x"}, "dependencies": []}, ...]}

Every field except an action's `type` has a default (ids default to fresh random hex).
An unknown field or a field of the wrong type is an InvalidProposal that names the field
and the action. State actions take fixed parameters: state_write {"key", "value"},
state_read {"key"}, assertion {"key", "expected"}; their keys are literal strings.

References to earlier results, anywhere inside `parameters` and `expected_effects` values
(never in dict keys, never in state keys):
- a whole string "$a1.output" is replaced by a1's output itself, of any JSON type;
- "$a1.output.path.0.name" by a field of it (dict keys and list indices, dot-separated);
- a reference inside a longer string ("see $a1.output.url now") is replaced by text: a
  string output as itself, anything else as its JSON.
An action may reference only its dependencies, direct or indirect (so the result exists
when it runs); `expected_effects` may also reference the action's own output. There is
no escape: text that looks like "$<id>.output" is a reference. Ids that a reference can
name are made of letters, digits, "_" and "-".

`Proposal.plan()` checks the whole graph (duplicate ids, unknown dependencies, cycles,
references) and orders it into levels: every action runs after the actions it depends
on, through `dependencies` and through `state_dependencies` (an action that lists state
key k runs after the earlier actions of the proposal that write k).
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from carmp.errors import InvalidProposal

# "$<id>.output" then any ".<segment>"s; the id class is what a reference can name.
_REFERENCE = re.compile(r"\$([A-Za-z0-9_-]+)\.output((?:\.[A-Za-z0-9_-]+)*)")


class ActionType(enum.StrEnum):
    TOOL_CALL = "tool_call"
    STATE_WRITE = "state_write"
    STATE_READ = "state_read"
    ASSERTION = "assertion"


class FailureBehavior(enum.StrEnum):
    """What a failed action does to its proposal: abort it (and roll its writes back),
    retry the action up to max_retries times first, or skip it (and its dependants)."""

    ABORT = "abort"
    RETRY = "retry"
    SKIP = "skip"


class ActionStatus(enum.StrEnum):
    """An action's own outcome. `skipped`: never attempted, because a dependency did not
    succeed or the proposal aborted first."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"


# the parameters each state action takes (required, all of them)
STATE_PARAMETERS: dict[ActionType, tuple[str, ...]] = {
    ActionType.STATE_WRITE: ("key", "value"),
    ActionType.STATE_READ: ("key",),
    ActionType.ASSERTION: ("key", "expected"),
}


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Action:
    """One typed step of a proposal. Lists given for the id tuples are turned into tuples."""

    id: str
    type: ActionType
    tool: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dependencies: tuple[str, ...] = ()
    state_dependencies: tuple[str, ...] = ()
    expected_effects: dict[str, Any] = field(default_factory=dict)
    idempotent: bool = False
    max_retries: int = 3
    failure_behavior: FailureBehavior = FailureBehavior.ABORT
    timeout_ms: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _action_problems(self)
        if problems:
            raise InvalidProposal(None, tuple((_id_or_none(self.id), p) for p in problems))

    @classmethod
    def from_dict(cls, data: object, index: int = 0) -> Action:
        """An action from its wire form; InvalidProposal names each bad field."""
        action_id = _wire_id(data)
        if not isinstance(data, Mapping):
            raise InvalidProposal(None, ((None, f"action #{index} must be a JSON object, "
                                          f"not {type(data).__name__}"),))
        unknown = sorted(set(data) - _WIRE_FIELDS)
        if unknown:
            raise InvalidProposal(None, ((action_id, f"unknown field(s) "
                                          f"{', '.join(map(repr, unknown))} (known fields: "
                                          f"{', '.join(sorted(_WIRE_FIELDS))})"),))
        if "type" not in data:
            raise InvalidProposal(None, ((action_id, "field 'type' is missing; it is one of "
                                          f"{_choices(ActionType)}"),))
        values = dict(data)
        values.setdefault("id", _new_id())
        for name in ("dependencies", "state_dependencies"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(value) if isinstance(value, tuple) else value
                for f in fields(self) for value in (getattr(self, f.name),)}

    def writes(self) -> tuple[str, ...]:
        """The state keys this action writes when it succeeds."""
        written = tuple(self.expected_effects)
        return (self.parameters["key"], *written) if self.type is ActionType.STATE_WRITE \
            else written


_WIRE_FIELDS = frozenset(f.name for f in fields(Action))


@dataclass(frozen=True)
class Proposal:
    """A batch of actions with dependencies, run by Runtime.execute()."""

    id: str = field(default_factory=_new_id)
    actions: tuple[Action, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.id) is not str or not self.id:
            raise InvalidProposal(None, ((None, f"proposal field 'id' must be a non-empty "
                                          f"string, got {self.id!r}"),))
        if isinstance(self.actions, list):
            object.__setattr__(self, "actions", tuple(self.actions))
        if type(self.actions) is not tuple or not all(isinstance(a, Action) for a in self.actions):
            raise InvalidProposal(self.id, ((None, "proposal field 'actions' must be a list of "
                                             "actions"),))
        if type(self.metadata) is not dict:
            raise InvalidProposal(self.id, ((None, "proposal field 'metadata' must be a JSON "
                                             f"object, got {type(self.metadata).__name__}"),))

    @classmethod
    def from_dict(cls, data: object) -> Proposal:
        """A proposal from its wire form; InvalidProposal lists every bad action."""
        if not isinstance(data, Mapping):
            raise InvalidProposal(None, ((None, "a proposal must be a JSON object with "
                                          f"'actions', not {type(data).__name__}"),))
        proposal_id = data.get("id")
        if proposal_id is None:
            proposal_id = _new_id()
        unknown = sorted(set(data) - {"id", "actions", "metadata"})
        if unknown:
            raise InvalidProposal(_id_or_none(proposal_id), (
                (None, f"unknown proposal field {unknown[0]!r} (known fields: actions, id, "
                       "metadata)"),))
        raw_actions = data.get("actions", [])
        if not isinstance(raw_actions, list):
            raise InvalidProposal(_id_or_none(proposal_id), (
                (None, "proposal field 'actions' must be a list, not "
                       f"{type(raw_actions).__name__}"),))
        actions: list[Action] = []
        problems: list[tuple[str | None, str]] = []
        for index, raw in enumerate(raw_actions):
            try:
                actions.append(Action.from_dict(raw, index))
            except InvalidProposal as bad:
                problems.extend(bad.problems)
        if problems:
            raise InvalidProposal(_id_or_none(proposal_id), tuple(problems))
        try:
            return cls(id=proposal_id, actions=tuple(actions), metadata=data.get("metadata", {}))
        except InvalidProposal as bad:
            raise InvalidProposal(_id_or_none(proposal_id), bad.problems) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Proposal:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidProposal(None, ((None, f"the proposal is not valid JSON: {exc}"),)) \
                from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "actions": [a.to_dict() for a in self.actions],
                "metadata": self.metadata}

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    def plan(self) -> Plan:
        """The actions in dependency levels; InvalidProposal with every problem of the
        graph."""
        problems: list[tuple[str | None, str]] = []
        by_id: dict[str, Action] = {}
        for action in self.actions:
            if action.id in by_id:
                problems.append((action.id, f"id {action.id!r} is used by more than one "
                                            "action; give each action its own id"))
            by_id[action.id] = action
        parents = self._parents(by_id, problems)
        if problems:
            raise InvalidProposal(self.id, tuple(problems))
        levels = _topological_levels(self.actions, parents)
        if levels is None:
            raise InvalidProposal(self.id, tuple(
                (a.id, "is part of a dependency cycle; dependencies must form a DAG")
                for a in _cycle_members(self.actions, parents)))
        ancestors = _ancestors(levels, parents)
        for action in self.actions:
            for where, allowed in (("parameters", ancestors[action.id]),
                                   ("expected_effects", ancestors[action.id] | {action.id})):
                for name in sorted(references(getattr(action, where))):
                    if name not in allowed:
                        problems.append((action.id, _bad_reference(action.id, name, where,
                                                                   name in by_id)))
        if problems:
            raise InvalidProposal(self.id, tuple(problems))
        return Plan(levels, {key: frozenset(value) for key, value in parents.items()})

    def _parents(self, by_id: Mapping[str, Action],
                 problems: list[tuple[str | None, str]]) -> dict[str, set[str]]:
        parents: dict[str, set[str]] = {}
        writers: dict[str, list[str]] = {}  # state key -> earlier actions that write it
        for action in self.actions:
            own = parents.setdefault(action.id, set())
            for dependency in action.dependencies:
                if dependency not in by_id:
                    problems.append((action.id, f"depends on {dependency!r}, which is not an "
                                                "action of this proposal"))
                elif dependency == action.id:
                    problems.append((action.id, "depends on itself"))
                own.add(dependency)
            for key in action.state_dependencies:
                own.update(writers.get(key, ()))
            for key in action.writes():
                writers.setdefault(key, []).append(action.id)
        return parents


@dataclass(frozen=True, slots=True)
class Plan:
    """A proposal's order: `levels` run one after another, each action only after its
    `parents` (the actions it depends on through dependencies or state_dependencies)."""

    levels: list[list[Action]]
    parents: dict[str, frozenset[str]]


@dataclass(frozen=True)
class ActionResult:
    action_id: str
    status: ActionStatus
    output: Any = None
    error: str | None = None
    attempts: int = 0             # tool or state operation runs, retries included
    duration_ms: float = 0.0
    deduplicated: bool = False    # the output came from the idempotency cache

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ProposalResult:
    """What execute() did. On abort, `rolled_back` lists the keys restored to their
    value before the proposal, `rollback_conflicts` the keys it wrote that someone else
    changed since, which were left as they are."""

    proposal_id: str
    results: tuple[ActionResult, ...]
    aborted: bool = False
    error: str | None = None
    rolled_back: tuple[str, ...] = ()
    rollback_conflicts: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        """True when every action succeeded."""
        return all(r.status is ActionStatus.SUCCEEDED for r in self.results)

    @property
    def outputs(self) -> dict[str, Any]:
        """action id -> output, for the actions that succeeded."""
        return {r.action_id: r.output for r in self.results
                if r.status is ActionStatus.SUCCEEDED}

    def result(self, action_id: str) -> ActionResult:
        for result in self.results:
            if result.action_id == action_id:
                return result
        raise KeyError(f"proposal {self.proposal_id!r} has no action {action_id!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"proposal_id": self.proposal_id, "aborted": self.aborted, "error": self.error,
                "rolled_back": list(self.rolled_back),
                "rollback_conflicts": list(self.rollback_conflicts),
                "results": [r.to_dict() for r in self.results]}


# ---- references --------------------------------------------------------------------------


def references(value: Any) -> set[str]:
    """The action ids that `value` (parameters, effects) references."""
    found: set[str] = set()
    for text in _strings(value):
        found.update(match.group(1) for match in _REFERENCE.finditer(text))
    return found


def resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
    """`value` with every reference replaced from `outputs` (action id -> output);
    LookupError naming the reference when a field path is missing."""
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value)
        if whole is not None:
            return _field(outputs, whole)
        if "$" not in value:
            return value
        return _REFERENCE.sub(lambda m: _as_text(_field(outputs, m)), value)
    if isinstance(value, list):
        return [resolve(item, outputs) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, outputs) for key, item in value.items()}
    return value


def _field(outputs: Mapping[str, Any], match: re.Match[str]) -> Any:
    value = outputs[match.group(1)]
    for segment in match.group(2).split(".")[1:]:
        if isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise LookupError(f"{match.group(0)!r}: the output of {match.group(1)!r} has no "
                              f"field {segment!r}")
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _bad_reference(action_id: str, name: str, where: str, exists: bool) -> str:
    if not exists:
        return (f"{where} reference '${name}.output' names no action of this proposal, so "
                "there is no such result")
    return (f"{where} reference '${name}.output' names an action that is not among "
            f"{action_id!r}'s dependencies (direct or indirect), so its result may not "
            f"exist yet; add {name!r} to dependencies")


# ---- the graph ---------------------------------------------------------------------------


def _topological_levels(actions: tuple[Action, ...],
                        parents: Mapping[str, set[str]]) -> list[list[Action]] | None:
    """Kahn's levels in proposal order; None when there is a cycle."""
    placed: set[str] = set()
    levels: list[list[Action]] = []
    remaining = list(actions)
    while remaining:
        level = [a for a in remaining if parents[a.id] <= placed]
        if not level:
            return None
        levels.append(level)
        placed.update(a.id for a in level)
        remaining = [a for a in remaining if a.id not in placed]
    return levels


def _cycle_members(actions: tuple[Action, ...],
                   parents: Mapping[str, set[str]]) -> list[Action]:
    """The actions on a cycle (those that can reach themselves)."""
    def reaches(start: str, target: str) -> bool:
        seen, stack = set(), list(parents[start])
        while stack:
            current = stack.pop()
            if current == target:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(parents[current])
        return False
    return [a for a in actions if reaches(a.id, a.id)]


def _ancestors(levels: list[list[Action]],
               parents: Mapping[str, set[str]]) -> dict[str, set[str]]:
    ancestors: dict[str, set[str]] = {}
    for level in levels:
        for action in level:
            ancestors[action.id] = set().union(
                *(ancestors[p] | {p} for p in parents[action.id]))
    return ancestors


# ---- field checks --------------------------------------------------------------------------


def _action_problems(action: Action) -> list[str]:
    """What is wrong with an action's fields (coercing enum names on the way)."""
    problems = []
    if type(action.id) is not str or not action.id:
        problems.append(f"field 'id' must be a non-empty string, got {action.id!r}")
    for name, kind in (("type", ActionType), ("failure_behavior", FailureBehavior)):
        value = getattr(action, name)
        try:
            object.__setattr__(action, name, kind(value))
        except (ValueError, TypeError):
            problems.append(f"field {name!r} must be one of {_choices(kind)}, got {value!r}")
    for name in ("parameters", "expected_effects", "metadata"):
        value = getattr(action, name)
        if type(value) is not dict:
            problems.append(f"field {name!r} must be a JSON object, got {type(value).__name__}")
    for name in ("dependencies", "state_dependencies"):
        value = getattr(action, name)
        if isinstance(value, list):
            object.__setattr__(action, name, value := tuple(value))
        if type(value) is not tuple or not all(type(v) is str and v for v in value):
            problems.append(f"field {name!r} must be a list of non-empty strings, got {value!r}")
    if type(action.idempotent) is not bool:
        problems.append(f"field 'idempotent' must be true or false, got {action.idempotent!r}")
    if type(action.max_retries) is not int or action.max_retries < 0:
        problems.append(f"field 'max_retries' must be an int >= 0, got {action.max_retries!r}")
    if action.timeout_ms is not None and (type(action.timeout_ms) is not int
                                          or action.timeout_ms <= 0):
        problems.append(f"field 'timeout_ms' must be an int > 0 or null, got "
                        f"{action.timeout_ms!r}")
    if type(action.expected_effects) is dict and not all(
            type(k) is str and k for k in action.expected_effects):
        problems.append("field 'expected_effects' must map non-empty state keys to values")
    if not problems:
        problems.extend(_typed_problems(action))
    return problems


def _typed_problems(action: Action) -> list[str]:
    """What is wrong with the tool and parameters for this action's type."""
    if action.type is ActionType.TOOL_CALL:
        if type(action.tool) is not str or not action.tool:
            return [f"field 'tool' must name a tool for a tool_call, got {action.tool!r}"]
        return []
    if action.tool is not None:
        return [f"field 'tool' is only for tool_call actions, not {action.type.value}"]
    wanted = STATE_PARAMETERS[action.type]
    given = set(action.parameters)
    if given != set(wanted):
        missing, extra = sorted(set(wanted) - given), sorted(given - set(wanted))
        detail = "; ".join(part for part in (
            f"missing {', '.join(map(repr, missing))}" if missing else "",
            f"unknown {', '.join(map(repr, extra))}" if extra else "") if part)
        return [f"field 'parameters' of a {action.type.value} must be exactly "
                f"{{{', '.join(map(repr, wanted))}}} ({detail})"]
    key = action.parameters["key"]
    if type(key) is not str or not key:
        return [f"parameter 'key' must be a non-empty string, got {key!r}"]
    return []


def _choices(kind: type[enum.StrEnum]) -> str:
    return ", ".join(repr(member.value) for member in kind)


def _wire_id(data: object) -> str | None:
    return _id_or_none(data.get("id")) if isinstance(data, Mapping) else None


def _id_or_none(value: object) -> str | None:
    return value if type(value) is str else None
