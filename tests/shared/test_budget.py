"""CoordinationBudget: CAR's semantics, reservations, and the guarantees across processes."""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from carmp import (
    AgentLimit,
    BudgetError,
    BudgetExhausted,
    BudgetLimits,
    BudgetSnapshot,
    CoordinationBudget,
    InvalidBudget,
    Lease,
    LeaseNotHeld,
    LeaseTableFull,
    ReservationDenied,
    TokenAccounting,
)
from carmp.shared.eventlog import EventLog
from tests.conftest import kill

T = TokenAccounting


@pytest.fixture
def make_budget() -> Any:
    made: list[CoordinationBudget] = []

    def make(limits: BudgetLimits | None = None, **kwargs: Any) -> CoordinationBudget:
        budget = CoordinationBudget(limits, **kwargs)
        made.append(budget)
        return budget

    yield make
    for budget in made:
        budget.close()


def total_granted_minus_refunded(budget: CoordinationBudget) -> int:
    ledger = budget.ledger()  # read under the lock: one instant
    return ledger["granted"][2] - ledger["refunded"][2]


# ---- CAR's behaviours (CAR-SPEC 3, budget 1-12) ------------------------------------------


def test_unbounded_never_refuses(make_budget: Any) -> None:
    budget = make_budget()
    assert budget.limits.is_unbounded()
    for _ in range(1000):
        budget.try_begin_agent()
    budget.record_output(T(10**9, 10**9, 10**6))
    assert budget.snapshot().exhausted is False
    assert budget.snapshot().agents_started == 1000


def test_agent_limit_is_not_exhaustion(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_agents=2))
    budget.try_begin_agent()
    budget.try_begin_agent()
    with pytest.raises(BudgetError.AgentLimit) as caught:
        budget.try_begin_agent()
    assert (caught.value.max, caught.value.started) == (2, 2)
    assert budget.snapshot().exhausted is False
    assert budget.snapshot().agents_started == 2
    assert budget.statistics().denied_agent_limit == 1


def test_total_tokens_crossed_blocks_the_next_agent(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    budget.try_begin_agent()
    budget.record_output(T(60, 0))
    budget.try_begin_agent()
    budget.record_output(T(0, 50))
    with pytest.raises(BudgetError.Exhausted) as caught:
        budget.try_begin_agent()
    assert caught.value.snapshot.total_tokens == 110
    assert caught.value.snapshot.exhausted is True
    assert "total tokens 110" in caught.value.reason


@pytest.mark.parametrize(
    ("limits", "spend"),
    [
        (BudgetLimits(max_input_tokens=10), T(10, 0)),
        (BudgetLimits(max_output_tokens=10), T(0, 10)),
        (BudgetLimits(max_total_tokens=10), T(5, 5)),
        (BudgetLimits(max_cost_usd=0.5), T(0, 0, 0.5)),
    ],
)
def test_each_spend_dimension_trips_alone_at_exactly_the_cap(make_budget: Any, limits: BudgetLimits,
                                                             spend: TokenAccounting) -> None:
    budget = make_budget(limits)
    budget.record_output(T(0, 0, 0.0))
    budget.try_begin_agent()
    budget.record_output(spend)  # reaching the cap exactly counts as crossed (>=)
    with pytest.raises(BudgetExhausted):
        budget.try_begin_agent()
    assert budget.statistics().denied_exhausted == 1


def test_spend_is_checked_before_the_agent_count(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_agents=1, max_total_tokens=1))
    budget.try_begin_agent()
    budget.record_output(T(1, 0))
    with pytest.raises(BudgetExhausted):
        budget.try_begin_agent()


def test_outputs_without_tokens_add_nothing(make_budget: Any) -> None:
    class Output:
        tokens = None

    class OutputWithTokens:
        tokens = T(3, 4, 0.25)

    budget = make_budget(BudgetLimits(max_total_tokens=100))
    budget.record_output(None)
    budget.record_output(Output())
    assert budget.snapshot().total_tokens == 0
    budget.record_output(OutputWithTokens())
    snap = budget.snapshot()
    assert (snap.input_tokens, snap.output_tokens, snap.total_tokens, snap.cost_usd) == (3, 4, 7, 0.25)
    with pytest.raises(TypeError, match="record_output"):
        budget.record_output(42)  # type: ignore[arg-type]


