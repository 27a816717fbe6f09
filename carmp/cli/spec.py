"""Run spec files for `carmp run`: a TOML or JSON document naming the agents, the pattern,
the task, the budget, the workers and the runner.

    pattern = "swarm"                 # swarm pipeline supervisor map_reduce vote fleet
    task = "Name a prime number."     #   tournament adversarial_review
    runner = "echo_runner:run"        # module:function, imported from the spec's folder
    workers = 2                       #   or the current directory
    start_method = "forkserver"       # fork, forkserver or spawn (optional)
    timeout = 30.0                    # seconds per agent (optional)
    mode = "parallel"                 # swarm only

    [budget]                          # BudgetLimits fields, all optional
    max_total_tokens = 10000

    [[agents]]                        # AgentSpec fields; system_prompt defaults to ""
    name = "alpha"
    max_turns = 3

Each pattern reads the keys it needs beyond those: `synthesizer` (swarm, vote), `supervisor`
and `max_rounds` (supervisor), `mapper`, `reducer`, `items` and `max_concurrent`
(map_reduce), `judge` (tournament), `reviewer`, `criteria` and `fail_on_blockers`
(adversarial_review, whose task is the work to review); a single agent is a table of
AgentSpec fields. A fleet takes `missions = [{agent = "alpha", task = "..."}, ...]`.

A `[sweep]` table (or `carmp run --sweep`) makes the spec a benchmark: every agent on
every task (`tasks`, else the spec's `task`) with every seed (`seeds`, default [0]); the
pattern is then optional and not run. `out` names the results file.

Every problem is an InvalidSpec naming the file and the field, and unknown keys are
refused (a typo must not silently drop a setting).
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import orjson

from carmp.agents.patterns.map_reduce import DEFAULT_MAX_CONCURRENT
from carmp.agents.patterns.supervisor import DEFAULT_MAX_ROUNDS
from carmp.agents.types import DEFAULT_MAX_TURNS, AgentSpec
from carmp.errors import InvalidAgentJson, InvalidBudget, InvalidPattern, InvalidSpec
from carmp.patterns import (
    AdversarialReview,
    Fleet,
    MapReduce,
    Pipeline,
    Supervisor,
    Swarm,
    SwarmMode,
    Tournament,
    Vote,
)
from carmp.backends.local import START_METHODS
from carmp.pool.farm import Farm
from carmp.shared.budget import BudgetLimits

if TYPE_CHECKING:
    from carmp.agents.runner import Runner

T = TypeVar("T")
_REQUIRED: Any = object()


class PatternResult(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self) -> str: ...


Launch = Callable[["Runner", Farm], PatternResult]
"""A configured pattern, ready to run with a runner on a farm."""


def _shown(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."


class Fields:
    """One table of the spec, read field by field: each read checks the type and names
    `file: path.key` in its error; `finish()` refuses the keys nobody read."""

    def __init__(self, file: str, path: str, data: Any) -> None:
        self.file, self.path = file, path
        if not isinstance(data, dict):
            self.fail("", f"expected a table, got {_shown(data)}")
        self.data: dict[str, Any] = data
        self.read: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else self.path or key

    def fail(self, key: str, problem: str) -> NoReturn:
        where = self.where(key)
        raise InvalidSpec(f"{self.file}: {where}: {problem}" if where
                          else f"{self.file}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.data

    def value(self, key: str, default: Any, wanted: str, ok: Callable[[Any], bool]) -> Any:
        """The value at `key` (or `default`; _REQUIRED: it must be there), if ok(value)."""
        self.read.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                self.fail(key, f"missing: expected {wanted}")
            return default
        value = self.data[key]
        if not ok(value):
            self.fail(key, f"expected {wanted}, got {_shown(value)}")
        return value

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.value(key, default, "a string", lambda v: isinstance(v, str))

    def integer(self, key: str, default: Any = _REQUIRED, *, least: int = 0) -> Any:
        return self.value(key, default, f"an int >= {least}",
                          lambda v: type(v) is int and v >= least)

    def number(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.value(key, default, "a number > 0",
                          lambda v: type(v) in (int, float) and v > 0)

    def boolean(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.value(key, default, "true or false", lambda v: type(v) is bool)

    def texts(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.value(key, default, "a list of strings",
                          lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v))

    def table(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.value(key, default, "a table", lambda v: isinstance(v, dict))
        return value if value is default else Fields(self.file, self.where(key), value)

    def tables(self, key: str) -> Iterator[Fields]:
        items = self.value(key, _REQUIRED, "a non-empty list of tables",
                           lambda v: isinstance(v, list) and len(v) > 0)
        for index, item in enumerate(items):
            yield Fields(self.file, f"{self.where(key)}[{index}]", item)

    def agent(self, key: str, default: Any = _REQUIRED) -> Any:
        table = self.table(key, default)
        return table if table is default else table.agent_spec()

    def agent_spec(self) -> AgentSpec:
        """This table as an AgentSpec."""
        values = {"name": self.text("name"), "system_prompt": self.text("system_prompt", ""),
                  "tools": tuple(self.texts("tools", [])),
                  "max_turns": self.integer("max_turns", DEFAULT_MAX_TURNS),
                  "metadata": self.table("metadata", None),
                  "cache_control": self.boolean("cache_control", False)}
        values["metadata"] = {} if values["metadata"] is None else values["metadata"].data
        if not values["name"]:
            self.fail("name", "expected a non-empty string, got ''")
        self.finish()
        return self.built(lambda: AgentSpec(**values))

    def built(self, make: Callable[[], T], key: str = "") -> T:
        """make(), its InvalidAgentJson, InvalidBudget or InvalidPattern named for this
        table (or its field `key`)."""
        try:
            return make()
        except (InvalidAgentJson, InvalidBudget, InvalidPattern) as exc:
            self.fail(key, str(exc))

    def finish(self, context: str = "") -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            self.fail(unknown[0], f"unknown field{context} (known: {known})")


@dataclass(frozen=True)
class SweepSpec:
    """The benchmark matrix: every agent x task x seed."""

    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    out: str | None


@dataclass(frozen=True)
class RunSpec:
    """A checked spec file: `launch` runs its pattern (None in a sweep without one)."""

    file: Path
    pattern: str | None
    agents: tuple[AgentSpec, ...]
    runner: str
    workers: int | None
    start_method: str
    budget: BudgetLimits | None
    timeout: float | None
    launch: Launch | None
    sweep: SweepSpec | None


def _swarm(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    task = spec.text("task")
    mode = spec.built(lambda: SwarmMode.parse(spec.text("mode", "parallel")), "mode")
    swarm = spec.built(lambda: Swarm(agents, mode, spec.agent("synthesizer", None),
                                     timeout=timeout))
    return lambda runner, farm: swarm.run(task, runner, farm)


def _pipeline(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    task = spec.text("task")
    pipeline = spec.built(lambda: Pipeline(agents, timeout=timeout))
    return lambda runner, farm: pipeline.run(task, runner, farm)


def _supervisor(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    task, boss = spec.text("task"), spec.agent("supervisor")
    rounds = spec.integer("max_rounds", DEFAULT_MAX_ROUNDS, least=1)
    supervisor = spec.built(lambda: Supervisor(agents, boss, rounds, timeout=timeout))
    return lambda runner, farm: supervisor.run(task, runner, farm)


def _map_reduce(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    task, items = spec.text("task"), spec.texts("items")
    mapper, reducer = spec.agent("mapper"), spec.agent("reducer")
    in_flight = spec.integer("max_concurrent", DEFAULT_MAX_CONCURRENT, least=1)
    map_reduce = spec.built(lambda: MapReduce(mapper, reducer, in_flight, timeout=timeout))
    return lambda runner, farm: map_reduce.run(task, items, runner, farm)


def _vote(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    task = spec.text("task")
    vote = spec.built(lambda: Vote(agents, spec.agent("synthesizer", None), timeout=timeout))
    return lambda runner, farm: vote.run(task, runner, farm)


def _fleet(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    by_name = {agent.name: agent for agent in agents}
    missions = []
    for mission in spec.tables("missions"):
        name = mission.text("agent")
        if name not in by_name:
            mission.fail("agent", f"no agent is named {name!r} (agents: {', '.join(by_name)})")
        missions.append((by_name[name], mission.text("task")))
        mission.finish()
    fleet = spec.built(lambda: Fleet(missions, timeout=timeout))
    return lambda runner, farm: fleet.run(runner, farm)


def _tournament(spec: Fields, agents: tuple[AgentSpec, ...], timeout: float | None) -> Launch:
    task = spec.text("task")
    tournament = spec.built(lambda: Tournament(agents, spec.agent("judge"), timeout=timeout))
    return lambda runner, farm: tournament.run(task, runner, farm)


def _adversarial_review(spec: Fields, agents: tuple[AgentSpec, ...],
                        timeout: float | None) -> Launch:
    work = spec.text("task")
    review = spec.built(lambda: AdversarialReview(spec.agent("reviewer"),
                                                  spec.texts("criteria"),
                                                  spec.boolean("fail_on_blockers", True),
                                                  timeout=timeout))
    return lambda runner, farm: review.run(work, runner, farm)


PATTERNS: dict[str, Callable[[Fields, tuple[AgentSpec, ...], float | None], Launch]] = {
    "swarm": _swarm, "pipeline": _pipeline, "supervisor": _supervisor,
    "map_reduce": _map_reduce, "vote": _vote, "fleet": _fleet, "tournament": _tournament,
    "adversarial_review": _adversarial_review,
}
# Patterns whose agents all come from their own keys: `agents` is optional for them.
_OWN_AGENTS = ("map_reduce", "adversarial_review")


def _document(file: Path) -> Any:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise InvalidSpec(f"{file}: cannot read the spec file: {exc.strerror or exc}") from None
    try:
        if file.suffix == ".toml":
            return tomllib.loads(raw.decode())
        if file.suffix == ".json":
            return orjson.loads(raw)
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSpec(f"{file}: not valid {file.suffix[1:].upper()}: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise InvalidSpec(f"{file}: its arrays or tables nest too deeply to read; a spec "
                          "needs a few levels at most") from None
    raise InvalidSpec(f"{file}: a spec file must end in .toml or .json")


def _agents(spec: Fields, required: bool) -> tuple[AgentSpec, ...]:
    if not required and not spec.has("agents"):
        spec.read.add("agents")
        return ()
    agents: list[AgentSpec] = []
    for table in spec.tables("agents"):
        agent = table.agent_spec()
        for index, other in enumerate(agents):
            if other.name == agent.name:
                table.fail("name", f"{agent.name!r} is already the name of agents[{index}]")
        agents.append(agent)
    return tuple(agents)


def _sweep(spec: Fields, forced: bool) -> SweepSpec | None:
    table = spec.table("sweep", None)
    if table is None:
        return SweepSpec((spec.text("task"),), (0,), None) if forced else None
    tasks = table.texts("tasks") if table.has("tasks") else [spec.text("task")]
    if not tasks:
        table.fail("tasks", "expected at least one task")
    seeds = table.value("seeds", [0], "a non-empty list of ints",
                        lambda v: isinstance(v, list) and len(v) > 0
                        and all(type(seed) is int for seed in v))
    out = table.text("out", None)
    table.finish()
    return SweepSpec(tuple(tasks), tuple(seeds), out)


def load_spec(file: Path, *, sweep: bool = False) -> RunSpec:
    """The checked spec in `file` (.toml or .json); `sweep` asks for sweep mode even
    without a [sweep] table. InvalidSpec names the file and field of any problem."""
    spec = Fields(str(file), "", _document(file))
    benchmark = _sweep(spec, sweep)
    pattern = spec.text("pattern", None if benchmark else _REQUIRED)
    if pattern is not None and pattern not in PATTERNS:
        spec.fail("pattern", f"unknown pattern {pattern!r} (known: {', '.join(PATTERNS)})")
    agents = _agents(spec, benchmark is not None or pattern not in _OWN_AGENTS)
    runner = spec.text("runner")
    if runner.count(":") != 1 or not all(runner.split(":")):
        spec.fail("runner", f"expected 'module:function', got {runner!r}")
    budget = spec.table("budget", None)
    limits = None if budget is None else _budget(budget)
    workers = spec.integer("workers", None, least=1)
    start_method = spec.text("start_method", "forkserver")
    if start_method not in START_METHODS:
        spec.fail("start_method", f"expected one of {', '.join(START_METHODS)}, got "
                                  f"{start_method!r}")
    timeout = spec.number("timeout", None)
    launch = None if pattern is None else PATTERNS[pattern](spec, agents, timeout)
    spec.finish("" if pattern is None else f" for pattern {pattern!r}")
    return RunSpec(file, pattern, agents, runner, workers, start_method, limits, timeout,
                   launch, benchmark)


def _budget(table: Fields) -> BudgetLimits:
    limits = {name: table.integer(name, None) for name in
              ("max_input_tokens", "max_output_tokens", "max_total_tokens", "max_agents")}
    limits["max_cost_usd"] = table.value("max_cost_usd", None, "a number >= 0",
                                         lambda v: type(v) in (int, float) and v >= 0)
    table.finish()
    return table.built(lambda: BudgetLimits(**limits))


def import_runner(spec: RunSpec) -> Runner:
    """The spec's runner function, imported with the spec's folder and the current
    directory on sys.path (farm workers start later and inherit it)."""
    module_name, function_name = spec.runner.split(":")
    for folder in (Path.cwd(), spec.file.parent):
        if str(folder.resolve()) not in sys.path:
            sys.path.insert(0, str(folder.resolve()))
    where = f"{spec.file}: runner"
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidSpec(f"{where}: cannot import module {module_name!r} ({exc}); put it "
                          f"next to the spec file or in the current directory") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InvalidSpec(f"{where}: module {module_name!r} has no function "
                          f"{function_name!r}")
    runner: Runner = function
    return runner
