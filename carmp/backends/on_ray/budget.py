"""The coordination budget on Ray: a ledger actor, and the RayBudget client.

The ledger actor (a PrimitiveHost) holds a local CoordinationBudget, so the gate, the
spend counters, the reservations and their `granted - refunded <= cap` invariant are the
local code's. All leases live in the ledger's process, where the local budget's
dead-owner check (by pid) sees only the ledger itself alive; so the ledger also records,
per lease, its holder: the Ray actor id of the process that reserved it ("driver-<pid>"
outside actors) and that process's pid. Leases of a dead holder are refunded
(`budget_refunded`, reason "owner died", counted in dead_leases_refunded):

- `release_holder(actor_id)`: the farm's executor calls it when it sees a worker actor
  die; it refunds every lease that actor holds;
- `reclaim_dead_leases()`, which a denied reservation also runs before it gives up, asks
  the GCS about each holder actor: dead, restarting, or alive in a new process (its pid
  changed) means the reserving process is gone. Drivers are never reclaimed this way
  (their pid may be on another machine): a driver that dies takes the ledger, which it
  owns, with it.

The actor never waits: `reserve` tries once, and RayBudget.reserve(timeout=...) polls
for room. Every change travels as an idempotent mutation (HostedClient.mutate), so a
resent reserve or commit grants or charges once.

Restarts. A ledger started with a journal writes each change it makes (an agent begun,
spend, a lease granted with its holder, committed, released or refunded) as one JSON
line with the idempotency key of its call, and a restarted ledger replays them into a
fresh local budget. The local budget is deterministic, so the replay gives back the same
spend, counters, lease ids and holders, and the replies of the journaled calls: a call
resent across the restart is answered, not applied twice. What a restart loses: the
event log the ledger recorded into (the owner must call record_events_in again) and the
count of denials; without a journal, everything (a restarted ledger starts from zero).
A killed incarnation's budget segment is removed by the next one (incarnations.py).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from carmp.backends.on_ray.cluster import ray_module
from carmp.backends.on_ray.host import REMEMBERED_REPLIES, HostedClient, HostedPart, start_host
from carmp.backends.on_ray.incarnations import (
    dead_predecessors,
    incarnation_run_id,
    new_host_id,
    unlink,
)
from carmp.backends.on_ray.polling import poll
from carmp.errors import (
    CarmpError,
    InvalidBudget,
    LeaseNotHeld,
    LeaseTableFull,
    ReservationDenied,
)
from carmp.shared.budget import (
    KIND,
    BudgetLimits,
    BudgetSnapshot,
    BudgetStatistics,
    CoordinationBudget,
    Lease,
    TokenAccounting,
    _HasTokens,
    _tokens_of,
)

WHAT = "budget ledger"
DRIVER = "driver-"
ALIVE = "ALIVE"
JOURNAL_FORMAT = "carmp-budget-ledger/1"
OPS = frozenset({"begin", "spend", "reserve", "commit", "release", "refund"})
DENIAL_CHECK_INTERVAL = 1.0  # a denied reservation asks the GCS about holders at most this often


def holder_of_this_process() -> str:
    """Who holds the leases this process reserves: its Ray actor's id, else driver-<pid>."""
    actor = ray_module().get_runtime_context().get_actor_id()
    return actor if actor is not None else f"{DRIVER}{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Holding:
    """A lease granted by the ledger, and the process that reserved it."""

    lease: Lease
    holder: str
    pid: int