def test_two_handles_share_one_budget(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    other = CoordinationBudget.attach(budget.name)
    try:
        budget.record_output(T(100, 0))
        with pytest.raises(BudgetExhausted):
            other.try_begin_agent()
    finally:
        other.close()
    assert os.path.exists("/dev/shm/" + budget.name[1:])  # an attacher never unlinks


def test_pickles_by_name_and_reattaches(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_agents=3))
    copy = pickle.loads(pickle.dumps(budget))
    try:
        copy.try_begin_agent()
        assert budget.snapshot().agents_started == 1
        assert copy.limits == budget.limits
    finally:
        copy.close()


def test_snapshot_round_trips_and_is_unbounded_only_when_all_none() -> None:
    limits = BudgetLimits(max_total_tokens=200_000, max_agents=12, max_cost_usd=5.0)
    snap = BudgetSnapshot(1, 2, 3, 0.5, 4, limits, False)
    assert BudgetSnapshot.from_dict(snap.to_dict()) == snap
    assert BudgetLimits().is_unbounded()
    for name in ("max_input_tokens", "max_output_tokens", "max_total_tokens", "max_cost_usd", "max_agents"):
        assert not BudgetLimits(**{name: 1}).is_unbounded()


def test_budget_json_omitted_keys_are_unbounded_and_bad_json_is_refused() -> None:
    limits = BudgetLimits.from_json('{"max_total_tokens": 200000, "max_agents": 12, "max_cost_usd": 5.0}')
    assert limits == BudgetLimits(max_total_tokens=200_000, max_agents=12, max_cost_usd=5.0)
    assert BudgetLimits.from_json("{}").is_unbounded()
    for bad in ("{", "[]", '{"max_tokens": 1}', '{"max_agents": -1}', '{"max_agents": "3"}',
                '{"max_cost_usd": "x"}'):
        with pytest.raises(InvalidBudget, match="invalid budget JSON"):
            BudgetLimits.from_json(bad)


def test_cost_is_counted_in_micro_dollars_without_drift(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_cost_usd=1.0))
    for _ in range(10):
        budget.try_begin_agent()
        budget.record_output(T(0, 0, 0.1))
    assert budget.snapshot().cost_usd == 1.0  # 0.1 summed ten times as floats is 0.9999999999999999
    with pytest.raises(BudgetExhausted, match=r"cost \$1\.000000"):
        budget.try_begin_agent()


@pytest.mark.parametrize(
    "bad",
    [dict(input_tokens=-1), dict(output_tokens=1.5), dict(cost_usd=float("nan")),
     dict(cost_usd=-0.1), dict(input_tokens=True)],
)
def test_bad_token_accounting_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidBudget):
        T(**bad)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(InvalidBudget):
        BudgetLimits(max_agents=-1)
    with pytest.raises(InvalidBudget):
        BudgetLimits(max_cost_usd=float("inf"))
    with pytest.raises(InvalidBudget):
        CoordinationBudget({"max_agents": 1})  # type: ignore[arg-type]


# ---- reservations ----------------------------------------------------------------------------


def test_reserve_grants_until_the_cap_then_denies(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    leases = [budget.reserve(T(25, 0)) for _ in range(4)]
    with pytest.raises(ReservationDenied) as caught:
        budget.reserve(T(1, 0))
    assert "would exceed the limit of 100" in str(caught.value)
    stats = budget.statistics()
    assert (stats.reservations_granted, stats.reservations_denied, stats.leases_held) == (4, 1, 4)
    assert stats.reserved.input_tokens == 100
    budget.release(leases[0])
    budget.reserve(T(25, 0))


def test_commit_turns_a_lease_into_spend_and_refunds_the_rest(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100, max_cost_usd=1.0))
    lease = budget.reserve(T(40, 20, 0.5))
    budget.commit(lease, T(10, 5, 0.25))
    snap = budget.snapshot()
    assert (snap.total_tokens, snap.cost_usd) == (15, 0.25)
    stats = budget.statistics()
    assert stats.leases_held == 0 and stats.reserved == T(0, 0, 0.0)
    assert stats.refunded == T(30, 15, 0.25)
    assert total_granted_minus_refunded(budget) == 15


