"""Fixtures for agent and pattern tests: a fresh forkserver farm per test (the leak check
fails a test whose farm outlives it), the same across fork, forkserver and spawn, and a
world of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carmp.pool.farm import Farm
from carmp.runtime.infra import SharedInfra
from tests.conftest import START_METHODS


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm(workers=2) as made:
        yield made


@pytest.fixture(params=START_METHODS)
def any_farm(request: pytest.FixtureRequest) -> Iterator[Farm]:
    """A farm under each start method: one test per pattern family runs on it."""
    with Farm(workers=2, start_method=request.param) as made:
        yield made


@pytest.fixture
def world() -> Iterator[SharedInfra]:
    """A world of the test's own, for budgets and call logs that start fresh."""
    with SharedInfra() as made:
        yield made
