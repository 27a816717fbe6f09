"""SharedInfra: the world one coordination shares (CAR-SPEC 2.1), across processes.

One state store, one event log and one coordination budget, each a shared segment.
The infra pickles as the three segment names, so a worker that receives it attaches
the same world; the process that created a part also closes (and unlinks) it.
"""

from __future__ import annotations

from typing import Any

from carmp.shared.budget import BudgetLimits, CoordinationBudget
from carmp.shared.eventlog import EventLog
from carmp.shared.state import StateStore


class SharedInfra:
    """State, log and budget shared by every agent of a coordination, in every process."""

    def __init__(self, state: StateStore | None = None, log: EventLog | None = None,
                 budget: CoordinationBudget | None = None, *, run_id: str | None = None) -> None:
        # the parts this handle made itself, and so closes
        self._owned: list[Any] = []
        self.state = state if state is not None else self._own(StateStore(run_id=run_id))
        self.log = log if log is not None else self._own(EventLog(run_id=run_id))
        self.budget = budget if budget is not None else self._own(
            CoordinationBudget(BudgetLimits(), run_id=run_id))
        self.budget.record_events_in(self.log)  # every grant, denial and refund is an event

    def _own(self, part: Any) -> Any:
        self._owned.append(part)
        return part

    @classmethod
    def attach(cls, state: str, log: str, budget: str) -> SharedInfra:
        """Attach the world another process created, by its segment names."""
        infra = cls.__new__(cls)
        infra._owned = []
        infra.state = infra._own(StateStore.attach(state))
        infra.log = infra._own(EventLog.attach(log))
        infra.budget = infra._own(CoordinationBudget.attach(budget))
        infra.budget.record_events_in(infra.log)
        return infra

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        return (SharedInfra.attach, (self.state.name, self.log.name, self.budget.name))

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

    def close(self) -> None:
        """Close the parts this handle created or attached; shared ones passed in stay open."""
        while self._owned:
            self._owned.pop().close()

    def __enter__(self) -> SharedInfra:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SharedInfra state={self.state.name} log={self.log.name} budget={self.budget.name}>"
