"""A deterministic runner for merge-barrier tests: each agent runs a script of steps on
its runtime's state (an overlay when isolated) and on the shared store behind it, so a
test decides what each agent reads and writes and how their windows overlap."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from carmp.agents.runner import AgentRun
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.runtime.context import AgentContext
from carmp.shared.state import StateStore

WAIT = 30.0  # seconds; only reached when the agents a step waits for never come
ARRIVED_KEY = "script:arrived"


@dataclass(frozen=True)
class StateScript:
    """steps[name], in order:
    ("get", key): read key; ("set", key, value): write it; ("incr", key): read it, write
    it + 1; ("arrive", n): note this agent's arrival in the shared store, then wait until
    n agents arrived (agents past it have overlapping windows); ("after", name): wait
    until the event log says agent `name` finished; ("fail",): end with an errored output
    (after the steps before it)."""

    steps: Mapping[str, Sequence[tuple[Any, ...]]]

    def __call__(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        state = runtime.state
        shared: StateStore = getattr(state, "parent_state", state)
        error = None
        for step in self.steps.get(spec.name, ()):
            verb, args = step[0], step[1:]
            if verb == "get":
                state.get(args[0])
            elif verb == "set":
                _write(state, args[0], args[1], spec.name)
            elif verb == "incr":
                _write(state, args[0], (state.get(args[0]) or 0) + 1, spec.name)
            elif verb == "arrive":
                shared.update(ARRIVED_KEY, lambda n: (n or 0) + 1, "arrive")
                _wait(lambda: (shared.get(ARRIVED_KEY) or 0) >= args[0], f"{args[0]} arrivals")
            elif verb == "after":
                _wait(lambda: any(event.data.get("agent") == args[0]
                                  for event in runtime.log.filter(kind="agent_finished")),
                      f"agent {args[0]} to finish")
            elif verb == "fail":
                error = "told to fail"
                break
        return AgentOutput(name=spec.name, answer=f"{spec.name} done", turns=1, tool_calls=0,
                           duration_ms=1.0, error=error)


def _write(state: AgentContext | StateStore, key: str, value: Any, agent: str) -> None:
    if isinstance(state, AgentContext):
        state.set(key, value)
    else:
        state.set(key, value, agent)


def _wait(ready: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited in vain for {what}")
        time.sleep(0.001)


def overlay_run(state: StateStore, name: str, window: tuple[int, int], *,
                reads: Sequence[str] = (), writes: Mapping[str, Any] | None = None,
                failed: bool = False) -> AgentRun:
    """An isolated agent's run made in this process: it read `reads` from `state`, then
    wrote `writes` to its overlay, within `window` on the log's clock."""
    context = AgentContext(name, state)
    for key in reads:
        context.get(key)
    for key, value in (writes or {}).items():
        context.set(key, value)
    output = AgentOutput(name=name, answer=f"{name} done", turns=1, tool_calls=0,
                         duration_ms=1.0, error="told to fail" if failed else None)
    return AgentRun(output, None if failed else context.delta(), 1, window)
