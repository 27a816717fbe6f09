"""`carmp top` against a real farm: driven in a pseudo-terminal, piped with --once, and its
sampling in-process."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import carmp
from carmp.agents.patterns.fleet import Fleet, FleetResult
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.cli.main import main
from carmp.cli.top import FarmWatch, _finished_since
from carmp.pool.farm import Farm
from carmp.runtime.runtime import Runtime
from carmp.shared.budget import BudgetLimits, TokenAccounting
from carmp.shared.mailbox import Mailbox
from tests.conftest import START_METHODS

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # seconds a test waits for the screen before it fails
AGENTS = ("scout", "miner")
RELEASE = "release"
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

# The child becomes a session leader with the pseudo-terminal as its controlling
# terminal, so Ctrl-C written to the master reaches it as SIGINT, as in a real terminal.
IN_A_TERMINAL = """
import fcntl, os, sys, termios
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
os.execv(sys.executable, [sys.executable, "-m", "carmp", *sys.argv[1:]])
"""


def wait_for_release(spec: AgentSpec, task: str, runtime: Runtime,
                     mailbox: Mailbox) -> AgentOutput:
    """An agent that holds its worker until the test sets the release key."""
    infra = carmp.current_infra()
    assert infra is not None
    deadline = time.monotonic() + DEADLINE
    while infra.state.get(RELEASE) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return AgentOutput(name=spec.name, answer=task, turns=1, tool_calls=0, duration_ms=0.0)


class BusyFarm:
    """A farm whose two workers each run a held agent, with 400 of 1000 tokens spent."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        farm.infra.budget.record_output(TokenAccounting(input_tokens=300, output_tokens=100))
        self.results: list[FleetResult] = []
        missions = [(AgentSpec(name=name, system_prompt=f"you are {name}"), f"{name}'s task")
                    for name in AGENTS]
        self.thread = threading.Thread(
            target=lambda: self.results.append(Fleet(missions).run(wait_for_release, farm)))
        self.thread.start()

    @property
    def worker_pids(self) -> list[int]:
        return [event.data["pid"] for event in self.farm.infra.log.filter("worker_started")]

    def wait_until_busy(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(self.farm.infra.log.filter("agent_started")) < len(AGENTS):
            assert time.monotonic() < deadline, "the agents never started"
            time.sleep(0.01)

    def release(self) -> None:
        self.farm.infra.state.set(RELEASE, True, "test-release")
        self.thread.join(timeout=DEADLINE)
        assert [result.succeeded for result in self.results] == [len(AGENTS)]


def busy_farm(start_method: str) -> Iterator[BusyFarm]:
    with Farm(workers=2, start_method=start_method,
              budget=BudgetLimits(max_total_tokens=1000, max_agents=10)) as farm:
        busy = BusyFarm(farm)
        try:
            yield busy
        finally:
            busy.release()


@pytest.fixture(params=START_METHODS)
def any_busy_farm(request: pytest.FixtureRequest) -> Iterator[BusyFarm]:
    yield from busy_farm(request.param)


@pytest.fixture
def busy() -> Iterator[BusyFarm]:
    yield from busy_farm("forkserver")


class Terminal:
    """`carmp top` running in a pseudo-terminal of 120 x 50; the test reads its screen."""

    def __init__(self, *argv: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}
        env.pop("NO_COLOR", None)
        self.process = subprocess.Popen(
            [sys.executable, "-c", IN_A_TERMINAL, "top", *argv], stdin=slave, stdout=slave,
            stderr=slave, env=env, cwd=REPO, close_fds=True)
        os.close(slave)
        self.master = master
        self.screen = b""

    def read_until(self, *patterns: str) -> str:
        """Everything shown so far, once every regex in `patterns` appears in it."""
        deadline = time.monotonic() + DEADLINE
        while not all(re.search(p, self.text()) for p in patterns):
            assert time.monotonic() < deadline, f"never showed {patterns}:\n{self.text()}"
            if not self._read(0.1):
                assert self.process.poll() is None, f"exited early:\n{self.text()}"
        return self.text()

    def press_ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def exit_code(self) -> int:
        """Wait for the command to end, reading what it still shows (a full terminal would
        stop it mid-write)."""
        deadline = time.monotonic() + DEADLINE
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"did not exit:\n{self.text()}"
            self._read(0.1)
        while self._read(0):
            pass
        return self.process.returncode

    def text(self) -> str:
        return ANSI.sub(b"", self.screen).decode(errors="replace")

    def _read(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.screen += chunk
        return bool(chunk)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def screen_shows(busy: BusyFarm) -> list[str]:
    """What a frame of the busy farm must show: each worker pid beside its agent, and the
    budget gauges against their limits."""
    pids = busy.worker_pids
    assert len(pids) == 2
    return [*(rf"\b{pid}\b\s+busy\s.*\b({'|'.join(AGENTS)})\b" for pid in pids),
            r"total tokens\s.*\b40%\s+400\s+1000\b", r"agents\s.*\b20%\s+2\s+10\b"]


def test_top_in_a_terminal_shows_the_farm_and_quits_on_ctrl_c(
        any_busy_farm: BusyFarm, terminals: list[Terminal]) -> None:
    terminal = Terminal(any_busy_farm.farm.run_id[:6], "--interval", "0.1")
    terminals.append(terminal)
    screen = terminal.read_until(*screen_shows(any_busy_farm), r"agent_started")
    assert f"run {any_busy_farm.farm.run_id}" in screen
    assert b"\x1b[" in terminal.screen  # drawn as a live view, not printed as plain text
    terminal.press_ctrl_c()
    assert terminal.exit_code() == 0
    assert "Traceback" not in terminal.text()


def test_top_ends_with_a_last_line_when_the_farm_goes_away(terminals: list[Terminal]) -> None:
    with Farm(workers=1) as farm:
        farm.submit(os.getpid).result(timeout=DEADLINE)
        terminal = Terminal(farm.run_id, "--interval", "0.1")
        terminals.append(terminal)
        terminal.read_until(r"workers")
    assert terminal.exit_code() == 0
    assert f"run {farm.run_id} ended: its segments are gone" in terminal.text()


def test_top_once_through_a_pipe_prints_one_plain_frame(busy: BusyFarm) -> None:
    busy.wait_until_busy()
    done = subprocess.run(
        [sys.executable, "-m", "carmp", "top", busy.farm.run_id, "--once", "--interval", "0.05"],
        capture_output=True, text=True, cwd=REPO, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout  # no colours or cursor moves in a pipe
    for pattern in screen_shows(busy):
        assert re.search(pattern, done.stdout), f"{pattern} not in:\n{done.stdout}"
    assert done.stdout.count("carmp top") == 1


def test_an_unknown_run_is_refused_with_a_clear_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "nosuchrun"]) == 2  # inspect's resolve_run: a bad RUN_ID is bad usage
    err = capsys.readouterr().err
    assert "no run 'nosuchrun' on this machine" in err and "carmp ps" in err


def test_a_bad_interval_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["top", "abc", "--interval", "0"])
    assert exit_.value.code == 2
    assert "expected seconds > 0" in capsys.readouterr().err


