"""The `carmp` command itself: families, exit codes, a reader that leaves early."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carmp.cli.main import BAD_USAGE, main


def test_every_family_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    for command in ("demo", "run", "ps", "log", "state", "budget", "top", "report", "cleanup"):
        assert f"    {command} " in listed


def test_no_command_is_bad_usage() -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == BAD_USAGE


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    """`carmp demo | head -1`: exit 0 and no BrokenPipeError traceback."""
    command = [sys.executable, "-m", "carmp", "demo", "--puzzles", "3", "--qualifiers", "2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the command prints anything
        errors = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors
