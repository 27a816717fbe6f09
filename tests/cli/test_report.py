"""`carmp report`: the HTML page of a real farm's journal (workers, agents, failures, event
counts, budget, results), its escaping of hostile journals, bad input, and how headless
Chromium renders it."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from carmp.agents.types import AgentOutput, AgentSpec
from carmp.cli.main import main
from carmp.patterns import Swarm
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.shared.event import Event
from carmp.shared.journal import read_journal
from tests.conftest import START_METHODS

HOSTILE = "<script>alert(1)</script>"
AGENTS = ("alpha", "beta", "broken", HOSTILE)
CHROMIUM_WAIT = 120  # seconds; only reached when the browser hangs


def tiny_runner(spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
    """Answers at once; "broken" fails."""
    if spec.name == "broken":
        raise RuntimeError("broken on purpose")
    return AgentOutput(name=spec.name, answer=f"{spec.name} did {task}", turns=1, tool_calls=0,
                       duration_ms=0.1, tokens=TokenAccounting(input_tokens=10, output_tokens=5))


def run_farm(folder: Path, start_method: str) -> tuple[Path, Path]:
    """A journal of a Swarm of AGENTS that reserves its spend, and its result JSON."""
    journal, results = folder / "run.jsonl", folder / "results.json"
    with Farm(workers=2, start_method=start_method, log_path=journal, task_events=True,
              budget=BudgetLimits(max_total_tokens=10_000)) as farm:
        result = Swarm([AgentSpec(name=name, system_prompt="") for name in AGENTS],
                       reserve=TokenAccounting(input_tokens=20, output_tokens=20)
                       ).run("the task", tiny_runner, farm)
    results.write_text(result.to_json())
    return journal, results


@pytest.fixture(scope="module")
def farm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return run_farm(tmp_path_factory.mktemp("farm"), "forkserver")


def report(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def write_journal(path: Path, records: list[tuple[str, int, dict[str, Any]]],
                  run_id: str = "r1") -> Path:
    """A journal of (kind, pid, data) events, one millisecond apart."""
    lines = [orjson.dumps(Event(seq, 1_700_000_000_000_000_000 + seq * 1_000_000, pid, kind,
                                None, None, run_id, None, data).to_dict())
             for seq, (kind, pid, data) in enumerate(records)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("start_method", START_METHODS)
def test_the_page_shows_every_worker_agent_failure_and_event_count(
        start_method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal, results = run_farm(tmp_path, start_method)
    page_path = tmp_path / "run.html"
    code, out, _ = report(capsys, journal, "-o", page_path, "--results", results)
    assert code == 0 and str(page_path) in out
    page = page_path.read_text()
    events, _ = read_journal(journal)
    workers = {event.data["pid"] for event in events if event.kind == "worker_started"}
    assert workers and all(f"worker pid {pid}</text>" in page for pid in workers)
    for name in ("alpha", "beta", "broken", "&lt;script&gt;alert(1)&lt;/script&gt;"):
        assert f"<tr><td>{name}</td>" in page  # a row of the agent runs table
    assert "<td>FAILED</td><td>RuntimeError: broken on purpose</td>" in page
    assert '<g class="agent failed">' in page  # its bar is marked on the timeline
    for kind, count in Counter(event.kind for event in events).items():
        assert f'<tr><td>{kind}</td><td class="num">{count}</td></tr>' in page
    spent = sum(event.data["used"][2] for event in events if event.kind == "budget_refunded")
    assert spent == 45 and "(45 in all)" in page and '<polyline class="spent"' in page
    assert '<section id="results"><h2>Pattern results</h2>' in page
    assert "alpha did the task" in page and "No results given" not in page
    assert "the results report 45 tokens spent" in page


def test_the_page_loads_nothing_from_the_network(
        farm_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal, results = farm_run
    assert report(capsys, journal, "-o", tmp_path / "run.html", "--results", results)[0] == 0
    page = (tmp_path / "run.html").read_text().lower()
    for reference in ("http://", "https://", "<script src", "<link", "@import", "url("):
        assert reference not in page
    assert page.count("<script") == 1 and "default-src 'none'" in page


def test_every_journal_string_is_escaped(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    evil = '"><img src=x onerror=alert(1)>'
    journal = write_journal(tmp_path / "evil.jsonl", [
        ("worker_started", 1, {"pid": 7}),
        ("agent_started", 7, {"agent": HOSTILE}),
        ("agent_finished", 7, {"agent": HOSTILE, "succeeded": False, "error": evil}),
        (evil, 7, {}),
        ("budget_denied", 1, {"reason": HOSTILE}),
    ], run_id=evil)
    results = tmp_path / "results.json"
    results.write_bytes(orjson.dumps({"outputs": [{"name": HOSTILE, "answer": evil, "turns": 1}],
                                      "winner": evil}))
    code, _, _ = report(capsys, journal, "-o", tmp_path / "evil.html", "--results", results)
    page = (tmp_path / "evil.html").read_text()
    assert code == 0 and "<img" not in page and page.count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_crashes_unfinished_agents_and_denials_are_marked(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    journal = write_journal(tmp_path / "crash.jsonl", [
        ("worker_started", 1, {"pid": 7}),
        ("worker_started", 1, {"pid": 8}),
        ("agent_started", 7, {"agent": "doomed"}),
        ("agent_started", 8, {"agent": "slow"}),
        ("worker_crashed", 1, {"pid": 7, "exitcode": -9, "reason": None}),
        ("task_failed", 1, {"pid": 8, "task_id": 3, "error": "TaskTimeout", "message": "late"}),
        ("budget_denied", 1, {"gate": "begin_agent", "reason": "max_agents"}),
    ])
    code, _, _ = report(capsys, journal, "-o", tmp_path / "crash.html")
    page = (tmp_path / "crash.html").read_text()
    assert code == 0 and "1 worker crashes" in page and "✕ crashed" in page
    assert "<tr><td>doomed</td><td class=\"num\">7</td>" in page
    assert "worker crashed, exit code -9" in page
    assert "<tr><td>slow</td>" in page and "<td>unfinished</td>" in page
    assert "TaskTimeout: late" in page  # the task's failure, on the task's bar
    assert "denied (1)" in page and "<title>budget denied: max_agents</title>" in page


def test_without_results_the_page_says_so(farm_run: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    journal, _ = farm_run
    assert report(capsys, journal, "-o", tmp_path / "run.html")[0] == 0
    assert "No results given" in (tmp_path / "run.html").read_text()


def test_the_output_defaults_to_the_journal_with_html(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    journal = write_journal(tmp_path / "run.jsonl", [("note", 1, {})])
    assert report(capsys, journal)[0] == 0
    assert "<td>note</td>" in (tmp_path / "run.html").read_text()


def test_bad_input_is_refused_and_writes_nothing(farm_run: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    journal, _ = farm_run
    page = tmp_path / "out.html"
    code, _, err = report(capsys, tmp_path / "missing.jsonl", "-o", page)
    assert code == 2 and "no run" in err
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00 not an event\n")
    code, _, err = report(capsys, garbage, "-o", page)
    assert code == 1 and "no readable event" in err
    not_json = tmp_path / "results.json"
    not_json.write_text("{oops")
    code, _, err = report(capsys, journal, "-o", page, "--results", not_json)
    assert code == 2 and "is not JSON" in err and str(not_json) in err
    code, _, err = report(capsys, journal, "-o", page, "--results", tmp_path / "none.json")
    assert code == 2 and "cannot read the results file" in err
    code, _, err = report(capsys, journal, "-o", tmp_path / "no-such-dir" / "out.html")
    assert code == 2 and "cannot write the report" in err
    code, _, err = report(capsys, journal, "-o", journal)
    assert code == 2 and "would overwrite the journal" in err
    assert read_journal(journal)[0]  # still the journal
    assert not page.exists()


def test_the_command_runs_as_a_program(farm_run: tuple[Path, Path], tmp_path: Path) -> None:
    journal, results = farm_run
    done = subprocess.run([sys.executable, "-m", "carmp", "report", str(journal), "-o",
                           str(tmp_path / "run.html"), "--results", str(results)],
                          capture_output=True, text=True, timeout=CHROMIUM_WAIT)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (tmp_path / "run.html").stat().st_size > 1000


# ---- in a browser -------------------------------------------------------------------------------


def png_colours(path: Path) -> int:
    """How many distinct colours an 8-bit RGB or RGBA PNG holds (a blank page: one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, header = 8, b"", b""
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        at += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), "expected 8-bit RGB or RGBA"
    size = 3 if colour_type == 2 else 4
    stride, raw = width * size, zlib.decompress(idat)
    previous, colours = bytearray(stride), set[bytes]()
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:
                                                            (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up),
                           (abs(guess - corner), 2, corner))
                line[i] = (line[i] + near[2]) & 255
        colours.update(bytes(line[i:i + size]) for i in range(0, stride, size))
        previous = line
    return len(colours)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if "CI" in os.environ:
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return found


def test_chromium_renders_the_page_without_script_errors(
        farm_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    browser = chromium()
    journal, results = farm_run
    page = tmp_path / "run.html"
    assert report(capsys, journal, "-o", page, "--results", results)[0] == 0
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=CHROMIUM_WAIT, check=True)
    assert png_colours(shot) > 20  # text, bars and lines in colour, not a blank page
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=CHROMIUM_WAIT, check=True).stdout
    assert 'data-ready="yes"' in dom  # the inline script ran to its end
    title = re.search(r"<title>(.*?)</title>", dom)
    assert title is not None and title.group(1).startswith("carmp report:"), title
