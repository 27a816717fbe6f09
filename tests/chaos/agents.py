"""The agent every chaos round runs: a loop of budget reservations, state writes and
events, slow enough that a kill lands in the middle of one of them.

Each step reserves an estimate, writes its own key (a value whose digest lets the
checker spot a torn write), says so in the event log once the write returned (so the
log names every committed write), bumps a shared counter with a read-modify-write, and
commits part of the estimate; then it appends a burst of events back to back, so some
kills land mid-append. The plan (steps, pause, estimate, burst, seed) comes from the
state store, so one runner serves every pattern whatever task text the pattern gives.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from carmp.agents.types import AgentOutput, AgentSpec
from carmp.pool.worker import current_infra
from carmp.runtime.runtime import Runtime
from carmp.shared.budget import TokenAccounting
from carmp.shared.mailbox import Mailbox

PLAN_KEY = "chaos/plan"
COUNT_KEY = "chaos/count"
WRITE_PREFIX = "chaos/w/"


def write_key(agent: str, step: int) -> str:
    return f"{WRITE_PREFIX}{agent}/{step}"


def digest(blob: str) -> str:
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def step_value(agent: str, step: int, rng: random.Random) -> dict[str, Any]:
    """A value of random size whose digest covers its body."""
    blob = rng.randbytes(rng.randint(8, 2048)).hex()
    return {"agent": agent, "step": step, "blob": blob, "digest": digest(blob)}


def _increment(count: Any) -> int:
    return int(count) + 1


def chaos_agent(spec: AgentSpec, task: str, runtime: Runtime, mailbox: Mailbox) -> AgentOutput:
    infra = current_infra()
    if infra is None:
        raise RuntimeError("the chaos agent runs in a farm worker only")
    plan = infra.state.get(PLAN_KEY)
    rng = random.Random(f"{plan['seed']}/{spec.name}")
    began = time.perf_counter()
    for step in range(plan["steps"]):
        lease = infra.budget.reserve(TokenAccounting(output_tokens=plan["estimate"]))
        time.sleep(rng.uniform(0.0, plan["pause"]))  # holding the lease
        key, value = write_key(spec.name, step), step_value(spec.name, step, rng)
        infra.state.set(key, value, f"chaos:{spec.name}:{step}")
        infra.log.append("chaos_write", data={"key": key, "digest": value["digest"]})
        counted = infra.state.update(COUNT_KEY, _increment, f"chaos:{spec.name}:{step}:count")
        infra.log.append("chaos_counted", data={"count": counted.new_value})
        for number in range(plan["burst"]):
            infra.log.append("chaos_burst", data={"agent": spec.name, "number": number})
        infra.budget.commit(lease, TokenAccounting(output_tokens=rng.randint(0, plan["estimate"])))
    return AgentOutput(name=spec.name, answer=f"{plan['steps']} steps", turns=plan["steps"],
                       tool_calls=0, duration_ms=(time.perf_counter() - began) * 1e3)
