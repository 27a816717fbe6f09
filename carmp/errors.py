"""Every error carmp raises, in one tree.

Each class is named for the state of the thing it hit, and also inherits the
stdlib class a caller would already catch for that situation. Every message says
what happened and what to do about it.

    CarmpError
    ├── SegmentError
    │   ├── SegmentNotFound ........ (FileNotFoundError)  attach: no such segment
    │   ├── SegmentExists .......... (FileExistsError)    create: name taken
    │   ├── SegmentCorrupt ......... (ValueError)         header/magic/version/size mismatch
    │   ├── SegmentClosed .......... (ValueError)         used after close()
    │   └── SharedMemoryFull ....... (MemoryError)        /dev/shm lacks room
    ├── WouldBlock ................. (BlockingIOError)    a *_nowait call could not proceed
    ├── LockError
    │   └── LockTimeout ............ (TimeoutError)       timed acquire gave up
    └── BudgetError
        ├── BudgetExhausted ........ (BudgetError.Exhausted)  a spend limit was crossed
        ├── AgentLimit ............. (BudgetError.AgentLimit) max_agents reached
        ├── ReservationDenied ...... reserve() would overshoot a limit
        ├── LeaseNotHeld ........... (LookupError)        commit/release of a lease not held
        ├── LeaseTableFull ......... too many leases outstanding
        └── InvalidBudget .......... (ValueError)         bad limits or budget JSON
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from carmp.shared.budget import BudgetSnapshot


class CarmpError(Exception):
    """Base of every error carmp raises on purpose."""


# ---- segments -------------------------------------------------------------------


class SegmentError(CarmpError):
    """A shared-memory segment could not be created, attached or used."""


class SegmentNotFound(SegmentError, FileNotFoundError):
    """Attach named a segment that does not exist (its creator closed it or died)."""


class SegmentExists(SegmentError, FileExistsError):
    """Create named a segment that already exists."""


class SegmentCorrupt(SegmentError, ValueError):
    """A segment's header does not match what the reader expects."""


class SegmentClosed(SegmentError, ValueError):
    """A segment was used after close()."""


class SharedMemoryFull(SegmentError, MemoryError):
    """/dev/shm has too little free space for the segments carmp must create."""


class WouldBlock(CarmpError, BlockingIOError):
    """A *_nowait call could not proceed at once; the blocking twin would have waited."""


# ---- locks --------------------------------------------------------------------


class LockError(CarmpError):
    """A cross-process lock could not be used."""


class LockTimeout(LockError, TimeoutError):
    """A timed acquire gave up; `owner_pid` names who held the lock (0 if unknown)."""

    def __init__(self, message: str, owner_pid: int = 0) -> None:
        super().__init__(message)
        self.owner_pid = owner_pid


# ---- budget -------------------------------------------------------------------


class BudgetError(CarmpError):
    """The coordination budget refused something. CAR's variants are attributes:
    `BudgetError.Exhausted` and `BudgetError.AgentLimit`."""

    Exhausted: ClassVar[type[BudgetExhausted]]
    AgentLimit: ClassVar[type[AgentLimit]]


class BudgetExhausted(BudgetError):
    """A token or cost limit was already crossed before this agent could start."""

    def __init__(self, reason: str, snapshot: BudgetSnapshot) -> None:
        super().__init__(
            f"coordination budget exhausted: {reason}; no new agent may start "
            "(raise the limit in BudgetLimits or start a new budget)"
        )
        self.reason = reason
        self.snapshot = snapshot


class AgentLimit(BudgetError):
    """Starting one more agent would exceed `max_agents`."""

    def __init__(self, max: int, started: int) -> None:  # noqa: A002 - CAR's field name
        super().__init__(
            f"agent limit reached: {started} of max_agents={max} already started; "
            "raise max_agents in BudgetLimits to start more"
        )
        self.max = max
        self.started = started


BudgetError.Exhausted = BudgetExhausted
BudgetError.AgentLimit = AgentLimit


class ReservationDenied(BudgetError):
    """A reservation would let spent + reserved exceed a limit."""

    def __init__(self, reason: str, snapshot: BudgetSnapshot) -> None:
        super().__init__(
            f"reservation denied: {reason}; wait for running work to commit or release "
            "its leases, lower the estimate, or raise the limit"
        )
        self.reason = reason
        self.snapshot = snapshot


class LeaseNotHeld(BudgetError, LookupError):
    """commit() or release() named a lease that was already settled or refunded."""


class LeaseTableFull(BudgetError):
    """Every lease slot is taken by an outstanding reservation."""


class InvalidBudget(BudgetError, ValueError):
    """Budget limits or budget JSON are malformed."""


__all__ = [
    "AgentLimit",
    "BudgetError",
    "BudgetExhausted",
    "CarmpError",
    "InvalidBudget",
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
    "WouldBlock",
]
