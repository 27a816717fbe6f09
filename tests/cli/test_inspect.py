"""`carmp ps / log / state / budget / cleanup` against a real farm and journal files."""

from __future__ import annotations

import os
import time
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from carmp.cli.main import main
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.shared.eventlog import EventLog
from carmp.shared.segment import segment_name
from carmp.shared.state import StateStore
from tests.conftest import START_METHODS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def farm() -> Iterator[Farm]:
    with Farm(workers=1, budget=BudgetLimits(max_total_tokens=1000)) as f:
        f.submit(os.getpid).result(timeout=60)  # the worker is up and has its slot
        yield f


def carmp(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def append_notes(log: EventLog) -> None:
    for i, agent in enumerate(["alice", "bob", "alice", "carol"]):
        log.append("note", data={"agent": agent, "i": i})
    log.append("other", data={"agent": "alice"})


def make_event_journal(path: Path) -> None:
    with EventLog(journal=path) as log:
        append_notes(log)


# ---- ps and cleanup ---------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_ps_lists_a_live_farm_with_its_supervisor_workers_and_segments(
        start_method: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Farm(workers=1, start_method=start_method) as farm:
        farm.submit(os.getpid).result(timeout=60)
        check_ps_shows(farm, capsys)


def check_ps_shows(farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    deadline = time.monotonic() + 60
    while True:  # a worker counts its task done just after it sent the result
        code, out, _ = carmp(capsys, "ps", "--json")
        assert code == 0
        run = next(r for r in orjson.loads(out) if r["run_id"] == farm.run_id)
        [worker] = run["workers"]
        if worker["tasks_finished"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert run["supervisor_pids"] == [os.getpid()] and run["alive"]
    assert worker["alive"] and worker["pid"] > 0 and worker["tasks_finished"] == 1
    kinds = {segment["kind"] for segment in run["segments"]}
    assert {"state", "events", "budget", "dispatch", "policy"} <= kinds
    assert all(segment["size"] > 0 for segment in run["segments"])

    code, out, _ = carmp(capsys, "ps")
    line = next(line for line in out.splitlines() if line.startswith(farm.run_id))
    assert f"{os.getpid()}" in line and "alive" in line and "1/1 alive" in line and "events" in line


LEAVE_A_SEGMENT_BEHIND = """
import os, sys
from carmp.shared.eventlog import EventLog
log = EventLog(capacity=4096, max_event_size=1024, run_id=sys.argv[1])
os._exit(0)  # dies without closing what it created
"""


def skip_if_swept_elsewhere(name: str) -> None:
    """Every Farm() sweeps dead runs, so a test running beside this one may remove ours."""
    if not os.path.exists(f"/dev/shm{name}"):
        pytest.skip("a test running beside this one swept the dead run first")


def test_ps_and_cleanup_tell_dead_runs_from_live_ones(
        farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    dead_run = secrets.token_hex(6)
    subprocess.run([sys.executable, "-c", LEAVE_A_SEGMENT_BEHIND, dead_run], check=True, cwd=REPO)
    name = segment_name(dead_run, "events")
    skip_if_swept_elsewhere(name)
    _, out, _ = carmp(capsys, "ps", "--json")
    runs = {run["run_id"]: run for run in orjson.loads(out)}
    skip_if_swept_elsewhere(name)
    assert not runs[dead_run]["alive"] and runs[dead_run]["workers"] is None
    assert runs[farm.run_id]["alive"]

    code, out, _ = carmp(capsys, "cleanup", "--dry-run", "--json")
    skip_if_swept_elsewhere(name)
    report = orjson.loads(out)
    assert code == 0 and report["dry_run"] and name in [s["name"] for s in report["segments"]]
    assert farm.infra.log.name not in [s["name"] for s in report["segments"]]

    code, out, _ = carmp(capsys, "cleanup")
    if f"removed {name}" not in out:
        skip_if_swept_elsewhere(name)
    assert code == 0 and f"removed {name}" in out
    assert not os.path.exists(f"/dev/shm{name}")
    assert os.path.exists(f"/dev/shm{farm.infra.log.name}")


# ---- log -------------------------------------------------------------------------------------


def test_log_tail_dump_and_filters_on_a_live_run(
        farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    append_notes(farm.infra.log)
    prefix = farm.run_id[:6]
    code, out, _ = carmp(capsys, "log", "tail", prefix, "--kind", "note", "-n", "2", "--json")
    assert code == 0
    assert [e["data"]["i"] for e in json_lines(out)] == [2, 3]

    _, out, _ = carmp(capsys, "log", "dump", prefix, "--agent", "alice", "--json")
    assert [(e["kind"], e["data"].get("i")) for e in json_lines(out)] == [
        ("note", 0), ("note", 2), ("other", None)]

    _, out, _ = carmp(capsys, "log", "dump", farm.run_id, "--kind", "note", "--agent", "bob")
    [line] = out.splitlines()
    assert "note" in line and '"agent":"bob"' in line

    _, out, _ = carmp(capsys, "log", "tail", prefix, "-n", "0")
    assert out == ""


def test_log_stats_counts_by_kind(farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    append_notes(farm.infra.log)
    code, out, _ = carmp(capsys, "log", "stats", farm.run_id, "--json")
    stats = orjson.loads(out)
    assert code == 0 and stats["by_kind"]["note"] == 4 and stats["by_kind"]["other"] == 1
    assert stats["events"] == sum(stats["by_kind"].values())
    _, out, _ = carmp(capsys, "log", "stats", farm.run_id, "--agent", "alice")
    assert "note" in out and "other" in out and "3 events over" in out


def test_log_reads_a_journal_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "events.jsonl"
    make_event_journal(journal)
    code, out, _ = carmp(capsys, "log", "dump", str(journal), "--json")
    assert code == 0 and [e["kind"] for e in json_lines(out)] == ["note"] * 4 + ["other"]
    _, out, _ = carmp(capsys, "log", "tail", str(journal), "-n", "1", "--kind", "note")
    assert '"i":3' in out and len(out.splitlines()) == 1
    _, out, _ = carmp(capsys, "log", "stats", str(journal), "--json")
    assert orjson.loads(out)["by_kind"] == {"note": 4, "other": 1}


def test_a_journal_with_a_bad_line_is_read_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "events.jsonl"
    make_event_journal(journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + b"{not json\n" + b"".join(lines[3:]))
    code, out, err = carmp(capsys, "log", "dump", str(journal), "--json")
    assert code == 0 and len(json_lines(out)) == 4
    assert "skipped 1 bad line" in err and "line 3" in err


def test_a_corrupt_or_missing_journal_fails_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\x01 not an event\n{}\n")
    code, out, err = carmp(capsys, "log", "dump", str(garbage))
    assert code == 1 and out == "" and "no readable event" in err and str(garbage) in err
    assert garbage.read_bytes() == b"\x00\x01 not an event\n{}\n"  # left as it was

    code, _, err = carmp(capsys, "log", "tail", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no run" in err and "journal file" in err


def test_an_unknown_or_ambiguous_run_id_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    prefix = secrets.token_hex(4)
    with EventLog(run_id=prefix + "a1"), EventLog(run_id=prefix + "b2") as second:
        second.append("only_in_b")
        code, _, err = carmp(capsys, "log", "dump", prefix)
        assert code == 2 and "matches 2 runs" in err and prefix + "a1" in err
        code, out, _ = carmp(capsys, "log", "dump", prefix + "b")
        assert code == 0 and "only_in_b" in out
        code, _, err = carmp(capsys, "state", "dump", prefix + "b")
        assert code == 2 and "no state segment" in err
    code, _, err = carmp(capsys, "budget", prefix)
    assert code == 2 and "no run" in err and "carmp ps" in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["log", "tail", "x", "-n", "-1"], ["log", "explode", "x"], ["state", "get"],
                 ["log", "follow", "x", "-n", "many"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2, argv
    capsys.readouterr()


def test_follow_refuses_a_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "events.jsonl"
    make_event_journal(journal)
    code, _, err = carmp(capsys, "log", "follow", str(journal))
    assert code == 2 and "carmp log dump" in err


def test_a_reader_that_leaves_early_ends_the_dump_quietly(tmp_path: Path) -> None:
    journal = tmp_path / "events.jsonl"
    with EventLog(journal=journal) as log:
        for i in range(3000):  # more than a pipe buffer holds
            log.append("note", data={"i": i, "padding": "x" * 40})
    dump = subprocess.Popen([sys.executable, "-m", "carmp", "log", "dump", str(journal)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert dump.stdout is not None and dump.stderr is not None
    assert b"note" in dump.stdout.readline()
    dump.stdout.close()
    assert dump.wait(timeout=60) == 0
    assert dump.stderr.read() == b""
    dump.stderr.close()


def test_follow_streams_new_events_in_a_subprocess(farm: Farm) -> None:
    log = farm.infra.log
    log.append("followed", data={"i": 0})
    follower = subprocess.Popen(
        [sys.executable, "-m", "carmp", "log", "follow", farm.run_id, "--kind", "followed",
         "--json"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert follower.stdout is not None
        assert orjson.loads(follower.stdout.readline())["data"] == {"i": 0}  # attached now
        for i in (1, 2):
            log.append("followed", data={"i": i})
            log.append("ignored", data={"i": i})
        got = [orjson.loads(follower.stdout.readline())["data"]["i"] for _ in range(2)]
        assert got == [1, 2]
    finally:
        follower.terminate()
        follower.wait(timeout=60)
        if follower.stdout is not None:
            follower.stdout.close()


# ---- state and budget ----------------------------------------------------------------------------


def test_state_dump_and_get_on_a_live_run(farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    farm.infra.state.set("solved", {"puzzle": 7, "by": ["alice"]}, "a1")
    farm.infra.state.set("count", 3, "a2")
    code, out, _ = carmp(capsys, "state", "dump", farm.run_id, "--json")
    assert code == 0 and orjson.loads(out) == {"solved": {"puzzle": 7, "by": ["alice"]}, "count": 3}
    _, out, _ = carmp(capsys, "state", "dump", farm.run_id)
    assert out.splitlines() == ['count = 3', 'solved = {"puzzle":7,"by":["alice"]}']
    code, out, _ = carmp(capsys, "state", "get", "solved", farm.run_id)
    assert code == 0 and orjson.loads(out) == {"puzzle": 7, "by": ["alice"]}
    code, out, err = carmp(capsys, "state", "get", "missing", farm.run_id)
    assert code == 1 and out == "" and "no key 'missing'" in err


def test_state_reads_a_journal_without_changing_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state.jsonl"
    with StateStore.durable(path, max_keys=64, capacity_bytes=1 << 16) as store:
        store.set("a", 1, "x")
        store.set("b", [1, 2], "x")
        store.delete("a", "y")
        store.set("c", "three", "z")
    before = path.read_bytes() + b"not a record\n"
    path.write_bytes(before)
    code, out, err = carmp(capsys, "state", "dump", str(path), "--json")
    assert code == 0 and orjson.loads(out) == {"b": [1, 2], "c": "three"}
    assert "1 bad line(s) skipped" in err
    code, out, _ = carmp(capsys, "state", "get", "c", str(path))
    assert code == 0 and out == '"three"\n'
    code, _, err = carmp(capsys, "state", "get", "a", str(path))
    assert code == 1 and "no key 'a'" in err
    assert path.read_bytes() == before


def test_state_refuses_a_file_that_is_no_state_journal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    make_event_journal(events)
    code, out, err = carmp(capsys, "state", "dump", str(events))
    assert code == 1 and out == "" and "no readable state record" in err


def test_budget_shows_spend_limits_and_statistics(
        farm: Farm, capsys: pytest.CaptureFixture[str]) -> None:
    farm.infra.budget.record_output(TokenAccounting(input_tokens=30, output_tokens=12))
    lease = farm.infra.budget.reserve(TokenAccounting(input_tokens=5))
    code, out, _ = carmp(capsys, "budget", farm.run_id, "--json")
    report = orjson.loads(out)
    assert code == 0
    assert report["snapshot"]["total_tokens"] == 42
    assert report["snapshot"]["limits"] == {"max_total_tokens": 1000}
    assert report["statistics"]["leases_held"] == 1
    assert report["statistics"]["reserved"]["input_tokens"] == 5
    _, out, _ = carmp(capsys, "budget", farm.run_id[:8])
    assert any(line.split()[:3] == ["total_tokens", "42", "1000"] for line in out.splitlines())
    farm.infra.budget.release(lease)
