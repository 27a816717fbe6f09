"""The coordination budget on Ray: the local gate and reservations through a ledger actor,
waiting for room, idempotent resends, leases of a killed worker actor refunded with the
invariant `granted - refunded <= cap` kept throughout, events, and a clean shutdown."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carmp.backends.on_ray.budget import RayBudget, start_budget
from carmp.errors import (
    AgentLimit,
    BudgetExhausted,
    InvalidBudget,
    LeaseNotHeld,
    ReservationDenied,
)
from carmp.shared.budget import BudgetLimits, Lease, TokenAccounting
from tests.backends.on_ray.hosts import segments_of, wait_gone

pytestmark = pytest.mark.ray

WAIT = 30.0  # how long something the test caused may take to show (a bound, not a timing)
TOTAL_CAP = 100


def T(input_tokens: int, output_tokens: int = 0) -> TokenAccounting:
    return TokenAccounting(input_tokens, output_tokens)


@pytest.fixture
def budget(ray_session: Any) -> Iterator[RayBudget]:
    budget = start_budget(BudgetLimits(max_total_tokens=TOTAL_CAP, max_agents=3))
    yield budget
    budget.close_host()


def within_cap(budget: RayBudget) -> bool:
    """The reservation invariant, on the total-tokens dimension."""
    ledger = budget.ledger()
    return ledger["granted"][2] - ledger["refunded"][2] <= TOTAL_CAP


def wait_for(condition: Any) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_gate_counts_agents_and_spend_with_the_local_errors(budget: RayBudget) -> None:
    budget.try_begin_agent()
    budget.record_output(T(60, 50))
    snapshot = budget.snapshot()
    assert (snapshot.total_tokens, snapshot.agents_started, snapshot.exhausted) == (110, 1, True)
    with pytest.raises(BudgetExhausted) as refused:
        budget.try_begin_agent()
    assert refused.value.snapshot.total_tokens == 110
    assert budget.statistics().denied_exhausted == 1
    assert budget.limits == BudgetLimits(max_total_tokens=TOTAL_CAP, max_agents=3)
    assert budget.name.startswith("ray-budget-")


def test_max_agents_is_an_agent_limit(ray_session: Any) -> None:
    budget = start_budget(BudgetLimits(max_agents=1))
    try:
        budget.try_begin_agent()
        with pytest.raises(AgentLimit):
            budget.try_begin_agent()
    finally:
        budget.close_host()


def test_reserve_commit_and_release_keep_the_local_semantics(budget: RayBudget) -> None:
    lease = budget.reserve(T(70))
    [(held, holder)] = budget.leases()
    assert held.lease_id == lease.lease_id and holder == f"driver-{os.getpid()}"
    with pytest.raises(ReservationDenied):
        budget.reserve(T(40))
    budget.commit(lease, T(20, 5))
    assert budget.snapshot().total_tokens == 25
    with pytest.raises(LeaseNotHeld):
        budget.release(lease)
    with budget.reservation(T(75)) as other:
        assert budget.statistics().leases_held == 1
    assert budget.leases() == []
    with pytest.raises(LeaseNotHeld):
        budget.commit(other, None)
    ledger = budget.ledger()
    assert ledger["granted"][2] == 145 and ledger["refunded"][2] == (70 - 25) + 75


def test_reserve_with_a_timeout_waits_for_room(budget: RayBudget) -> None:
    lease = budget.reserve(T(90))
    with pytest.raises(ReservationDenied):
        budget.reserve(T(20), timeout=0.2)  # nobody makes room
    releaser = threading.Timer(0.3, budget.release, (lease,))
    releaser.start()
    try:
        assert budget.reserve(T(20), timeout=WAIT).estimate == T(20)
    finally:
        releaser.join()


def test_bad_arguments_are_refused_before_any_actor_starts(ray_session: Any,
                                                          tmp_path: Path) -> None:
    with pytest.raises(InvalidBudget):
        start_budget({"max_total_tokens": 5})  # type: ignore[arg-type]
    not_a_journal = tmp_path / "notes.txt"
    not_a_journal.write_text("shopping list\n")
    with pytest.raises(InvalidBudget, match="not a budget journal"):
        start_budget(BudgetLimits(), journal=str(not_a_journal))


def test_a_resent_mutation_with_the_same_key_applies_once(budget: RayBudget) -> None:
    import ray

    handle = budget.hosted.handle
    reserve = ("reserve", (T(30), "driver-1", 1), {}, "resent-reserve")
    first_ok, first = ray.get(handle.call.remote(*reserve))
    again_ok, again = ray.get(handle.call.remote(*reserve))
    assert first_ok and again_ok and again == first
    assert budget.statistics().reservations_granted == 1
    commit = ("commit", (first, T(10)), {}, "resent-commit")
    assert ray.get(handle.call.remote(*commit)) == (True, None)
    assert ray.get(handle.call.remote(*commit)) == (True, None)  # not LeaseNotHeld
    assert budget.snapshot().total_tokens == 10


@pytest.fixture
def spender_class(ray_session: Any) -> Any:
    @ray_session.remote(num_cpus=0)
    class Spender:
        """A worker actor that spends through the budget it was sent."""

        def __init__(self, budget: RayBudget) -> None:
            self.budget = budget
            self.held: list[Lease] = []

        def spend(self, rounds: int) -> int:
            granted = 0
            for _ in range(rounds):
                try:
                    lease = self.budget.reserve(T(10))
                except ReservationDenied:
                    continue
                granted += 1
                self.budget.commit(lease, T(2))
            return granted

        def hold(self, count: int) -> list[str]:
            self.held += [self.budget.reserve(T(10)) for _ in range(count)]
            return [holder for _, holder in self.budget.leases()]

        def who(self) -> str:
            return str(ray_session.get_runtime_context().get_actor_id())

    return Spender


def test_leases_of_a_killed_worker_are_refunded_and_the_cap_holds(
        budget: RayBudget, spender_class: Any) -> None:
    import ray

    spenders = [spender_class.remote(budget) for _ in range(3)]
    doomed = spender_class.remote(budget)
    doomed_id = ray.get(doomed.who.remote())
    assert doomed_id in ray.get(doomed.hold.remote(3))
    # at most 3 * 5 * 2 spent + 3 * 10 reserved by them + 30 held: never denied, so
    # nothing refunds the killed worker's leases before release_holder does
    running = [s.spend.remote(5) for s in spenders]
    ray.kill(doomed)  # while it holds its three leases
    while not all(ray.wait([r], timeout=0)[0] for r in running):
        assert within_cap(budget)
    assert sum(ray.get(running)) > 0 and within_cap(budget)
    assert [h for _, h in budget.leases()] == [doomed_id] * 3
    assert budget.release_holder(doomed_id) == 3
    assert budget.release_holder(doomed_id) == 0
    assert budget.leases() == [] and within_cap(budget)
    statistics = budget.statistics()
    assert statistics.dead_leases_refunded == 3 and statistics.reserved == T(0)
    assert budget.reserve(T(TOTAL_CAP - budget.snapshot().total_tokens)).lease_id > 0


def test_reclaim_asks_ray_which_holders_died(budget: RayBudget, spender_class: Any) -> None:
    import ray

    alive, doomed = spender_class.remote(budget), spender_class.remote(budget)
    ray.get([alive.hold.remote(2), doomed.hold.remote(3)])
    mine = budget.reserve(T(10))
    ray.kill(doomed)
    reclaimed = 0

    def reclaim() -> bool:  # Ray marks the actor dead a moment after ray.kill
        nonlocal reclaimed
        reclaimed += budget.reclaim_dead_leases()
        return reclaimed > 0

    assert wait_for(reclaim) and reclaimed == 3
    holders = sorted(h for _, h in budget.leases())
    assert holders == sorted([ray.get(alive.who.remote())] * 2 + [f"driver-{os.getpid()}"])
    budget.release(mine)
    ray.kill(alive)


def test_a_denied_reservation_first_refunds_dead_holders(
        budget: RayBudget, spender_class: Any) -> None:
    import ray

    doomed = spender_class.remote(budget)
    ray.get(doomed.hold.remote(10))  # the whole cap
    ray.kill(doomed)
    assert budget.reserve(T(50), timeout=WAIT).estimate == T(50)
    assert budget.statistics().dead_leases_refunded == 10


def test_it_pickles_small_and_works_where_it_lands(budget: RayBudget) -> None:
    import ray

    assert len(pickle.dumps(budget)) < 2048

    @ray.remote(num_cpus=0)
    def begin_and_spend(budget: RayBudget) -> int:
        budget.try_begin_agent()
        budget.record_output(T(3, 4))
        return budget.snapshot().total_tokens

    assert ray.get(begin_and_spend.remote(budget)) == 7
    assert budget.snapshot().agents_started == 1


def test_the_ledger_records_its_events_in_the_log_it_is_given(budget: RayBudget) -> None:
    import ray

    @ray.remote(num_cpus=0)
    class Sink:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any]]] = []

        def append(self, kind: str, data: dict[str, Any]) -> None:
            self.events.append((kind, data))

        def kinds(self) -> list[str]:
            return [kind for kind, _ in self.events]

    class StandInLog:
        """An event log client's append, forwarding to the Sink actor."""

        def __init__(self, sink: Any) -> None:
            self.sink = sink

        def append(self, kind: str, action_id: str | None = None,
                   proposal_id: str | None = None, data: dict[str, Any] | None = None, *,
                   run_id: str | None = None, writer: str | None = None) -> None:
            ray.get(self.sink.append.remote(kind, data))

    sink = Sink.remote()
    budget.record_events_in(StandInLog(sink))
    lease = budget.reserve(T(60))
    with pytest.raises(ReservationDenied):
        budget.reserve(T(60))
    budget.commit(lease, T(50))
    assert ray.get(sink.kinds.remote()) == ["budget_reserved", "budget_denied", "budget_refunded"]
    budget.record_events_in(None)
    budget.record_output(T(1))
    budget.release(budget.reserve(T(1)))
    assert len(ray.get(sink.kinds.remote())) == 3
    ray.kill(sink)


