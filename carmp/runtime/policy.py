"""PolicyEngine: CAR's policy checks (CAR-SPEC 2.7) over two kinds of rule.

- Local rules are Python callables `check(action, state) -> str | None` registered on this
  engine: None passes, a str is the reason for a violation. They live in this process only
  (callables never cross processes).
- Shared rules are the declarative rules of the run's PolicySet (deny_tool,
  deny_tool_param, require_state, max_calls): a rule any process adds binds this engine's
  next check.

`check` runs every rule and returns every violation (batch validation); a local rule that
raises counts as a violation, with the exception in its reason. `admit` is what an executor
calls right before running an action: the same checks, then, when nothing refused it, one
call claimed from every max_calls rule on its tool.

`unregister(name)` removes the local rules of that name and the shared rules of that name,
as CAR's unregister removes every policy with the name: the shared ones are gone for every
process of the run. `policy_names` and `is_empty` likewise see both kinds.

Actions are read duck-typed: `action.id`, `action.tool` (str or None) and
`action.parameters` (a mapping). `state` is a StateStore or an AgentContext overlay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from carmp.errors import InvalidPolicy
from carmp.shared.policy import PolicyAction, SharedPolicies, StateView
from carmp.shared.policy import PolicyViolation as PolicyViolation

PolicyCheck = Callable[[Any, Any], str | None]
"""check(action, state) -> None to pass, or the reason it refuses the action."""


@dataclass(frozen=True, slots=True)
class _LocalPolicy:
    name: str
    check: PolicyCheck
    description: str
    denied_tool: str | None  # register_tool_deny: the tool refused outright


def _violation(policy: _LocalPolicy, action: PolicyAction, state: Any) -> PolicyViolation | None:
    try:
        reason = policy.check(action, state)
    except Exception as exc:  # a broken rule refuses; it never takes the check down
        reason = f"policy check raised {type(exc).__name__}: {exc}"
    if reason is None:
        return None
    if not isinstance(reason, str):
        reason = (f"policy check returned {reason!r}; a check returns None to pass or a str "
                  "saying why it refuses")
    return PolicyViolation(policy.name, action.id, reason)


def _require_text(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidPolicy(f"{what} must be a non-empty str, got {value!r}")


class PolicyEngine:
    """This process's local rules plus the run's shared PolicySet (if any)."""

    def __init__(self, shared: SharedPolicies | None = None) -> None:
        if shared is not None and not isinstance(shared, SharedPolicies):
            raise InvalidPolicy(f"shared must be a PolicySet (or a client of one, such as "
                                f"RayPolicySet) or None, got {type(shared).__name__}")
        self.shared = shared
        # replaced whole on every change, so checks read it without a lock
        self._local: tuple[_LocalPolicy, ...] = ()
        self._changing = threading.Lock()

    def __repr__(self) -> str:
        shared = "" if self.shared is None else f" shared={self.shared.name}"
        return f"<PolicyEngine local={len(self._local)}{shared}>"

    # ---- local rules ------------------------------------------------------------------------

    def register(self, name: str, check: PolicyCheck, description: str = "") -> None:
        """Add a local rule; names may repeat (unregister removes them all)."""
        self._register(name, check, description, None)

    def register_tool_deny(self, name: str, tool: str, check: PolicyCheck,
                           description: str = "") -> None:
        """Add a local rule that also records `tool` as denied outright
        (see blanket_denied_tools); the check still decides each action."""
        _require_text("a denied tool", tool)
        self._register(name, check, description, tool)

    def _register(self, name: str, check: PolicyCheck, description: str,
                  denied_tool: str | None) -> None:
        _require_text("a policy name", name)
        if not callable(check):
            raise InvalidPolicy(f"policy {name!r}: check must be callable, got {check!r}")
        if not isinstance(description, str):
            raise InvalidPolicy(f"policy {name!r}: description must be a str, got {description!r}")
        with self._changing:
            self._local = (*self._local, _LocalPolicy(name, check, description, denied_tool))

    def unregister(self, name: str) -> int:
        """Remove every policy named `name`, local and shared; returns how many."""
        _require_text("a policy name", name)
        with self._changing:
            kept = tuple(policy for policy in self._local if policy.name != name)
            removed = len(self._local) - len(kept)
            self._local = kept
        if self.shared is not None:
            removed += self.shared.remove(name)
        return removed

    # ---- questions ------------------------------------------------------------------------

    def policy_names(self) -> list[str]:
        """One name per policy: local ones in registration order, then shared ones."""
        names = [policy.name for policy in self._local]
        if self.shared is not None:
            names += [rule.name for rule in self.shared.rules()]
        return names

    def is_empty(self) -> bool:
        return not self._local and (self.shared is None or not self.shared.rules())

    def blanket_denied_tools(self) -> list[str]:
        """Tools denied outright: by register_tool_deny here, or by a shared deny_tool rule."""
        tools = [policy.denied_tool for policy in self._local if policy.denied_tool is not None]
        if self.shared is not None:
            tools += self.shared.denied_tools()
        return list(dict.fromkeys(tools))

    # ---- checks ---------------------------------------------------------------------------

    def check(self, action: PolicyAction, state: StateView | None) -> list[PolicyViolation]:
        """Every violation of every rule, local ones first; counts no call."""
        found = [violation for policy in self._local
                 if (violation := _violation(policy, action, state)) is not None]
        if self.shared is not None:
            found += self.shared.evaluate(action, state)
        return found

    def admit(self, action: PolicyAction, state: StateView | None) -> list[PolicyViolation]:
        """Check right before running the action. With no violation, claim one call from
        every max_calls rule on its tool: all or nothing, a claim past a limit being a
        violation. An empty list means run it."""
        found = self.check(action, state)
        if found or self.shared is None:
            return found
        return self.shared.claim(action)
