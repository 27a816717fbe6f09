"""The demo's agents: search strategies that solve puzzles by proposing tool calls to
their runtime, and the judge that compares two strategies' results.

A solver's "model" is its strategy (spec.metadata): a search order, a heuristic, and
how many node expansions it may spend on one puzzle. Its task is a mission, JSON:
{"phase", "publish", "puzzles": [{"name", "board"}]}. For each puzzle it proposes
`expand` calls (a slice of node expansions each) until the search reaches the goal or
its allowance is spent, then one `submit` call that checks the moves; when the mission
publishes, that proposal also writes the solution to the shared state under
`solved/<name>`, and a later solver skips a puzzle it finds there. A strategy whose
tool is `brute_force` proposes that instead; the run's policy denies it. Spend is the
node expansions, reported as output tokens, and never more than the budget had left
when the agent started.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import orjson

from carmp.agents.types import AgentOutput, AgentSpec, TokenAccounting
from carmp.demo.puzzle import GOAL, Board, Search, solves
from carmp.errors import CarmpError
from carmp.runtime.runtime import Runtime
from carmp.shared.mailbox import Mailbox

EXPAND_SLICE = 4000  # node expansions per `expand` call
SOLVED_PREFIX = "solved/"

_SEARCH_SCHEMA = {"type": "object", "required": ["puzzle", "nodes"],
                  "properties": {"puzzle": {"type": "string"},
                                 "nodes": {"type": "integer", "minimum": 1}}}
_SUBMIT_SCHEMA = {"type": "object", "required": ["puzzle"],
                  "properties": {"puzzle": {"type": "string"}}}


def solver(name: str, order: str, heuristic: str, allowance: int, *,
           tool: str = "expand") -> AgentSpec:
    """A solver agent: `order` and `heuristic` as carmp.demo.puzzle.Search takes them,
    `allowance` node expansions per puzzle, and the search tool it proposes."""
    return AgentSpec(name=name, system_prompt=f"Solve sliding puzzles by {order} search.",
                     tools=(tool, "submit"),
                     metadata={"role": "solver", "order": order, "heuristic": heuristic,
                               "allowance": allowance, "tool": tool})


JUDGE = AgentSpec(name="judge", system_prompt="Pick the better benchmark result.",
                  metadata={"role": "judge"})

# The competing strategies, in the tournament's seed order.
STRATEGIES: tuple[AgentSpec, ...] = (
    solver("astar", "astar", "manhattan", 200_000),
    solver("brute", "breadth", "manhattan", 200_000, tool="brute_force"),
    solver("greedy", "greedy", "manhattan", 20_000),
    solver("bfs", "breadth", "manhattan", 120_000),
    solver("astar-misplaced", "astar", "misplaced", 60_000),
)


def mission(phase: str, puzzles: list[tuple[str, Board]], *, publish: bool) -> str:
    """A solver's task text."""
    return orjson.dumps({"phase": phase, "publish": publish,
                         "puzzles": [{"name": n, "board": list(b)} for n, b in puzzles]}).decode()


TALLY = AgentSpec(name="tally", system_prompt="Add up what the mop-up solved and skipped.",
                  metadata={"role": "tally"})


def run(spec: AgentSpec, task: str, runtime: Runtime, mailbox: Mailbox) -> AgentOutput:
    """The demo's runner: a judge, a tally (MapReduce's reducer) or a solver, by the
    spec's role. A solver's mission is the JSON object in its task: all of it in a
    Fleet, the item a MapReduce mapper's task ends with."""
    role = spec.metadata.get("role")
    if role == "judge":
        return _judge(spec, task)
    if role == "tally":
        return _tally(spec, task)
    return _Solver(spec, runtime).run(orjson.loads(task[task.index("{"):]))


_MAPPER_ANSWER = re.compile(r"^\[[^\]]+\]: (\{.*\})$", re.MULTILINE)


def _tally(spec: AgentSpec, task: str) -> AgentOutput:
    """Sum the mappers' answers (one `[name]: {json}` line each) into one."""
    answers = [orjson.loads(line) for line in _MAPPER_ANSWER.findall(task)]
    total = {"solved": {name: found for answer in answers
                        for name, found in answer["solved"].items()},
             "skipped": [name for answer in answers for name in answer.get("skipped", [])],
             "expanded": sum(answer["expanded"] for answer in answers)}
    return AgentOutput(name=spec.name, answer=orjson.dumps(total).decode(), turns=1,
                       tool_calls=0, duration_ms=0.0)


# ---- the judge --------------------------------------------------------------------------------

_CANDIDATE = re.compile(r"<<<([AB])\n(.*?)\n\1>>>", re.DOTALL)


def score(answer: str) -> tuple[int, int, int]:
    """How a solver's benchmark answer ranks, lower is better: most puzzles solved, then
    fewest moves in all, then fewest node expansions."""
    result = orjson.loads(answer)
    moves = sum(len(found["moves"]) for found in result["solved"].values())
    return (-len(result["solved"]), moves, result["expanded"])


def _judge(spec: AgentSpec, task: str) -> AgentOutput:
    began = time.perf_counter()
    answers = dict(_CANDIDATE.findall(task))
    if set(answers) != {"A", "B"}:
        raise CarmpError("the judge's task holds no candidates A and B; run it as a "
                         "Tournament's judge")
    pick = "B" if score(answers["B"]) < score(answers["A"]) else "A"
    return AgentOutput(name=spec.name, answer=pick, turns=1, tool_calls=0,
                       duration_ms=(time.perf_counter() - began) * 1e3)