def test_commit_above_the_estimate_counts_the_real_spend(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    lease = budget.reserve(T(10, 0))
    budget.commit(lease, T(30, 0))
    assert budget.snapshot().total_tokens == 30
    with pytest.raises(ReservationDenied):
        budget.reserve(T(71, 0))


def test_a_lease_settles_once(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    lease = budget.reserve(T(10, 0))
    budget.commit(lease, None)
    with pytest.raises(LeaseNotHeld, match="no longer held"):
        budget.commit(lease, T(1, 0))
    with pytest.raises(LeaseNotHeld):
        budget.release(lease)
    with pytest.raises(LeaseNotHeld):
        budget.release(Lease(slot=10**6, lease_id=1, estimate=T()))
    assert budget.snapshot().total_tokens == 0


def test_reservation_context_releases_unless_committed(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=10))
    with pytest.raises(RuntimeError):
        with budget.reservation(T(10, 0)):
            raise RuntimeError("agent failed")
    assert budget.statistics().leases_held == 0
    with budget.reservation(T(10, 0)) as lease:
        budget.commit(lease, T(4, 0))
    assert budget.snapshot().total_tokens == 4
    assert budget.statistics().leases_held == 0


def test_lease_table_full_is_a_clear_error_and_a_denial_event(make_budget: Any) -> None:
    with EventLog() as log:
        budget = make_budget(lease_slots=2)
        budget.record_events_in(log)
        budget.reserve(T(1, 0))
        budget.reserve(T(1, 0))
        with pytest.raises(LeaseTableFull, match="lease_slots"):
            budget.reserve(T(1, 0))
        denied = log.filter("budget_denied")
    assert [e.data["reason"] for e in denied] == ["lease table full"]


def test_reserve_refuses_a_non_estimate(make_budget: Any) -> None:
    budget = make_budget()
    with pytest.raises(TypeError):
        budget.reserve(10)  # type: ignore[arg-type]


def test_leases_of_live_owners_are_not_reclaimed(make_budget: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=10))
    budget.reserve(T(10, 0))
    assert budget.reclaim_dead_leases() == 0
    [(lease, pid)] = budget.leases()
    assert pid == os.getpid() and lease.estimate == T(10, 0)


# ---- a model of the budget --------------------------------------------------------------------

_token_counts = st.integers(min_value=0, max_value=60)
_costs = st.sampled_from([0.0, 0.01, 0.1, 0.25, 1.0])


class BudgetModel(RuleBasedStateMachine):
    """Every operation against a plain-Python model of CAR's rules plus reservations."""

    def __init__(self) -> None:
        super().__init__()
        self.cap_total, self.cap_cost, self.cap_agents = 300, 2_000_000, 8
        self.budget = CoordinationBudget(
            BudgetLimits(max_total_tokens=self.cap_total, max_cost_usd=2.0, max_agents=self.cap_agents),
            lease_slots=4,
        )
        self.spent_total = self.spent_cost = self.started = 0
        self.leases: list[tuple[Lease, int, int]] = []

    def teardown(self) -> None:
        self.budget.close()

    def reserved(self) -> tuple[int, int]:
        return sum(t for _, t, _ in self.leases), sum(c for _, _, c in self.leases)

    @rule()
    def begin_agent(self) -> None:
        if self.spent_total >= self.cap_total or self.spent_cost >= self.cap_cost:
            with pytest.raises(BudgetExhausted):
                self.budget.try_begin_agent()
        elif self.started >= self.cap_agents:
            with pytest.raises(AgentLimit):
                self.budget.try_begin_agent()
        else:
            self.budget.try_begin_agent()
            self.started += 1

    @rule(i=_token_counts, o=_token_counts, cost=_costs)
    def record(self, i: int, o: int, cost: float) -> None:
        self.budget.record_output(T(i, o, cost))
        self.spent_total += i + o
        self.spent_cost += round(cost * 1_000_000)

    @rule(i=_token_counts, o=_token_counts, cost=_costs)
    def reserve(self, i: int, o: int, cost: float) -> None:
        estimate = T(i, o, cost)
        res_total, res_cost = self.reserved()
        fits = (self.spent_total + res_total + i + o <= self.cap_total
                and self.spent_cost + res_cost + estimate.cost_micros <= self.cap_cost)
        if not fits:
            with pytest.raises(ReservationDenied):
                self.budget.reserve(estimate)
        elif len(self.leases) == 4:
            with pytest.raises(LeaseTableFull):
                self.budget.reserve(estimate)
        else:
            lease = self.budget.reserve(estimate)
            self.leases.append((lease, i + o, estimate.cost_micros))

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(min_value=0), used=_token_counts, commit=st.booleans())
    def settle(self, pick: int, used: int, commit: bool) -> None:
        lease, _, _ = self.leases.pop(pick % len(self.leases))
        if commit:
            self.budget.commit(lease, T(used, 0))
            self.spent_total += used
        else:
            self.budget.release(lease)

    @invariant()
    def matches_the_model(self) -> None:
        snap = self.budget.snapshot()
        assert snap.total_tokens == self.spent_total
        assert round(snap.cost_usd * 1_000_000) == self.spent_cost
        assert snap.agents_started == self.started
        stats = self.budget.statistics()
        assert stats.leases_held == len(self.leases)
        assert stats.reserved.input_tokens + stats.reserved.output_tokens == self.reserved()[0]
        assert total_granted_minus_refunded(self.budget) <= self.cap_total


