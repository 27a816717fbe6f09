"""The concurrency-anomaly gate (CAR-SPEC 2.12, "A5"): an opt-in check of the merge
barrier where isolated agents' overlays reach the shared state.

Each isolated agent run is one op, read -> generate -> write, stamped on the run's
shared monotonic logical clock, the event log's sequence: `read_at` is the seq of its
agent_started event (appended before its runner reads anything), `commit_at` that of its
agent_finished event (appended after its last write to its overlay). Ops whose windows
overlap ran concurrently. The op's overlay knows, per key, the parent version it first
read or wrote at (`seen`), whether it read the key from the parent (`reads`), and what it
changed; the store's per-key versions grow with every write, so a version names a write.

Ops are checked and merged in merge order: the order of the batch (the agents' order in
the pattern's configuration), whatever order they finished in, so the outcome is
deterministic.

- stale generation (lost update): an op read a key from the parent, then changed it,
  and the key's parent version is no longer the one it read (an op before it in merge
  order changed it, or a writer outside the batch did). CAR asks for approval here;
  carmp has no approval sink, so it fails closed: the op's writes are not merged and its
  output is marked errored. The final check is a compare-and-set on the keys it read,
  atomic with its merge, so no other writer slips in between.
- causal cascade: `depends_on={"b": ["a"]}` declares that agent b builds on agent a, so
  every merged run of b must have started after a run of a that is merged too finished
  (a.commit_at < b.read_at). When a failed, was refused, was rejected as stale, or ran
  concurrently with or after b, the whole merge aborts with ConcurrencyAbort and no
  agent's writes reach the parent.
- tool-effect reordering: a key written by several merged ops whose windows overlap
  (concurrent same-key writers, none of which read it first) is remediated by
  deterministic serialisation: the ops merge in merge order, so the last one wins; the
  report lists each such key's writers in that order.
- phantom tool: cannot arise in carmp, where each agent has a tool registry of its own
  that no other agent changes.

Keys an op only read, whose parent version changed before it merged, are reported as
stale reads, which change nothing. Every barrier appends one `concurrency_gate` event
with its report to the event log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from carmp.errors import ConcurrencyAbort, InvalidPattern
from carmp.runtime.context import AgentContext

if TYPE_CHECKING:
    from carmp.agents.runner import AgentRun
    from carmp.shared.eventlog import EventLog
    from carmp.shared.state import StateStore

GATE_EVENT = "concurrency_gate"
STALE_GENERATION = "stale_generation"
CAUSAL_CASCADE = "causal_cascade"
TOOL_EFFECT_REORDERING = "tool_effect_reordering"


@dataclass(frozen=True, slots=True)
class GateOp:
    """One agent run at the barrier: its window on the log's clock, and for a run that
    succeeded, the parent versions of the keys it read from the parent and of those it
    changed (at first read or write)."""

    op_id: str
    agent: str
    succeeded: bool
    read_at: int = 0
    commit_at: int = 0
    reads: Mapping[str, int] | None = None
    writes: Mapping[str, int] | None = None

    def overlaps(self, other: GateOp) -> bool:
        return self.read_at < other.commit_at and other.read_at < self.commit_at

    def read_modify_writes(self) -> dict[str, int]:
        """The keys it read from the parent, then changed, with the version it read."""
        reads, writes = self.reads or {}, self.writes or {}
        return {key: version for key, version in reads.items() if key in writes}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly the gate found: its kind, the ops and keys involved, and what it saw."""

    kind: str
    ops: tuple[str, ...]
    keys: tuple[str, ...]
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ops": list(self.ops), "keys": list(self.keys),
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class GateReport:
    """What one barrier decided (CAR's ConcurrencyGuard): ops in merge order, the
    anomalies, whether the merge aborted, which ops merged or were rejected and why,
    the serialisation order of concurrent same-key writers, and stale reads."""

    ops: tuple[GateOp, ...]
    anomalies: tuple[Anomaly, ...]
    aborted: bool
    merged: tuple[str, ...]
    rejected: Mapping[str, str]
    serialised: Mapping[str, tuple[str, ...]]
    stale_reads: Mapping[str, tuple[str, ...]]

    def is_clean(self) -> bool:
        return not self.anomalies

    def may_commit(self, op_id: str) -> bool:
        return op_id in self.merged

    def rejection_reason(self, op_id: str) -> str | None:
        return self.rejected.get(op_id)

    def anomaly_summary(self) -> str:
        return "; ".join(f"{anomaly.kind}: {anomaly.detail}" for anomaly in self.anomalies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": [{"op": op.op_id, "agent": op.agent, "succeeded": op.succeeded,
                     "read_at": op.read_at, "commit_at": op.commit_at} for op in self.ops],
            "anomalies": [anomaly.to_dict() for anomaly in self.anomalies],
            "aborted": self.aborted, "merged": list(self.merged),
            "rejected": dict(self.rejected),
            "serialised": {key: list(ops) for key, ops in self.serialised.items()},
            "stale_reads": {op: list(keys) for op, keys in self.stale_reads.items()},
        }


