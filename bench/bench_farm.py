"""Agent farm end to end: carmp's MapReduce against the same program on multiprocessing
(see /work/shared/design/BENCHMARKS.md, "agent farm end to end").

Workload: 1,000 agents; each burns ~2 ms of CPU, does 10 state operations (5 writes of a
small JSON object to its own keys, then 5 reads of them) and appends 5 events; a reducer
adds up the agents' answers. The same `agent_work` runs in every version; only the way
it reaches the shared world differs:

- carmp: `MapReduce(mapper, reducer)` on a `Farm(workers=2)`; the runner uses the
  agent's runtime: the farm's StateStore and EventLog in shared memory.
- multiprocessing: `Pool(2)` mapping the agents (default chunksize), state in a
  `Manager().dict()`, events through a `multiprocessing.Queue` drained by a thread.

Each measurement is the whole program: start the pool and the shared world, run every
agent, reduce, collect every event, shut down. Ray: no row; this script does not
measure Ray (not installed on this machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from carmp import AgentOutput, AgentSpec, BudgetLimits, Farm
from carmp.patterns import MapReduce

if __name__ != "__mp_main__":  # workers never need the harness
    from _harness import (
        Spread,
        command_line,
        interleaved,
        machine_line,
        markdown_table,
        target_line,
        write_result,
    )

AGENTS = 1_000
WORKERS = 2
WORK_SECONDS = 0.002
WRITES = 5        # + 5 reads = 10 state operations per agent
EVENTS = 5
REPEATS = 3
MAX_CONCURRENT = 64  # mappers in flight: enough to keep both workers' queues full
TARGET_VS_MP = 5.0
ITEM = re.compile(r"agent-item:(\d+)")
ANSWER = re.compile(r"agent-answer:(\d+)")


def burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def calibrate(seconds: float) -> int:
    """Loop iterations that take about `seconds` here."""
    iterations = 20_000
    while True:
        began = time.perf_counter()
        burn(iterations)
        took = time.perf_counter() - began
        if took > 0.05:
            return max(1, int(iterations * seconds / took))
        iterations *= 2


def agent_work(item: int, iterations: int, write: Callable[[str, Any], None],
               read: Callable[[str], Any], emit: Callable[[dict[str, Any]], None]) -> int:
    """One agent: CPU, then its state operations and events; the answer is a checksum."""
    burn(iterations)
    for step in range(WRITES):
        write(f"agent/{item}/{step}", {"item": item, "step": step, "note": "x" * 16})
    checksum = sum(read(f"agent/{item}/{step}")["step"] for step in range(WRITES))
    for step in range(EVENTS):
        emit({"agent": item, "step": step})
    return item + checksum


def expected_total() -> int:
    return sum(range(AGENTS)) + AGENTS * sum(range(WRITES))


# ---- carmp ------------------------------------------------------------------------------------


class FarmRunner:
    """The agents' runner: a mapper finds its item in its task, a reducer adds up the
    answers it was given."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if spec.name == "reducer":
            answer = str(sum(int(n) for n in ANSWER.findall(task)))
        else:
            match = ITEM.search(task)
            assert match is not None, f"no item in the mapper's task: {task!r}"
            state, log = runtime.state, runtime.log
            result = agent_work(
                int(match.group(1)), self.iterations,
                lambda key, value: state.set(key, value, spec.name), state.get,
                lambda data: log.append("agent_step", data=data))
            answer = f"agent-answer:{result}"
        return AgentOutput(name=spec.name, answer=answer, turns=1, tool_calls=0,
                           duration_ms=0.0)


def run_carmp(iterations: int) -> float:
    began = time.perf_counter()
    with Farm(workers=WORKERS, budget=BudgetLimits(max_agents=AGENTS + 1)) as farm:
        result = MapReduce(AgentSpec(name="mapper", system_prompt="work the item"),
                           AgentSpec(name="reducer", system_prompt="add the answers"),
                           max_concurrent=MAX_CONCURRENT).run(
            "agent farm", [f"agent-item:{i}" for i in range(AGENTS)],
            FarmRunner(iterations), farm)
        steps = len(farm.infra.log.filter(kind="agent_step"))
    seconds = time.perf_counter() - began
    assert result.all_succeeded(), [o.error for o in result.map_outputs if o.error][:3]
    assert int(result.reduced_answer) == expected_total(), result.reduced_answer
    assert steps == AGENTS * EVENTS, steps
    return seconds


# ---- multiprocessing: Pool + Manager().dict() + Queue -------------------------------------------

_shared: dict[str, Any] = {}


def _mp_attach(store: Any, events: Any, iterations: int) -> None:
    _shared.update(store=store, events=events, iterations=iterations)


def _mp_agent(item: int) -> int:
    store, events = _shared["store"], _shared["events"]
    return agent_work(item, _shared["iterations"], store.__setitem__, store.__getitem__,
                      events.put)


def run_multiprocessing(iterations: int) -> float:
    began = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        store, events = manager.dict(), context.Queue()
        received: list[Any] = []
        drain = threading.Thread(target=lambda: received.extend(
            events.get() for _ in range(AGENTS * EVENTS)))
        drain.start()
        with context.Pool(WORKERS, initializer=_mp_attach,
                          initargs=(store, events, iterations)) as pool:
            total = sum(pool.map(_mp_agent, range(AGENTS)))
        drain.join()
    seconds = time.perf_counter() - began
    assert total == expected_total(), total
    assert len(received) == AGENTS * EVENTS
    return seconds


SUBJECTS: dict[str, Callable[[int], float]] = {
    "carmp MapReduce": run_carmp,
    "mp.Pool + Manager dict + Queue": run_multiprocessing,
}


def report(samples: dict[str, list[float]], iterations: int) -> str:
    spreads = {name: Spread.of(values) for name, values in samples.items()}
    carmp = spreads["carmp MapReduce"].median
    rows = [[name, f"{s.median:.2f}", f"{s.low:.2f}", f"{s.high:.2f}",
             f"{AGENTS / s.median:,.0f}",
             "-" if name == "carmp MapReduce" else f"{s.median / carmp:.2f}x"]
            for name, s in spreads.items()]
    versus_mp = spreads["mp.Pool + Manager dict + Queue"].median / carmp
    return "\n".join([
        f"## Agent farm end to end: {AGENTS:,} agents as a MapReduce, {WORKERS} workers",
        "",
        f"{machine_line()}",
        f"`{command_line()}`: median of {REPEATS} interleaved repeats; each agent ~"
        f"{WORK_SECONDS * 1e3:g} ms CPU ({iterations:,} loop iterations), "
        f"{2 * WRITES} state ops, {EVENTS} events; whole program timed (start, run, reduce, "
        "collect events, shut down)",
        "",
        markdown_table(["version", "median s", "min", "max", "agents/s", "carmp speed-up"], rows),
        "",
        "Ray: no row; this script does not measure Ray (not installed on this machine).",
        "",
        target_line(f">= {TARGET_VS_MP:g}x the multiprocessing version", f"{versus_mp:.2f}x",
                    versus_mp >= TARGET_VS_MP),
    ])


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    iterations = calibrate(WORK_SECONDS)
    samples = interleaved({name: (lambda run=run: run(iterations))
                           for name, run in SUBJECTS.items()}, REPEATS)
    text = report(samples, iterations)
    print(text)
    print(f"saved to {write_result('farm', text)}")


if __name__ == "__main__":
    main()
