"""carmp: CAR's multi-agent coordination runtime on a local multiprocess worker pool.

The supervisor owns one shared world in shared memory (state, budget, policies,
event log); workers attach it by name. This module holds the public names only, and
imports each from its module on first use, so that a worker process (which needs
little of carmp) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carmp.errors import (
        AgentLimit as AgentLimit,
        BudgetError as BudgetError,
        BudgetExhausted as BudgetExhausted,
        CarmpError as CarmpError,
        EventJournalWarning as EventJournalWarning,
        EventLogError as EventLogError,
        EventLogFull as EventLogFull,
        EventTooLarge as EventTooLarge,
        EventsLost as EventsLost,
        FarmBroken as FarmBroken,
        FarmShutdown as FarmShutdown,
        InvalidBudget as InvalidBudget,
        InvalidEvent as InvalidEvent,
        InvalidEventLog as InvalidEventLog,
        JournalCorrupt as JournalCorrupt,
        JournalWriteFailed as JournalWriteFailed,
        KeyTooLarge as KeyTooLarge,
        LeaseNotHeld as LeaseNotHeld,
        LeaseTableFull as LeaseTableFull,
        LockError as LockError,
        LockTimeout as LockTimeout,
        MergeConflict as MergeConflict,
        PayloadError as PayloadError,
        RemoteTaskError as RemoteTaskError,
        RemoteTraceback as RemoteTraceback,
        ReservationDenied as ReservationDenied,
        SegmentClosed as SegmentClosed,
        SegmentCorrupt as SegmentCorrupt,
        SegmentError as SegmentError,
        SegmentExists as SegmentExists,
        SegmentNotFound as SegmentNotFound,
        SharedMemoryFull as SharedMemoryFull,
        StateError as StateError,
        StateFull as StateFull,
        StateJournalWarning as StateJournalWarning,
        TaskTimeout as TaskTimeout,
        TransitionsDropped as TransitionsDropped,
        ValueTooLarge as ValueTooLarge,
        WorkerCrashed as WorkerCrashed,
        WouldBlock as WouldBlock,
    )
    from carmp.pool.farm import (
        Farm as Farm,
        TaskFuture as TaskFuture,
    )
    from carmp.pool.worker import (
        WorkerInfo as WorkerInfo,
        current_infra as current_infra,
        current_worker as current_worker,
    )
    from carmp.shared.budget import (
        BudgetLimits as BudgetLimits,
        BudgetSnapshot as BudgetSnapshot,
        BudgetStatistics as BudgetStatistics,
        CoordinationBudget as CoordinationBudget,
        Lease as Lease,
        TokenAccounting as TokenAccounting,
    )
    from carmp.shared.event import (
        Event as Event,
        EventKind as EventKind,
        Span as Span,
        SpanStatus as SpanStatus,
    )
    from carmp.shared.eventlog import (
        EventLog as EventLog,
        EventLogStats as EventLogStats,
        EventReader as EventReader,
    )
    from carmp.runtime.context import (
        AgentContext as AgentContext,
        MergeReport as MergeReport,
        TaskScope as TaskScope,
        current_context as current_context,
    )
    from carmp.shared.state import (
        DELETE as DELETE,
        BatchOutcome as BatchOutcome,
        StateStatistics as StateStatistics,
        StateStore as StateStore,
        StateTransition as StateTransition,
        Transaction as Transaction,
    )
    from carmp.pool.supervisor import (
        FarmStatistics as FarmStatistics,
    )
    from carmp.shared.journal import (
        JournalReport as JournalReport,
    )
    from carmp.shared.infra import (
        SharedInfra as SharedInfra,
    )
    from carmp.shared.segment import (
        sweep as sweep,
    )

# Where each public name lives.
_EXPORTS: dict[str, str] = {
    "AgentLimit": "carmp.errors",
    "BudgetError": "carmp.errors",
    "BudgetExhausted": "carmp.errors",
    "CarmpError": "carmp.errors",
    "EventJournalWarning": "carmp.errors",
    "EventLogError": "carmp.errors",
    "EventLogFull": "carmp.errors",
    "EventTooLarge": "carmp.errors",
    "EventsLost": "carmp.errors",
    "FarmBroken": "carmp.errors",
    "FarmShutdown": "carmp.errors",
    "InvalidBudget": "carmp.errors",
    "InvalidEvent": "carmp.errors",
    "InvalidEventLog": "carmp.errors",
    "JournalCorrupt": "carmp.errors",
    "JournalWriteFailed": "carmp.errors",
    "KeyTooLarge": "carmp.errors",
    "LeaseNotHeld": "carmp.errors",
    "LeaseTableFull": "carmp.errors",
    "LockError": "carmp.errors",
    "LockTimeout": "carmp.errors",
    "MergeConflict": "carmp.errors",
    "PayloadError": "carmp.errors",
    "RemoteTaskError": "carmp.errors",
    "RemoteTraceback": "carmp.errors",
    "ReservationDenied": "carmp.errors",
    "SegmentClosed": "carmp.errors",
    "SegmentCorrupt": "carmp.errors",
    "SegmentError": "carmp.errors",
    "SegmentExists": "carmp.errors",
    "SegmentNotFound": "carmp.errors",
    "SharedMemoryFull": "carmp.errors",
    "StateError": "carmp.errors",
    "StateFull": "carmp.errors",
    "StateJournalWarning": "carmp.errors",
    "TaskTimeout": "carmp.errors",
    "TransitionsDropped": "carmp.errors",
    "ValueTooLarge": "carmp.errors",
    "WorkerCrashed": "carmp.errors",
    "WouldBlock": "carmp.errors",
    "Farm": "carmp.pool.farm",
    "TaskFuture": "carmp.pool.farm",
    "WorkerInfo": "carmp.pool.worker",
    "current_infra": "carmp.pool.worker",
    "current_worker": "carmp.pool.worker",
    "BudgetLimits": "carmp.shared.budget",
    "BudgetSnapshot": "carmp.shared.budget",
    "BudgetStatistics": "carmp.shared.budget",
    "CoordinationBudget": "carmp.shared.budget",
    "Lease": "carmp.shared.budget",
    "TokenAccounting": "carmp.shared.budget",
    "Event": "carmp.shared.event",
    "EventKind": "carmp.shared.event",
    "Span": "carmp.shared.event",
    "SpanStatus": "carmp.shared.event",
    "EventLog": "carmp.shared.eventlog",
    "EventLogStats": "carmp.shared.eventlog",
    "EventReader": "carmp.shared.eventlog",
    "AgentContext": "carmp.runtime.context",
    "MergeReport": "carmp.runtime.context",
    "TaskScope": "carmp.runtime.context",
    "current_context": "carmp.runtime.context",
    "DELETE": "carmp.shared.state",
    "BatchOutcome": "carmp.shared.state",
    "StateStatistics": "carmp.shared.state",
    "StateStore": "carmp.shared.state",
    "StateTransition": "carmp.shared.state",
    "Transaction": "carmp.shared.state",
    "FarmStatistics": "carmp.pool.supervisor",
    "JournalReport": "carmp.shared.journal",
    "SharedInfra": "carmp.shared.infra",
    "sweep": "carmp.shared.segment",
}

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'carmp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if getattr(value, "__module__", "").startswith("carmp."):
        try:
            value.__module__ = "carmp"  # present the public name, as pickles will find it
        except (AttributeError, TypeError):
            pass
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