def gate_ops(runs: Sequence[AgentRun]) -> list[GateOp]:
    """The barrier's ops, one per run in batch order; an agent name that comes back
    (a debate's second round) gets op id "<name>#<n>"."""
    ops = []
    counts: dict[str, int] = {}
    for run in runs:
        name = run.output.name
        counts[name] = counts.get(name, 0) + 1
        op_id = name if counts[name] == 1 else f"{name}#{counts[name]}"
        overlay = run.overlay
        if overlay is None or not run.output.succeeded():
            ops.append(GateOp(op_id, name, False))
            continue
        if run.window is None:
            raise ValueError(f"agent run {op_id} has an overlay but no window on the event "
                             "log's clock; gate only runs that run_agent produced")
        ops.append(GateOp(op_id, name, True, run.window[0], run.window[1],
                          {key: overlay.seen.get(key, 0) for key in overlay.reads},
                          {key: overlay.seen.get(key, 0) for key in overlay.changes}))
    return ops


class ConcurrencyControl:
    """The gate for the merge barrier of one pattern's isolated agents, with the
    dependencies declared between them (agent name -> names it builds on)."""

    def __init__(self, depends_on: Mapping[str, Iterable[str]] | None = None) -> None:
        self.depends_on: dict[str, tuple[str, ...]] = {}
        for agent, needs in (depends_on or {}).items():
            if isinstance(needs, str):
                raise InvalidPattern(f"depends_on[{agent!r}] must list agent names, got the "
                                     f"string {needs!r}; write [{needs!r}]")
            needs = tuple(needs)
            if agent in needs:
                raise InvalidPattern(f"agent {agent!r} cannot depend on itself")
            self.depends_on[agent] = needs

    def check_agents(self, names: Iterable[str]) -> None:
        """Refuse dependencies naming agents that the pattern does not have."""
        known = set(names)
        for agent, needs in self.depends_on.items():
            unknown = sorted({agent, *needs} - known)
            if unknown:
                raise InvalidPattern(f"depends_on names agents the pattern does not have: "
                                     f"{unknown}; its agents are {sorted(known)}")

    def guard(self, state: StateStore, log: EventLog,
              runs: Sequence[AgentRun]) -> tuple[list[AgentRun], GateReport]:
        """Check the batch, then merge what may commit into `state`, in merge order.
        Returns the runs (a rejected one errored, without its overlay) and the report;
        raises ConcurrencyAbort, having merged nothing, on a causal cascade."""
        ops = gate_ops(runs)
        rejected, stale_reads = _stale_versions(state, ops)
        cascades = self._causal_cascades(ops, rejected)
        if cascades:
            report = _report(ops, cascades, True, (), rejected, {}, stale_reads)
            log.append(GATE_EVENT, data=report.to_dict())
            raise ConcurrencyAbort("; ".join(anomaly.detail for anomaly in cascades))
        merged: list[str] = []
        for op, run in zip(ops, runs):
            if not op.succeeded or op.op_id in rejected:
                continue
            assert run.overlay is not None
            outcome = state.apply(AgentContext.from_delta(state, run.overlay).changes(),
                                  f"merge:{op.agent}", expected_versions=op.read_modify_writes(),
                                  abort_on_change=True)
            if outcome.applied:
                merged.append(op.op_id)
            else:  # a writer outside the batch changed what it read since the check
                rejected[op.op_id] = _stale(op, outcome.changed, "a writer outside this merge")
        anomalies = [Anomaly(STALE_GENERATION, (op_id,), (), reason)
                     for op_id, reason in rejected.items()]
        committed = [op for op in ops if op.op_id in merged]
        serialised = _serialised(committed)
        anomalies += [Anomaly(TOOL_EFFECT_REORDERING, writers, (key,),
                              f"{key!r} written concurrently by {', '.join(writers)}: "
                              f"merged in that order, {writers[-1]} last")
                      for key, writers in serialised.items()]
        report = _report(ops, anomalies, False, merged, rejected, serialised, stale_reads)
        log.append(GATE_EVENT, data=report.to_dict())
        gated = [run if op.op_id not in rejected else replace(
            run, overlay=None, output=replace(run.output, error=f"concurrency gate: "
                                              f"{rejected[op.op_id]}"))
                 for op, run in zip(ops, runs)]
        return gated, report

    def _causal_cascades(self, ops: list[GateOp], rejected: Mapping[str, str]) -> list[Anomaly]:
        merging = [op for op in ops if op.succeeded and op.op_id not in rejected]
        found = []
        for op in merging:
            for need in self.depends_on.get(op.agent, ()):
                before = [dep for dep in merging if dep.agent == need]
                if not before:
                    detail = (f"{op.op_id} depends on {need}, which has no run to merge "
                              "(it failed, was refused, or was rejected)")
                elif not any(dep.commit_at < op.read_at for dep in before):
                    ends = ", ".join(str(dep.commit_at) for dep in before)
                    detail = (f"{op.op_id} started at t={op.read_at}, before {need} "
                              f"finished (t={ends})")
                else:
                    continue
                found.append(Anomaly(CAUSAL_CASCADE, (op.op_id, need), (), detail))
        return found