# ---- a solver ---------------------------------------------------------------------------------


class _Solver:
    """One solver agent's run: its tools, registered on its runtime, and its loop."""

    def __init__(self, spec: AgentSpec, runtime: Runtime) -> None:
        self.spec, self.runtime = spec, runtime
        self.strategy: dict[str, Any] = spec.metadata
        self.searches: dict[str, Search] = {}
        self.boards: dict[str, Board] = {}
        self.proposals = 0
        self.expanded = 0
        self.tools_used: set[str] = set()
        runtime.register_tool("expand", self._expand, _SEARCH_SCHEMA,
                              "expand up to `nodes` search nodes of a puzzle")
        runtime.register_tool("brute_force", self._brute_force, _SUBMIT_SCHEMA,
                              "try every board permutation")
        runtime.register_tool("submit", self._submit, _SUBMIT_SCHEMA,
                              "check a found solution and hand it in")

    # the tools (they run inside the runtime, one action each)

    def _expand(self, puzzle: str, nodes: int) -> dict[str, Any]:
        search = self.searches[puzzle]
        done = search.expand(nodes)
        self.expanded += done
        return {"expanded": done, "solved": search.solution is not None,
                "exhausted": search.exhausted}

    def _brute_force(self, puzzle: str) -> dict[str, Any]:
        """Every permutation of the tiles until the goal: the run's policy forbids it."""
        tried = 0
        for tried, board in enumerate(itertools.permutations(self.boards[puzzle]), 1):
            if board == GOAL:
                break
        self.expanded += tried
        return {"expanded": tried, "solved": False, "exhausted": True}

    def _submit(self, puzzle: str) -> dict[str, Any]:
        moves = self.searches[puzzle].solution
        if moves is None or not solves(self.boards[puzzle], moves):
            raise ValueError(f"no verified solution for {puzzle}")
        return {"moves": "".join(moves), "by": self.spec.name}

    # proposing

    def _call(self, tool: str, parameters: dict[str, Any],
              effects: dict[str, Any] | None = None) -> Any:
        """Propose one tool call; its output, or CarmpError saying why it did not run."""
        self.proposals += 1
        self.tools_used.add(tool)
        result = self.runtime.execute({"actions": [{
            "id": "call", "type": "tool_call", "tool": tool, "parameters": parameters,
            "expected_effects": effects or {}, "max_retries": 0}]})
        if not result.succeeded:
            raise CarmpError(f"{tool} on {parameters.get('puzzle')}: "
                             f"{result.results[0].error or result.error}")
        return result.outputs["call"]

    def run(self, task: dict[str, Any]) -> AgentOutput:
        began = time.perf_counter()
        budget_left = _budget_left()
        solved: dict[str, dict[str, Any]] = {}
        failed: list[str] = []
        skipped: list[str] = []
        error: str | None = None
        for entry in task["puzzles"]:
            name, board = entry["name"], tuple(entry["board"])
            if task["publish"] and self.runtime.state.get_or(SOLVED_PREFIX + name, None):
                skipped.append(name)
                continue
            allowance = min(self.strategy["allowance"], budget_left - self.expanded)
            if allowance <= 0:
                failed.append(name)
                continue
            self.boards[name] = board
            self.searches[name] = Search(board, self.strategy["order"], self.strategy["heuristic"])
            try:
                found = self._solve(name, allowance, task["publish"])
            except CarmpError as refused:
                error = str(refused)
                failed.append(name)
                continue
            if found is None:
                failed.append(name)
            else:
                solved[name] = {"moves": found, "expanded": self.searches[name].expanded}
        answer = {"phase": task["phase"], "solved": solved, "failed": failed,
                  "skipped": skipped, "expanded": self.expanded}
        return AgentOutput(
            name=self.spec.name, answer=orjson.dumps(answer).decode(), turns=self.proposals,
            tool_calls=self.proposals, duration_ms=(time.perf_counter() - began) * 1e3,
            error=error if not solved and not skipped else None,
            tokens=TokenAccounting(output_tokens=self.expanded),
            tools_used=tuple(sorted(self.tools_used)))

    def _solve(self, name: str, allowance: int, publish: bool) -> str | None:
        """Search `name` within `allowance` expansions; its moves when found."""
        search = self.searches[name]
        if self.strategy["tool"] != "expand":
            self._call(self.strategy["tool"], {"puzzle": name})
        while search.solution is None and not search.exhausted and search.expanded < allowance:
            self._call("expand", {"puzzle": name,
                                  "nodes": min(EXPAND_SLICE, allowance - search.expanded)})
        if search.solution is None:
            return None
        effects = {SOLVED_PREFIX + name: "$call.output"} if publish else None
        handed_in: dict[str, Any] = self._call("submit", {"puzzle": name}, effects)
        moves: str = handed_in["moves"]
        return moves


def _budget_left() -> int:
    """Expansions the run's budget has left now (very many when it has no cap)."""
    from carmp.pool.worker import current_infra

    infra = current_infra()
    if infra is None:
        raise CarmpError("a demo solver ran outside a farm worker; run it through "
                         "carmp.demo.run_demo")
    snapshot = infra.budget.snapshot()
    cap = snapshot.limits.max_total_tokens
    return 2**62 if cap is None else max(0, cap - snapshot.total_tokens)
