"""The public surface: everything in carmp.__all__ exists and presents itself as carmp's."""

from __future__ import annotations

import pickle

import carmp
from carmp import errors


def test_every_public_name_exists_and_belongs_to_carmp() -> None:
    assert len(carmp.__all__) == len(set(carmp.__all__))
    for name in carmp.__all__:
        value = getattr(carmp, name)
        if isinstance(value, type) and value.__module__.startswith("carmp"):
            assert value.__module__ == "carmp", name


def test_every_error_is_public_and_in_the_one_tree() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert getattr(carmp, name) is error, f"{name} is not exported from carmp"
        informational = error is carmp.RemoteTraceback or issubclass(error, Warning)
        if not informational:
            assert issubclass(error, carmp.CarmpError), name


def test_errors_survive_pickling_whatever_their_constructor_takes() -> None:
    """A task's exception travels from a worker to the supervisor by pickle."""
    snapshot = carmp.BudgetSnapshot(1, 2, 3, 0.5, 4, carmp.BudgetLimits(max_agents=4), True)
    samples = [
        carmp.PayloadError("x"),
        carmp.WorkerCrashed.from_exit(12, -9, 3),
        carmp.AgentLimit(max=2, started=2),
        carmp.BudgetExhausted("total tokens 10 reached the limit of 10", snapshot),
        carmp.LockTimeout("held", owner_pid=7),
        carmp.StateFull("no room"),  # the MemoryError family rebuilds another way
        carmp.SegmentNotFound("gone"),  # and so does the OSError family
    ]
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