def _stale_versions(state: StateStore, ops: list[GateOp]
                    ) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Walk the ops in merge order: those whose read-modify-writes rest on versions
    replaced by their turn (by the parent now, or by an op merged before them) are
    rejected, with why; keys only read that were so replaced are stale reads."""
    written_by: dict[str, str] = {}  # key -> the last op before this one that writes it
    rejected: dict[str, str] = {}
    stale_reads: dict[str, tuple[str, ...]] = {}
    for op in ops:
        if not op.succeeded:
            continue
        replaced = {key: written_by.get(key, "a writer outside this merge")
                    for key, version in (op.reads or {}).items()
                    if key in written_by or state.version(key) != version}
        changed = {key: by for key, by in replaced.items() if key in (op.writes or {})}
        if changed:
            writers = ", ".join(sorted(set(changed.values())))
            rejected[op.op_id] = _stale(op, tuple(changed), writers)
            continue
        if replaced:
            stale_reads[op.op_id] = tuple(replaced)
        written_by.update(dict.fromkeys(op.writes or {}, op.op_id))
    return rejected, stale_reads


def _stale(op: GateOp, keys: Sequence[str], by: str) -> str:
    return (f"stale generation: {op.op_id} read {sorted(keys)} and changed them, but {by} "
            "changed them after it read them; its writes were not merged (no approval: "
            "fail closed)")


def _serialised(committed: list[GateOp]) -> dict[str, tuple[str, ...]]:
    """Keys written by several merged ops with overlapping windows -> those ops, in merge
    order."""
    writers: dict[str, list[GateOp]] = {}
    for op in committed:
        for key in op.writes or {}:
            writers.setdefault(key, []).append(op)
    return {key: tuple(op.op_id for op in ops) for key, ops in sorted(writers.items())
            if any(a.overlaps(b) for i, a in enumerate(ops) for b in ops[i + 1:])}


def _report(ops: list[GateOp], anomalies: Sequence[Anomaly], aborted: bool,
            merged: Sequence[str], rejected: Mapping[str, str],
            serialised: Mapping[str, tuple[str, ...]],
            stale_reads: Mapping[str, tuple[str, ...]]) -> GateReport:
    return GateReport(tuple(ops), tuple(anomalies), aborted, tuple(merged), dict(rejected),
                      dict(serialised), dict(stale_reads))
