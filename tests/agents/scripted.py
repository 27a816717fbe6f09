"""A deterministic scripted runner for pattern tests: answers, token reports and
failures by agent name, and a call log kept in the farm's shared state, so calls made in
worker processes are counted where the test can see them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import InvalidProposal
from carmp.pool.worker import current_infra
from carmp.shared.budget import TokenAccounting
from carmp.shared.state import StateStore

CALLS_KEY = "scripted:calls"
RENDEZVOUS_WAIT = 30.0  # seconds; only reached when agents that should overlap do not


@dataclass(frozen=True)
class ScriptedRunner:
    """answers[name]: one answer, one per call in order (the last repeats), or a function
    of the task; a name not listed answers "<name>: <task>". tokens[name]: (input,
    output, cost) reported per call. errors[name]: the runner raises RuntimeError(text)
    for that agent. proposals[name]: wire proposals the agent executes through its
    runtime, in order, before it answers; without a scripted answer it answers the JSON
    list of their results (a rejected one as {"rejected": message}). rendezvous[name]:
    that agent waits until the log holds this many calls (of any agents) before it goes
    on, and fails if they never come: agents that all get past it ran at the same time.
    holds[name]: that agent then waits until this state key exists, and fails if it never
    does (so a test decides when it finishes). crashes: agents whose worker SIGKILLs itself.
    The call log also keeps each call's spec tools and the tools its runtime had
    registered."""

    answers: Mapping[str, str | Sequence[str] | Callable[[str], str]] = field(default_factory=dict)
    tokens: Mapping[str, tuple[int, int, float]] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    proposals: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    rendezvous: Mapping[str, int] = field(default_factory=dict)
    holds: Mapping[str, str] = field(default_factory=dict)
    crashes: frozenset[str] = frozenset()

    def __call__(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        assert current_infra() is not None, "the scripted runner runs in farm workers"
        # the shared store behind the agent's runtime (an isolated one writes to an overlay)
        store = getattr(runtime.state, "parent_state", runtime.state)
        calls = store.update(
            CALLS_KEY, lambda log: [*(log or []), {
                "agent": spec.name, "task": task, "pid": os.getpid(), "tools": list(spec.tools),
                "registered": sorted(runtime.tools)}], "scripted")
        made = sum(1 for call in calls.new_value if call["agent"] == spec.name)
        if spec.name in self.errors:
            raise RuntimeError(self.errors[spec.name])
        if spec.name in self.rendezvous:
            _meet(store, self.rendezvous[spec.name])
        if spec.name in self.holds:
            _hold(store, self.holds[spec.name])
        if spec.name in self.crashes:
            os.kill(os.getpid(), signal.SIGKILL)
        proposals = self.proposals.get(spec.name, ())
        reports = [_proposed(runtime, proposal) for proposal in proposals]
        script = self.answers.get(spec.name, orjson.dumps(reports).decode() if proposals
                                  else f"{spec.name}: {task}")
        if callable(script):
            answer = script(task)
        else:
            answer = script if isinstance(script, str) else script[min(made, len(script)) - 1]
        spent = self.tokens.get(spec.name)
        tool_calls = sum(action.get("type") == "tool_call"
                         for proposal in proposals for action in proposal["actions"])
        return AgentOutput(name=spec.name, answer=answer, turns=1, tool_calls=tool_calls,
                           duration_ms=0.1,
                           tokens=None if spent is None else TokenAccounting(*spent))


def _meet(store: StateStore, count: int) -> None:
    deadline = time.monotonic() + RENDEZVOUS_WAIT
    while len(store.get(CALLS_KEY) or []) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rendezvous of {count} calls not reached: the agents did not "
                               "run at the same time")
        time.sleep(0.001)


def _hold(store: StateStore, key: str) -> None:
    deadline = time.monotonic() + RENDEZVOUS_WAIT
    while not store.exists(key):
        if time.monotonic() > deadline:
            raise RuntimeError(f"held until {key!r} was set, which never happened")
        time.sleep(0.001)


def _proposed(runtime: Any, proposal: Mapping[str, Any]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = runtime.execute(proposal).to_dict()
    except InvalidProposal as rejected:
        return {"rejected": str(rejected)}
    return report


def agent(name: str, system_prompt: str | None = None) -> AgentSpec:
    """A spec for tests: the name, and a prompt that names it unless one is given."""
    return AgentSpec(name=name, system_prompt=f"you are {name}" if system_prompt is None
                     else system_prompt)


def calls(state: StateStore, agent: str | None = None) -> list[dict[str, Any]]:
    """The call log, optionally one agent's calls only."""
    log: list[dict[str, Any]] = state.get(CALLS_KEY) or []
    return [call for call in log if agent is None or call["agent"] == agent]
