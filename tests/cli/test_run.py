"""`carmp run SPEC`: every pattern from a spec file, exit codes, and sweeps that write
one row per cell, resume, and stop at the budget."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from carmp.cli.main import main
from carmp.cli.run import Progress
from tests.conftest import START_METHODS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HEAD = 'runner = "echo_runner:run"\nworkers = 2\n'


@pytest.fixture(autouse=True)
def own_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The runner's import adds folders to sys.path: keep them out of other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder holding the example runner, where the tests write their specs."""
    shutil.copy(EXAMPLES / "echo_runner.py", tmp_path)
    return tmp_path


def carmp(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(folder: Path, text: str, name: str = "spec.toml") -> Path:
    (folder / name).write_text(text)
    return folder / name


def agent(name: str, answer: str | None = None, fail: bool = False) -> str:
    metadata = ([f"answer = {orjson.dumps(answer).decode()}"] if answer is not None else []) \
        + (["fail = true"] if fail else [])
    return f"[[agents]]\nname = {name!r}\nmetadata = {{ {', '.join(metadata)} }}\n"


FINDINGS = orjson.dumps({"findings": [{"criterion": "short", "passed": True,
                                        "evidence": "one line"}]}).decode()

PATTERNS: list[tuple[str, str, Any]] = [
    ("swarm", 'pattern = "swarm"\ntask = "t"\n' + agent("a", "7") + agent("b", "7"),
     lambda r: len(r["outputs"]) == 2 and "7" in r["final_summary"]),
    ("pipeline", 'pattern = "pipeline"\ntask = "t"\n' + agent("a") + agent("b"),
     lambda r: [s["name"] for s in r["stages"]] == ["a", "b"] and r["final_answer"] == "b: t"),
    ("supervisor", 'pattern = "supervisor"\ntask = "t"\nsupervisor = { name = "boss", '
     'metadata = { answer = "APPROVED" } }\n' + agent("a"),
     lambda r: r["approved"] is True and r["final_answer"] == "a: t"),
    ("map_reduce", 'pattern = "map_reduce"\ntask = "t"\nitems = ["x", "y", "z"]\n'
     'mapper = { name = "m" }\nreducer = { name = "r", metadata = { answer = "sum" } }\n',
     lambda r: len(r["map_outputs"]) == 3 and r["reduced_answer"] == "sum"),
    ("vote", 'pattern = "vote"\ntask = "t"\n' + agent("a", "7") + agent("b", "7")
     + agent("c", "8"),
     lambda r: r["winner"] == "7" and abs(r["agreement_ratio"] - 2 / 3) < 1e-9),
    ("fleet", 'pattern = "fleet"\nmissions = [{ agent = "a", task = "m1" }, '
     '{ agent = "b", task = "m2" }]\n' + agent("a") + agent("b"),
     lambda r: r["succeeded"] == 2 and [o["answer"] for o in r["outputs"]] == ["a: m1",
                                                                             "b: m2"]),
    ("tournament", 'pattern = "tournament"\ntask = "t"\njudge = { name = "j", '
     'metadata = { answer = "B" } }\n' + agent("a") + agent("b"),
     lambda r: r["winner_name"] == "b" and r["ranking"] == ["b", "a"]),
    ("adversarial_review", 'pattern = "adversarial_review"\ntask = "the work"\n'
     f'criteria = ["short"]\nreviewer = {{ name = "rev", metadata = {{ answer = {FINDINGS!r} '
     '} }\n', lambda r: r["passed"] is True and r["blocker_count"] == 0),
]


@pytest.mark.parametrize(("pattern", "body", "check"), PATTERNS, ids=[p[0] for p in PATTERNS])
def test_each_pattern_runs_from_a_spec_and_prints_its_result_json(
        folder: Path, capsys: pytest.CaptureFixture[str], pattern: str, body: str,
        check: Any) -> None:
    code, out, err = carmp(capsys, "run", write(folder, HEAD + body), "--json")
    assert (code, err) == (0, "")
    assert check(orjson.loads(out))


@pytest.mark.parametrize("start_method", START_METHODS)
def test_the_example_swarm_prints_a_table_under_every_start_method(
        folder: Path, capsys: pytest.CaptureFixture[str], start_method: str) -> None:
    text = f'start_method = "{start_method}"\n' + (EXAMPLES / "swarm.toml").read_text()
    code, out, err = carmp(capsys, "run", write(folder, text), "--workers", "1")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("swarm on 1 workers: 3 agents started")
    assert lines[1].split() == ["AGENT", "OK", "TURNS", "TOOLS", "MS", "ANSWER", "/", "ERROR"]
    assert [line.split()[:2] for line in lines[2:5]] == [["alpha", "yes"], ["beta", "yes"],
                                                        ["gamma", "yes"]]
    assert lines[5].startswith("final_summary: [alpha]: 7")


def test_out_writes_the_result_json(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = carmp(capsys, "run", write(folder, HEAD + PATTERNS[4][1]), "--out",
                         folder / "vote.json")
    assert code == 0 and "winner: 7" in out.splitlines()
    assert orjson.loads((folder / "vote.json").read_bytes())["winner"] == "7"


def test_a_bad_spec_exits_2_naming_the_field(folder: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(folder, HEAD + 'pattern = "vote"\ntask = "t"\n' + agent("a") + agent("b")
                 + agent("c") + 'max_turns = "ten"\n')
    code, out, err = carmp(capsys, "run", spec)
    assert (code, out) == (2, "")
    assert err == f"carmp run: {spec}: agents[2].max_turns: expected an int >= 0, got 'ten'\n"


def test_a_missing_runner_exits_2(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = carmp(capsys, "run", write(folder, HEAD.replace(":run", ":gone")
                                              + PATTERNS[0][1]))
    assert code == 2 and "runner: module 'echo_runner' has no function 'gone'" in err


def test_a_pattern_that_fails_exits_1(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(folder, HEAD + 'pattern = "swarm"\ntask = "t"\n' + agent("a", fail=True))
    code, out, err = carmp(capsys, "run", spec)
    assert (code, out) == (1, "")
    assert err.startswith("carmp run: no agents produced output")


def test_out_in_a_missing_folder_exits_2_before_running(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = carmp(capsys, "run", write(folder, HEAD + PATTERNS[0][1]), "--out",
                           folder / "none" / "r.json")
    assert (code, out) == (2, "") and "no such folder" in err


def test_bad_workers_is_a_usage_error(folder: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(folder / "spec.toml"), "--workers", "0"])
    assert exited.value.code == 2


# ---- sweep ----------------------------------------------------------------------------------

SWEEP = HEAD + '[sweep]\ntasks = ["t1", "t2"]\nseeds = [0, 1]\n' + agent("good", "ok") \
    + agent("bad", fail=True)


def rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines()]


def test_a_sweep_writes_one_row_per_cell_and_a_leaderboard(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = folder / "results.jsonl"
    code, out, err = carmp(capsys, "run", write(folder, SWEEP), "--out", out_file)
    assert (code, err) == (0, "")  # no progress bar when stderr is not a terminal
    written = rows(out_file)
    assert sorted((r["agent"], r["task"], r["seed"]) for r in written) == sorted(
        (a, t, s) for a in ("good", "bad") for t in ("t1", "t2") for s in (0, 1))
    assert {r["succeeded"] for r in written if r["agent"] == "good"} == {True}
    assert {r["error"] for r in written if r["agent"] == "bad"} == {
        "told to fail (metadata.fail)"}
    lines = out.splitlines()
    assert lines[0] == f"sweep: 8 cells (2 agents x 2 tasks x 2 seeds): 8 ran, 0 already in " \
                       f"{out_file}"
    assert [line.split()[:3] for line in lines[1:]] == [["AGENT", "CELLS", "SUCCEEDED"],
                                                       ["good", "4", "4"], ["bad", "4", "0"]]


def test_a_rerun_skips_the_cells_already_written(folder: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec, out_file = write(folder, SWEEP), folder / "results.jsonl"
    assert carmp(capsys, "run", spec, "--out", out_file)[0] == 0
    kept = out_file.read_text().splitlines(keepends=True)[:3]
    out_file.write_text("".join(kept))  # as if the first run stopped after three cells
    code, out, _ = carmp(capsys, "run", spec, "--out", out_file, "--json")
    summary = orjson.loads(out)
    assert code == 0 and (summary["ran"], summary["skipped"], summary["not_run"]) == (5, 3, 0)
    assert out_file.read_text().splitlines(keepends=True)[:3] == kept
    assert len({(r["agent"], r["task"], r["seed"]) for r in rows(out_file)}) == 8 == len(
        rows(out_file))
    assert summary["leaderboard"][0]["agent"] == "good"
    assert (summary["leaderboard"][0]["cells"], summary["leaderboard"][0]["succeeded"]) == (4, 4)


def test_a_csv_sweep_resumes_from_its_own_rows(folder: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec, out_file = write(folder, SWEEP), folder / "results.csv"
    assert carmp(capsys, "run", spec, "--out", out_file)[0] == 0
    lines = out_file.read_text().splitlines()
    assert lines[0].startswith("agent,task,seed,succeeded,") and len(lines) == 9
    code, out, _ = carmp(capsys, "run", spec, "--out", out_file, "--json")
    summary = orjson.loads(out)
    assert code == 0 and (summary["ran"], summary["skipped"]) == (0, 8)
    assert out_file.read_text().splitlines() == lines
    board = {entry["agent"]: entry for entry in summary["leaderboard"]}
    assert (board["good"]["succeeded"], board["bad"]["succeeded"]) == (4, 0)


def test_the_budget_stops_a_sweep_and_a_bigger_one_finishes_it(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = folder / "results.jsonl"
    small = write(folder, SWEEP.replace("workers = 2\n", "workers = 2\n[budget]\n"
                                        "max_agents = 3\n"))
    code, out, err = carmp(capsys, "run", small, "--out", out_file, "--json")
    assert code == 1 and "the budget stopped the sweep with 5 cells not run" in err
    assert orjson.loads(out)["not_run"] == 5 and len(rows(out_file)) == 3
    code, out, _ = carmp(capsys, "run", write(folder, SWEEP), "--out", out_file, "--json")
    assert code == 0 and (orjson.loads(out)["ran"], len(rows(out_file))) == (5, 8)


def test_a_corrupt_results_file_exits_2_and_is_left_alone(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = folder / "results.jsonl"
    out_file.write_text('{"agent": "good", "task": "t1", "seed": 0}\nnot json\n')
    before = out_file.read_bytes()
    code, _, err = carmp(capsys, "run", write(folder, SWEEP), "--out", out_file)
    assert code == 2 and f"{out_file}:1: not a sweep result row" in err
    assert out_file.read_bytes() == before


def test_a_sweep_needs_a_jsonl_or_csv_file(folder: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(folder, SWEEP)
    assert carmp(capsys, "run", spec)[0:1] == (2,)
    code, _, err = carmp(capsys, "run", spec, "--out", folder / "results.txt")
    assert code == 2 and "writes .jsonl or .csv results" in err


def test_sweep_flag_benchmarks_a_pattern_spec_on_its_task(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = folder / "results.jsonl"
    code, _, _ = carmp(capsys, "run", write(folder, HEAD + PATTERNS[4][1]), "--sweep",
                       "--out", out_file)
    assert code == 0
    assert sorted((r["agent"], r["task"], r["seed"], r["answer"]) for r in rows(out_file)) == [
        ("a", "t", 0, "7"), ("b", "t", 0, "7"), ("c", "t", 0, "8")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = Progress(2, stream)
        progress.step()
        progress.step()
        progress.close()
    assert terminal.getvalue().endswith(f"\r[{'#' * 30}] 2/2 cells\n")
    assert pipe.getvalue() == ""


# ---- end to end -----------------------------------------------------------------------------


def test_python_m_carmp_runs_the_example_and_refuses_a_bad_spec(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "carmp", "run", str(EXAMPLES / "swarm.toml"),
                           "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["task"] == "Name a prime number."
    bad = write(tmp_path, "pattern = 1\n")
    done = subprocess.run([sys.executable, "-m", "carmp", "run", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"carmp run: {bad}: pattern: expected a string, got 1\n"
