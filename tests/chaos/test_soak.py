"""The soak script itself (make soak runs it for minutes; here two rounds)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.chaos import soak
from tests.chaos.chaos import PATTERNS, ChaosConfig, RoundReport


def test_two_rounds_pass_and_write_the_summary(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "soak.md"
    assert soak.main(["--rounds", "2", "--seed", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round 2/2" in printed and "soak passed" in printed
    table = out.read_text()
    assert "| rounds | 2 |" in table and "| leaked shared-memory names | 0 |" in table


def test_a_violation_fails_the_soak(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def broken_round(config: ChaosConfig) -> RoundReport:
        return RoundReport(config, violations=["committed write lost: chaos/w/a/0"])

    monkeypatch.setattr(soak, "run_round", broken_round)
    assert soak.main(["--rounds", "1"]) == 1
    printed = capsys.readouterr().out
    assert "| rounds with a violation | 1 |" in printed and "soak FAILED" in printed


def test_round_plans_vary_and_stay_in_range() -> None:
    rng = random.Random(3)
    configs = [soak.random_config(rng, seed=i) for i in range(60)]
    assert {c.pattern for c in configs} == set(PATTERNS)
    assert len({c.start_method for c in configs}) == 3
    assert all(c.agents > c.workers >= 2 and c.steps >= 2 for c in configs)


def test_rounds_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        soak.main(["--rounds", "0"])
    assert "--rounds must be >= 1" in capsys.readouterr().err


def test_a_growing_supervisor_fails_the_soak(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    class Leaky:
        """A process whose RSS grows 2 MiB a round."""

        def __init__(self) -> None:
            self.rss = 30 * 2**20

        def memory_info(self) -> SimpleNamespace:
            self.rss += 2 * 2**20
            return SimpleNamespace(rss=self.rss)

    monkeypatch.setattr(soak, "run_round", lambda config: RoundReport(config))
    monkeypatch.setattr(soak.psutil, "Process", Leaky)
    assert soak.main(["--rounds", str(soak.WARM_UP_ROUNDS + 10)]) == 1
    assert f"supervisor RSS grew 20.0 MiB after round {soak.WARM_UP_ROUNDS}" \
        in capsys.readouterr().out
