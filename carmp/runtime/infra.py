"""SharedInfra: the world one coordination shares (CAR-SPEC 2.1), across processes.

One state store, one event log, one coordination budget and one policy set, each a
shared segment. The infra pickles as the four segment names, so a worker that receives it
attaches the same world; the process that created a part also closes (and unlinks) it.
`policies` is this handle's PolicyEngine over the shared set: the set's rules bind every
process, rules registered on the engine only this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carmp.runtime.policy import PolicyEngine
from carmp.shared.budget import BudgetLimits, CoordinationBudget
from carmp.shared.eventlog import EventLog
from carmp.shared.policy import PolicySet
from carmp.shared.state import StateStore

if TYPE_CHECKING:
    from carmp.runtime.context import AgentContext
    from carmp.runtime.runtime import Runtime


class SharedInfra:
    """State, log, budget and policies shared by every agent of a coordination, in every
    process."""

    def __init__(self, state: StateStore | None = None, log: EventLog | None = None,
                 budget: CoordinationBudget | None = None, policies: PolicySet | None = None,
                 *, run_id: str | None = None) -> None:
        # the parts this handle made itself, and so closes
        self._owned: list[Any] = []
        try:
            self.state = state if state is not None else self._own(StateStore(run_id=run_id))
            self.log = log if log is not None else self._own(EventLog(run_id=run_id))
            self.budget = budget if budget is not None else self._own(
                CoordinationBudget(BudgetLimits(), run_id=run_id))
            self._policy_set = policies if policies is not None else self._own(
                PolicySet(run_id=run_id))
        except BaseException:  # a part that did not fit (SharedMemoryFull): none stays behind
            self.close()
            raise
        self.budget.record_events_in(self.log)  # every grant, denial and refund is an event
        self.policies = PolicyEngine(self._policy_set)

    def _own(self, part: Any) -> Any:
        self._owned.append(part)
        return part

    @classmethod
    def attach(cls, state: str, log: str, budget: str, policies: str) -> SharedInfra:
        """Attach the world another process created, by its segment names."""
        infra = cls.__new__(cls)
        infra._owned = []
        infra.state = infra._own(StateStore.attach(state))
        infra.log = infra._own(EventLog.attach(log))
        infra.budget = infra._own(CoordinationBudget.attach(budget))
        infra.budget.record_events_in(infra.log)
        infra._policy_set = infra._own(PolicySet.attach(policies))
        infra.policies = PolicyEngine(infra._policy_set)
        return infra

    def segment_names(self) -> tuple[str, str, str, str]:
        """What attach() takes: the state, event log, budget and policy set segments."""
        return (self.state.name, self.log.name, self.budget.name, self._policy_set.name)

    def __reduce__(self) -> tuple[Any, tuple[str, str, str, str]]:
        return (SharedInfra.attach, self.segment_names())

    # ---- CAR's surface ----------------------------------------------------------------------

    def with_budget(self, limits: BudgetLimits) -> SharedInfra:
        """Replace the budget with a fresh one of `limits`."""
        return self.with_shared_budget(self._own(CoordinationBudget(limits)))

    def with_shared_budget(self, budget: CoordinationBudget) -> SharedInfra:
        """Use a budget that other infras may share: spend anywhere counts everywhere."""
        old = self.budget
        self.budget = budget
        budget.record_events_in(self.log)
        if old in self._owned and old is not budget:
            self._owned.remove(old)
            old.close()
        return self

    def begin_agent(self) -> None:
        """Reserve one agent slot right before a spawn; raises BudgetError when refused."""
        self.budget.try_begin_agent()

    def record_output(self, output: Any) -> None:
        """Add an agent's reported spend (an AgentOutput, a TokenAccounting, or None)."""
        self.budget.record_output(output)

    def make_runtime(self, *, shared_idempotency: bool = False) -> Runtime:
        """A Runtime sharing this infra's state, log and policies, with tools and an
        idempotency cache of its own (or, with shared_idempotency, the cache in the
        shared state that every runtime opting in shares)."""
        from carmp.runtime.runtime import Runtime  # most workers never run proposals

        return Runtime(self.state, self.log, self.policies,
                       shared_idempotency=shared_idempotency)

    def make_isolated_runtime(self, agent_name: str, *, shared_idempotency: bool = False
                              ) -> tuple[Runtime, AgentContext]:
        """A Runtime whose writes land in a fresh overlay for `agent_name` (reads fall
        through to the shared state; events go to the shared log), and that overlay:
        merge it with `context.merge_to_parent()` once the agent succeeded."""
        from carmp.runtime.context import AgentContext
        from carmp.runtime.runtime import Runtime

        context = AgentContext(agent_name, self.state)
        return Runtime(context, self.log, self.policies,
                       shared_idempotency=shared_idempotency), context

    def close(self) -> None:
        """Close the parts this handle created or attached; shared ones passed in stay open."""
        while self._owned:
            self._owned.pop().close()

    def __enter__(self) -> SharedInfra:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<SharedInfra state={self.state.name} log={self.log.name} "
                f"budget={self.budget.name} policies={self._policy_set.name}>")
