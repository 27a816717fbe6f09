"""The shared world on Ray: the same SharedInfra, its four parts clients of actors.

State shards, the event log, the budget ledger and the policy set each run in an actor
that hosts the local primitive (host.py); RayInfra holds their clients. It pickles as
those clients (actor handles), so a worker actor that receives it acts on the same world
through the same SharedInfra methods (make_runtime, record_output, ...) as a local
worker: runtime, agents, tools and patterns are one code on both backends.

The infra that open_world() returns owns the actors: its close() ends them. Copies that
travel to workers own nothing; their close() only flushes buffered events.
"""

from __future__ import annotations

import os
from typing import Any

from carmp.backends.on_ray.budget import RayBudget, start_budget
from carmp.backends.on_ray.cluster import ray_module
from carmp.backends.on_ray.eventlog import RayEventLog, start_log
from carmp.backends.on_ray.policy import RayPolicySet, start_policies
from carmp.backends.on_ray.state import RayStateStore, start_state
from carmp.runtime.infra import SharedInfra
from carmp.runtime.policy import PolicyEngine
from carmp.shared.budget import BudgetLimits


class RayInfra(SharedInfra):
    """SharedInfra whose parts live in Ray actors."""

    state: RayStateStore
    log: RayEventLog
    budget: RayBudget
    _policy_set: RayPolicySet
    _hosts: list[Any]  # the parts whose actors this infra started, and so ends

    @classmethod
    def joined(cls, state: RayStateStore, log: RayEventLog, budget: RayBudget,
               policies: RayPolicySet, owned: list[Any]) -> RayInfra:
        """An infra over these clients; `owned` are the ones whose actors its close() ends."""
        infra = cls.__new__(cls)
        infra._owned = []
        infra.state, infra.log, infra.budget = state, log, budget
        infra._policy_set = policies
        infra.policies = PolicyEngine(policies)
        infra._hosts = owned
        return infra

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (RayInfra.joined, (self.state, self.log, self.budget, self._policy_set, []))

    def segment_names(self) -> tuple[str, str, str, str]:
        return (self.state.name, self.log.name, self.budget.name, self._policy_set.name)

    def with_budget(self, limits: BudgetLimits) -> SharedInfra:
        """Replace the budget with a fresh ledger actor of `limits` (this infra ends it)."""
        budget = start_budget(limits)
        budget.record_events_in(self.log)
        self._hosts.append(budget)
        self.budget = budget
        return self

    def with_shared_budget(self, budget: Any) -> SharedInfra:
        budget.record_events_in(self.log)
        self.budget = budget
        return self

    def close(self) -> None:
        """Flush buffered events; the owner also ends every actor it started. After Ray
        shut down (at interpreter exit) there is nothing left to end: the actors of a
        driver die with its connection."""
        hosts, self._hosts = self._hosts, []
        if not ray_module().is_initialized():
            return
        self.log.close()
        end_actors(hosts)

    def __repr__(self) -> str:
        return (f"<RayInfra state={self.state.name} log={self.log.name} "
                f"budget={self.budget.name} policies={self._policy_set.name}>")


def open_world(journal_dir: str, *, limits: BudgetLimits | None = None,
               log_path: str | None = None, state_shards: int = 1) -> RayInfra:
    """Start the world's actors. Journals go under `journal_dir` (state shards and, unless
    `log_path` names one, the event log), so a restarted actor recovers from them."""
    started: list[Any] = []
    try:
        state = start_state(journal_dir, shards=state_shards)
        started.append(state)
        log = start_log(log_path or os.path.join(journal_dir, "events.journal"))
        started.append(log)
        budget = start_budget(limits or BudgetLimits(),
                              journal=os.path.join(journal_dir, "budget.journal"))
        started.append(budget)
        policies = start_policies()
        started.append(policies)
        budget.record_events_in(log)  # every grant, denial and refund is an event
    except BaseException:
        end_actors(started)
        raise
    return RayInfra.joined(state, log, budget, policies, owned=started)


def end_actors(parts: list[Any]) -> None:
    """End the actors of these world parts, last started first."""
    for part in reversed(parts):
        part.close_host()
