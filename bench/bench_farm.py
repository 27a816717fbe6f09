"""Agent farm end to end: carmp's MapReduce, on its local and its Ray backend, against the
same program on multiprocessing and on plain Ray (see /work/shared/design/BENCHMARKS.md,
"agent farm end to end").

Workload: 1,000 agents (--agents); each burns ~2 ms of CPU, does 10 state operations (5
writes of a small JSON object to its own keys, then 5 reads of them) and appends 5 events;
a reducer adds up the agents' answers. The same `agent_work` runs in every version; only
the way it reaches the shared world differs:

- carmp, backend=local: `MapReduce(mapper, reducer)` on a `Farm(workers=2)`; the runner
  uses the agent's runtime: the farm's StateStore and EventLog in shared memory.
- carmp, backend=ray: the very same program on `Farm(workers=2, backend="ray")`; the
  world lives in Ray actors.
- multiprocessing: `Pool(2)` mapping the agents (default chunksize), state in a
  `Manager().dict()`, events through a `multiprocessing.Queue` drained by a thread.
- plain Ray: the agents as Ray tasks, in the chunks mp.Pool.map would make; state in a
  dict-holding actor (writes sent without waiting, since an actor runs one caller's
  calls in order; reads wait), events to a list-holding actor in one call per chunk.

Each measurement is the whole program: start the pool and the shared world, run every
agent, reduce, collect every event, shut down. Both Ray versions run on one local Ray
cluster with 2 CPUs, started once before the repeats (not timed) and shut down after;
without Ray installed their rows are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carmp import AgentOutput, AgentSpec, BudgetLimits, Farm
from carmp.patterns import MapReduce

if __name__ != "__mp_main__":  # workers never need the harness
    from _harness import (
        RESULTS_DIR,
        Spread,
        command_line,
        interleaved,
        machine_line,
        markdown_table,
        target_line,
        write_result,
    )
    from _local_ray import local_ray, ray_installed

AGENTS = 1_000
WORKERS = 2
WORK_SECONDS = 0.002
WRITES = 5        # + 5 reads = 10 state operations per agent
EVENTS = 5
REPEATS = 3
MAX_CONCURRENT = 64  # mappers in flight: enough to keep both workers' queues full
CHUNKS_PER_WORKER = 4  # what mp.Pool.map's default chunksize makes; plain Ray gets the same
TARGET_VS_MP = 5.0
TARGET_VS_RAY = 20.0
ITEM = re.compile(r"agent-item:(\d+)")
ANSWER = re.compile(r"agent-answer:(\d+)")

CARMP_LOCAL = "carmp MapReduce, backend=local"
CARMP_RAY = "carmp MapReduce, backend=ray"
MP = "mp.Pool + Manager dict + Queue"
PLAIN_RAY = "plain Ray: tasks + dict actor + events actor"


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


@dataclass(frozen=True, slots=True)
class Workload:
    """What every version runs: how many agents, and the loop iterations of ~2 ms here."""

    agents: int
    iterations: int

    def expected_total(self) -> int:
        return sum(range(self.agents)) + self.agents * sum(range(WRITES))

    def chunks(self) -> list[range]:
        """The agents split as mp.Pool.map splits them by default."""
        size = -(-self.agents // (WORKERS * CHUNKS_PER_WORKER))
        return [range(first, min(first + size, self.agents))
                for first in range(0, self.agents, size)]


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


def run_carmp(workload: Workload, backend: str) -> float:
    began = time.perf_counter()
    with Farm(workers=WORKERS, backend=backend,
              budget=BudgetLimits(max_agents=workload.agents + 1)) as farm:
        result = MapReduce(AgentSpec(name="mapper", system_prompt="work the item"),
                           AgentSpec(name="reducer", system_prompt="add the answers"),
                           max_concurrent=MAX_CONCURRENT).run(
            "agent farm", [f"agent-item:{i}" for i in range(workload.agents)],
            FarmRunner(workload.iterations), farm)
        steps = len(farm.infra.log.filter(kind="agent_step"))
    seconds = time.perf_counter() - began
    assert result.all_succeeded(), [o.error for o in result.map_outputs if o.error][:3]
    assert int(result.reduced_answer) == workload.expected_total(), result.reduced_answer
    assert steps == workload.agents * EVENTS, steps
    return seconds


# ---- multiprocessing: Pool + Manager().dict() + Queue -------------------------------------------

_shared: dict[str, Any] = {}


def _mp_attach(store: Any, events: Any, iterations: int) -> None:
    _shared.update(store=store, events=events, iterations=iterations)


def _mp_agent(item: int) -> int:
    store, events = _shared["store"], _shared["events"]
    return agent_work(item, _shared["iterations"], store.__setitem__, store.__getitem__,
                      events.put)


def run_multiprocessing(workload: Workload) -> float:
    began = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        store, events = manager.dict(), context.Queue()
        received: list[Any] = []
        drain = threading.Thread(target=lambda: received.extend(
            events.get() for _ in range(workload.agents * EVENTS)))
        drain.start()
        with context.Pool(WORKERS, initializer=_mp_attach,
                          initargs=(store, events, workload.iterations)) as pool:
            total = sum(pool.map(_mp_agent, range(workload.agents)))
        drain.join()
    seconds = time.perf_counter() - began
    assert total == workload.expected_total(), total
    assert len(received) == workload.agents * EVENTS
    return seconds


# ---- plain Ray: tasks for the agents, a dict actor for the state, a list actor for the events ---


class StateActor:
    """The shared state: a dict in one actor."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def get(self, key: str) -> Any:
        return self.values[key]


