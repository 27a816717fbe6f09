"""The local Ray cluster a bench script measures on: loopback only, no usage reports, and
cloud-metadata lookups refused in this process and in every process Ray starts, through
the network guard the tests use (tests/netguard/sitecustomize.py)."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from carmp.backends.on_ray.cluster import LOOPBACK, SINGLE_NODE_SETTING, connect, ray_module

NETGUARD = Path(__file__).resolve().parent.parent / "tests" / "netguard"
RAY_SETTINGS = {SINGLE_NODE_SETTING: "0", "RAY_USAGE_STATS_ENABLED": "0"}
"""What a process that starts a local Ray cluster needs in its environment: loopback only
(read when ray is imported) and no usage reports."""


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
def ray_environment() -> Iterator[None]:
    """For the block: the network guard here and on PYTHONPATH, and RAY_SETTINGS, in
    os.environ, so that every process started in it has them from its start, be it one of
    Ray's or a fresh interpreter that starts Ray. os.environ is put back afterwards: a
    process started later runs as it would without Ray (importing the guard costs a fresh
    interpreter ~7 ms)."""
    saved = dict(os.environ)
    guard_network()
    os.environ.update(RAY_SETTINGS)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def local_ray(num_cpus: int) -> Iterator[ModuleType]:
    """A single-node Ray cluster with `num_cpus` CPUs for the block, started as a Farm
    with backend="ray" starts its own (loopback only, no dashboard); yields `ray`."""
    sigterm = signal.getsignal(signal.SIGTERM)
    with ray_environment():
        ray = ray_module(single_node=True)
        try:
            connect(None, num_cpus)
            # ray.init set a SIGTERM handler that prints a stack trace: processes forked
            # from here (a Pool's workers, ended with SIGTERM) end as they would without Ray
            signal.signal(signal.SIGTERM, sigterm)
            addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
            assert addresses == {LOOPBACK}, f"Ray is not on loopback only: {addresses}"
            yield ray
        finally:
            ray.shutdown()
