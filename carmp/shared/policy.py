"""PolicySet: declarative policy rules in one shared segment, so that a rule any process
adds binds the next check of every process attached to the set (CAR-SPEC 2.7).

Rule kinds (those CAR's bindings expose, plus a shared call cap):

- `deny_tool`: every call of `tool` is refused.
- `deny_tool_param`: a call of `tool` is refused when its parameter `key` contains
  `pattern` (regex=True: when `re.search` finds it). A value that is not a str is matched
  as its JSON text.
- `require_state`: an action (of any tool, or only of `tool`) is refused unless state key
  `key` exists and, when a `value` is given, holds it (compared as canonical JSON).
- `max_calls`: at most `limit` calls of `tool` per run, counted across every process that
  shares the set. A call is claimed with one bounded atomic add, so the limit is exact.

How it holds up across processes: the rules are a JSON list in one of two buffers. A
writer holds the set's RobustLock, writes the new list into the idle buffer, then switches
buffers and bumps the version in one crash-atomic word write, so a writer killed anywhere
leaves the old rules or the new ones. Readers keep the parsed rules with the version they
read: a check costs one atomic load while nothing changed, and re-reads the rules (under
the lock) only after the version moved.

Each max_calls rule owns a call counter word holding `serial << 40 | calls`, where the
serial is unique to the rule. A claim adds 1 bounded by `serial << 40 | limit`, so a
process still holding the rules of an older version can never count against a newer rule
that took over the counter: the larger serial makes its add fail, and it re-reads the
rules and tries again.

Payload layout (offsets from the payload start, 8-byte little-endian words):

    offset    size                      field
    0         8                         version: bumped by every change of the rules
    8         8                         active buffer (0 or 1)
    16        8                         capacity of each rule buffer, bytes
    24        8                         call counters (max_calls rules the set can hold)
    32        8                         next counter serial
    40        16                        buffer 0: JSON length, CRC32C of the JSON
    56        16                        buffer 1: JSON length, CRC32C of the JSON
    128       RobustLock.size(8)        the writers' lock
    COUNTERS  8 * call counters         serial << 40 | calls (0: never used)
    BUFFERS   2 * capacity              the rule lists: [{rule fields..., "slot", "serial"}]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

from carmp import _native
from carmp.errors import InvalidPolicy, PolicyNotFound, PolicySetFull, SegmentCorrupt
from carmp.shared.lock import RobustLock
from carmp.shared.segment import HEADER_SIZE, Segment, store_bytes

LAYOUT_VERSION = 1
KIND = "policy"
DEFAULT_CAPACITY_BYTES = 64 * 1024
DEFAULT_CALL_COUNTERS = 256
UNDO_CAPACITY = 8
COUNT_BITS = 40
MAX_LIMIT = (1 << COUNT_BITS) - 1
MAX_SERIAL = (1 << (64 - COUNT_BITS)) - 1

_P = HEADER_SIZE
VERSION = _P
ACTIVE = _P + 8
CAPACITY = _P + 16
CALL_COUNTERS = _P + 24
NEXT_SERIAL = _P + 32
BUFFER_INFO = _P + 40  # + 16 * buffer: length, then CRC32C
LOCK = _P + 128
COUNTERS = LOCK + RobustLock.size(UNDO_CAPACITY)

RuleKind = Literal["deny_tool", "deny_tool_param", "require_state", "max_calls"]
RULE_KINDS: tuple[RuleKind, ...] = ("deny_tool", "deny_tool_param", "require_state", "max_calls")


class _AnyValue:
    def __repr__(self) -> str:
        return "ANY_VALUE"

    def __reduce__(self) -> str:
        return "ANY_VALUE"  # pickles as the one ANY_VALUE, so rules keep `is ANY_VALUE`


ANY_VALUE: Any = _AnyValue()
"""A require_state rule's `value` when it asks only that the key exists."""

_ABSENT: Any = object()


# ---- what rules are checked against ---------------------------------------------------------


