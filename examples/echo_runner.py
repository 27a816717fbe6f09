"""A deterministic runner for `carmp run` examples and tests: no model, no network.

An agent answers `metadata.answer` when its spec sets one, else "<name>: <first line of
the task>"; with `metadata.fail = true` it fails. It reports tokens as word counts, so
a budget in the spec has something to count, and it takes longer with `metadata.work`
(that many rounds of hashing), which stands in for a model's thinking.

    carmp run examples/swarm.toml
    carmp run examples/sweep.toml --out results.jsonl
"""

from __future__ import annotations

import hashlib
import time

from carmp.agents.types import AgentOutput, AgentSpec, TokenAccounting
from carmp.runtime.runtime import Runtime
from carmp.shared.mailbox import Mailbox


def run(spec: AgentSpec, task: str, runtime: Runtime, mailbox: Mailbox) -> AgentOutput:
    began = time.perf_counter()
    digest = f"{spec.name}|{task}|{spec.metadata.get('seed', 0)}".encode()
    for _ in range(int(spec.metadata.get("work", 0))):
        digest = hashlib.sha256(digest).digest()
    first_line = task.splitlines()[0] if task else ""
    answer = str(spec.metadata.get("answer", f"{spec.name}: {first_line}"))
    error = "told to fail (metadata.fail)" if spec.metadata.get("fail") else None
    tokens = TokenAccounting(input_tokens=len(task.split()), output_tokens=len(answer.split()))
    return AgentOutput(name=spec.name, answer="" if error else answer, turns=1, tool_calls=0,
                       duration_ms=(time.perf_counter() - began) * 1e3, error=error,
                       tokens=tokens)