class LedgerJournal:
    """The ledger's JSONL journal: a header line with the limits, then one line per change
    (an object with "op" and the idempotency "key" of the call that made it)."""

    def __init__(self, path: str, limits: BudgetLimits) -> None:
        self.path = path
        with open(path, "a+b") as file:
            file.seek(0)
            data = file.read()
            whole = data.rfind(b"\n") + 1
            if whole < len(data):  # a line torn by a crash never happened
                file.truncate(whole)
        lines = data[:whole].splitlines()
        self.entries = [self._parse(number, line) for number, line in enumerate(lines[1:], 2)]
        self._file = open(path, "ab")  # for the ledger's life: closed by close()
        if not lines:
            self.write({"format": JOURNAL_FORMAT, "limits": limits.to_dict()})

    def _parse(self, number: int, line: bytes) -> dict[str, Any]:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise self.corrupt(number, f"not JSON ({exc})") from None
        if not isinstance(entry, dict) or entry.get("op") not in OPS:
            raise self.corrupt(number, f"not a ledger change: {line[:80]!r}")
        return entry

    def corrupt(self, number: int, what: str) -> InvalidBudget:
        return InvalidBudget(f"line {number} of the budget journal {self.path} is {what}; "
                             "it was not written by this ledger: move the file away to "
                             "start a new budget")

    def write(self, entry: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()  # in the kernel: it survives the actor process

    def close(self) -> None:
        self._file.close()


def journal_limits(path: str) -> BudgetLimits | None:
    """The limits a budget journal was started with; None when it holds no budget yet."""
    try:
        with open(path, "rb") as file:
            header = file.readline()
    except FileNotFoundError:
        return None
    if not header.endswith(b"\n"):
        return None
    try:
        data = orjson.loads(header)
        if data["format"] != JOURNAL_FORMAT:
            raise ValueError(f"format {data['format']!r}")
        return BudgetLimits.from_dict(data["limits"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidBudget(f"{path} is not a budget journal ({exc!r}); name a new file, or "
                            "move this one away") from None


class BudgetLedger:
    """The ledger actor's object: a local CoordinationBudget, plus each lease's holder, and
    the journal it replays after a restart."""

    def __init__(self, host_id: str, limits: BudgetLimits, journal: str | None) -> None:
        for name in dead_predecessors(host_id, KIND):  # a killed incarnation's segment
            unlink(name)
        self.budget = CoordinationBudget(limits, run_id=incarnation_run_id(host_id))
        self.holdings: dict[int, Holding] = {}  # lease id -> holding, for the held leases
        # replies of the journal's calls, for calls resent across the restart
        self.outcomes: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._key: str | None = None  # the idempotency key of the call being applied
        self._journal: LedgerJournal | None = None
        self._log: Any = None
        self._next_denial_check = 0.0
        if journal is not None:
            try:
                self._journal = self._recover(LedgerJournal(journal, limits))
            except BaseException:
                self.budget.close()
                raise

    def _recover(self, journal: LedgerJournal) -> LedgerJournal:
        """Make every journaled change again; the journal then records the new ones."""
        for number, entry in enumerate(journal.entries, 2):
            try:
                self._replay(entry)
            except Exception as exc:
                journal.close()
                raise journal.corrupt(number, f"a change this budget cannot make ({exc!r})") \
                    from exc
        return journal

    def call_keyed(self, key: str, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """Apply a mutation under its idempotency key (answering from the journal a call
        applied before a restart), then send the events it made on to the log."""
        if key in self.outcomes:
            return self.outcomes[key]
        self._key = key
        try:
            return getattr(self, method)(*args, **kwargs)
        finally:
            self._key = None
            self._flush_events()

    def _flush_events(self) -> None:
        """An event log client that batches (the Ray one) holds the ledger's events until
        told: they must reach the log when the change is made."""
        flush = getattr(self._log, "flush", None)
        if flush is not None:
            with contextlib.suppress(CarmpError):  # a full log costs the event, not the budget
                flush()

    def _write(self, op: str, key: str | None, **fields: Any) -> None:
        if self._journal is not None:
            self._journal.write({"op": op, "key": key, **fields})

    def _replay(self, entry: dict[str, Any]) -> None:
        """Make a journaled change again, and remember the reply its call got."""
        key, op = entry["key"], entry["op"]
        reply: Any = None
        if op == "begin":
            self.budget.try_begin_agent()
        elif op == "spend":
            self.budget.record_output(TokenAccounting.from_dict(entry["tokens"]))
        elif op == "reserve":
            reply = self.budget.reserve(TokenAccounting.from_dict(entry["estimate"]))
            self._hold(reply, entry["holder"], entry["pid"])
        elif op == "commit":
            actual = entry["actual"]
            self._settle(self.budget.commit, self.holdings[entry["lease"]].lease,
                         None if actual is None else TokenAccounting.from_dict(actual))
        elif op == "release":
            self._settle(self.budget.release, self.holdings[entry["lease"]].lease)
        else:
            reply = self.outcomes.get(key, 0) + self._refund([self.holdings[entry["lease"]]],
                                                             keyed=False)
        if key is not None:
            self.outcomes[key] = reply
            self.outcomes.move_to_end(key)
            if len(self.outcomes) > REMEMBERED_REPLIES:
                self.outcomes.popitem(last=False)

    def actor_id(self) -> str:
        return str(ray_module().get_runtime_context().get_actor_id())

    def try_begin_agent(self) -> None:
        self.budget.try_begin_agent()
        self._write("begin", self._key)

    def record_output(self, tokens: TokenAccounting | None) -> None:
        self.budget.record_output(tokens)
        if tokens is not None:
            self._write("spend", self._key, tokens=tokens.to_dict())

    def snapshot(self) -> BudgetSnapshot:
        return self.budget.snapshot()

    def statistics(self) -> BudgetStatistics:
        return self.budget.statistics()

    def ledger(self) -> dict[str, tuple[int, ...]]:
        return self.budget.ledger()

    def record_events_in(self, log: Any) -> None:
        self._log = log
        self.budget.record_events_in(log)

    def reserve(self, estimate: TokenAccounting, holder: str, pid: int) -> Lease:
        """Grant a lease once, without waiting; like the local reserve, refund dead
        holders' leases before denying (asking the GCS at most once a
        DENIAL_CHECK_INTERVAL, so clients polling for room do not flood it)."""
        try:
            lease = self.budget.reserve(estimate)
        except (ReservationDenied, LeaseTableFull):
            now = time.monotonic()
            if now < self._next_denial_check:
                raise
            self._next_denial_check = now + DENIAL_CHECK_INTERVAL
            if not self._refund(self._dead_holdings(), keyed=False):
                raise
            lease = self.budget.reserve(estimate)
        self._hold(lease, holder, pid)
        self._write("reserve", self._key, estimate=estimate.to_dict(), holder=holder, pid=pid)
        return lease

    def _hold(self, lease: Lease, holder: str, pid: int) -> None:
        self.holdings[lease.lease_id] = Holding(lease, holder, pid)

    def commit(self, lease: Lease, actual: TokenAccounting | None) -> None:
        self._settle(self.budget.commit, lease, actual)
        self._write("commit", self._key, lease=lease.lease_id,
                    actual=None if actual is None else actual.to_dict())

    def release(self, lease: Lease) -> None:
        self._settle(self.budget.release, lease)
        self._write("release", self._key, lease=lease.lease_id)

    def _settle(self, settle: Callable[..., None], lease: Lease, *actual: Any) -> None:
        settle(lease, *actual)
        del self.holdings[lease.lease_id]

    def leases(self) -> list[tuple[Lease, str]]:
        """Outstanding leases with their holders."""
        return [(lease, self.holdings[lease.lease_id].holder)
                for lease, _pid in self.budget.leases()]

    def release_holder(self, holder: str) -> int:
        """Refund every lease `holder` still holds (it died); returns how many."""
        return self._refund([h for h in self.holdings.values() if h.holder == holder],
                            keyed=True)

    def reclaim_dead_leases(self) -> int:
        """Refund the leases of holders the GCS says are gone; returns how many."""
        return self._refund(self._dead_holdings(), keyed=True)

    def _dead_holdings(self) -> list[Holding]:
        verdicts: dict[tuple[str, int], bool] = {}
        dead = []
        for holding in self.holdings.values():
            process = (holding.holder, holding.pid)
            if process not in verdicts:
                verdicts[process] = self._holder_gone(holding)
            if verdicts[process]:
                dead.append(holding)
        return dead

    @staticmethod
    def _holder_gone(holding: Holding) -> bool:
        """Whether the process that reserved `holding` is gone: its actor is dead or
        restarting, or alive in another process (restarted). Drivers are never judged."""
        if holding.holder.startswith(DRIVER):
            return False
        # The public state API (ray.util.state) needs the dashboard, which carmp's clusters
        # run without; the GCS actor table answers in about a millisecond.
        from ray._private.state import actors

        info = actors(actor_id=holding.holder)
        return not info or info["State"] != ALIVE or info["Pid"] != holding.pid

    def _refund(self, holdings: list[Holding], *, keyed: bool) -> int:
        """Refund dead holders' leases. Journaled under the call's key when the count is
        its reply (`keyed`), not when they only made room for a reservation."""
        refunded = 0
        for holding in holdings:
            refunded += self.budget.refund_dead_lease(holding.lease, holding.holder)
            del self.holdings[holding.lease.lease_id]
            self._write("refund", self._key if keyed else None, lease=holding.lease.lease_id)
        return refunded

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
        self.budget.close()


def start_budget(limits: BudgetLimits, *, journal: str | None = None) -> RayBudget:
    """A new ledger actor for `limits`, and its client. With a `journal` (a file path the
    actor can reach), every change is journaled and a restarted ledger replays it; a
    journal that exists already resumes the budget it recorded (same limits only)."""
    if not isinstance(limits, BudgetLimits):
        raise InvalidBudget(f"limits must be BudgetLimits, got {type(limits).__name__}")
    if journal is not None:
        journal = os.path.abspath(journal)
        recorded = journal_limits(journal)
        if recorded is not None and recorded != limits:
            raise InvalidBudget(
                f"the budget journal {journal} records a budget of {recorded.to_dict()}, "
                f"not {limits.to_dict()}; name a new journal to start another budget")
    factory = functools.partial(BudgetLedger, new_host_id(), limits, journal)
    client = start_host(factory, what=WHAT)
    return RayBudget(client, limits, f"ray-budget-{client.call('actor_id')[:12]}")


class RayBudget(HostedPart):
    """A CoordinationBudget's surface, answered by the ledger actor. Pickles as its
    HostedClient, limits and name, so it travels into worker actors."""

    def __init__(self, hosted: HostedClient, limits: BudgetLimits, name: str) -> None:
        self.hosted = hosted
        self.limits = limits
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[HostedClient, BudgetLimits, str]]:
        return (RayBudget, (self.hosted, self.limits, self.name))

    def __repr__(self) -> str:
        return f"<RayBudget {self.name} limits={self.limits.to_dict()}>"

    def try_begin_agent(self) -> None:
        """Reserve one agent slot right before a spawn, or raise BudgetError."""
        self.hosted.mutate("try_begin_agent")

    def record_output(self, tokens: TokenAccounting | _HasTokens | None) -> None:
        """Add reported spend (a TokenAccounting, anything with `.tokens`, or None). Only
        the accounting travels, never the output around it."""
        accounting = _tokens_of(tokens)
        if accounting is not None:
            self.hosted.mutate("record_output", accounting)

    def snapshot(self) -> BudgetSnapshot:
        return self.hosted.call("snapshot")  # type: ignore[no-any-return]

    def reserve(self, estimate: TokenAccounting, *, timeout: float | None = None) -> Lease:
        """Grant a lease for `estimate` if spent + reserved + estimate stays within every
        limit. Without a timeout (as locally) a reservation that does not fit is denied at
        once (ReservationDenied); with one, it waits up to `timeout` seconds for running
        work to commit or release."""
        holder, pid = holder_of_this_process(), os.getpid()
        refusal: ReservationDenied | LeaseTableFull | None = None

        def attempt() -> Lease | None:
            nonlocal refusal
            try:
                return self.hosted.mutate("reserve", estimate, holder, pid)  # type: ignore[no-any-return]
            except (ReservationDenied, LeaseTableFull) as exc:
                refusal = exc
                return None

        lease = poll(attempt, _deadline(timeout))
        if lease is None:
            assert refusal is not None
            raise refusal
        return lease

    def commit(self, lease: Lease, actual: TokenAccounting | None) -> None:
        """Settle a lease with what was really spent; the unused estimate is refunded."""
        self.hosted.mutate("commit", lease, actual)

    def release(self, lease: Lease) -> None:
        """Return a lease unused."""
        self.hosted.mutate("release", lease)

    @contextlib.contextmanager
    def reservation(self, estimate: TokenAccounting) -> Iterator[Lease]:
        """`with budget.reservation(est) as lease:` releases the lease unless committed."""
        lease = self.reserve(estimate)
        try:
            yield lease
        finally:
            with contextlib.suppress(LeaseNotHeld):  # committed inside the block
                self.release(lease)

    def leases(self) -> list[tuple[Lease, str]]:
        """Outstanding leases with their holders (actor ids, or driver-<pid>)."""
        return self.hosted.call("leases")  # type: ignore[no-any-return]

    def release_holder(self, holder: str) -> int:
        """Refund every lease `holder` (a dead worker actor's id) still holds."""
        return self.hosted.mutate("release_holder", holder)  # type: ignore[no-any-return]

    def reclaim_dead_leases(self) -> int:
        """Refund every lease whose holder actor has died; returns how many."""
        return self.hosted.mutate("reclaim_dead_leases")  # type: ignore[no-any-return]

    def statistics(self) -> BudgetStatistics:
        return self.hosted.call("statistics")  # type: ignore[no-any-return]

    def ledger(self) -> dict[str, tuple[int, ...]]:
        """Raw counters per dimension (input, output, total, cost micro-USD), for audits."""
        return self.hosted.call("ledger")  # type: ignore[no-any-return]

    def record_events_in(self, log: Any) -> None:
        """Have the ledger record every denial, reservation and refund in `log` (an event
        log client that pickles to the ledger's process), or stop recording (None)."""
        self.hosted.mutate("record_events_in", log)



def _deadline(timeout: float | None) -> float:
    if timeout is None:
        return 0.0  # long passed: one try
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidBudget(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout
