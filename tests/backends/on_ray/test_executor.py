"""The Ray executor beyond the pool API the pool tests share with the local farm: worker
actors recycled after max_tasks_per_worker, a dead worker's budget leases refunded, and
a farm that ends every actor it started."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from carmp import BudgetLimits, Farm, TokenAccounting, WorkerCrashed, current_infra
from tests.backends.on_ray.hosts import wait_gone
from tests.pool import tasks

pytestmark = pytest.mark.ray
WAIT = 60.0


@pytest.fixture
def farm(ray_session: Any) -> Iterator[Farm]:
    with Farm(workers=2, backend="ray", budget=BudgetLimits(max_total_tokens=1_000)) as made:
        yield made


def reserve_then_die(tokens: int) -> None:
    """Runs in a worker actor: hold a lease, then die without committing or releasing it."""
    infra = current_infra()
    assert infra is not None
    infra.budget.reserve(TokenAccounting(input_tokens=tokens))
    os.kill(os.getpid(), signal.SIGKILL)


def reserve_and_commit(tokens: int) -> int:
    infra = current_infra()
    assert infra is not None
    lease = infra.budget.reserve(TokenAccounting(input_tokens=tokens))
    infra.budget.commit(lease, TokenAccounting(input_tokens=tokens // 2))
    return tokens // 2


def test_a_dead_workers_leases_are_refunded_and_the_cap_holds(farm: Farm) -> None:
    with pytest.raises(WorkerCrashed):
        farm.submit(reserve_then_die, 600).result(WAIT)
    # the 600 reserved by the dead worker came back: 2 x 400 fits under the cap of 1,000
    assert farm.map(reserve_and_commit, [400, 400]) == [200, 200]
    snapshot = farm.infra.budget.snapshot()
    assert snapshot.total_tokens == 400
    assert farm.infra.budget.leases() == []
    released = farm.infra.log.filter(kind="leases_released")
    assert len(released) == 1 and released[0].data["leases"] == 1


def test_workers_are_recycled_after_max_tasks(ray_session: Any) -> None:
    with Farm(workers=2, backend="ray", max_tasks_per_worker=2) as farm:
        pids = {pid for pid, _ in farm.map(lambda _: tasks.whoami(), range(12))}
        statistics = farm.statistics()
    assert len(pids) >= 6  # 12 tasks, 2 per worker process
    assert statistics.recycled >= 5 and statistics.crashed == 0
    assert statistics.done == 12


def test_shutdown_ends_every_worker_actor(ray_session: Any) -> None:
    farm = Farm(workers=2, backend="ray")
    pids = {pid for pid, _ in farm.map(lambda _: tasks.whoami(), range(20))}
    farm.shutdown()
    assert pids and all(wait_gone(pid) for pid in pids)
    assert farm.statistics().alive == 0
