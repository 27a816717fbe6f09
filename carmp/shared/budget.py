"""CoordinationBudget: CAR's spend and agent gate, shared by every process of a run.

CAR semantics (post-hoc, self-reported): `try_begin_agent()` refuses once a spend
limit is already reached (`BudgetExhausted`) or when one more agent would exceed
`max_agents` (`AgentLimit`); `record_output()` adds what an agent reports. Both are
lock-free atomics on shared words.

Beyond CAR, reservations close the parallel-batch overshoot: `reserve(estimate)`
grants a lease only while spent + reserved + estimate stays within every limit;
`commit(lease, actual)` turns it into spend, `release(lease)` returns it. Leases are
owned by a process (pid + start time); leases of dead owners are refunded by
`reclaim_dead_leases()`, which reserve() also runs before it denies. Reservation
bookkeeping happens under a RobustLock with an undo log, so at every instant
`granted - refunded <= cap` for each limited dimension.

Money is counted in integer micro-dollars so that sums never drift.

Payload layout (offsets from the payload start, 8-byte little-endian words;
NO_LIMIT = 2**64 - 1 marks an unlimited dimension). The four spend dimensions are
always in the order input, output, total tokens, cost in micro-dollars:

    offset  size  field
    0       32    limits[4]: max input, output, total tokens, max cost micro-USD
    32      8     max_agents
    40      8     lease slot count
    64      32    spent[4]            (lock-free, reported spend)
    128     8     agents_started      (lock-free)
    192     8     denied_exhausted    (lock-free)
    200     8     denied_agent_limit  (lock-free)
    256     32    reserved[4]         (under the lock, as are the fields below)
    288     32    granted[4]          cumulative estimates granted
    320     32    refunded[4]         cumulative estimate returned (release, commit below
                                      estimate, dead owner)
    352     8     next lease id
    360     8     leases held
    368     8     reservations granted
    376     8     reservations denied
    384     8     dead leases refunded
    448     ...   RobustLock (RobustLock.size(UNDO_CAPACITY) bytes)
    LEASES  64*n  lease slots: id (0 = free), pid, pid start time, estimate[4], granted at ns
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from carmp.errors import (
    AgentLimit,
    CarmpError,
    BudgetExhausted,
    InvalidBudget,
    LeaseNotHeld,
    LeaseTableFull,
    ReservationDenied,
)
from carmp.shared.lock import DEFAULT_TIMEOUT, RobustLock
from carmp.shared.proc import is_alive, own_identity
from carmp.shared.segment import HEADER_SIZE, Segment

if TYPE_CHECKING:
    from carmp.shared.eventlog import EventLog

LAYOUT_VERSION = 1
KIND = "budget"
NO_LIMIT = 2**64 - 1
MICROS_PER_USD = 1_000_000
DEFAULT_LEASE_SLOTS = 1024
UNDO_CAPACITY = 24
_DIMENSIONS = ("input tokens", "output tokens", "total tokens", "cost (micro-USD)")

_P = HEADER_SIZE
LIMITS = _P + 0
MAX_AGENTS = _P + 32
LEASE_SLOTS = _P + 40
SPENT = _P + 64
AGENTS_STARTED = _P + 128
DENIED_EXHAUSTED = _P + 192
DENIED_AGENT_LIMIT = _P + 200
RESERVED = _P + 256
GRANTED = _P + 288
REFUNDED = _P + 320
NEXT_LEASE_ID = _P + 352
LEASES_HELD = _P + 360
RESERVATIONS_GRANTED = _P + 368
RESERVATIONS_DENIED = _P + 376
DEAD_LEASES_REFUNDED = _P + 384
LOCK = _P + 448
LEASES = LOCK + RobustLock.size(UNDO_CAPACITY)
SLOT_SIZE = 64
_SLOT_ID, _SLOT_PID, _SLOT_START, _SLOT_ESTIMATE, _SLOT_GRANTED_AT = 0, 8, 16, 24, 56


def segment_size(lease_slots: int = DEFAULT_LEASE_SLOTS) -> int:
    """The /dev/shm bytes (header included) of a budget with this many lease slots, so a
    world can check that all its segments fit before it creates any."""
    return LEASES + SLOT_SIZE * lease_slots


def usd_to_micros(cost_usd: float) -> int:
    if (isinstance(cost_usd, bool) or not isinstance(cost_usd, (int, float))
            or not math.isfinite(cost_usd) or cost_usd < 0):
        raise InvalidBudget(f"cost must be a finite number >= 0 USD, got {cost_usd!r}")
    return round(cost_usd * MICROS_PER_USD)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidBudget(f"{name} must be an int >= 0, got {value!r}")
    return value


def _load_json(text: str | bytes, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidBudget(f"invalid {what} JSON: {exc}") from None


def wire_fields(data: Any, what: str, required: tuple[str, ...],
                 optional: tuple[str, ...]) -> dict[str, Any]:
    """The fields `what` knows from its JSON object, as CAR's serde reads them: unknown keys
    are ignored and null counts as absent; a missing required field is an InvalidBudget."""
    if not isinstance(data, Mapping):
        raise InvalidBudget(f"invalid {what} JSON: expected an object, got {type(data).__name__}")
    missing = [name for name in required if data.get(name) is None]
    if missing:
        raise InvalidBudget(f"invalid {what} JSON: the required field {missing[0]!r} is missing")
    return {name: data[name] for name in (*required, *optional) if data.get(name) is not None}


# ---- value types ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunLatency:
    """How long an agent's model generation took (CAR 0.55), for runners that measure it:
    `ttft_ms` (time to first token) is None when unknown."""

    generation_ms: float
    ttft_ms: int | None = None

    def __post_init__(self) -> None:
        ms = self.generation_ms
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) \
                or ms < 0:
            raise InvalidBudget(f"generation_ms must be a finite number >= 0, got {ms!r}")
        object.__setattr__(self, "generation_ms", float(ms))
        if self.ttft_ms is not None:
            _count("ttft_ms", self.ttft_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"generation_ms": self.generation_ms, "ttft_ms": self.ttft_ms}

    @classmethod
    def from_dict(cls, data: Any) -> RunLatency:
        return cls(**wire_fields(data, "RunLatency", ("generation_ms",), ("ttft_ms",)))

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> RunLatency:
        return cls.from_dict(_load_json(text, "RunLatency"))


@dataclass(frozen=True, slots=True)
class TokenAccounting:
    """An agent's self-reported spend (CAR: observability, not a trust boundary), and how
    long its generation took when the runner measured it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency: RunLatency | None = None
    total_tokens: int = field(init=False, repr=False, compare=False)
    cost_micros: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _count("input_tokens", self.input_tokens)
        _count("output_tokens", self.output_tokens)
        if self.latency is not None and not isinstance(self.latency, RunLatency):
            raise InvalidBudget(f"latency must be a RunLatency or None, got {self.latency!r}")
        object.__setattr__(self, "total_tokens", self.input_tokens + self.output_tokens)
        object.__setattr__(self, "cost_micros", usd_to_micros(self.cost_usd))

    def as_words(self) -> tuple[int, int, int, int]:
        return (self.input_tokens, self.output_tokens, self.total_tokens, self.cost_micros)

    def with_latency(self, generation_ms: float, ttft_ms: int | None = None) -> TokenAccounting:
        """A copy that also reports the generation latency (CAR's with_latency)."""
        return replace(self, latency=RunLatency(generation_ms, ttft_ms))

    def to_dict(self) -> dict[str, Any]:
        """CAR's JSON form. `latency` appears only when measured, so the JSON of runners
        that do not measure it stays what it was before CAR 0.55."""
        data: dict[str, Any] = {"input_tokens": self.input_tokens,
                                "output_tokens": self.output_tokens, "cost_usd": self.cost_usd}
        if self.latency is not None:
            data["latency"] = self.latency.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> TokenAccounting:
        """From CAR's JSON form: input_tokens, output_tokens and cost_usd are required."""
        fields = wire_fields(data, "TokenAccounting",
                              ("input_tokens", "output_tokens", "cost_usd"), ("latency",))
        if "latency" in fields:
            fields["latency"] = RunLatency.from_dict(fields["latency"])
        return cls(**fields)

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenAccounting:
        return cls.from_dict(_load_json(text, "TokenAccounting"))