class PolicyAction(Protocol):
    """What a rule reads of an action (carmp's Action, or anything shaped like it)."""

    @property
    def id(self) -> str: ...
    @property
    def tool(self) -> str | None: ...
    @property
    def parameters(self) -> Mapping[str, Any]: ...


class StateView(Protocol):
    """What a require_state rule reads: a StateStore or an AgentContext overlay."""

    def get_or(self, key: str, default: Any) -> Any: ...


@runtime_checkable
class SharedPolicies(Protocol):
    """The run's shared rules as a PolicyEngine and its users see them: a PolicySet here,
    or a client of one hosted elsewhere (the Ray backend's RayPolicySet). `version` is
    left out: isinstance() on Python 3.11 reads every member, and a client's version is
    a call to its actor."""

    @property
    def name(self) -> str: ...
    def rules(self) -> list[Rule]: ...
    def denied_tools(self) -> list[str]: ...
    def calls(self, rule_or_tool: str) -> int: ...
    def statistics(self) -> PolicyStatistics: ...
    def evaluate(self, action: PolicyAction,
                 state: StateView | None) -> list[PolicyViolation]: ...
    def claim(self, action: PolicyAction) -> list[PolicyViolation]: ...
    def add(self, rule: Rule) -> Rule: ...
    def remove(self, name: str) -> int: ...
    def add_deny_tool(self, name: str, tool: str, description: str = "") -> Rule: ...
    def add_deny_tool_param(self, name: str, tool: str, key: str, pattern: str, *,
                            regex: bool = False, description: str = "") -> Rule: ...
    def add_require_state(self, name: str, key: str, value: Any = ANY_VALUE, *,
                          tool: str | None = None, description: str = "") -> Rule: ...
    def add_max_calls(self, name: str, tool: str, limit: int,
                      description: str = "") -> Rule: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PolicyViolation:
    """One refusal: which policy, of which action, and why."""

    policy_name: str
    action_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"policy_name": self.policy_name, "action_id": self.action_id,
                "reason": self.reason}


# ---- rules ----------------------------------------------------------------------------------


def segment_size(capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
                 call_counters: int = DEFAULT_CALL_COUNTERS) -> int:
    """The /dev/shm bytes (header included) of a policy set of this geometry, so a world
    can check that all its segments fit before it creates any."""
    return COUNTERS + 8 * call_counters + 2 * _whole_words(capacity_bytes)


def _whole_words(size: int) -> int:
    return (size + 7) // 8 * 8


