"""The policy set on Ray: the rule kinds checked client-side against a local state view,
a rule added in the driver binding a running worker actor, max_calls limits exact across
worker actors, PolicyEngine over the client, and errors of the local types."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from carmp import InvalidPolicy, PolicyNotFound, PolicySetFull
from carmp.backends.on_ray.policy import RayPolicySet, start_policies
from carmp.runtime.policy import PolicyEngine
from carmp.shared.policy import ANY_VALUE
from tests.backends.on_ray.hosts import actor_pid, segments_of, wait_gone

pytestmark = pytest.mark.ray


def call(tool: str | None, action_id: str = "a1", **parameters: Any) -> SimpleNamespace:
    """A stand-in action: what the rules read (SimpleNamespace travels to any worker)."""
    return SimpleNamespace(id=action_id, tool=tool, parameters=parameters)


class Overlay:
    """A state view that cannot travel (it holds a lock): evaluate must check it here."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.lock = threading.Lock()

    def get_or(self, key: str, default: Any) -> Any:
        return self.values.get(key, default)


@pytest.fixture
def policies(ray_session: Any) -> Iterator[RayPolicySet]:
    made = start_policies(call_counters=4)
    yield made
    made.close_host()


def names(found: list[Any]) -> list[str]:
    return [violation.policy_name for violation in found]


def test_the_rule_kinds_are_checked_against_a_local_state_view(policies: RayPolicySet) -> None:
    policies.add_deny_tool("offline", "http_get", "this run is offline")
    policies.add_deny_tool_param("no-rm", "shell", "cmd", r"\brm\b", regex=True)
    policies.add_require_state("approved", "approval", True, tool="deploy")
    policies.add_require_state("has-plan", "plan", tool="execute")
    assert policies.version == 4
    assert [rule.name for rule in policies.rules()] == ["offline", "no-rm", "approved", "has-plan"]
    assert policies.rules()[3].value is ANY_VALUE
    assert policies.denied_tools() == ["http_get"]
    empty = Overlay({})
    found = policies.evaluate(call("http_get"), empty)
    assert names(found) == ["offline"] and found[0].reason.endswith("this run is offline")
    assert names(policies.evaluate(call("shell", cmd="rm -rf /"), empty)) == ["no-rm"]
    assert policies.evaluate(call("shell", cmd="ls"), empty) == []
    assert names(policies.evaluate(call("deploy"), Overlay({"approval": False}))) == ["approved"]
    assert policies.evaluate(call("deploy"), Overlay({"approval": True})) == []
    assert names(policies.evaluate(call("execute"), empty)) == ["has-plan"]
    assert policies.evaluate(call("execute"), Overlay({"plan": [1]})) == []
    assert policies.remove("offline") == 1
    assert policies.evaluate(call("http_get"), empty) == []


def test_errors_keep_their_local_types(ray_session: Any) -> None:
    policies = start_policies(call_counters=1)
    try:
        with pytest.raises(InvalidPolicy, match="limit"):
            policies.add_max_calls("cap", "search", -1)
        with pytest.raises(InvalidPolicy, match="regular expression"):
            policies.add_deny_tool_param("bad", "shell", "cmd", "(", regex=True)
        with pytest.raises(PolicyNotFound):
            policies.calls("search")
        policies.add_max_calls("cap", "search", 3)
        assert policies.statistics().rules == 1
    finally:
        policies.close_host()


def test_a_full_set_raises_policy_set_full(ray_session: Any) -> None:
    policies = start_policies(call_counters=1)
    try:
        policies.add_max_calls("cap", "search", 3)
        with pytest.raises(PolicySetFull):
            policies.add_max_calls("cap2", "fetch", 3)
    finally:
        policies.close_host()


