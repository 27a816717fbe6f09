"""The local Ray cluster a bench script measures on: loopback only, no usage reports, and
cloud-metadata lookups refused in this process and in every process Ray starts, through
the network guard the tests use (tests/netguard/sitecustomize.py)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from carmp.backends.on_ray.cluster import LOOPBACK, connect, ray_module

NETGUARD = Path(__file__).resolve().parent.parent / "tests" / "netguard"


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def guard_network() -> None:
    """Install the guard here, and in every Python process started from now on (Ray's
    workers among them)."""
    spec = importlib.util.spec_from_file_location("carmp_netguard", NETGUARD / "sitecustomize.py")
    assert spec is not None and spec.loader is not None, f"no network guard in {NETGUARD}"
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    guard.guard_children()


@contextmanager
def local_ray(num_cpus: int) -> Iterator[ModuleType]:
    """A single-node Ray cluster with `num_cpus` CPUs for the block, started as a Farm
    with backend="ray" starts its own (loopback only, no dashboard); yields `ray`."""
    guard_network()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = ray_module(single_node=True)
    connect(None, num_cpus)
    try:
        addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
        assert addresses == {LOOPBACK}, f"Ray is not on loopback only: {addresses}"
        yield ray
    finally:
        ray.shutdown()
