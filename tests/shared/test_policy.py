"""PolicySet: the four rule kinds, versions and the readers' cache, bad input, a full set,
corrupt segments, and the guarantees across processes (fork, forkserver, spawn)."""

from __future__ import annotations

import pickle
import signal
from dataclasses import dataclass, field
from typing import Any

import pytest

from carmp import (
    InvalidPolicy,
    PolicyNotFound,
    PolicySet,
    PolicySetFull,
    PolicyViolation,
    SegmentClosed,
    SegmentCorrupt,
    StateStore,
)
from carmp.runtime.context import AgentContext
from carmp.shared.policy import ANY_VALUE, MAX_LIMIT, Rule
from tests.conftest import kill

WAIT = 60.0  # bounded waits on other processes: only hit on deadlock


@dataclass(frozen=True)
class Call:
    """A stand-in action: the attributes the rules read."""

    tool: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = "a1"
    action_type: str = "tool_call"


@pytest.fixture
def policies() -> Any:
    with PolicySet(capacity_bytes=4096, call_counters=8) as made:
        yield made


@pytest.fixture
def state() -> Any:
    with StateStore(max_keys=16, capacity_bytes=1 << 14, transition_log_bytes=1 << 12) as store:
        yield store


def names(violations: list[PolicyViolation]) -> list[str]:
    return [v.policy_name for v in violations]


# ---- the rule kinds ------------------------------------------------------------------------------


def test_deny_tool_refuses_only_that_tool(policies: PolicySet, state: StateStore) -> None:
    policies.add_deny_tool("no-network", "http_get", description="this run is offline")
    [violation] = policies.evaluate(Call("http_get", id="a7"), state)
    assert violation == PolicyViolation("no-network", "a7",
                                        "tool 'http_get' is denied: this run is offline")
    assert violation.to_dict() == {"policy_name": "no-network", "action_id": "a7",
                                   "reason": "tool 'http_get' is denied: this run is offline"}
    assert policies.evaluate(Call("search"), state) == []
    assert policies.evaluate(Call(None), state) == []  # a state action calls no tool
    assert policies.denied_tools() == ["http_get"]


def test_deny_tool_param_substring_blocks_rm_rf_in_a_shell_command(
        policies: PolicySet, state: StateStore) -> None:
    """CAR case 28 at the rule level (the runtime checks the callback never runs)."""
    policies.add_deny_tool_param("no-rm-rf", "shell", "command", "rm -rf")
    [violation] = policies.evaluate(Call("shell", {"command": "cd /tmp && rm -rf /"}), state)
    assert violation.policy_name == "no-rm-rf" and "contains 'rm -rf'" in violation.reason
    assert policies.evaluate(Call("shell", {"command": "ls -la"}), state) == []
    assert policies.evaluate(Call("shell", {"cwd": "rm -rf"}), state) == []  # another key
    assert policies.evaluate(Call("python", {"command": "rm -rf"}), state) == []  # another tool
    # substring mode treats regex characters literally
    policies.add_deny_tool_param("dots", "shell", "command", "a.c")
    assert policies.evaluate(Call("shell", {"command": "abc"}), state) == []
    assert names(policies.evaluate(Call("shell", {"command": "a.c"}), state)) == ["dots"]


def test_deny_tool_param_matches_a_non_str_value_as_its_json_text(
        policies: PolicySet, state: StateStore) -> None:
    policies.add_deny_tool_param("no-root", "shell", "argv", '"/"')
    assert names(policies.evaluate(Call("shell", {"argv": ["rm", "-r", "/"]}), state)) == ["no-root"]
    assert policies.evaluate(Call("shell", {"argv": ["ls", "/tmp"]}), state) == []


def test_deny_tool_param_regex_mode(policies: PolicySet, state: StateStore) -> None:
    rule = policies.add_deny_tool_param("no-recursive-rm", "shell", "command",
                                        r"\brm\s+-[a-z]*r", regex=True)
    assert rule.match == "regex"
    for command in ("rm -rf /", "sudo rm   -fr ~", "x; rm -r y"):
        [violation] = policies.evaluate(Call("shell", {"command": command}), state)
        assert "matches" in violation.reason
    for command in ("rm file", "perform -r", "rm -f x"):
        assert policies.evaluate(Call("shell", {"command": command}), state) == []


