"""Running agents: each one a farm task, in a worker process, against the shared world.

A pattern runs in the caller's process and starts every agent through an AgentLauncher.
The launcher gates the spawn on the coordination budget (CAR: `begin_agent` right before
each spawn) and submits the agent to the farm. In the worker, `run_agent` builds the
agent's Runtime from the attached SharedInfra (an isolated one when the pattern asks:
its writes land in an overlay that travels home as an OverlayDelta, for the pattern to
merge if the agent succeeded), calls the runner (a plain function or `async def`), and
records the output's spend in the shared budget before the task returns, so the pattern
sees the spend as soon as it sees the output (unless the launcher reserved the spend
ahead: see carmp/agents/budgeting.py, which can also stop agents when a cap is crossed).
Nothing is lost: a runner that raises or returns something else becomes a failed
AgentOutput carrying the error, and so does a worker that dies under an agent, or an
agent past its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from carmp.agents.budgeting import Spending
from carmp.agents.types import AgentOutput, AgentSpec, budget_skipped_output
from carmp.errors import BudgetError, CarmpError
from carmp.runtime.context import AgentContext, OverlayDelta
from carmp.shared.mailbox import Mailbox

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.runtime import Runtime
    from carmp.shared.budget import TokenAccounting
    from carmp.runtime.infra import SharedInfra

Runner = Callable[[AgentSpec, str, "Runtime", Mailbox],
                  Union[AgentOutput, Awaitable[AgentOutput]]]
"""CAR's AgentRunner: decides what an agent does; must be picklable (cloudpickle)."""

Prepare = Callable[["Runtime", AgentSpec], None]
"""Called with each agent's fresh runtime before its runner: a pattern registers the
tools it provides (Delegator's `delegate`, SpawnSubtask's `spawn_subtask`) here."""


@dataclass(frozen=True, slots=True)
class AgentRun:
    """One agent's run as its pattern sees it: the output; for an isolated agent that
    succeeded, its overlay to merge; the worker process that ran it (None when it
    never ran: refused by the budget, or lost with its worker); and its window on the
    event log's clock: the seqs of its agent_started and agent_finished events (read_at
    and commit_at for the concurrency gate)."""

    output: AgentOutput
    overlay: OverlayDelta | None = None
    pid: int | None = None
    window: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output.to_dict(),
                "overlay": None if self.overlay is None else self.overlay.to_dict(),
                "pid": self.pid, "window": None if self.window is None else list(self.window)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentRun:
        overlay, window = data["overlay"], data.get("window")
        return cls(AgentOutput.from_dict(data["output"]),
                   None if overlay is None else OverlayDelta.from_dict(overlay), data["pid"],
                   None if window is None else (window[0], window[1]))


def failed_output(name: str, error: str, duration_ms: float = 0.0) -> AgentOutput:
    """The output of an agent that produced none: its error says why."""
    return AgentOutput(name=name, answer="", turns=0, tool_calls=0, duration_ms=duration_ms,
                       error=error)


def run_agent(runner: Runner, spec: AgentSpec, task: str, infra: SharedInfra,
              mailbox: Mailbox, *, isolated: bool = False,
              prepare: Prepare | None = None, record: bool = True) -> AgentRun:
    """Run one agent in this process: a worker, or a tool that spawns a sub-agent.
    `record=False` leaves its spend to the caller (who holds a reservation for it)."""
    context: AgentContext | None
    if isolated:
        runtime, context = infra.make_isolated_runtime(spec.name)
    else:
        runtime, context = infra.make_runtime(), None
    began = time.perf_counter()
    started = infra.log.append("agent_started", data={"agent": spec.name, "pid": os.getpid(),
                                                      "isolated": isolated})
    try:
        if prepare is not None:
            prepare(runtime, spec)
        with context.scope() if context is not None else contextlib.nullcontext():
            output = _call(runner, spec, task, runtime, mailbox)
    except Exception as exc:  # the agent failed; the pattern goes on
        output = failed_output(spec.name, f"{type(exc).__name__}: {exc}",
                               (time.perf_counter() - began) * 1e3)
    finally:
        runtime.close()
    if record:
        infra.record_output(output)
    finished = infra.log.append("agent_finished", data={
        "agent": spec.name, "pid": os.getpid(), "succeeded": output.succeeded(),
        "error": output.error, "duration_ms": round((time.perf_counter() - began) * 1e3, 3)})
    overlay = context.delta() if context is not None and output.succeeded() else None
    return AgentRun(output, overlay, os.getpid(), (started.seq, finished.seq))


def _call(runner: Runner, spec: AgentSpec, task: str, runtime: Runtime,
          mailbox: Mailbox) -> AgentOutput:
    result = runner(spec, task, runtime, mailbox)
    if inspect.isawaitable(result):
        result = _settle(result)
    if not isinstance(result, AgentOutput):
        raise TypeError(f"the runner returned {type(result).__name__}, not an AgentOutput; "
                        "return carmp.AgentOutput(name=spec.name, answer=..., ...)")
    return result


