"""Fixtures for agent and pattern tests: a fresh forkserver farm per test (the leak check
fails a test whose farm outlives it), the same across fork, forkserver, spawn and Ray,
the default farm on each backend, and worlds of the test's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from carmp.pool.farm import Farm
from carmp.runtime.infra import SharedInfra
from tests.conftest import make_farm


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm(workers=2) as made:
        yield made


@pytest.fixture
def any_farm(flavor: str) -> Iterator[Farm]:
    """A farm under each start method and on Ray: one test per pattern family runs on it."""
    with make_farm(flavor, workers=2) as made:
        yield made


@pytest.fixture
def backend_farm(backend: str) -> Iterator[Farm]:
    """The default farm on each backend, for tests where the backend matters (pair it
    with `any_world`, which follows the same backend)."""
    with Farm(workers=2, backend=backend) as made:
        yield made


@pytest.fixture
def world() -> Iterator[SharedInfra]:
    """A world of the test's own, for budgets and call logs that start fresh."""
    with SharedInfra() as made:
        yield made


@pytest.fixture
def new_world(tmp_path: Path) -> Iterator[Callable[[Farm], SharedInfra]]:
    """Makes worlds of the test's own that a farm's workers reach: a shared-memory one for
    a local farm, one of Ray actors for a Ray farm; all are closed after the test."""
    made: list[SharedInfra] = []

    def new(farm: Farm) -> SharedInfra:
        if farm.backend.name == "ray":
            from carmp.backends.on_ray.world import open_world

            made.append(open_world(str(tmp_path / f"world-{len(made)}")))
        else:
            made.append(SharedInfra())
        return made[-1]

    yield new
    for world in reversed(made):
        world.close()