class _HasTokens(Protocol):
    @property
    def tokens(self) -> TokenAccounting | None: ...


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Caps on a coordination; None means that dimension is unlimited."""

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_total_tokens: int | None = None
    max_cost_usd: float | None = None
    max_agents: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_input_tokens", "max_output_tokens", "max_total_tokens", "max_agents"):
            value = getattr(self, name)
            if value is not None:
                _count(name, value)
        if self.max_cost_usd is not None:
            if isinstance(self.max_cost_usd, bool) or not isinstance(self.max_cost_usd, (int, float)):
                raise InvalidBudget(f"max_cost_usd must be a number, got {self.max_cost_usd!r}")
            usd_to_micros(self.max_cost_usd)

    def is_unbounded(self) -> bool:
        return all(getattr(self, name) is None for name in _LIMIT_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        """CAR's JSON form: only the limits that are set."""
        return {name: getattr(self, name) for name in _LIMIT_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetLimits:
        if not isinstance(data, Mapping):
            raise InvalidBudget(f"invalid budget JSON: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_LIMIT_FIELDS))
        if unknown:
            raise InvalidBudget(
                f"invalid budget JSON: unknown keys {unknown}; allowed: {list(_LIMIT_FIELDS)}"
            )
        try:
            return cls(**{k: v for k, v in data.items() if v is not None})
        except InvalidBudget as exc:
            raise InvalidBudget(f"invalid budget JSON: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> BudgetLimits:
        return cls.from_dict(_load_json(text, "budget"))

    def _words(self) -> tuple[int, int, int, int]:
        def word(value: int | None) -> int:
            return NO_LIMIT if value is None else value

        cost = None if self.max_cost_usd is None else usd_to_micros(self.max_cost_usd)
        return (word(self.max_input_tokens), word(self.max_output_tokens),
                word(self.max_total_tokens), word(cost))


_LIMIT_FIELDS = ("max_input_tokens", "max_output_tokens", "max_total_tokens", "max_cost_usd",
                 "max_agents")


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """CAR's snapshot. `exhausted` reflects spend limits only, never max_agents."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    agents_started: int
    limits: BudgetLimits
    exhausted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "agents_started": self.agents_started,
            "limits": self.limits.to_dict(),
            "exhausted": self.exhausted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetSnapshot:
        try:
            return cls(
                input_tokens=_count("input_tokens", data["input_tokens"]),
                output_tokens=_count("output_tokens", data["output_tokens"]),
                total_tokens=_count("total_tokens", data["total_tokens"]),
                cost_usd=float(data["cost_usd"]),
                agents_started=_count("agents_started", data["agents_started"]),
                limits=BudgetLimits.from_dict(data["limits"]),
                exhausted=bool(data["exhausted"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidBudget(f"invalid budget snapshot: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted reservation; settle it with commit() or release()."""

    slot: int
    lease_id: int
    estimate: TokenAccounting


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    agents_started: int
    denied_exhausted: int
    denied_agent_limit: int
    reservations_granted: int
    reservations_denied: int
    leases_held: int
    lease_slots: int
    dead_leases_refunded: int
    reserved: TokenAccounting
    granted: TokenAccounting   # cumulative estimates granted
    refunded: TokenAccounting  # cumulative estimates returned
    lock_recoveries: int


def _accounting(words: tuple[int, ...]) -> TokenAccounting:
    return TokenAccounting(words[0], words[1], words[3] / MICROS_PER_USD)


# ---- the budget ------------------------------------------------------------------------


class CoordinationBudget:
    """A budget in shared memory; pickles by name and re-attaches in other processes."""

    def __init__(self, limits: BudgetLimits | None = None, *, run_id: str | None = None,
                 lease_slots: int = DEFAULT_LEASE_SLOTS, _segment: Segment | None = None) -> None:
        if _segment is None:
            limits = limits if limits is not None else BudgetLimits()
            if not isinstance(limits, BudgetLimits):
                raise InvalidBudget(f"limits must be BudgetLimits, got {type(limits).__name__}")
            if not isinstance(lease_slots, int) or lease_slots < 1:
                raise InvalidBudget(f"lease_slots must be an int >= 1, got {lease_slots!r}")
            size = segment_size(lease_slots) - HEADER_SIZE
            _segment = Segment.create(KIND, size, layout_version=LAYOUT_VERSION, run_id=run_id)
            self._bind(_segment)
            self._initialize(limits, lease_slots)
            _segment.mark_ready()
        else:
            self._bind(_segment)
        self._events: EventLog | None = None
        self.limits = self._read_limits()
        self._spend_limited = any(w != NO_LIMIT for w in self.limits._words())
        self._max_agents = self._region.load(MAX_AGENTS)
        self._slots = self._region.load(LEASE_SLOTS)

    def _bind(self, segment: Segment) -> None:
        self._segment = segment
        self._region = region = segment.region
        self._lock = RobustLock(region, LOCK, undo_capacity=UNDO_CAPACITY,
                                label=f"budget lock of {segment.name}")
        # bound natives for the hot paths
        self._add_many = region.add_many
        self._add_bounded = region.add_bounded
        self._first_reached = region.first_reached

    def _initialize(self, limits: BudgetLimits, lease_slots: int) -> None:
        region = self._region
        for i, word in enumerate(limits._words()):
            region.store(LIMITS + 8 * i, word)
        region.store(MAX_AGENTS, NO_LIMIT if limits.max_agents is None else limits.max_agents)
        region.store(LEASE_SLOTS, lease_slots)
        region.store(NEXT_LEASE_ID, 1)
        self._lock.initialize()

    @classmethod
    def unbounded(cls, *, run_id: str | None = None) -> CoordinationBudget:
        return cls(BudgetLimits(), run_id=run_id)

    @classmethod
    def attach(cls, name: str) -> CoordinationBudget:
        """Attach the budget segment `name` created by another process."""
        return cls(_segment=Segment.attach(name, kind=KIND, layout_version=LAYOUT_VERSION))

    @property
    def name(self) -> str:
        return self._segment.name

    def __reduce__(self) -> tuple[Any, tuple[str, str | None]]:
        events = self._events.name if self._events is not None else None
        return (_attach_recording, (self._segment.name, events))

    def close(self) -> None:
        """Detach; in the creating process this also removes the segment."""
        self._segment.close()

    def __enter__(self) -> CoordinationBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CoordinationBudget {self._segment.name} limits={self.limits.to_dict()}>"

    # ---- CAR's gate ---------------------------------------------------------------------

    def try_begin_agent(self) -> None:
        """Reserve one agent slot right before a spawn, or raise BudgetError."""
        if self._spend_limited and self._first_reached(SPENT, LIMITS, 4) >= 0:
            self._deny_exhausted()
        if self._add_bounded(AGENTS_STARTED, 1, self._max_agents) < 0:
            self._region.fetch_add(DENIED_AGENT_LIMIT, 1)
            started = self._region.load(AGENTS_STARTED)
            self._emit("budget_denied", gate="begin_agent", reason="max_agents",
                       max_agents=self._max_agents, started=started)
            raise AgentLimit(max=self._max_agents, started=started)

    def record_output(self, tokens: TokenAccounting | _HasTokens | None) -> None:
        """Add reported spend: a TokenAccounting, or anything with `.tokens` (an AgentOutput).
        None (no accounting) adds nothing."""
        if tokens is None:
            return
        if tokens.__class__ is not TokenAccounting:
            tokens = _tokens_of(tokens)
            if tokens is None:
                return
        self._add_many(SPENT, tokens.input_tokens, tokens.output_tokens, tokens.total_tokens,
                       tokens.cost_micros)

    def _deny_exhausted(self) -> None:
        self._region.fetch_add(DENIED_EXHAUSTED, 1)
        index = self._first_reached(SPENT, LIMITS, 4)
        snapshot = self.snapshot()
        spent = self._region.load(SPENT + 8 * index)
        reason = self._crossing(index, spent, "reached")
        self._emit("budget_denied", gate="begin_agent", reason=reason)
        raise BudgetExhausted(reason, snapshot)

    def _crossing(self, index: int, amount: int, verb: str) -> str:
        """'<dimension> <amount> <verb> the limit of <limit>', in dollars for cost."""
        limit = self._region.load(LIMITS + 8 * index)
        if index == 3:
            return f"cost ${amount / MICROS_PER_USD:.6f} {verb} the limit of ${limit / MICROS_PER_USD:.6f}"
        return f"{_DIMENSIONS[index]} {amount} {verb} the limit of {limit}"

    def snapshot(self) -> BudgetSnapshot:
        load = self._region.load
        spent = [load(SPENT + 8 * i) for i in range(4)]
        exhausted = any(spent[i] >= load(LIMITS + 8 * i) for i in range(4))
        return BudgetSnapshot(
            input_tokens=spent[0],
            output_tokens=spent[1],
            total_tokens=spent[2],
            cost_usd=spent[3] / MICROS_PER_USD,
            agents_started=load(AGENTS_STARTED),
            limits=self.limits,
            exhausted=exhausted,
        )

    def _read_limits(self) -> BudgetLimits:
        words = [self._region.load(LIMITS + 8 * i) for i in range(4)]
        agents = self._region.load(MAX_AGENTS)

        def value(word: int) -> int | None:
            return None if word == NO_LIMIT else word

        return BudgetLimits(
            max_input_tokens=value(words[0]),
            max_output_tokens=value(words[1]),
            max_total_tokens=value(words[2]),
            max_cost_usd=None if words[3] == NO_LIMIT else words[3] / MICROS_PER_USD,
            max_agents=value(agents),
        )

    # ---- reservations ----------------------------------------------------------------------

    def reserve(self, estimate: TokenAccounting, *, timeout: float | None = None) -> Lease:
        """Grant a lease for `estimate` if spent + reserved + estimate stays within every limit,
        else raise ReservationDenied (after refunding dead owners' leases)."""
        if not isinstance(estimate, TokenAccounting):
            raise TypeError(f"estimate must be a TokenAccounting, got {type(estimate).__name__}")
        words = estimate.as_words()
        refunds: list[dict[str, Any]] = []
        self._lock.acquire(DEFAULT_TIMEOUT if timeout is None else timeout)
        try:
            index = self._overshoot(words)
            if index >= 0 and self._reclaim_locked(refunds):
                index = self._overshoot(words)
            if index >= 0:
                self._region.fetch_add(RESERVATIONS_DENIED, 1)
                wanted = (self._region.load(SPENT + 8 * index) + self._region.load(RESERVED + 8 * index)
                          + words[index])
                reason = self._crossing(index, wanted, "(spent + reserved + this estimate) would exceed")
                raise ReservationDenied(reason, self.snapshot())
            slot = self._free_slot()
            if slot < 0 and self._reclaim_locked(refunds):
                slot = self._free_slot()
            if slot < 0:
                self._region.fetch_add(RESERVATIONS_DENIED, 1)
                raise LeaseTableFull(
                    f"all {self._slots} lease slots of {self.name} are held; commit or release "
                    "leases first, or create the budget with more lease_slots"
                )
            lease = self._grant(slot, words, estimate)
        except (ReservationDenied, LeaseTableFull) as exc:
            self._lock.release()
            self._emit_refunds(refunds)
            self._emit("budget_denied", gate="reserve", estimate=list(words),
                       reason=exc.reason if isinstance(exc, ReservationDenied) else "lease table full")
            raise
        except BaseException:
            self._lock.release()
            self._emit_refunds(refunds)
            raise
        self._lock.release()
        self._emit_refunds(refunds)
        self._emit("budget_reserved", lease_id=lease.lease_id, estimate=list(words))
        return lease

    def _overshoot(self, words: tuple[int, int, int, int]) -> int:
        load = self._region.load
        for i in range(4):
            limit = load(LIMITS + 8 * i)
            if limit != NO_LIMIT and load(SPENT + 8 * i) + load(RESERVED + 8 * i) + words[i] > limit:
                return i
        return -1

    def _free_slot(self) -> int:
        load = self._region.load
        for slot in range(self._slots):
            if load(LEASES + SLOT_SIZE * slot + _SLOT_ID) == 0:
                return slot
        return -1

    def _grant(self, slot: int, words: tuple[int, int, int, int], estimate: TokenAccounting) -> Lease:
        load = self._region.load
        lease_id = load(NEXT_LEASE_ID)
        pid, start = own_identity()
        base = LEASES + SLOT_SIZE * slot
        writes = [
            (base + _SLOT_PID, pid),
            (base + _SLOT_START, start),
            *((base + _SLOT_ESTIMATE + 8 * i, words[i]) for i in range(4)),
            (base + _SLOT_GRANTED_AT, time.time_ns()),
            (base + _SLOT_ID, lease_id),
            (NEXT_LEASE_ID, lease_id + 1),
            (LEASES_HELD, load(LEASES_HELD) + 1),
            (RESERVATIONS_GRANTED, load(RESERVATIONS_GRANTED) + 1),
        ]
        # reserved and granted grow by the estimate on the dimensions that carry one
        writes += [(RESERVED + 8 * i, load(RESERVED + 8 * i) + words[i]) for i in range(4) if words[i]]
        writes += [(GRANTED + 8 * i, load(GRANTED + 8 * i) + words[i]) for i in range(4) if words[i]]
        self._lock.write_words(writes)
        return Lease(slot=slot, lease_id=lease_id, estimate=estimate)

    def commit(self, lease: Lease, actual: TokenAccounting | None) -> None:
        """Settle a lease with what was really spent; the unused estimate is refunded and
        `actual` counts as spend (even beyond the estimate: reports are never dropped)."""
        used = actual.as_words() if actual is not None else (0, 0, 0, 0)
        with self._lock:
            self._check_held(lease)
            # Spend first: a crash after this leaves the lease held, to be refunded whole
            # as a dead owner's, and never lets the cap be granted twice.
            self._add_many(SPENT, *used)
            refund = self._settle(lease.slot, used)
        self._emit("budget_refunded", lease_id=lease.lease_id, reason="committed",
                   refund=refund, used=list(used))

    def release(self, lease: Lease) -> None:
        """Return a lease unused."""
        with self._lock:
            self._check_held(lease)
            refund = self._settle(lease.slot, (0, 0, 0, 0))
        self._emit("budget_refunded", lease_id=lease.lease_id, reason="released", refund=refund)

    @contextlib.contextmanager
    def reservation(self, estimate: TokenAccounting) -> Iterator[Lease]:
        """`with budget.reservation(est) as lease:` releases the lease unless committed."""
        lease = self.reserve(estimate)
        try:
            yield lease
        finally:
            if self._holds(lease):
                self.release(lease)

    def _holds(self, lease: Lease) -> bool:
        return bool(self._region.load(LEASES + SLOT_SIZE * lease.slot + _SLOT_ID) == lease.lease_id)

    def _check_held(self, lease: Lease) -> None:
        if not isinstance(lease, Lease) or not 0 <= lease.slot < self._slots:
            raise LeaseNotHeld(f"{lease!r} is not a lease of {self.name}")
        if not self._holds(lease):
            raise LeaseNotHeld(
                f"lease {lease.lease_id} of {self.name} is no longer held: it was already "
                "committed or released, or refunded because its owner process died"
            )

    def _settle(self, slot: int, used: tuple[int, int, int, int]) -> list[int]:
        """Free a held slot; refund estimate minus what was used (never below zero).
        Returns the refund per dimension."""
        load = self._region.load
        base = LEASES + SLOT_SIZE * slot
        estimate = [load(base + _SLOT_ESTIMATE + 8 * i) for i in range(4)]
        writes = [(base + _SLOT_ID, 0), (LEASES_HELD, load(LEASES_HELD) - 1)]
        refunds = [estimate[i] - min(used[i], estimate[i]) for i in range(4)]
        for i in range(4):
            if estimate[i]:
                writes.append((RESERVED + 8 * i, load(RESERVED + 8 * i) - estimate[i]))
                if refunds[i]:
                    writes.append((REFUNDED + 8 * i, load(REFUNDED + 8 * i) + refunds[i]))
        self._lock.write_words(writes)
        return refunds

    def reclaim_dead_leases(self) -> int:
        """Refund every lease whose owner process has died; returns how many."""
        refunds: list[dict[str, Any]] = []
        with self._lock:
            self._reclaim_locked(refunds)
        self._emit_refunds(refunds)
        return len(refunds)

    def _reclaim_locked(self, refunds: list[dict[str, Any]]) -> bool:
        """Refund dead owners' leases (lock held); each refund is appended to `refunds`.
        True if any was refunded."""
        load = self._region.load
        before = len(refunds)
        for slot in range(self._slots):
            base = LEASES + SLOT_SIZE * slot
            lease_id, pid = load(base + _SLOT_ID), load(base + _SLOT_PID)
            if lease_id and not is_alive(pid, load(base + _SLOT_START)):
                self._refund_dead(slot, refunds, lease_id=lease_id, pid=pid)
        return len(refunds) > before

    def refund_dead_lease(self, lease: Lease, holder: str) -> bool:
        """Refund `lease` as a dead owner's, if it is still held (False when it was settled
        already). For owners whose death the pid check cannot see: a Ray budget ledger
        holds every lease in its own process, on behalf of worker actors elsewhere."""
        refunds: list[dict[str, Any]] = []
        with self._lock:
            if self._holds(lease):
                self._refund_dead(lease.slot, refunds, lease_id=lease.lease_id, holder=holder)
        self._emit_refunds(refunds)
        return bool(refunds)

    def _refund_dead(self, slot: int, refunds: list[dict[str, Any]], *, lease_id: int,
                     **owner: Any) -> None:
        """Refund a dead owner's lease in full (lock held), appending the event to `refunds`."""
        refund = self._settle(slot, (0, 0, 0, 0))
        self._region.fetch_add(DEAD_LEASES_REFUNDED, 1)
        refunds.append({"lease_id": lease_id, "reason": "owner died", **owner, "refund": refund})

    # ---- events --------------------------------------------------------------------------

    def record_events_in(self, log: EventLog | None) -> None:
        """Record every denial, reservation and refund this handle makes in `log`
        (budget_denied, budget_reserved, budget_refunded); copies of this handle sent to
        other processes record there too."""
        self._events = log

    def _emit(self, kind: str, **data: Any) -> None:
        if self._events is not None:
            with contextlib.suppress(CarmpError):  # a full log costs the event, not the budget
                self._events.append(kind, data=data, writer="budget")

    def _emit_refunds(self, refunds: list[dict[str, Any]]) -> None:
        for refund in refunds:
            self._emit("budget_refunded", **refund)

    def leases(self) -> list[tuple[Lease, int]]:
        """Outstanding leases with their owner pids."""
        load = self._region.load
        held = []
        for slot in range(self._slots):
            base = LEASES + SLOT_SIZE * slot
            lease_id = load(base + _SLOT_ID)
            if lease_id:
                words = tuple(load(base + _SLOT_ESTIMATE + 8 * i) for i in range(4))
                held.append((Lease(slot, lease_id, _accounting(words)), load(base + _SLOT_PID)))
        return held

    def statistics(self) -> BudgetStatistics:
        load = self._region.load

        def four(offset: int) -> tuple[int, ...]:
            return tuple(load(offset + 8 * i) for i in range(4))

        return BudgetStatistics(
            agents_started=load(AGENTS_STARTED),
            denied_exhausted=load(DENIED_EXHAUSTED),
            denied_agent_limit=load(DENIED_AGENT_LIMIT),
            reservations_granted=load(RESERVATIONS_GRANTED),
            reservations_denied=load(RESERVATIONS_DENIED),
            leases_held=load(LEASES_HELD),
            lease_slots=self._slots,
            dead_leases_refunded=load(DEAD_LEASES_REFUNDED),
            reserved=_accounting(four(RESERVED)),
            granted=_accounting(four(GRANTED)),
            refunded=_accounting(four(REFUNDED)),
            lock_recoveries=self._lock.statistics().recoveries,
        )

    def ledger(self) -> dict[str, tuple[int, ...]]:
        """Raw counters per dimension (input, output, total, cost micro-USD), for audits:
        read under the lock, so reserved, granted and refunded are of one instant."""
        load = self._region.load
        with self._lock:
            return {
                name: tuple(load(offset + 8 * i) for i in range(4))
                for name, offset in (("limits", LIMITS), ("spent", SPENT), ("reserved", RESERVED),
                                     ("granted", GRANTED), ("refunded", REFUNDED))
            }


def _attach_recording(name: str, events: str | None) -> CoordinationBudget:
    """Unpickle a budget: attach it, and its event log when the sender recorded into one."""
    budget = CoordinationBudget.attach(name)
    if events is not None:
        from carmp.shared.eventlog import EventLog

        budget.record_events_in(EventLog.attach(events))
    return budget


def _tokens_of(output: Any) -> TokenAccounting | None:
    tokens = getattr(output, "tokens", output)
    if tokens is None or isinstance(tokens, TokenAccounting):
        return tokens
    raise TypeError(
        f"record_output takes a TokenAccounting, an object with .tokens, or None; got "
        f"{type(output).__name__}"
    )
