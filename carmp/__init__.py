"""carmp: CAR's multi-agent coordination runtime on a local multiprocess worker pool.

The supervisor owns one shared world in shared memory (state, budget, policies,
event log); workers attach it by name. This module holds the public names only.
"""

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
from carmp.pool.supervisor import FarmStatistics as FarmStatistics
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
from carmp.shared.journal import JournalReport as JournalReport
from carmp.runtime.context import (
    AgentContext as AgentContext,
    MergeReport as MergeReport,
    TaskScope as TaskScope,
    current_context as current_context,
)
from carmp.shared.infra import SharedInfra as SharedInfra
from carmp.shared.segment import sweep as sweep
from carmp.shared.state import (
    DELETE as DELETE,
    BatchOutcome as BatchOutcome,
    StateStatistics as StateStatistics,
    StateStore as StateStore,
    StateTransition as StateTransition,
    Transaction as Transaction,
)

__version__ = "0.1.0"

__all__ = [
    "AgentContext",
    "AgentLimit",
    "BatchOutcome",
    "BudgetError",
    "BudgetExhausted",
    "BudgetLimits",
    "BudgetSnapshot",
    "BudgetStatistics",
    "CarmpError",
    "CoordinationBudget",
    "DELETE",
    "Event",
    "EventJournalWarning",
    "EventKind",
    "EventLog",
    "EventLogError",
    "EventLogFull",
    "EventLogStats",
    "EventReader",
    "EventTooLarge",
    "EventsLost",
    "Farm",
    "FarmBroken",
    "FarmShutdown",
    "FarmStatistics",
    "InvalidBudget",
    "InvalidEvent",
    "InvalidEventLog",
    "JournalCorrupt",
    "JournalReport",
    "JournalWriteFailed",
    "KeyTooLarge",
    "Lease",
    "LeaseNotHeld",
    "LeaseTableFull",
    "LockError",
    "LockTimeout",
    "MergeConflict",
    "MergeReport",
    "PayloadError",
    "RemoteTaskError",
    "RemoteTraceback",
    "ReservationDenied",
    "SegmentClosed",
    "SegmentCorrupt",
    "SegmentError",
    "SegmentExists",
    "SegmentNotFound",
    "SharedInfra",
    "SharedMemoryFull",
    "Span",
    "SpanStatus",
    "StateError",
    "StateFull",
    "StateJournalWarning",
    "StateStatistics",
    "StateStore",
    "StateTransition",
    "TaskFuture",
    "TaskScope",
    "TaskTimeout",
    "TokenAccounting",
    "Transaction",
    "TransitionsDropped",
    "ValueTooLarge",
    "WorkerCrashed",
    "WorkerInfo",
    "WouldBlock",
    "current_context",
    "current_infra",
    "current_worker",
    "sweep",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "carmp").startswith("carmp."):
        try:
            _obj.__module__ = "carmp"
        except (AttributeError, TypeError):
            pass
del _name, _obj
