"""The policy set on Ray: one versioned policy actor, rules checked where the action is.

The actor (a PrimitiveHost) holds a local PolicySet. `RayPolicySet` is the client every
process holds, with the PolicySet surface PolicyEngine and users need:

- Changes (add, remove, add_*) go to the actor, which validates them: errors keep their
  local types (InvalidPolicy, PolicySetFull, ...). Each carries an idempotency key.
- evaluate(action, state) makes one short call, `rules_since`: the actor answers with its
  version and, only when that moved since this client's copy, the rules with their
  counter slots. The client checks them here with the local compiled-rule code, so a
  state view (an agent's overlay) never travels, and a rule added anywhere binds every
  client at its next evaluation. The same call brings the counter words of the max_calls
  rules on the action's tool, so evaluate refuses a tool that used up its limit.
- claim(action) counts calls in the actor (the local bounded atomic add), so max_calls
  limits hold exactly across every worker.

Restarts (see incarnations.py): a new incarnation takes over the rules and call counts
of the set its dead predecessor left in /dev/shm, then removes that segment. A version
is (incarnation, PolicySet.version), so a restarted actor's fresh version numbers are
never mistaken for the old ones.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from typing import Any, NamedTuple

from carmp.backends.on_ray.cluster import ray_module
from carmp.backends.on_ray.host import HostedClient, HostedPart, start_host
from carmp.backends.on_ray.incarnations import (
    dead_predecessors,
    incarnation_run_id,
    new_host_id,
    unlink,
)
from carmp.errors import CarmpError
from carmp.shared.policy import (
    ANY_VALUE,
    KIND,
    PolicyAction,
    PolicySet,
    PolicyStatistics,
    PolicyViolation,
    Rule,
    StateView,
    _Rules,
    compile_rules,
    violations,
)

WHAT = "policy set"
Version = tuple[str, int]  # (incarnation, PolicySet.version)
Entries = list[tuple[Rule, int, int]]  # rules with their counter slot and serial


class _ClaimedAction(NamedTuple):
    """What claim() reads of an action, sent instead of the action itself."""

    id: str
    tool: str | None
    parameters: Mapping[str, Any] = {}


class PolicyHost:
    """What the policy actor hosts: a local PolicySet, plus the versioned read clients
    check with and a claim that takes only what it counts."""

    FORWARDED = frozenset({"add", "remove", "add_deny_tool", "add_deny_tool_param",
                           "add_require_state", "add_max_calls", "denied_tools", "calls",
                           "statistics"})

    def __init__(self, host_id: str, options: dict[str, Any]) -> None:
        predecessors = dead_predecessors(host_id, KIND)
        self.policies = PolicySet(run_id=incarnation_run_id(host_id), **options)
        try:
            for name in predecessors:
                self._recover(name)
        except BaseException:
            self.policies.close()
            raise
        for name in predecessors:
            unlink(name)
        self.incarnation = secrets.token_hex(6)

    def _recover(self, name: str) -> None:
        """Take over the rules and call counts of a dead incarnation's set."""
        try:
            old = PolicySet.attach(name)
        except CarmpError:  # died before its set was ready: nothing to recover
            return
        try:
            self.policies.restore(old)
        finally:
            old.close()

    def __getattr__(self, name: str) -> Any:
        if name in PolicyHost.FORWARDED:
            return getattr(self.policies, name)
        raise AttributeError(f"the hosted policy set has no method {name!r}")

    def rules_since(self, seen: Version | None,
                    tool: str | None) -> tuple[Version, Entries | None, dict[int, int]]:
        """The version; the rules unless `seen` is that version; and the counter words
        (by offset) of the max_calls rules on `tool`."""
        rules = self.policies._current()
        version = (self.incarnation, rules.version)
        entries = None if seen == version else [
            (compiled.rule, compiled.slot, compiled.serial) for compiled in rules.ordered]
        counted = rules.counted.get(tool, ()) if tool is not None else ()
        words = {compiled.counter: self.policies._load(compiled.counter) for compiled in counted}
        return version, entries, words

    def claim(self, action_id: str, tool: str | None) -> list[PolicyViolation]:
        return self.policies.claim(_ClaimedAction(action_id, tool))

    def version(self) -> int:
        return self.policies.version

    def settings(self) -> dict[str, Any]:
        """What a client needs to know once: to place counters and name like the set."""
        return {"call_counters": self.policies.call_counters,
                "actor_id": ray_module().get_runtime_context().get_actor_id()}

    def close(self) -> None:
        self.policies.close()