def test_max_calls_is_evaluated_and_claimed_in_the_actor(policies: RayPolicySet) -> None:
    policies.add_max_calls("cap", "search", 2)
    for _ in range(2):
        assert policies.evaluate(call("search"), None) == []
        assert policies.claim(call("search")) == []
    assert names(policies.claim(call("search"))) == ["cap"]
    assert names(policies.evaluate(call("search"), None)) == ["cap"]
    assert policies.calls("cap") == 2


def test_a_policy_engine_runs_on_the_client(policies: RayPolicySet) -> None:
    engine = PolicyEngine(policies)
    policies.add_max_calls("cap", "search", 1)
    policies.add_deny_tool("offline", "http_get")
    assert engine.admit(call("search"), None) == []
    assert names(engine.admit(call("search"), None)) == ["cap"]
    assert names(engine.check(call("http_get"), None)) == ["offline"]
    assert engine.blanket_denied_tools() == ["http_get"]
    assert engine.unregister("offline") == 1
    assert engine.policy_names() == ["cap"]


def make_worker(ray: Any) -> Any:
    @ray.remote(num_cpus=1)
    class Worker:
        """A Ray worker actor checking actions with its own client of the set."""

        def __init__(self, policies: RayPolicySet) -> None:
            self.policies = policies

        def evaluate(self, tool: str, state: dict[str, Any]) -> list[str]:
            return names(self.policies.evaluate(call(tool), Overlay(state)))

        def claim_many(self, tool: str, count: int) -> int:
            admitted = 0
            for i in range(count):
                if not self.policies.claim(call(tool, f"{os.getpid()}-{i}")):
                    admitted += 1
            return admitted

    return Worker


def test_rules_bind_worker_actors_and_limits_hold_across_them(
        policies: RayPolicySet, ray_session: Any) -> None:
    ray = ray_session
    worker = make_worker(ray)
    workers = [worker.remote(policies) for _ in range(2)]
    try:
        assert ray.get([w.evaluate.remote("http_get", {}) for w in workers]) == [[], []]
        policies.add_deny_tool("offline", "http_get")
        policies.add_require_state("has-plan", "plan", tool="execute")
        assert ray.get([w.evaluate.remote("http_get", {}) for w in workers]) == [["offline"]] * 2
        assert ray.get(workers[0].evaluate.remote("execute", {})) == ["has-plan"]
        assert ray.get(workers[1].evaluate.remote("execute", {"plan": 1})) == []

        policies.add_max_calls("cap", "search", 150)
        admitted = ray.get([w.claim_many.remote("search", 100) for w in workers])
        assert sum(admitted) == 150
        assert policies.calls("cap") == 150
        assert ray.get(workers[0].evaluate.remote("search", {})) == ["cap"]
    finally:
        for w in workers:
            ray.kill(w)


def test_a_killed_policy_actor_comes_back_with_its_rules_and_counts(
        policies: RayPolicySet, ray_session: Any) -> None:
    policies.add_deny_tool("offline", "http_get")
    policies.add_max_calls("cap", "search", 3)
    assert [policies.claim(call("search")) for _ in range(2)] == [[], []]
    assert policies.evaluate(call("search"), None) == []  # this client caches the rules
    killed = actor_pid(policies)
    os.kill(killed, signal.SIGKILL)
    assert wait_gone(killed)
    # the restored set counts its versions again: this one equals the cached copy's
    policies.add_deny_tool("later", "fetch")
    assert policies.version == 2
    assert names(policies.evaluate(call("fetch"), None)) == ["later"]
    assert names(policies.evaluate(call("http_get"), None)) == ["offline"]
    assert policies.calls("cap") == 2
    assert policies.claim(call("search")) == []
    assert names(policies.claim(call("search"))) == ["cap"]
    assert segments_of(killed) == []  # the new incarnation removed what it left


def test_close_host_leaves_no_process_and_no_segment(ray_session: Any) -> None:
    policies = start_policies()
    pid = actor_pid(policies)
    policies.add_deny_tool("offline", "http_get")
    assert segments_of(pid) != []
    policies.close_host()
    assert wait_gone(pid)
    assert segments_of(pid) == []