def test_close_host_ends_the_actor_and_removes_its_budget(ray_session: Any) -> None:
    budget = start_budget(BudgetLimits(max_total_tokens=5))
    pid = ray_session.get(budget.hosted.handle.pid.remote())
    assert segments_of(pid)
    budget.close()  # a client owns nothing
    assert budget.snapshot().total_tokens == 0
    budget.close_host()
    assert wait_gone(pid)
    assert segments_of(pid) == []


def ledger_pid(budget: RayBudget) -> int:
    import ray

    pid: int = ray.get(budget.hosted.handle.pid.remote())
    return pid


def kill_ledger(budget: RayBudget) -> int:
    """SIGKILL the ledger's process, as a crash would; Ray restarts the actor. Returns the
    new incarnation's pid, once it answers."""
    import ray

    old = ledger_pid(budget)
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        try:
            return ledger_pid(budget) != old
        except ray.exceptions.RayActorError:  # not back yet
            return False

    assert wait_for(restarted)
    assert segments_of(old) == []  # the new incarnation removed the dead one's segment
    return ledger_pid(budget)


def test_a_restarted_ledger_replays_its_journal(ray_session: Any, tmp_path: Path,
                                                 spender_class: Any) -> None:
    import ray

    journal = str(tmp_path / "budget.journal")
    budget = start_budget(BudgetLimits(max_total_tokens=TOTAL_CAP, max_agents=3),
                          journal=journal)
    try:
        budget.try_begin_agent()
        budget.record_output(T(5, 1))
        mine = budget.reserve(T(20))
        settled = budget.reserve(T(10))
        budget.commit(settled, T(3))
        budget.release(budget.reserve(T(7)))
        worker = spender_class.remote(budget)
        ray.get(worker.hold.remote(2))
        resend = ("reserve", (T(4), "driver-1", 1), {}, "resent-across-restart")
        ok, resent_lease = ray.get(budget.hosted.handle.call.remote(*resend))
        assert ok
        before = (budget.snapshot(), budget.leases(), budget.ledger())

        kill_ledger(budget)

        assert (budget.snapshot(), budget.leases(), budget.ledger()) == before
        assert ray.get(budget.hosted.handle.call.remote(*resend)) == (True, resent_lease)
        assert budget.ledger() == before[2]  # answered from the journal, not granted again
        budget.commit(mine, T(20))
        assert budget.release_holder(ray.get(worker.who.remote())) == 2
        with pytest.raises(AgentLimit):
            for _ in range(3):
                budget.try_begin_agent()
        ray.kill(worker)
    finally:
        budget.close_host()
    with pytest.raises(InvalidBudget, match="records a budget"):
        start_budget(BudgetLimits(max_total_tokens=5), journal=journal)
    resumed = start_budget(BudgetLimits(max_total_tokens=TOTAL_CAP, max_agents=3),
                           journal=journal)
    try:
        assert resumed.snapshot().total_tokens == 6 + 3 + 20
    finally:
        resumed.close_host()


def test_without_a_journal_a_restarted_ledger_starts_from_zero(budget: RayBudget) -> None:
    budget.record_output(T(5))
    kill_ledger(budget)
    assert budget.snapshot().total_tokens == 0
    budget.record_output(T(5))
    assert budget.snapshot().total_tokens == 5


def test_the_ledger_flushes_its_events_into_a_ray_event_log(budget: RayBudget) -> None:
    from carmp.backends.on_ray.eventlog import start_log

    log = start_log(batch_size=256)  # the ledger's copy would hold 256 events before sending
    try:
        budget.record_events_in(log)
        budget.release(budget.reserve(T(10)))
        assert [e.kind for e in log.events()] == ["budget_reserved", "budget_refunded"]
    finally:
        log.close_host()
