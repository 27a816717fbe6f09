"""The chaos suite's short form: one round per pattern and start method, each with
workers SIGKILLed at random moments; every promise of tests/chaos/chaos.py holds."""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

from carmp.backends.local import START_METHODS
from carmp.shared.budget import BudgetLimits, CoordinationBudget, TokenAccounting
from carmp.shared.event import Event
from carmp.shared.state import StateStore
from tests.chaos.agents import COUNT_KEY, digest, write_key
from tests.chaos.chaos import (
    PATTERNS,
    BudgetMonitor,
    ChaosConfig,
    RoundReport,
    _check_agents_ended,
    _check_budget,
    _check_detection,
    _check_leftovers,
    _check_state,
    run_round,
    typed_failure,
)


ROUNDS = [(method, pattern) for method in START_METHODS for pattern in PATTERNS]


@pytest.mark.parametrize(("start_method", "pattern"), ROUNDS)
def test_a_round_of_random_kills_keeps_every_promise(start_method: str, pattern: str) -> None:
    report = run_round(ChaosConfig(pattern=pattern, start_method=start_method,
                                   seed=ROUNDS.index((start_method, pattern))))
    assert report.violations == []
    assert report.kills >= 1
    assert report.writes > 0 and report.budget_samples > 0
    assert report.agents > 0 or report.pattern_error is not None


def test_typed_failure_names_carmp_errors_only() -> None:
    assert typed_failure("WorkerCrashed: worker pid 7 was killed by SIGKILL") == "WorkerCrashed"
    assert typed_failure("ReservationDenied: over the cap") == "ReservationDenied"
    assert typed_failure("not started: the coordination budget refused it: x") == "BudgetSkipped"
    assert typed_failure("ValueError: bad") is None
    assert typed_failure("something broke") is None


# ---- the checks themselves catch what they look for -----------------------------------------


def _event(seq: int, kind: str, **data: Any) -> Event:
    return Event(seq, 0, 1, kind, None, None, None, None, data)


def _good_value(agent: str, step: int) -> dict[str, Any]:
    return {"agent": agent, "step": step, "blob": "ab", "digest": digest("ab")}


def test_the_state_check_catches_torn_lost_and_gapped_writes() -> None:
    snapshot = {
        write_key("a", 0): _good_value("a", 0),
        write_key("a", 1): {**_good_value("a", 1), "blob": "torn"},
        write_key("b", 1): _good_value("b", 1),  # b's step 0 is missing
        COUNT_KEY: 1,
    }
    events = [_event(0, "chaos_write", key=write_key("a", 0), digest=digest("ab")),
              _event(1, "chaos_write", key=write_key("c", 0), digest=digest("ab")),
              _event(2, "chaos_counted", count=2), _event(3, "chaos_counted", count=2)]
    report = RoundReport(ChaosConfig())
    _check_state(snapshot, events, report)
    found = "\n".join(report.violations)
    assert "torn or foreign value at chaos/w/a/1" in found
    assert "b's writes have a gap" in found
    assert "committed write lost: chaos/w/c/0" in found
    assert "two increments of the counter saw the same value" in found
    assert "counter lost increments" in found


def test_the_budget_check_catches_a_held_lease_and_the_monitor_an_over_grant() -> None:
    with CoordinationBudget(BudgetLimits(max_total_tokens=100)) as budget:
        budget.reserve(TokenAccounting(output_tokens=60))  # held by this live process
        report = RoundReport(ChaosConfig())
        _check_budget(budget, 60, report)
        assert any("leases still held" in v for v in report.violations)
        assert any("still reserved" in v for v in report.violations)
    with CoordinationBudget(BudgetLimits(max_total_tokens=100)) as budget:
        budget.record_output(TokenAccounting(output_tokens=5))  # spend with no lease at all
        unbalanced = RoundReport(ChaosConfig())
        _check_budget(budget, 60, unbalanced)
        assert any("does not balance" in v for v in unbalanced.violations)
        monitor = BudgetMonitor(budget, report)
        budget.ledger = lambda: {"limits": (2**64 - 1, 2**64 - 1, 100, 2**64 - 1),  # type: ignore[method-assign]
                                 "granted": (0, 0, 160, 0), "refunded": (0, 0, 50, 0)}
        monitor.sample()
        assert any("over-granted" in v and "110 > cap 100" in v for v in report.violations)


def test_the_leftover_check_catches_a_live_worker_and_a_leaked_name() -> None:
    with StateStore(run_id="chaostest1"):
        report = RoundReport(ChaosConfig())
        me = os.getpid()
        created_ns = int(psutil.Process(me).create_time() * 1e9)
        _check_leftovers("chaostest1", {me: created_ns}, report)
        assert report.orphans == [me]
        reused = RoundReport(ChaosConfig())  # the pid, but of a process made much later
        _check_leftovers("chaostest2", {me: created_ns - 3_600 * 10**9}, reused)
        assert reused.orphans == []
        assert report.leaked and all("chaostest1" in name for name in report.leaked)


def test_agents_and_kills_are_checked_against_the_log() -> None:
    events = [_event(0, "agent_started", agent="a"), _event(1, "worker_crashed", pid=9)]
    report = RoundReport(ChaosConfig())
    _check_agents_ended({}, events, report)
    _check_detection({9: 0, 10: 0}, events, report)
    found = "\n".join(report.violations)
    assert "agent a started in 1 and neither finished nor lost its worker" in found
    assert "worker 10 was killed but never reported dead" in found
    assert report.detection_ms == [0.0]