# ---- sampling, in-process ---------------------------------------------------------------------


def test_rates_count_what_happened_between_two_frames_until_the_farm_goes() -> None:
    with contextlib.ExitStack() as stack:
        with Farm(workers=1) as farm:
            farm.submit(os.getpid).result(timeout=DEADLINE)
            watch = FarmWatch(farm.run_id, stack)
            first = watch.sample()
            assert first.tasks_per_s is None and first.events_per_s is None
            farm.map(abs, range(5))
            farm.infra.log.append("note")
            # a worker counts a task finished just after its result is sent
            deadline = time.monotonic() + DEADLINE
            while [slot.finished for slot in watch.dispatch] != [6]:
                assert time.monotonic() < deadline, "the worker never counted its tasks"
                time.sleep(0.001)
            second = watch.sample()
            assert second.tasks_per_s is not None and second.tasks_per_s > 0
            assert second.events_per_s is not None and second.events_per_s > 0
            assert [worker.tasks_finished for worker in second.workers] == [6]
            assert second.recent[-1].kind == "note"
            assert watch.gone() is None
        assert watch.gone() == f"run {farm.run_id} ended: its segments are gone"


def test_a_worker_shows_the_agent_it_runs_now_and_its_sub_agents() -> None:
    with contextlib.ExitStack() as stack, Farm(workers=1) as farm:
        pid = farm.submit(os.getpid).result(timeout=DEADLINE)
        watch = FarmWatch(farm.run_id, stack)
        log = farm.infra.log

        def agent_of_the_worker() -> str | None:
            [worker] = watch.sample().workers
            assert worker.pid == pid
            return worker.agent

        log.append("agent_started", data={"agent": "planner", "pid": pid})
        log.append("agent_started", data={"agent": "helper", "pid": pid})
        assert agent_of_the_worker() == "planner > helper"
        log.append("agent_finished", data={"agent": "helper", "pid": pid})
        assert agent_of_the_worker() == "planner"
        log.append("agent_finished", data={"agent": "planner", "pid": pid})
        assert agent_of_the_worker() is None


def test_a_respawned_worker_counts_its_tasks_from_zero() -> None:
    assert _finished_since((1, 7), (1, 9)) == 2
    assert _finished_since((1, 7), (2, 3)) == 3
    assert _finished_since(None, (1, 4)) == 4
