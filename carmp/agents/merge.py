"""The merge barrier of isolated agents: where their overlays reach the shared state.

An isolated agent writes to an overlay of its own (CAR's task_context) that comes home
with its AgentRun. A pattern hands the runs of a batch to `merge_overlays` once they
have all finished. Only agents that succeeded are merged (CAR: a failed agent's writes
are dropped), one atomic batch each, its transitions tagged "merge:<agent name>", in
the order of the runs (the agents' order in the pattern's configuration), whatever order
they finished in, so concurrent writers of one key always resolve the same way: the
last in that order wins.

Without a gate this is CAR's last-writer-wins merge. With a ConcurrencyControl
(carmp/agents/gate.py) the barrier is checked first: a stale read-modify-write is not
merged and its output is marked errored, and a broken declared dependency aborts the
whole batch with ConcurrencyAbort before anything is merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from carmp.agents.gate import ConcurrencyControl, GateReport
from carmp.runtime.context import AgentContext

if TYPE_CHECKING:
    from carmp.agents.runner import AgentRun
    from carmp.runtime.infra import SharedInfra


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """The runs after the barrier (any the gate rejected now failed) and, when gated,
    the gate's report."""

    runs: tuple[AgentRun, ...]
    report: GateReport | None = None


def merge_overlays(infra: SharedInfra, runs: Sequence[AgentRun],
                   gate: ConcurrencyControl | None = None) -> MergeOutcome:
    """Merge the overlays of the runs that succeeded into `infra.state`, in run order,
    through `gate` when one is given (ConcurrencyAbort: nothing was merged)."""
    if gate is not None:
        gated, report = gate.guard(infra.state, infra.log, runs)
        return MergeOutcome(tuple(gated), report)
    for run in runs:
        if run.overlay is not None and run.output.succeeded():
            AgentContext.from_delta(infra.state, run.overlay).merge_to_parent()
    return MergeOutcome(tuple(runs))