def test_require_state_without_a_value_needs_the_key_to_exist(
        policies: PolicySet, state: StateStore) -> None:
    policies.add_require_state("plan-first", "plan")
    [violation] = policies.evaluate(Call("search"), state)
    assert violation.reason == "requires state key 'plan', which is absent"
    assert names(policies.evaluate(Call(None), state)) == ["plan-first"]  # every action
    state.set("plan", None, "setup")  # present, even as JSON null
    assert policies.evaluate(Call("search"), state) == []
    assert names(policies.evaluate(Call("search"), None)) == ["plan-first"]  # no state: refuse


def test_require_state_with_a_value_compares_json(policies: PolicySet, state: StateStore) -> None:
    policies.add_require_state("approved", "review", {"ok": True, "by": "ann"}, tool="deploy")
    [absent] = policies.evaluate(Call("deploy"), state)
    assert "is absent" in absent.reason
    assert policies.evaluate(Call("search"), state) == []  # only deploy needs it
    state.set("review", {"ok": False, "by": "ann"}, "r")
    [wrong] = policies.evaluate(Call("deploy"), state)
    assert wrong.reason == ('requires state key \'review\' == {"by":"ann","ok":true}, '
                            'but it is {"by":"ann","ok":false}')
    state.set("review", {"by": "ann", "ok": True}, "r")  # key order does not matter
    assert policies.evaluate(Call("deploy"), state) == []
    policies.add_require_state("exactly-one", "n", 1)
    state.set("n", True, "r")  # JSON true is not 1
    assert names(policies.evaluate(Call("search"), state)) == ["exactly-one"]
    state.set("n", 1, "r")
    assert policies.evaluate(Call("search"), state) == []


def test_require_state_reads_through_an_agent_overlay(policies: PolicySet, state: StateStore) -> None:
    policies.add_require_state("ready", "ready", True)
    overlay = AgentContext("agent-1", state)
    assert names(policies.evaluate(Call("x"), overlay)) == ["ready"]
    overlay.set("ready", True)
    assert policies.evaluate(Call("x"), overlay) == []
    assert names(policies.evaluate(Call("x"), state)) == ["ready"]  # the parent never saw it


def test_max_calls_claims_exactly_the_limit(policies: PolicySet, state: StateStore) -> None:
    policies.add_max_calls("three-searches", "search", 3, description="be frugal")
    outcomes = [policies.claim(Call("search")) for _ in range(5)]
    assert outcomes[:3] == [[], [], []]
    assert [names(o) for o in outcomes[3:]] == [["three-searches"]] * 2
    assert outcomes[3][0].reason == "tool 'search' reached its limit of 3 calls this run"
    assert policies.calls("three-searches") == policies.calls("search") == 3
    # evaluate reports a used-up limit but never counts a call
    [violation] = policies.evaluate(Call("search"), state)
    assert violation.reason.endswith(": be frugal")
    assert policies.claim(Call("fetch")) == [] and policies.claim(Call(None)) == []
    assert policies.calls("search") == 3


def test_max_calls_limit_zero_refuses_every_call(policies: PolicySet, state: StateStore) -> None:
    policies.add_max_calls("never", "delete_repo", 0)
    assert names(policies.evaluate(Call("delete_repo"), state)) == ["never"]
    assert names(policies.claim(Call("delete_repo"))) == ["never"]
    assert policies.calls("never") == 0


def test_a_claim_is_all_or_nothing(policies: PolicySet) -> None:
    policies.add_max_calls("tight", "search", 1)
    policies.add_max_calls("loose", "search", 5)
    assert policies.claim(Call("search")) == []
    assert names(policies.claim(Call("search"))) == ["tight"]
    # the call counted by "loose" for the refused claim was given back
    assert (policies.calls("tight"), policies.calls("loose")) == (1, 1)
    assert policies.calls("search") == 1


def test_calls_of_an_unknown_name_is_a_clear_error(policies: PolicySet) -> None:
    policies.add_deny_tool("d", "http_get")
    with pytest.raises(PolicyNotFound, match="add_max_calls"):
        policies.calls("http_get")