def _text(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidPolicy(f"{what} must be a non-empty str, got {value!r}")
    return value


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


_FIELDS_OF_KIND: dict[str, frozenset[str]] = {
    "deny_tool": frozenset({"tool"}),
    "deny_tool_param": frozenset({"tool", "key", "pattern", "regex"}),
    "require_state": frozenset({"key", "value", "tool"}),
    "max_calls": frozenset({"tool", "limit"}),
}
_KIND_FIELD_DEFAULTS: dict[str, Any] = {"tool": None, "key": None, "pattern": None,
                                        "regex": False, "value": ANY_VALUE, "limit": None}


@dataclass(frozen=True, slots=True)
class Rule:
    """One declarative rule; fields its kind does not use keep their defaults. Building
    one checks it, so a bad rule fails here (InvalidPolicy) and never reaches the set."""

    name: str
    kind: RuleKind
    description: str = ""
    tool: str | None = None
    key: str | None = None
    pattern: str | None = None
    regex: bool = False
    value: Any = ANY_VALUE
    limit: int | None = None

    def __post_init__(self) -> None:
        _text("a policy name", self.name)
        if self.kind not in RULE_KINDS:
            raise InvalidPolicy(f"policy {self.name!r}: kind must be one of {RULE_KINDS}, "
                                f"got {self.kind!r}")
        if not isinstance(self.description, str):
            raise InvalidPolicy(f"policy {self.name!r}: description must be a str, got "
                                f"{self.description!r}")
        what = f"policy {self.name!r} ({self.kind})"
        takes = _FIELDS_OF_KIND[self.kind]
        extra = [f for f, default in _KIND_FIELD_DEFAULTS.items()
                 if f not in takes and getattr(self, f) is not default]
        if extra:
            raise InvalidPolicy(f"{what} does not take {', '.join(extra)}; it takes "
                                f"{', '.join(sorted(takes))}")
        if self.kind != "require_state" or self.tool is not None:
            _text(f"{what}: tool", self.tool)
        if self.kind in ("deny_tool_param", "require_state"):
            _text(f"{what}: key", self.key)
        if self.kind == "deny_tool_param":
            self._check_pattern(what)
        if self.value is not ANY_VALUE:
            try:
                _canonical(self.value)
            except TypeError as exc:
                raise InvalidPolicy(f"{what}: the required value is not JSON ({exc}); use "
                                    "dicts, lists, str, int, float, bool or None") from None
        if self.kind == "max_calls" and (isinstance(self.limit, bool)
                                         or not isinstance(self.limit, int)
                                         or not 0 <= self.limit <= MAX_LIMIT):
            raise InvalidPolicy(f"{what}: limit must be an int from 0 to {MAX_LIMIT}, got "
                                f"{self.limit!r}")

    def _check_pattern(self, what: str) -> None:
        _text(f"{what}: pattern", self.pattern)
        if not isinstance(self.regex, bool):
            raise InvalidPolicy(f"{what}: regex must be a bool, got {self.regex!r}")
        if self.regex:
            assert self.pattern is not None
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise InvalidPolicy(f"{what}: pattern {self.pattern!r} is not a valid regular "
                                    f"expression ({exc}); fix it, or pass regex=False to match "
                                    "it as plain text") from None

    @property
    def match(self) -> Literal["substring", "regex"]:
        """How a deny_tool_param pattern matches."""
        return "regex" if self.regex else "substring"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: name, kind, description and the fields the kind uses."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind,
                                "description": self.description}
        for field in ("tool", "key", "pattern", "limit"):
            if getattr(self, field) is not None:
                data[field] = getattr(self, field)
        if self.kind == "deny_tool_param":
            data["regex"] = self.regex
        if self.value is not ANY_VALUE:
            data["value"] = self.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        if not isinstance(data, Mapping):
            raise InvalidPolicy(f"a rule must be a JSON object, got {type(data).__name__}")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        if unknown or "name" not in data or "kind" not in data:
            raise InvalidPolicy(f"a rule needs name and kind and takes only {sorted(fields)}; "
                                f"got {sorted(data)}")
        return cls(**data)


class _Compiled:
    """A rule as this process checks it: pattern compiled, value canonical, counter placed."""

    __slots__ = ("rule", "search", "required", "slot", "serial", "counter", "ceiling")

    def __init__(self, rule: Rule, slot: int, serial: int, counters: int) -> None:
        self.rule = rule
        self.search = re.compile(rule.pattern).search if rule.regex and rule.pattern else None
        self.required = None if rule.value is ANY_VALUE else _canonical(rule.value)
        self.slot, self.serial = slot, serial
        self.counter = COUNTERS + 8 * slot
        self.ceiling = (serial << COUNT_BITS) | (rule.limit or 0)
        if rule.kind == "max_calls" and not (0 <= slot < counters and 0 < serial <= MAX_SERIAL):
            raise ValueError(f"max_calls rule {rule.name!r} has counter slot {slot}, serial {serial}")

    def calls(self, word: int) -> int:
        """This rule's count in its counter word (0 when the word belongs to another rule)."""
        return word & MAX_LIMIT if word >> COUNT_BITS == self.serial else 0

    def violation(self, action: PolicyAction, state: StateView | None,
                  load: Callable[[int], int]) -> str | None:
        """Why this rule refuses the action, or None."""
        rule = self.rule
        if rule.kind == "require_state":
            return self._missing_state(action, state)
        if action.tool != rule.tool:
            return None
        if rule.kind == "deny_tool":
            return f"tool {rule.tool!r} is denied"
        if rule.kind == "max_calls":
            calls = self.calls(load(self.counter))
            return self.limit_reason() if calls >= (rule.limit or 0) else None
        assert rule.key is not None and rule.pattern is not None
        parameters = action.parameters
        if rule.key not in parameters:
            return None
        value = parameters[rule.key]
        text = value if isinstance(value, str) else _json_text(value)
        found = self.search(text) is not None if self.search else rule.pattern in text
        if not found:
            return None
        verb = "matches" if rule.regex else "contains"
        return f"parameter {rule.key!r} of tool {rule.tool!r} {verb} {rule.pattern!r}"

    def _missing_state(self, action: PolicyAction, state: StateView | None) -> str | None:
        rule = self.rule
        if rule.tool is not None and action.tool != rule.tool:
            return None
        wanted = "" if self.required is None else f" == {self.required.decode()}"
        if state is None:
            return f"requires state key {rule.key!r}{wanted}, but no state was given"
        assert rule.key is not None
        value = state.get_or(rule.key, _ABSENT)
        if value is _ABSENT:
            return f"requires state key {rule.key!r}{wanted}, which is absent"
        if self.required is not None and _canonical(value) != self.required:
            return f"requires state key {rule.key!r}{wanted}, but it is {_json_text(value)}"
        return None

    def limit_reason(self) -> str:
        return f"tool {self.rule.tool!r} reached its limit of {self.rule.limit} calls this run"


