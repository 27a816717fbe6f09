"""carmp: CAR's multi-agent coordination runtime on a local multiprocess worker pool.

The supervisor owns one shared world in shared memory (state, budget, policies,
event log); workers attach it by name. This module holds the public names only.
"""

from carmp.errors import (
    AgentLimit as AgentLimit,
    BudgetError as BudgetError,
    BudgetExhausted as BudgetExhausted,
    CarmpError as CarmpError,
    InvalidBudget as InvalidBudget,
    LeaseNotHeld as LeaseNotHeld,
    LeaseTableFull as LeaseTableFull,
    LockError as LockError,
    LockTimeout as LockTimeout,
    ReservationDenied as ReservationDenied,
    SegmentClosed as SegmentClosed,
    SegmentCorrupt as SegmentCorrupt,
    SegmentError as SegmentError,
    SegmentExists as SegmentExists,
    SegmentNotFound as SegmentNotFound,
    SharedMemoryFull as SharedMemoryFull,
    WouldBlock as WouldBlock,
)
from carmp.shared.budget import (
    BudgetLimits as BudgetLimits,
    BudgetSnapshot as BudgetSnapshot,
    BudgetStatistics as BudgetStatistics,
    CoordinationBudget as CoordinationBudget,
    Lease as Lease,
    TokenAccounting as TokenAccounting,
)
from carmp.shared.segment import sweep as sweep

__version__ = "0.1.0"

__all__ = [
    "AgentLimit",
    "BudgetError",
    "BudgetExhausted",
    "BudgetLimits",
    "BudgetSnapshot",
    "BudgetStatistics",
    "CarmpError",
    "CoordinationBudget",
    "InvalidBudget",
    "Lease",
    "LeaseNotHeld",
    "LeaseTableFull",
    "LockError",
    "LockTimeout",
    "ReservationDenied",
    "SegmentClosed",
    "SegmentCorrupt",
    "SegmentError",
    "SegmentExists",
    "SegmentNotFound",
    "SharedMemoryFull",
    "TokenAccounting",
    "WouldBlock",
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