TestBudgetModel = BudgetModel.TestCase
TestBudgetModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


@given(st.lists(st.tuples(_token_counts, _token_counts, _costs), max_size=30))
@settings(max_examples=30, deadline=None)
def test_record_output_sums_exactly(reports: list[tuple[int, int, float]]) -> None:
    with CoordinationBudget() as budget:
        for i, o, cost in reports:
            budget.record_output(T(i, o, cost))
        snap = budget.snapshot()
        assert snap.input_tokens == sum(r[0] for r in reports)
        assert snap.output_tokens == sum(r[1] for r in reports)
        assert round(snap.cost_usd * 1_000_000) == sum(round(r[2] * 1_000_000) for r in reports)


# ---- across processes (fork, forkserver, spawn) ------------------------------------------------

AGENT_STARTED, AGENT_REFUSED = 10, 11


def begin_one_agent(budget: CoordinationBudget, go: Any) -> None:
    go.wait(60)
    try:
        budget.try_begin_agent()
    except AgentLimit:
        os._exit(AGENT_REFUSED)
    os._exit(AGENT_STARTED)


def test_64_processes_race_for_10_agent_slots(make_budget: Any, mp_context: Any) -> None:
    budget = make_budget(BudgetLimits(max_agents=10))
    go = mp_context.Event()
    procs = [mp_context.Process(target=begin_one_agent, args=(budget, go)) for _ in range(64)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    codes = [p.exitcode for p in procs]
    assert codes.count(AGENT_STARTED) == 10 and codes.count(AGENT_REFUSED) == 54, codes
    assert budget.snapshot().agents_started == 10
    assert budget.statistics().denied_agent_limit == 54


def hold_budget_lock(budget: CoordinationBudget, ready: Any) -> None:
    budget._lock.acquire()
    ready.set()
    while True:
        signal.pause()


def test_sigkill_while_holding_the_budget_lock(make_budget: Any, mp_context: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    ready = mp_context.Event()
    holder = mp_context.Process(target=hold_budget_lock, args=(budget, ready))
    holder.start()
    assert ready.wait(60)
    kill(holder.pid)
    holder.join()
    lease = budget.reserve(T(100, 0), timeout=1.0)  # the next acquirer proceeds within 1 s
    assert budget.statistics().lock_recoveries == 1
    budget.commit(lease, T(100, 0))
    assert budget.snapshot().exhausted


def reserve_and_hold(budget: CoordinationBudget, tokens: int, report: Any) -> None:
    try:
        budget.reserve(T(tokens, 0))
    except ReservationDenied:
        report.put(("denied", os.getpid()))
        return
    report.put(("granted", os.getpid()))
    while True:
        signal.pause()


def test_sigkill_while_holding_a_reservation_refunds_it(make_budget: Any, mp_context: Any) -> None:
    budget = make_budget(BudgetLimits(max_total_tokens=100))
    report = mp_context.Queue()
    holder = mp_context.Process(target=reserve_and_hold, args=(budget, 100, report))
    holder.start()
    assert report.get(timeout=60) == ("granted", holder.pid)
    assert total_granted_minus_refunded(budget) == 100
    kill(holder.pid)
    holder.join()
    lease = budget.reserve(T(100, 0))  # denied at first sight, granted after the refund
    stats = budget.statistics()
    assert stats.dead_leases_refunded == 1 and stats.leases_held == 1
    assert total_granted_minus_refunded(budget) == 100
    budget.release(lease)


def test_64_processes_reserve_while_half_of_the_holders_die(make_budget: Any, mp_context: Any) -> None:
    """ROBUSTNESS R12: never an over-grant; dead leases refunded; every decision counted."""
    cap = 1000
    budget = make_budget(BudgetLimits(max_total_tokens=cap))
    report = mp_context.Queue()
    procs = {}
    for _ in range(64):
        p = mp_context.Process(target=reserve_and_hold, args=(budget, 100, report))
        p.start()
        procs[p.pid] = p
    granted = []
    for _ in range(64):
        decision, pid = report.get(timeout=120)
        if decision == "granted":
            granted.append(pid)
        assert total_granted_minus_refunded(budget) <= cap
    assert len(granted) == 10
    stats = budget.statistics()
    assert (stats.reservations_granted, stats.reservations_denied) == (10, 54)
    for pid in granted[:5]:
        kill(pid)
        procs[pid].join()
        assert total_granted_minus_refunded(budget) <= cap
    assert budget.reclaim_dead_leases() == 5
    assert total_granted_minus_refunded(budget) == 500
    refills = [budget.reserve(T(100, 0)) for _ in range(5)]
    with pytest.raises(ReservationDenied):
        budget.reserve(T(1, 0))
    assert total_granted_minus_refunded(budget) == cap
    for pid in granted[5:]:
        kill(pid)
    for p in procs.values():
        p.join()
    for lease in refills:
        budget.release(lease)
    assert budget.reclaim_dead_leases() == 5
    assert budget.statistics().leases_held == 0


def churn_reservations(budget: CoordinationBudget, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        try:
            lease = budget.reserve(T(rng.randint(1, 40), 0, 0.01))
        except ReservationDenied:
            continue
        if rng.random() < 0.5:
            budget.commit(lease, T(rng.randint(0, 40), 0))
        else:
            budget.release(lease)


def test_sigkill_at_random_points_of_reserve_and_commit_keeps_the_books(make_budget: Any) -> None:
    """Kill a churning reserver at random moments, many times: the ledger stays consistent."""
    import multiprocess

    ctx = multiprocess.get_context("fork")
    cap = 10**9
    budget = make_budget(BudgetLimits(max_total_tokens=cap, max_cost_usd=10**6))
    rng = random.Random(1234)
    for round_ in range(40):
        granted = budget.statistics().reservations_granted
        worker = ctx.Process(target=churn_reservations, args=(budget, round_))
        worker.start()
        deadline = time.monotonic() + 60  # let it get going: a kill should land mid-churn
        while budget.statistics().reservations_granted == granted and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.001, 0.02))
        kill(worker.pid)
        worker.join()
        budget.reclaim_dead_leases()
        ledger = budget.ledger()
        stats = budget.statistics()
        assert stats.leases_held == 0
        assert ledger["reserved"] == (0, 0, 0, 0), ledger
        # everything granted was either refunded or is counted as spend
        assert ledger["granted"][2] - ledger["refunded"][2] <= ledger["spent"][2]
    # the kills really landed inside the lock and inside held leases (about 3 in 4 and 1 in 4)
    stats = budget.statistics()
    assert stats.lock_recoveries > 0 and stats.dead_leases_refunded > 0


# ---- every grant, denial and refund is an event (ROBUSTNESS R3) -------------------------------


def test_decisions_are_recorded_in_an_event_log(make_budget: Any, mp_context: Any) -> None:
    with EventLog() as log:
        budget = make_budget(BudgetLimits(max_total_tokens=100, max_agents=1))
        budget.record_events_in(log)
        lease = budget.reserve(T(60, 0))
        with pytest.raises(ReservationDenied):
            budget.reserve(T(50, 0))
        budget.commit(lease, T(40, 0))
        budget.release(budget.reserve(T(10, 0)))
        budget.try_begin_agent()
        with pytest.raises(AgentLimit):
            budget.try_begin_agent()
        report = mp_context.Queue()
        holder = mp_context.Process(target=reserve_and_hold, args=(budget, 30, report))
        holder.start()
        assert report.get(timeout=60)[0] == "granted"
        kill(holder.pid)
        holder.join()
        assert budget.reclaim_dead_leases() == 1
        events = [(e.kind, e.data) for e in log.events() if e.kind.startswith("budget_")]
    kinds = [kind for kind, _ in events]
    # the holder process records its own reservation: the handle it got carries the log
    assert kinds == ["budget_reserved", "budget_denied", "budget_refunded", "budget_reserved",
                     "budget_refunded", "budget_denied", "budget_reserved", "budget_refunded"]
    assert events[1][1]["gate"] == "reserve" and "would exceed" in events[1][1]["reason"]
    assert events[2][1] == {"lease_id": events[0][1]["lease_id"], "reason": "committed",
                            "refund": [20, 0, 20, 0], "used": [40, 0, 40, 0]}
    assert events[5][1]["reason"] == "max_agents"
    assert events[7][1]["reason"] == "owner died" and events[7][1]["pid"] == holder.pid
