"""RayInfra: the farm's world on Ray. Workers receive it by value (actor handles) and own
nothing of it, and a part that dies comes back from its journal while the farm runs."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from carmp import BudgetLimits, Farm, current_infra
from tests.backends.on_ray.hosts import world_pids

pytestmark = pytest.mark.ray


@pytest.fixture
def farm(ray_session: Any) -> Iterator[Farm]:
    with Farm(workers=2, backend="ray", budget=BudgetLimits(max_agents=100)) as made:
        yield made


def write(i: int) -> int:
    infra = current_infra()
    assert infra is not None
    infra.state.set(f"key/{i}", {"i": i}, f"write-{i}")
    return infra.state.version(f"key/{i}")


def read(i: int) -> Any:
    infra = current_infra()
    assert infra is not None
    return infra.state.get(f"key/{i}")


def close_a_copy(_: Any) -> bool:
    """A worker's copy of the world closes without ending anything."""
    infra = current_infra()
    assert infra is not None
    copy = pickle.loads(pickle.dumps(infra))
    copy.close()
    return True


def test_a_killed_state_actor_recovers_its_writes_while_the_farm_runs(farm: Farm) -> None:
    assert all(farm.map(write, range(20)))
    state_pid = world_pids(farm.infra)[0]
    os.kill(state_pid, signal.SIGKILL)  # Ray restarts the actor; it replays its journal
    assert farm.map(read, range(20)) == [{"i": i} for i in range(20)]
    assert world_pids(farm.infra)[0] != state_pid
    assert all(farm.map(write, range(20, 25)))
    assert len(farm.infra.state.keys()) == 25


def test_workers_get_the_world_by_value_and_own_none_of_it(farm: Farm) -> None:
    assert len(pickle.dumps(farm.infra)) < 16_384  # handles, not contents
    assert farm.map(close_a_copy, range(4)) == [True] * 4
    farm.infra.state.set("still", "here", "test")
    assert farm.map(lambda _: current_infra().state.get("still"), range(2)) == ["here"] * 2
