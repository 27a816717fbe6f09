"""Farm(backend="ray"): options the backend cannot honour are refused before anything
starts, a farm that connected to Ray disconnects when it closes, and the farm's world
actors end with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from carmp import BackendUnsupported, BudgetLimits, EventLog, Farm, StateStore
from tests.backends.on_ray.hosts import segments_of, wait_gone, world_pids

pytestmark = pytest.mark.ray
WAIT = 120.0


@pytest.mark.parametrize("options", [{"max_rss_mb": 100}, {"start_method": "fork"}])
def test_options_ray_cannot_honour_are_refused(ray_session: Any, options: dict[str, Any]) -> None:
    with pytest.raises(BackendUnsupported, match="the ray backend cannot honour"):
        Farm(workers=1, backend="ray", **options)


def test_local_world_parts_are_refused(ray_session: Any) -> None:
    with StateStore() as state, EventLog() as log:
        for part in ({"state": state}, {"log": log}):
            with pytest.raises(BackendUnsupported, match="cannot use local"):
                Farm(workers=1, backend="ray", **part)  # type: ignore[arg-type]


def test_the_capabilities_say_what_the_farm_can_do(ray_session: Any) -> None:
    with Farm(workers=1, backend="ray", budget=BudgetLimits(max_agents=2)) as farm:
        capabilities = farm.backend.capabilities
        assert capabilities.multi_node and not capabilities.shared_memory
        assert capabilities.per_task_timeout and not capabilities.max_rss
        assert farm.start_method is None and "ray" in repr(farm)
        assert farm.infra.budget.limits.max_agents == 2


def test_closing_the_farm_ends_its_world_actors(ray_session: Any) -> None:
    farm = Farm(workers=1, backend="ray")
    farm.infra.state.set("k", 1, "test")
    pids = world_pids(farm.infra)
    assert len(pids) == 4  # one state shard, the log, the budget ledger, the policy set
    farm.shutdown()
    assert all(wait_gone(pid) for pid in pids)
    assert not [name for pid in pids for name in segments_of(pid)]


def test_a_farm_that_started_ray_stops_it(ray_session: Any, tmp_path: Any) -> None:
    """In a fresh process (this one already joined the tests' cluster): with no address
    the farm starts a one-node cluster on 127.0.0.1, and disconnects when it closes."""
    script = textwrap.dedent("""
        import ray
        from carmp import Farm

        with Farm(workers=1, backend="ray") as farm:
            print(farm.map(abs, [-1, -2]), ray.is_initialized())
            print(ray.get_runtime_context().gcs_address.startswith("127.0.0.1"))
        print(ray.is_initialized())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=WAIT, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[1, 2] True", "True", "False"]
