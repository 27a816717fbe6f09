"""`carmp demo`: a small demo farm completes, its summary names what it solved and the
policy's denial, its solutions really solve their puzzles, the budget caps its work, and
a seed makes the same run twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from carmp.cli.main import main
from carmp.shared.eventlog import EventLog

SMALL = ["--puzzles", "5", "--qualifiers", "2", "--workers", "2"]


def demo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["demo", *SMALL, *argv])
    return code, capsys.readouterr().out


def demo_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out = demo(capsys, "--json", *argv)
    assert code == 0
    report: dict[str, Any] = orjson.loads(out)
    return report


def play(board: list[int], moves: str) -> list[int]:
    """The board after sliding the blank through `moves` (written here, apart from the
    demo's own checker); a move off the board fails the test."""
    tiles, side = list(board), 3
    for move in moves:
        blank = tiles.index(0)
        row, column = divmod(blank, side)
        target = {"U": (row - 1, column), "D": (row + 1, column),
                  "L": (row, column - 1), "R": (row, column + 1)}[move]
        assert 0 <= target[0] < side and 0 <= target[1] < side, f"{move} leaves the board"
        swap = target[0] * side + target[1]
        tiles[blank], tiles[swap] = tiles[swap], tiles[blank]
    return tiles


def test_the_summary_names_the_solved_puzzles_and_the_policy_denial(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    journal = tmp_path / "demo.journal"
    code, out = demo(capsys, "--seed", "3", "--log", str(journal))
    assert code == 0
    assert "solved (Fleet): 5/5, 5 verified" in out
    assert "ranking (Tournament)" in out and "mop-up (MapReduce) skipped 5 puzzles" in out
    for name in ("p00", "p01", "p02", "p03", "p04"):
        assert f"{name}:" in out
    assert "forfeited: brute" in out
    assert "policy denials: 2" in out and "no-brute-force" in out
    # the journal holds the same story
    kinds = [event.kind for event in EventLog.load(journal).events()]
    assert kinds.count("policy_violation") == 2
    assert "agent_started" in kinds and "state_changed" in kinds


def test_every_solution_solves_its_puzzle(capsys: pytest.CaptureFixture[str]) -> None:
    report = demo_json(capsys, "--seed", "5")
    assert [s["puzzle"] for s in report["solutions"]] == [f"p{i:02d}" for i in range(5)]
    for solution in report["solutions"]:
        assert solution["moves"], "no puzzle of the set starts solved"
        assert play(solution["board"], solution["moves"]) == [1, 2, 3, 4, 5, 6, 7, 8, 0]
        assert solution["by"] in report["ranking"]
    assert report["policy_denials"] and report["forfeited"].keys() == {"brute"}
    assert report["workers_used"] >= 1 and report["events"] > 0


def test_the_budget_caps_the_work(capsys: pytest.CaptureFixture[str]) -> None:
    cap = 3000
    unbounded = demo_json(capsys, "--seed", "11", "--budget", str(10**9))
    assert unbounded["budget"]["spent"] > 10 * cap  # the cap below has work to stop
    capped = demo_json(capsys, "--seed", "11", "--budget", str(cap))
    budget = capped["budget"]
    # CAR gates spawns on reported spend: agents already running may each finish what
    # the budget had left when they started, so 2 workers overshoot by at most one cap
    assert budget["exhausted"] and budget["spent"] <= 2 * cap
    assert capped["agents"]["refused_by_budget"] > 0
    assert len(capped["unsolved"]) > len(unbounded["unsolved"])


def test_a_seed_makes_the_same_run(capsys: pytest.CaptureFixture[str]) -> None:
    def outcome(seed: str) -> tuple[Any, ...]:
        report = demo_json(capsys, "--seed", seed)
        return report["ranking"], report["solutions"], report["unsolved"]

    first = outcome("8")
    assert outcome("8") == first
    assert outcome("9")[1] != first[1]  # and the seed matters


def test_bad_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--workers", "0"], ["--budget", "lots"], ["--puzzles", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", *argv])
        assert exit_.value.code == 2
    assert "give 1 or more" in capsys.readouterr().err


def test_python_m_carmp_demo_prints_only_the_summary_when_piped() -> None:
    done = subprocess.run([sys.executable, "-m", "carmp", "demo", *SMALL, "--seed", "2"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("carmp demo: 5 puzzles (seed 2)")
    assert "budget:" in done.stdout and "events:" in done.stdout
    assert done.stderr == ""  # no progress lines on a pipe