def _json_text(value: Any) -> str:
    try:
        return _canonical(value).decode()
    except TypeError:
        return repr(value)


@dataclass(frozen=True, slots=True)
class _Rules:
    """The parsed rules of one version, as this process checks them."""

    version: int
    ordered: tuple[_Compiled, ...]
    counted: Mapping[str, tuple[_Compiled, ...]]  # tool -> its max_calls rules


def compile_rules(version: int, entries: list[tuple[Rule, int, int]],
                  call_counters: int) -> _Rules:
    """Rules with their counter slots and serials, as a process checks them (also the Ray
    backend's clients, which check a copy of the rules). ValueError: a bad counter."""
    ordered = tuple(_Compiled(rule, slot, serial, call_counters) for rule, slot, serial in entries)
    counted: dict[str, tuple[_Compiled, ...]] = {}
    for compiled in ordered:
        if compiled.rule.kind == "max_calls" and compiled.rule.tool is not None:
            counted[compiled.rule.tool] = counted.get(compiled.rule.tool, ()) + (compiled,)
    return _Rules(version, ordered, counted)


def violations(rules: _Rules, action: PolicyAction, state: StateView | None,
               load: Callable[[int], int]) -> list[PolicyViolation]:
    """Every rule that refuses the action; `load` reads a max_calls counter word."""
    found = []
    for compiled in rules.ordered:
        reason = compiled.violation(action, state, load)
        if reason is not None:
            rule = compiled.rule
            if rule.description:
                reason = f"{reason}: {rule.description}"
            found.append(PolicyViolation(rule.name, action.id, reason))
    return found


@dataclass(frozen=True, slots=True)
class PolicyStatistics:
    rules: int
    version: int
    bytes_used: int        # JSON bytes of the current rule list
    capacity_bytes: int    # the most it may take
    counters_used: int     # max_calls rules
    call_counters: int     # the most max_calls rules the set holds
    lock_recoveries: int


# ---- the set --------------------------------------------------------------------------------