def start_policies(**options: Any) -> RayPolicySet:
    """A new policy actor holding PolicySet(**options), and its owner's client
    (close_host() ends the actor)."""
    factory = functools.partial(PolicyHost, new_host_id(), options)
    return RayPolicySet(start_host(factory, what=WHAT))


class RayPolicySet(HostedPart):
    """The policy set's client: PolicySet's surface over the policy actor. Pickles as its
    actor handle (an empty rule cache on the other side), so it travels to workers."""

    def __init__(self, hosted: HostedClient, settings: dict[str, Any] | None = None) -> None:
        self.hosted = hosted
        self._settings = hosted.call("settings") if settings is None else settings
        self.call_counters: int = self._settings["call_counters"]
        self.name = f"ray-policies-{self._settings['actor_id'][:12]}"
        # the rules as of a version, replaced whole (threads of this process share it)
        self._copy: tuple[Version | None, _Rules] = (None, _Rules(-1, (), {}))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayPolicySet, (self.hosted, self._settings))

    def __repr__(self) -> str:
        return f"<RayPolicySet {self.name}>"

    # ---- the rules, as of the actor's current version --------------------------------

    def _refresh(self, tool: str | None) -> tuple[_Rules, dict[int, int]]:
        """This client's copy of the rules, fetched again when the actor's version
        moved, and the counter words of `tool`'s max_calls rules."""
        seen, rules = self._copy
        version, entries, words = self.hosted.call("rules_since", seen, tool)
        if entries is not None:
            rules = compile_rules(version[1], entries, self.call_counters)
            self._copy = (version, rules)
        return rules, words

    def evaluate(self, action: PolicyAction, state: StateView | None) -> list[PolicyViolation]:
        """Every rule that refuses the action now, checked here against `state`."""
        rules, words = self._refresh(action.tool)
        return violations(rules, action, state, lambda offset: words.get(offset, 0))

    def claim(self, action: PolicyAction) -> list[PolicyViolation]:
        """Count one call of the action's tool against its max_calls rules, in the actor
        (all or nothing); the refusing rules, or []."""
        found: list[PolicyViolation] = self.hosted.mutate("claim", action.id, action.tool)
        return found

    def rules(self) -> list[Rule]:
        return [compiled.rule for compiled in self._refresh(None)[0].ordered]

    @property
    def version(self) -> int:
        version: int = self.hosted.call("version")
        return version

    def denied_tools(self) -> list[str]:
        tools: list[str] = self.hosted.call("denied_tools")
        return tools

    def calls(self, rule_or_tool: str) -> int:
        calls: int = self.hosted.call("calls", rule_or_tool)
        return calls

    def statistics(self) -> PolicyStatistics:
        statistics: PolicyStatistics = self.hosted.call("statistics")
        return statistics

    # ---- changes, applied once by the actor -------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        added: Rule = self.hosted.mutate("add", rule)
        return added

    def remove(self, name: str) -> int:
        removed: int = self.hosted.mutate("remove", name)
        return removed

    def add_deny_tool(self, name: str, tool: str, description: str = "") -> Rule:
        added: Rule = self.hosted.mutate("add_deny_tool", name, tool, description)
        return added

    def add_deny_tool_param(self, name: str, tool: str, key: str, pattern: str, *,
                            regex: bool = False, description: str = "") -> Rule:
        added: Rule = self.hosted.mutate("add_deny_tool_param", name, tool, key, pattern,
                                          regex=regex, description=description)
        return added

    def add_require_state(self, name: str, key: str, value: Any = ANY_VALUE, *,
                          tool: str | None = None, description: str = "") -> Rule:
        added: Rule = self.hosted.mutate("add_require_state", name, key, value, tool=tool,
                                          description=description)
        return added

    def add_max_calls(self, name: str, tool: str, limit: int, description: str = "") -> Rule:
        added: Rule = self.hosted.mutate("add_max_calls", name, tool, limit, description)
        return added

    # ---- lifecycle ----------------------------------------------------------------------------