def test_a_claim_from_stale_rules_never_counts_for_a_newer_rule(policies: PolicySet) -> None:
    """A process that read the rules before a counter changed hands must not count against
    the new owner: the counter's serial refuses its add, and it reads the rules again."""
    policies.add_max_calls("searches", "search", 10)
    stale_copy = PolicySet.attach(policies.name)
    try:
        stale = stale_copy._current()  # rules read before the change below
        policies.remove("searches")
        policies.add_max_calls("fetches", "fetch", 10)  # takes over the freed counter
        assert policies._current().ordered[0].slot == stale.ordered[0].slot
        reads = [stale]
        fresh = stale_copy._current

        def stale_first() -> Any:
            return reads.pop() if reads else fresh()

        stale_copy._current = stale_first
        assert stale_copy.claim(Call("search")) == []  # no rule limits search any more
        assert policies.calls("fetches") == 0
    finally:
        stale_copy.close()


# ---- rules as values -------------------------------------------------------------------------------


def test_rules_round_trip_through_json(policies: PolicySet) -> None:
    added = [
        policies.add_deny_tool("a", "http_get", description="offline"),
        policies.add_deny_tool_param("b", "shell", "command", "rm\\s", regex=True),
        policies.add_require_state("c", "plan"),
        policies.add_require_state("d", "plan", [1, {"x": None}], tool="deploy"),
        policies.add_max_calls("e", "search", 4),
    ]
    assert policies.rules() == added
    assert [Rule.from_dict(rule.to_dict()) for rule in added] == added
    assert added[2].value is ANY_VALUE and "value" not in added[2].to_dict()
    assert added[3].to_dict() == {"name": "d", "kind": "require_state", "description": "",
                                  "tool": "deploy", "key": "plan", "value": [1, {"x": None}]}
    assert policies.add(Rule.from_dict({"name": "f", "kind": "deny_tool", "tool": "t"})) \
        == policies.rules()[-1]


def test_remove_takes_every_rule_of_that_name_and_counts_them(policies: PolicySet) -> None:
    policies.add_deny_tool("dup", "a")
    policies.add_deny_tool("keep", "b")
    policies.add_max_calls("dup", "c", 1)
    assert policies.remove("dup") == 2
    assert [rule.name for rule in policies.rules()] == ["keep"]
    assert policies.remove("dup") == 0


# ---- versions and the readers' cache ---------------------------------------------------------------


def test_every_change_bumps_the_version_and_nothing_else_does(policies: PolicySet) -> None:
    assert policies.version == 0
    policies.add_deny_tool("a", "x")
    policies.add_max_calls("b", "y", 2)
    assert policies.version == 2
    policies.claim(Call("y"))
    assert policies.remove("missing") == 0
    assert policies.version == 2
    assert policies.remove("a") == 1
    assert policies.version == 3