class PolicySet:
    """Rules shared by every process of a run; pickles by name and re-attaches elsewhere."""

    def __init__(self, *, capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
                 call_counters: int = DEFAULT_CALL_COUNTERS, run_id: str | None = None,
                 _segment: Segment | None = None) -> None:
        if _segment is not None:
            self._bind(_segment)
            return
        for what, value, low in (("capacity_bytes", capacity_bytes, 64),
                                 ("call_counters", call_counters, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidPolicy(f"{what} must be an int >= {low}, got {value!r}")
        capacity = _whole_words(capacity_bytes)
        size = segment_size(capacity_bytes, call_counters) - HEADER_SIZE
        segment = Segment.create(KIND, size, layout_version=LAYOUT_VERSION, run_id=run_id)
        try:
            region = segment.region
            region.store(CAPACITY, capacity)
            region.store(CALL_COUNTERS, call_counters)
            region.store(NEXT_SERIAL, 1)
            RobustLock(region, LOCK, undo_capacity=UNDO_CAPACITY).initialize()
            self._bind(segment)
            segment.mark_ready()
        except BaseException:
            segment.close()
            raise

    @classmethod
    def attach(cls, name: str) -> PolicySet:
        """Attach the policy segment `name` created by another process."""
        return cls(_segment=Segment.attach(name, kind=KIND, layout_version=LAYOUT_VERSION))

    def _bind(self, segment: Segment) -> None:
        self._segment = segment
        region = segment.region
        self.capacity_bytes = region.load(CAPACITY)
        self.call_counters = region.load(CALL_COUNTERS)
        self._buffers = COUNTERS + 8 * self.call_counters
        if self._buffers + 2 * self.capacity_bytes != segment.size:
            raise SegmentCorrupt(
                f"policy segment {segment.name}: {self.call_counters} counters and "
                f"{self.capacity_bytes}-byte buffers do not add up to its {segment.size} bytes; "
                "remove it with `carmp cleanup` and recreate the set")
        self._lock = RobustLock(region, LOCK, undo_capacity=UNDO_CAPACITY,
                                label=f"policy lock of {segment.name}")
        self._rules = _Rules(-1, (), {})  # version -1: read on first use
        # bound natives for the hot paths
        self._load = region.load
        self._add_bounded = region.add_bounded

    @property
    def name(self) -> str:
        return self._segment.name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (PolicySet.attach, (self._segment.name,))

    def close(self) -> None:
        """Detach; in the creating process this also removes the segment."""
        self._segment.close()

    def __enter__(self) -> PolicySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._segment.closed:
            return f"<PolicySet {self.name} closed>"
        return f"<PolicySet {self.name} version={self.version}>"

    # ---- reads ------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Grows by one with every change of the rules."""
        return self._load(VERSION)

    def _current(self) -> _Rules:
        rules = self._rules
        if self._load(VERSION) != rules.version:
            with self._lock:
                version = self._load(VERSION)
                rules = self._compile(version, self._read_locked())
            self._rules = rules
        return rules

    def _compile(self, version: int, entries: list[tuple[Rule, int, int]]) -> _Rules:
        try:
            return compile_rules(version, entries, self.call_counters)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None

    def _corrupt(self, what: str) -> SegmentCorrupt:
        return SegmentCorrupt(f"policy segment {self.name}: {what}; remove it with `carmp "
                              "cleanup` and recreate the set")

    def _read_locked(self) -> list[tuple[Rule, int, int]]:
        """The current rules with their counter slots and serials (lock held)."""
        active = self._load(ACTIVE)
        if active > 1:
            raise self._corrupt(f"active buffer word is {active}, not 0 or 1")
        length, crc = self._load(BUFFER_INFO + 16 * active), self._load(BUFFER_INFO + 16 * active + 8)
        if length == 0:
            return []
        if length > self.capacity_bytes:
            raise self._corrupt(f"rule list length {length} exceeds the {self.capacity_bytes}-byte buffer")
        data = self._segment.region.read(self._buffers + active * self.capacity_bytes, length)
        if _native.crc32c(data) != crc:
            raise self._corrupt("the rule list fails its CRC32C")
        try:
            stored = orjson.loads(data)
            entries = []
            for item in stored:
                fields = dict(item)
                slot, serial = fields.pop("slot", -1), fields.pop("serial", 0)
                if not isinstance(slot, int) or not isinstance(serial, int):
                    raise InvalidPolicy(f"counter slot {slot!r} and serial {serial!r}")
                entries.append((Rule.from_dict(fields), slot, serial))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise self._corrupt(f"unreadable rule list ({exc})") from None
        return entries

    def rules(self) -> list[Rule]:
        """Every rule, oldest first."""
        return [compiled.rule for compiled in self._current().ordered]

    def denied_tools(self) -> list[str]:
        """Tools a deny_tool rule refuses outright."""
        return list(dict.fromkeys(c.rule.tool for c in self._current().ordered
                                  if c.rule.kind == "deny_tool" and c.rule.tool is not None))

    def calls(self, rule_or_tool: str) -> int:
        """Calls counted by the max_calls rule of that name, or else by the max_calls rules
        on that tool (the oldest counts the most: every call admitted since it was added)."""
        ordered = self._current().ordered
        counted = [c for c in ordered if c.rule.kind == "max_calls" and c.rule.name == rule_or_tool] \
            or [c for c in ordered if c.rule.kind == "max_calls" and c.rule.tool == rule_or_tool]
        if not counted:
            raise PolicyNotFound(
                f"{self.name} has no max_calls rule named {rule_or_tool!r} nor one on a tool of "
                "that name; calls are counted only by max_calls rules (add_max_calls)")
        return max(c.calls(self._load(c.counter)) for c in counted)

    def statistics(self) -> PolicyStatistics:
        with self._lock:
            version = self._load(VERSION)
            active = self._load(ACTIVE) & 1
            used = self._load(BUFFER_INFO + 16 * active)
            entries = self._read_locked()
        return PolicyStatistics(
            rules=len(entries), version=version, bytes_used=used,
            capacity_bytes=self.capacity_bytes,
            counters_used=sum(1 for rule, _, _ in entries if rule.kind == "max_calls"),
            call_counters=self.call_counters,
            lock_recoveries=self._lock.statistics().recoveries)

    # ---- checks -------------------------------------------------------------------------------

    def evaluate(self, action: PolicyAction, state: StateView | None) -> list[PolicyViolation]:
        """Every rule that refuses the action now; a max_calls rule refuses once its tool
        has used up its limit (evaluate never counts a call: claim does)."""
        return violations(self._current(), action, state, self._load)

    def claim(self, action: PolicyAction) -> list[PolicyViolation]:
        """Count one call of the action's tool against every max_calls rule on it, all or
        nothing: when any rule is at its limit, the calls counted for the others are given
        back and the refusing rules are returned."""
        while True:
            rules = self._current()
            counted = rules.counted.get(action.tool) if action.tool is not None else None
            if not counted:
                return []
            claimed: list[_Compiled] = []
            refused: list[_Compiled] = []
            for compiled in counted:
                won = self._add_bounded(compiled.counter, 1, compiled.ceiling) >= 0
                (claimed if won else refused).append(compiled)
            if not refused:
                return []
            for compiled in claimed:
                self._give_back(compiled)
            if self._load(VERSION) == rules.version:
                return [PolicyViolation(c.rule.name, action.id, c.limit_reason())
                        for c in refused]
            # the rules changed under us (a counter may belong to a newer rule): read again

    def _give_back(self, compiled: _Compiled) -> None:
        region = self._segment.region
        while True:
            word = region.load(compiled.counter)
            if compiled.calls(word) == 0 or region.cas(compiled.counter, word, word - 1):
                return

    # ---- changes ------------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule (names may repeat; remove() takes them all); returns it."""
        if not isinstance(rule, Rule):
            raise InvalidPolicy(f"add() takes a Rule, got {type(rule).__name__}")
        with self._lock:
            entries = self._read_locked()
            counter_writes: list[tuple[int, int]] = []
            slot, serial = -1, 0
            if rule.kind == "max_calls":
                slot, serial = self._free_counter(entries)
                counter_writes = [(COUNTERS + 8 * slot, serial << COUNT_BITS),
                                  (NEXT_SERIAL, serial + 1)]
            self._publish_locked([*entries, (rule, slot, serial)], counter_writes)
        return rule

    def _free_counter(self, entries: list[tuple[Rule, int, int]]) -> tuple[int, int]:
        used = {slot for rule, slot, _ in entries if rule.kind == "max_calls"}
        free = next((slot for slot in range(self.call_counters) if slot not in used), None)
        if free is None:
            raise PolicySetFull(
                f"all {self.call_counters} call counters of {self.name} belong to max_calls "
                "rules; remove some, or create the set with a larger call_counters")
        serial = self._load(NEXT_SERIAL)
        if serial > MAX_SERIAL:
            raise PolicySetFull(f"{self.name} has added {MAX_SERIAL} max_calls rules, all it "
                                "can tell apart; create a new set")
        return free, serial

    def _publish_locked(self, entries: list[tuple[Rule, int, int]],
                        counter_writes: list[tuple[int, int]]) -> None:
        """Write `entries` to the idle buffer, then switch to it (lock held)."""
        data = orjson.dumps([
            {**rule.to_dict(), "slot": slot, "serial": serial} if rule.kind == "max_calls"
            else rule.to_dict() for rule, slot, serial in entries])
        if len(data) > self.capacity_bytes:
            raise PolicySetFull(
                f"the rules of {self.name} would take {len(data)} bytes as JSON, over its "
                f"capacity_bytes={self.capacity_bytes}; remove rules, or create the set with a "
                "larger capacity_bytes")
        idle = 1 - (self._load(ACTIVE) & 1)
        region = self._segment.region
        store_bytes(region, self._buffers + idle * self.capacity_bytes, data)
        info = BUFFER_INFO + 16 * idle
        self._lock.write_words([*counter_writes, (info, len(data)),
                                (info + 8, _native.crc32c(data)), (ACTIVE, idle),
                                (VERSION, self._load(VERSION) + 1)])

    def restore(self, other: PolicySet) -> None:
        """Take over another set's rules and call counts, counter slots and serials
        included: how a restarted host (the Ray backend's policy actor) recovers the set
        its dead predecessor left. Only for a new set no other process uses yet."""
        if (other.call_counters, other.capacity_bytes) != (self.call_counters,
                                                           self.capacity_bytes):
            raise InvalidPolicy(
                f"cannot restore {other.name} into {self.name}: their call_counters and "
                "capacity_bytes differ; create the new set with the same options")
        with other._lock:
            entries = other._read_locked()
            words = [(COUNTERS + 8 * slot, other._load(COUNTERS + 8 * slot))
                     for rule, slot, _ in entries if rule.kind == "max_calls"]
            words.append((NEXT_SERIAL, other._load(NEXT_SERIAL)))
        for offset, word in words:  # nobody else sees this set yet: plain stores
            self._segment.region.store(offset, word)
        with self._lock:
            self._publish_locked(entries, [])

    def remove(self, name: str) -> int:
        """Remove every rule named `name`; returns how many there were."""
        _text("a policy name", name)
        with self._lock:
            entries = self._read_locked()
            kept = [entry for entry in entries if entry[0].name != name]
            if len(kept) < len(entries):
                self._publish_locked(kept, [])
        return len(entries) - len(kept)

    def add_deny_tool(self, name: str, tool: str, description: str = "") -> Rule:
        """Refuse every call of `tool`."""
        return self.add(Rule(name, "deny_tool", description, tool=tool))

    def add_deny_tool_param(self, name: str, tool: str, key: str, pattern: str, *,
                            regex: bool = False, description: str = "") -> Rule:
        """Refuse a call of `tool` whose parameter `key` contains `pattern` (regex=True:
        where re.search finds it)."""
        return self.add(Rule(name, "deny_tool_param", description, tool=tool, key=key,
                             pattern=pattern, regex=regex))

    def add_require_state(self, name: str, key: str, value: Any = ANY_VALUE, *,
                          tool: str | None = None, description: str = "") -> Rule:
        """Refuse actions (all, or only calls of `tool`) unless state `key` exists and,
        when `value` is given, equals it as JSON."""
        return self.add(Rule(name, "require_state", description, tool=tool, key=key,
                             value=value))

    def add_max_calls(self, name: str, tool: str, limit: int, description: str = "") -> Rule:
        """Admit at most `limit` calls of `tool` from now on, across every process."""
        return self.add(Rule(name, "max_calls", description, tool=tool, limit=limit))
