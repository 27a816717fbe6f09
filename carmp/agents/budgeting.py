"""How an AgentLauncher spends the coordination budget: CAR's gate, and two opt-in modes
beyond CAR (CAR-SPEC 5, items 2 and 3) that every pattern gets through its launcher.

CAR gates each spawn on the spend already reported, so a parallel fan-out may overshoot
a cap by a whole batch, and crossing a cap never stops the agents already running.

- `reserve=TokenAccounting(...)`: each spawn first reserves this estimate, a lease in
  the shared budget that is refused at once when spent + reserved + estimate would cross
  a cap (the reservation waits for the budget's lock, never for room), then passes
  CAR's gate (`begin_agent`, which also counts max_agents). A refused reservation is a
  budget-skipped agent like any refusal. The worker then leaves the agent's spend
  unrecorded; the launcher commits the lease with the tokens the agent reported when it
  finishes (spend beyond the estimate still counts: reports are never dropped), or
  releases it when the agent never ran or was lost with its worker (nothing reported,
  nothing counted, as CAR counts a runner that reports no tokens). So a parallel
  fan-out cannot start more agents than the estimates leave room for.
- `cancel_on_exhaustion=True`: whenever one of the launcher's agents finishes and a
  spend cap is crossed (`snapshot().exhausted`; max_agents never counts, as in CAR), the
  launcher's other agents, running or still waiting, are killed (TaskFuture.kill: the
  worker of a running one is replaced). Each becomes a failed output whose error names
  the budget; agents started later are refused by the gate as usual.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

from carmp.errors import BudgetError
from carmp.shared.budget import BudgetSnapshot, Lease, TokenAccounting

if TYPE_CHECKING:
    from carmp.agents.runner import AgentRun
    from carmp.pool.farm import TaskFuture
    from carmp.runtime.infra import SharedInfra


def exhaustion_reason(snapshot: BudgetSnapshot) -> str:
    """Which spend cap `snapshot` crossed, as a sentence ('' when none is)."""
    limits = snapshot.limits
    for name, spent, cap in (
            ("input tokens", snapshot.input_tokens, limits.max_input_tokens),
            ("output tokens", snapshot.output_tokens, limits.max_output_tokens),
            ("total tokens", snapshot.total_tokens, limits.max_total_tokens),
            ("cost (USD)", snapshot.cost_usd, limits.max_cost_usd)):
        if cap is not None and spent >= cap:
            return (f"the coordination budget was exhausted while it ran: {name} {spent} "
                    f"reached the limit of {cap}")
    return ""


def check_budget_modes(reserve: TokenAccounting | None, cancel_on_exhaustion: bool) -> None:
    if reserve is not None and not isinstance(reserve, TokenAccounting):
        raise TypeError(f"reserve must be a TokenAccounting estimate per agent, got "
                        f"{type(reserve).__name__}")
    if not isinstance(cancel_on_exhaustion, bool):
        raise TypeError(f"cancel_on_exhaustion must be a bool, got {cancel_on_exhaustion!r}")


class Spending:
    """One launcher's budget bookkeeping: the gate before each spawn (`admit`), the lease
    each spawn takes (`take_lease`), and what happens when an agent finishes."""

    def __init__(self, infra: SharedInfra, *, reserve: TokenAccounting | None = None,
                 cancel_on_exhaustion: bool = False) -> None:
        check_budget_modes(reserve, cancel_on_exhaustion)
        self.infra = infra
        self.reserve = reserve
        self.cancel_on_exhaustion = cancel_on_exhaustion
        self._leases: collections.deque[Lease] = collections.deque()  # admitted, not spawned
        self._lock = threading.Lock()
        self._running: set[TaskFuture] = set()
        self._stopping = ""  # why the launcher's agents are being killed, once they are

    def admit(self) -> BudgetError | None:
        """The gate right before a spawn: None when one more agent may start (its lease,
        if reserving, waits for take_lease), else why not."""
        lease = None
        if self.reserve is not None:
            try:
                lease = self.infra.budget.reserve(self.reserve)
            except BudgetError as refusal:
                return refusal
        try:
            self.infra.begin_agent()
        except BudgetError as refusal:
            if lease is not None:
                self.infra.budget.release(lease)
            return refusal
        if lease is not None:
            self._leases.append(lease)
        return None

    def take_lease(self) -> Lease | None:
        """The lease admit() granted for the agent being submitted now; None when not
        reserving (or the agent skipped the gate): its worker records its spend."""
        return self._leases.popleft() if self._leases else None

    def track(self, future: TaskFuture) -> None:
        """Watch a submitted agent's task, to kill it if the budget runs out."""
        if not self.cancel_on_exhaustion:
            return
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._running.add(future)
        if stopping:
            future.kill(stopping)

    def finished(self, future: TaskFuture, lease: Lease | None, run: AgentRun) -> None:
        """An agent's task is done: settle its lease, then stop the others if a cap is
        now crossed."""
        if lease is not None:
            if run.pid is None:
                self.infra.budget.release(lease)
            else:
                self.infra.budget.commit(lease, run.output.tokens)
        if not self.cancel_on_exhaustion:
            return
        with self._lock:
            self._running.discard(future)
            if not self._stopping:
                self._stopping = exhaustion_reason(self.infra.budget.snapshot())
            doomed = list(self._running) if self._stopping else []
            self._running.difference_update(doomed)
        for other in doomed:
            other.kill(self._stopping)

    def close(self) -> None:
        """Return leases admitted for agents that were never submitted."""
        while self._leases:
            self.infra.budget.release(self._leases.popleft())
