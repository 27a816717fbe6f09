"""PolicyEngine: CAR's surface (cases 27 and 28), local and shared rules together, admit's
call claims, and the engine of a farm's world: a rule the supervisor adds binds a worker
that is already running."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from typing import Any

import pytest

import carmp.pool.worker as worker_module
from carmp import (
    Farm,
    InvalidPolicy,
    PolicyEngine,
    PolicySet,
    PolicyViolation,
    SharedInfra,
    StateStore,
)
from tests.conftest import START_METHODS
from tests.shared.test_policy import Call  # the stand-in action the rules read

WAIT = 60.0  # bounded waits on workers: only hit on deadlock


@pytest.fixture
def shared() -> Iterator[PolicySet]:
    with PolicySet(capacity_bytes=4096, call_counters=8) as policies:
        yield policies


@pytest.fixture
def state() -> Iterator[StateStore]:
    with StateStore(max_keys=16, capacity_bytes=1 << 14, transition_log_bytes=1 << 12) as store:
        yield store


def names(violations: list[PolicyViolation]) -> list[str]:
    return [v.policy_name for v in violations]


def refuse(reason: str) -> Any:
    return lambda action, state: reason


def passes(action: Any, state: Any) -> None:
    return None


# ---- CAR case 27 --------------------------------------------------------------------------------


def test_check_returns_every_violation(state: StateStore) -> None:
    engine = PolicyEngine()
    engine.register("first", refuse("no, one"))
    engine.register("fine", passes)
    engine.register("second", refuse("no, two"), description="another reason")
    violations = engine.check(Call("search", id="x9"), state)
    assert violations == [PolicyViolation("first", "x9", "no, one"),
                          PolicyViolation("second", "x9", "no, two")]


def test_a_rule_that_raises_is_a_violation_not_a_crash(state: StateStore) -> None:
    def broken(action: Any, state: Any) -> str | None:
        raise KeyError("missing-field")

    engine = PolicyEngine()
    engine.register("broken", broken)
    engine.register("later", refuse("still checked"))
    [raised, later] = engine.check(Call("search"), state)
    assert raised.policy_name == "broken"
    assert raised.reason == "policy check raised KeyError: 'missing-field'"
    assert later.reason == "still checked"


def test_a_rule_returning_neither_none_nor_str_refuses(state: StateStore) -> None:
    engine = PolicyEngine()
    engine.register("sloppy", lambda action, state: False)
    [violation] = engine.check(Call("search"), state)
    assert "returned False" in violation.reason


def test_unregister_removes_every_policy_of_that_name_local_and_shared(
        shared: PolicySet, state: StateStore) -> None:
    engine = PolicyEngine(shared)
    engine.register("dup", refuse("a"))
    engine.register("other", refuse("b"))
    engine.register_tool_deny("dup", "http_get", refuse("c"))
    shared.add_deny_tool("dup", "shell")
    assert engine.unregister("dup") == 3
    assert engine.policy_names() == ["other"]
    assert shared.rules() == []  # gone for every process of the run
    assert engine.blanket_denied_tools() == []
    assert engine.unregister("dup") == 0


# ---- CAR case 28, and the other shared kinds through the engine ------------------------------------


def test_deny_tool_param_refuses_rm_rf_in_a_shell_command(
        shared: PolicySet, state: StateStore) -> None:
    engine = PolicyEngine(shared)
    shared.add_deny_tool_param("no-rm-rf", "shell", "command", "rm -rf")
    for decide in (engine.check, engine.admit):
        [violation] = decide(Call("shell", {"command": "rm -rf /"}, id="a2"), state)
        assert (violation.policy_name, violation.action_id) == ("no-rm-rf", "a2")
        assert decide(Call("shell", {"command": "ls"}), state) == []


def test_local_and_shared_violations_come_together(shared: PolicySet, state: StateStore) -> None:
    engine = PolicyEngine(shared)
    engine.register("local", refuse("local says no"))
    shared.add_deny_tool("shared", "search")
    shared.add_require_state("needs-plan", "plan")
    assert names(engine.check(Call("search"), state)) == ["local", "shared", "needs-plan"]


def test_names_emptiness_and_blanket_denials_see_both_kinds(shared: PolicySet) -> None:
    engine = PolicyEngine(shared)
    assert engine.is_empty() and engine.policy_names() == []
    shared.add_deny_tool("shared-deny", "shell")
    assert not engine.is_empty() and engine.policy_names() == ["shared-deny"]
    engine.register_tool_deny("local-deny", "http_get", refuse("offline"))
    engine.register_tool_deny("again", "shell", refuse("twice"))
    engine.register("plain", passes)
    assert engine.policy_names() == ["local-deny", "again", "plain", "shared-deny"]
    assert engine.blanket_denied_tools() == ["http_get", "shell"]
    assert PolicyEngine().blanket_denied_tools() == []


def test_bad_registrations_are_refused(shared: PolicySet) -> None:
    engine = PolicyEngine(shared)
    for bad in (lambda: engine.register("", passes), lambda: engine.register("x", "not callable"),
                lambda: engine.register("x", passes, description=None),
                lambda: engine.register_tool_deny("x", "", passes),
                lambda: engine.unregister(""), lambda: PolicyEngine(shared="name")):
        with pytest.raises(InvalidPolicy):
            bad()
    assert engine.is_empty()


# ---- admit: claims ----------------------------------------------------------------------------------


def test_admit_claims_calls_only_when_nothing_else_refuses(
        shared: PolicySet, state: StateStore) -> None:
    engine = PolicyEngine(shared)
    shared.add_max_calls("two", "search", 2)
    engine.register("no-empty-query", lambda a, s: None if a.parameters.get("q") else "empty query")
    assert names(engine.admit(Call("search", {"q": ""}), state)) == ["no-empty-query"]
    assert shared.calls("two") == 0  # a refused action claims nothing
    assert engine.check(Call("search", {"q": "x"}), state) == []
    assert shared.calls("two") == 0  # check never claims
    assert [names(engine.admit(Call("search", {"q": "x"}), state)) for _ in range(3)] == \
        [[], [], ["two"]]
    assert shared.calls("search") == 2


def test_an_engine_without_a_shared_set(state: StateStore) -> None:
    engine = PolicyEngine()
    assert engine.admit(Call("search"), state) == [] and engine.is_empty()
    engine.register("r", refuse("no"))
    assert names(engine.admit(Call("search"), state)) == ["r"]


def test_the_real_action_type_is_checked(shared: PolicySet, state: StateStore) -> None:
    actions = pytest.importorskip("carmp.runtime.actions")
    shared.add_deny_tool_param("no-rm-rf", "shell", "command", "rm -rf")
    engine = PolicyEngine(shared)
    action = actions.Action(id="real", type="tool_call", tool="shell",
                            parameters={"command": "rm -rf ~"})
    assert engine.check(action, state) == [
        PolicyViolation("no-rm-rf", "real", "parameter 'command' of tool 'shell' contains 'rm -rf'")]


# ---- the engine of a shared world -------------------------------------------------------------------


def test_shared_infra_owns_a_policy_set_and_pickles_with_it(state: StateStore) -> None:
    with SharedInfra(state) as infra:
        assert infra.policies.shared is not None
        infra.policies.shared.add_deny_tool("no-shell", "shell")
        infra.policies.register("local-only", refuse("here only"))
        copy = pickle.loads(pickle.dumps(infra))
        try:
            assert copy.segment_names() == infra.segment_names()
            assert names(copy.policies.check(Call("shell"), copy.state)) == ["no-shell"]
        finally:
            copy.close()
        assert infra.policies.shared.rules()[0].name == "no-shell"  # the copy only detached
    with PolicySet(capacity_bytes=1024, call_counters=1) as given:
        with SharedInfra(state, policies=given) as infra:
            assert infra.policies.shared is given
        given.add_deny_tool("still-open", "x")  # a set passed in outlives the infra


def check_until_denied(_: Any) -> dict[str, Any]:
    """Runs in a worker: check until a rule refuses the call, saying once (through the
    state) that a check has passed."""
    infra = worker_module.current_infra()
    assert infra is not None
    action = Call("shell", {"command": "rm -rf /"}, id="worker-action")
    passed = 0
    while True:
        violations = infra.policies.check(action, infra.state)
        if violations:
            return {"passed": passed, "violations": [v.to_dict() for v in violations]}
        passed += 1
        if passed == 1:
            infra.state.set("worker-checked", True, action_id="worker")


def admit_search(_: Any) -> bool:
    infra = worker_module.current_infra()
    assert infra is not None
    return infra.policies.admit(Call("search"), infra.state) == []


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_rule_added_in_the_supervisor_binds_a_running_worker(start_method: str) -> None:
    with Farm(workers=2, start_method=start_method) as farm:
        running = farm.submit(check_until_denied, None)
        deadline = time.monotonic() + WAIT
        while not farm.infra.state.get("worker-checked"):  # the worker passed a check first
            assert time.monotonic() < deadline and not running.done()
            time.sleep(0.005)
        assert farm.infra.policies.shared is not None
        farm.infra.policies.shared.add_deny_tool_param(
            "no-rm-rf", "shell", "command", "rm -rf", description="added while running")
        outcome = running.result(WAIT)
        assert outcome["passed"] >= 1
        assert outcome["violations"] == [{
            "policy_name": "no-rm-rf", "action_id": "worker-action",
            "reason": "parameter 'command' of tool 'shell' contains 'rm -rf': added while running"}]
        # and a call cap counts the calls of every worker together
        farm.infra.policies.shared.add_max_calls("seven", "search", 7)
        assert farm.map(admit_search, range(20)).count(True) == 7
        assert farm.infra.policies.shared.calls("seven") == 7