class EventsActor:
    """The event log: a list in one actor, extended a batch at a time."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def extend(self, batch: list[dict[str, Any]]) -> None:
        self.events.extend(batch)

    def count(self) -> int:
        return len(self.events)


def ray_agents(items: range, iterations: int, store: Any, events: Any) -> int:
    """A chunk of agents as one Ray task. Writes are sent without waiting (the actor runs
    this task's calls in the order sent, so its reads see them); the chunk's events go
    in one call."""
    import ray

    batch: list[dict[str, Any]] = []
    total = sum(agent_work(item, iterations, store.set.remote,
                           lambda key: ray.get(store.get.remote(key)), batch.append)
                for item in items)
    ray.get(events.extend.remote(batch))
    return total


def run_plain_ray(workload: Workload) -> float:
    import ray

    began = time.perf_counter()
    # the world's actors take no CPU slot: the cluster's WORKERS CPUs run the agent tasks
    store: Any = ray.remote(num_cpus=0)(StateActor).remote()
    events: Any = ray.remote(num_cpus=0)(EventsActor).remote()
    agents = ray.remote(num_cpus=1)(ray_agents)
    total = sum(ray.get([agents.remote(chunk, workload.iterations, store, events)
                         for chunk in workload.chunks()]))
    received = ray.get(events.count.remote())
    for actor in (store, events):
        ray.kill(actor)
    seconds = time.perf_counter() - began
    assert total == workload.expected_total(), total
    assert received == workload.agents * EVENTS, received
    return seconds


def subjects(with_ray: bool) -> dict[str, Callable[[Workload], float]]:
    local: dict[str, Callable[[Workload], float]] = {
        CARMP_LOCAL: functools.partial(run_carmp, backend="local"), MP: run_multiprocessing}
    if not with_ray:
        return local
    return {**local, CARMP_RAY: functools.partial(run_carmp, backend="ray"),
            PLAIN_RAY: run_plain_ray}


def report(samples: dict[str, list[float]], workload: Workload,
           ray_start_seconds: float | None) -> str:
    spreads = {name: Spread.of(values) for name, values in samples.items()}

    def speed_up(peer: str, over: str = CARMP_LOCAL) -> float:
        return spreads[peer].median / spreads[over].median

    rows = [[name, f"{s.median:.2f}", f"{s.low:.2f}", f"{s.high:.2f}",
             f"{workload.agents / s.median:,.0f}",
             "-" if name == CARMP_LOCAL else f"{speed_up(name):.2f}x"]
            for name, s in spreads.items()]
    lines = [
        f"## Agent farm end to end: {workload.agents:,} agents as a MapReduce, {WORKERS} workers",
        "",
        f"{machine_line()}",
        f"`{command_line()}`: median of {REPEATS} interleaved repeats; each agent ~"
        f"{WORK_SECONDS * 1e3:g} ms CPU ({workload.iterations:,} loop iterations), "
        f"{2 * WRITES} state ops, {EVENTS} events; whole program timed (start, run, reduce, "
        "collect events, shut down)",
        "",
        markdown_table(["version", "median s", "min", "max", "agents/s",
                        "carmp local speed-up"], rows),
        "",
    ]
    if ray_start_seconds is None:
        lines += ["Ray: not installed here (pip install -e '.[bench]'); its rows are skipped.", ""]
    else:
        lines += [
            f"Ray rows: one local Ray cluster (127.0.0.1, {WORKERS} CPUs) started once before "
            f"the repeats ({ray_start_seconds:.1f} s, not timed); carmp backend=ray joins it. "
            f"Plain Ray runs the agents as Ray tasks in {len(workload.chunks())} chunks, "
            "state in a dict actor (writes not awaited, reads awaited), events to a list "
            "actor in one call per chunk.",
            f"- speed-up of carmp backend=ray over plain Ray: "
            f"{speed_up(PLAIN_RAY, CARMP_RAY):.2f}x; of carmp backend=local over "
            f"backend=ray: {speed_up(CARMP_RAY):.2f}x",
            "",
        ]
    versus_mp = speed_up(MP)
    lines.append(target_line(f">= {TARGET_VS_MP:g}x the multiprocessing version",
                             f"{versus_mp:.2f}x", versus_mp >= TARGET_VS_MP))
    if ray_start_seconds is not None:
        versus_ray = speed_up(PLAIN_RAY)
        lines.append(target_line(f">= {TARGET_VS_RAY:g}x plain Ray (local)",
                                 f"{versus_ray:.2f}x", versus_ray >= TARGET_VS_RAY))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=AGENTS,
                        help=f"agents per run (default {AGENTS:,}, the BENCHMARKS.md size)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help="where farm.md goes (default bench/results/, which the README "
                             "quotes: give trial runs another folder)")
    options = parser.parse_args()
    workload = Workload(options.agents, calibrate(WORK_SECONDS))
    with_ray = ray_installed()
    if not with_ray:
        print("Ray is not installed: skipping the Ray rows (pip install -e '.[bench]')")
    began = time.perf_counter()
    with local_ray(WORKERS) if with_ray else contextlib.nullcontext():
        ray_start_seconds = time.perf_counter() - began if with_ray else None
        samples = interleaved({name: (lambda run=run: run(workload))
                               for name, run in subjects(with_ray).items()}, REPEATS)
    text = report(samples, workload, ray_start_seconds)
    print(text)
    print(f"saved to {write_result('farm', text, options.out_dir)}")


if __name__ == "__main__":
    main()