def _settle(awaitable: Awaitable[Any]) -> Any:
    """Await an async runner's result: on a fresh event loop here, or on a helper thread
    when this thread already runs a loop (an async tool that spawns a sub-agent)."""

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    box: dict[str, Any] = {}

    def settle() -> None:
        try:
            box["value"] = asyncio.run(wait())
        except BaseException as exc:
            box["error"] = exc

    helper = threading.Thread(target=settle, name="carmp-agent-loop")
    helper.start()
    helper.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _AgentTask:
    """The farm task that runs agents of one launcher: the farm ships it to each worker
    once, so the runner is pickled once per worker, not once per agent."""

    def __init__(self, runner: Runner, mailbox: Mailbox, isolated: bool,
                 prepare: Prepare | None, infra: SharedInfra | None) -> None:
        self.runner, self.mailbox, self.isolated, self.prepare = runner, mailbox, isolated, prepare
        self.infra = infra  # None: the farm's own world, already attached in the worker

    def __call__(self, spec: dict[str, Any], task: str, record: bool) -> dict[str, Any]:
        from carmp.pool.worker import current_infra

        infra = self.infra or current_infra()
        if infra is None:
            raise CarmpError("an agent task ran outside a farm worker; start agents with "
                             "an AgentLauncher on a Farm")
        return run_agent(self.runner, AgentSpec.from_dict(spec), task, infra, self.mailbox,
                         isolated=self.isolated, prepare=self.prepare, record=record).to_dict()


class AgentLauncher:
    """Starts the agents of one pattern run on a farm, one task per agent, and gives
    each back as a Future[AgentRun] that never fails: errors become failed outputs.

    Agents act on the farm's world, or on `infra` (another SharedInfra, say one sharing
    a budget with a second run: each worker attaches it once). One mailbox serves the
    run (`mailbox=` shares one across runs); `timeout` bounds each agent (its worker is
    replaced when it runs over). `reserve` and `cancel_on_exhaustion` are the budget
    modes of carmp/agents/budgeting.py."""

    def __init__(self, farm: Farm, runner: Runner, *, infra: SharedInfra | None = None,
                 isolated: bool = False, mailbox: Mailbox | None = None,
                 timeout: float | None = None, prepare: Prepare | None = None,
                 reserve: TokenAccounting | None = None,
                 cancel_on_exhaustion: bool = False) -> None:
        if not callable(runner):
            raise TypeError(f"runner must be callable as runner(spec, task, runtime, mailbox), "
                            f"got {type(runner).__name__}")
        self.farm = farm
        self.infra = farm.infra if infra is None else infra
        self.isolated = isolated
        self.timeout = timeout
        self.spending = Spending(self.infra, reserve=reserve,
                                 cancel_on_exhaustion=cancel_on_exhaustion)
        self._owns_mailbox = mailbox is None
        self.mailbox = farm.new_mailbox() if mailbox is None else mailbox
        self._task = _AgentTask(runner, self.mailbox, isolated, prepare,
                                None if self.infra is farm.infra else self.infra)

    def begin(self) -> BudgetError | None:
        """CAR's gate before a spawn: None when the budget lets one more agent start,
        else why it refused. (When reserving, the estimate is reserved first, for the
        agent the next submit() starts.)"""
        return self.spending.admit()

    def start(self, spec: AgentSpec, task: str) -> Future[AgentRun]:
        """Gate on the budget, then submit; a refused agent resolves at once to a
        budget-skipped output (`refused()` tells)."""
        refusal = self.begin()
        if refusal is not None:
            return self.skipped(spec, refusal)
        return self.submit(spec, task)

    def submit(self, spec: AgentSpec, task: str) -> Future[AgentRun]:
        """Run the agent without a budget gate (its caller gated it already)."""
        done: Future[AgentRun] = Future()
        lease = self.spending.take_lease()
        farm_future = self.farm.apply_async(self._task, (spec.to_dict(), task, lease is None),
                                            timeout=self.timeout)

        def settle(finished: Future[Any]) -> None:
            run = self._run_of(spec, finished)
            try:
                self.spending.finished(farm_future, lease, run)
            finally:  # the pattern gets its agent whatever the budget bookkeeping did
                done.set_result(run)

        self.spending.track(farm_future)
        farm_future.add_done_callback(settle)
        return done

    def run(self, spec: AgentSpec, task: str) -> AgentRun:
        """start() and wait."""
        return self.start(spec, task).result()

    @staticmethod
    def skipped(spec: AgentSpec, refusal: BudgetError) -> Future[AgentRun]:
        done: Future[AgentRun] = Future()
        done.set_result(AgentRun(budget_skipped_output(spec, refusal)))
        return done

    @staticmethod
    def _run_of(spec: AgentSpec, finished: Future[Any]) -> AgentRun:
        error = finished.exception()
        if error is None:
            return AgentRun.from_dict(finished.result())
        return AgentRun(failed_output(spec.name, f"{type(error).__name__}: {error}"))

    def close(self) -> None:
        self.spending.close()
        if self._owns_mailbox:
            self.mailbox.close()

    def __enter__(self) -> AgentLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