def test_readers_reparse_only_after_the_version_moved(
        policies: PolicySet, state: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = PolicySet.attach(policies.name)
    try:
        reads = []
        read = reader._read_locked

        def counted_read() -> Any:
            reads.append(reader.version)
            return read()

        monkeypatch.setattr(reader, "_read_locked", counted_read)
        for _ in range(20):
            assert reader.evaluate(Call("shell"), state) == []
        assert reads == [0]
        policies.add_deny_tool("no-shell", "shell")  # through another handle
        for _ in range(20):
            assert names(reader.evaluate(Call("shell"), state)) == ["no-shell"]
        assert reads == [0, 1]
    finally:
        reader.close()


# ---- handles -----------------------------------------------------------------------------------------


def test_attach_and_pickle_give_the_same_rules(policies: PolicySet, state: StateStore) -> None:
    policies.add_deny_tool("a", "x")
    copy = pickle.loads(pickle.dumps(policies))
    try:
        assert copy.name == policies.name and copy.rules() == policies.rules()
        copy.add_max_calls("b", "y", 1)  # a copy's change binds the original
        assert names(policies.claim(Call("y"))) == []
        assert names(copy.claim(Call("y"))) == ["b"]
    finally:
        copy.close()
    assert policies.rules()[-1].name == "b"  # closing a copy leaves the set


def test_a_closed_set_refuses_use(state: StateStore) -> None:
    policies = PolicySet(capacity_bytes=256, call_counters=1)
    policies.add_deny_tool("a", "x")
    policies.close()
    assert "closed" in repr(policies)
    for use in (policies.rules, lambda: policies.add_deny_tool("b", "y"),
                lambda: policies.evaluate(Call("x"), state)):
        with pytest.raises(SegmentClosed):
            use()


def test_statistics(policies: PolicySet) -> None:
    policies.add_deny_tool("a", "x")
    policies.add_max_calls("b", "y", 1)
    stats = policies.statistics()
    assert (stats.rules, stats.version, stats.counters_used, stats.call_counters) == (2, 2, 1, 8)
    assert 0 < stats.bytes_used <= stats.capacity_bytes == 4096
    assert stats.lock_recoveries == 0


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("add, message", [
    (lambda p: p.add_deny_tool("", "x"), "policy name must be a non-empty str"),
    (lambda p: p.add_deny_tool(7, "x"), "policy name"),
    (lambda p: p.add_deny_tool("a", ""), "tool must be a non-empty str"),
    (lambda p: p.add_deny_tool("a", None), "tool"),
    (lambda p: p.add_deny_tool("a", "x", description=3), "description must be a str"),
    (lambda p: p.add_deny_tool_param("a", "x", "", "p"), "key"),
    (lambda p: p.add_deny_tool_param("a", "x", "k", ""), "pattern"),
    (lambda p: p.add_deny_tool_param("a", "x", "k", "(unclosed", regex=True),
     "not a valid regular expression .* pass regex=False"),
    (lambda p: p.add_deny_tool_param("a", "x", "k", "p", regex="yes"), "regex must be a bool"),
    (lambda p: p.add_require_state("a", ""), "key"),
    (lambda p: p.add_require_state("a", "k", {1, 2}), "not JSON"),
    (lambda p: p.add_require_state("a", "k", tool=""), "tool"),
    (lambda p: p.add_max_calls("a", "x", -1), "limit must be an int from 0"),
    (lambda p: p.add_max_calls("a", "x", True), "limit"),
    (lambda p: p.add_max_calls("a", "x", 2.0), "limit"),
    (lambda p: p.add_max_calls("a", "x", MAX_LIMIT + 1), "limit"),
    (lambda p: p.add(Rule("a", "deny_tool", tool="x", key="k")), "does not take key"),
    (lambda p: p.add(Rule("a", "allow_all")), "kind must be one of"),
    (lambda p: p.add(Rule.from_dict({"name": "a", "kind": "deny_tool", "tool": "x", "x": 1})),
     "takes only"),
    (lambda p: p.add({"name": "a"}), "takes a Rule"),
    (lambda p: p.remove(""), "policy name"),
])
def test_bad_input_is_refused_clearly_and_changes_nothing(
        policies: PolicySet, add: Any, message: str) -> None:
    policies.add_deny_tool("kept", "x")
    with pytest.raises(InvalidPolicy, match=message):
        add(policies)
    assert [rule.name for rule in policies.rules()] == ["kept"] and policies.version == 1


def test_bad_geometry_is_refused() -> None:
    for bad in (dict(capacity_bytes=10), dict(capacity_bytes=True), dict(call_counters=-1)):
        with pytest.raises(InvalidPolicy):
            PolicySet(**bad)


def test_a_full_rule_buffer_says_to_create_a_larger_set() -> None:
    with PolicySet(capacity_bytes=256, call_counters=1) as policies:
        added = 0
        with pytest.raises(PolicySetFull, match="larger capacity_bytes"):
            while True:
                policies.add_deny_tool(f"rule-{added}", "tool")
                added += 1
        assert added > 0 and len(policies.rules()) == added and policies.version == added
        policies.remove("rule-0")
        policies.add_deny_tool("fits-again", "tool")


def test_full_call_counters_say_to_create_a_larger_set() -> None:
    with PolicySet(capacity_bytes=1024, call_counters=1) as policies:
        policies.add_max_calls("first", "a", 1)
        with pytest.raises(PolicySetFull, match="larger call_counters"):
            policies.add_max_calls("second", "b", 1)
        assert [rule.name for rule in policies.rules()] == ["first"]
        policies.remove("first")
        policies.add_max_calls("second", "b", 1)  # the counter is free again
        assert policies.claim(Call("b")) == [] and policies.calls("second") == 1


# ---- corrupt segments ---------------------------------------------------------------------------------


def test_attach_refuses_a_corrupt_header(policies: PolicySet, state: StateStore) -> None:
    with pytest.raises(SegmentCorrupt, match="'state' segment, not the 'policy'"):
        PolicySet.attach(state.name)
    policies._segment.region.store(0, 0)  # the header's magic
    with pytest.raises(SegmentCorrupt, match="bad magic"):
        PolicySet.attach(policies.name)


def test_a_corrupt_rule_list_is_reported_never_trusted(policies: PolicySet) -> None:
    policies.add_deny_tool("a", "x")
    reader = PolicySet.attach(policies.name)
    try:
        region = policies._segment.region
        region.store(policies._buffers + policies.capacity_bytes, 0x7B7B7B7B)  # the active buffer
        for use in (reader.rules, lambda: policies.add_deny_tool("b", "y")):
            with pytest.raises(SegmentCorrupt, match="CRC32C.*carmp cleanup"):
                use()
    finally:
        reader.close()


# ---- across processes ------------------------------------------------------------------------------------


def claim_many(policies: PolicySet, start: Any, attempts: int, report: Any) -> None:
    start.wait(WAIT)
    admitted = sum(1 for _ in range(attempts) if policies.claim(Call("search")) == [])
    report.put(admitted)


def test_max_calls_is_exact_across_processes(mp_context: Any) -> None:
    with PolicySet(capacity_bytes=1024, call_counters=4) as policies:
        policies.add_max_calls("cap", "search", 37)
        policies.add_max_calls("looser", "search", 50)  # each refused claim gives one back
        start, report = mp_context.Event(), mp_context.Queue()
        procs = [mp_context.Process(target=claim_many, args=(policies, start, 30, report))
                 for _ in range(4)]
        for p in procs:
            p.start()
        start.set()
        admitted = [report.get(timeout=WAIT) for _ in procs]
        for p in procs:
            p.join(WAIT)
        assert [p.exitcode for p in procs] == [0] * 4
        assert sum(admitted) == 37
        assert policies.calls("cap") == policies.calls("looser") == 37


def check_before_and_after(policies: PolicySet, checked: Any, added: Any, report: Any) -> None:
    report.put(names(policies.evaluate(Call("shell", {"command": "rm -rf /"}), None)))
    checked.set()
    added.wait(WAIT)
    report.put(names(policies.evaluate(Call("shell", {"command": "rm -rf /"}), None)))


def test_a_rule_added_in_one_process_binds_the_next_check_in_another(mp_context: Any) -> None:
    with PolicySet(capacity_bytes=1024, call_counters=1) as policies:
        checked, added, report = mp_context.Event(), mp_context.Event(), mp_context.Queue()
        child = mp_context.Process(target=check_before_and_after,
                                   args=(policies, checked, added, report))
        child.start()
        assert checked.wait(WAIT)
        policies.add_deny_tool_param("no-rm-rf", "shell", "command", "rm -rf")
        added.set()
        assert [report.get(timeout=WAIT) for _ in range(2)] == [[], ["no-rm-rf"]]
        child.join(WAIT)
        assert child.exitcode == 0


class _ParkMidSwitch:
    """Stands in for a writer's lock region: lets the crash-atomic switch log its undo
    entries and make `writes` of its word writes, then parks the process to be killed."""

    def __init__(self, region: Any, undo_entries: int, writes: int, parked: Any) -> None:
        self._region = region
        self._park_at = 2 * undo_entries + 1 + writes  # undo entries, their count, then writes
        self._stores = 0
        self._parked = parked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._region, name)

    def store(self, offset: int, value: int) -> None:
        self._region.store(offset, value)
        self._stores += 1
        if self._stores == self._park_at:
            self._parked.set()
            while True:
                signal.pause()


def add_and_park_mid_switch(policies: PolicySet, parked: Any) -> None:
    # switching to a new list writes 4 words: length, CRC, active buffer, version
    policies._lock._region = _ParkMidSwitch(policies._lock._region, 4, 3, parked)
    policies.add_deny_tool("never-published", "shell")


def test_a_writer_killed_mid_switch_leaves_the_old_rules_and_the_lock_recovers(
        mp_context: Any) -> None:
    with PolicySet(capacity_bytes=1024, call_counters=1) as policies:
        policies.add_deny_tool("old", "http_get")
        parked = mp_context.Event()
        writer = mp_context.Process(target=add_and_park_mid_switch, args=(policies, parked))
        writer.start()
        assert parked.wait(WAIT)  # it switched the active buffer but did not bump the version
        kill(writer.pid)
        writer.join(WAIT)
        fresh = PolicySet.attach(policies.name)
        try:
            assert [rule.name for rule in fresh.rules()] == ["old"] and fresh.version == 1
            assert fresh.statistics().lock_recoveries == 1
            fresh.add_deny_tool("new", "shell")
            assert [rule.name for rule in policies.rules()] == ["old", "new"]
        finally:
            fresh.close()
