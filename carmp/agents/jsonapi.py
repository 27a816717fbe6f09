"""JSON entry points like CAR's Python binding (CAR-SPEC section 4): JSON strings in,
the pattern's result JSON out.

    run_swarm(mode, agents_json, task, synthesizer_json=None, budget_json=None, runner=, farm=)
    run_pipeline(stages_json, task, budget_json=None, runner=, farm=)
    run_supervisor(workers_json, supervisor_json, task, max_rounds=3, budget_json=None,
                   runner=, farm=)
    run_map_reduce(mapper_json, reducer_json, task, items_json, budget_json=None,
                   runner=, farm=)
    run_vote(agents_json, task, synthesizer_json=None, budget_json=None, runner=, farm=)
    run_tournament(competitors_json, judge_json, task, budget_json=None, runner=, farm=)

Each call runs on `farm` with `runner`, a carmp Runner (CAR's JSON callback
`agent_fn(spec_json, task) -> AgentOutput JSON` works through `JsonRunner`). Every
argument is read before any agent starts, and bad input loses nothing:

- agents JSON that is not a list of AgentSpec objects: InvalidAgentJson "invalid agents
  JSON: ..." (a single spec: "invalid synthesizer JSON: ...", "invalid judge JSON: ...",
  and so on, named for its argument);
- budget JSON that is not a BudgetLimits object: InvalidBudget "invalid budget JSON: ...";
- a swarm mode other than parallel, sequential and debate (CAR's serde names; "hybrid"
  is none): InvalidPattern "invalid mode '<mode>': ...", and items JSON that is not a
  list of str: InvalidPattern "invalid items JSON: ...";
- a pattern that fails (a MultiError: NoOutput, BudgetExhausted, ...): PatternFailed
  "<pattern> error: <the MultiError>" ("swarm error: ..." for run_swarm), the MultiError
  as its __cause__.

Budget: CAR gives each call a fresh SharedInfra with the budget of budget_json. Here the
farm is the world, so a call with budget_json runs against a new handle on the farm's
world (its state, event log and policies) with a fresh CoordinationBudget of those
limits (omitted keys unbounded), which the call closes when it ends: the cap binds this
call only, and its events and state land where the farm's users see them. Without
budget_json a call spends the farm's own budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from carmp.agents.patterns.map_reduce import MapReduce
from carmp.agents.patterns.supervisor import DEFAULT_MAX_ROUNDS, Supervisor
from carmp.agents.patterns.swarm import Pipeline, Swarm, SwarmMode
from carmp.agents.patterns.tournament import Tournament
from carmp.agents.patterns.vote import Vote
from carmp.agents.runner import Runner
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import InvalidAgentJson, InvalidPattern, MultiError, PatternFailed
from carmp.shared.budget import BudgetLimits
from carmp.runtime.infra import SharedInfra

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.runtime import Runtime
    from carmp.shared.mailbox import Mailbox

T = TypeVar("T")
AgentFn = Callable[[str, str], str]
"""CAR's agent callback: agent_fn(spec_json, task) -> AgentOutput JSON."""


class _Result(Protocol):
    def to_json(self) -> str: ...


class JsonRunner:
    """A Runner over CAR's `agent_fn(spec_json, task)`: its reply is read as AgentOutput
    JSON, strictly (a reply that is not fails the agent)."""

    def __init__(self, agent_fn: AgentFn) -> None:
        if not callable(agent_fn):
            raise TypeError(f"agent_fn must be callable as agent_fn(spec_json, task), got "
                            f"{type(agent_fn).__name__}")
        self.agent_fn = agent_fn

    def __call__(self, spec: AgentSpec, task: str, runtime: Runtime,
                 mailbox: Mailbox) -> AgentOutput:
        return AgentOutput.from_json(self.agent_fn(spec.to_json(), task))


def spec_of(text: str | bytes, what: str) -> AgentSpec:
    """One AgentSpec from JSON; InvalidAgentJson "invalid <what> JSON: ..."."""
    return _parsed(text, what, AgentSpec.from_dict)


def specs_of(text: str | bytes, what: str) -> list[AgentSpec]:
    """A list of AgentSpecs from JSON; InvalidAgentJson "invalid <what> JSON: ..."."""
    def each(data: Any) -> list[AgentSpec]:
        if not isinstance(data, list):
            raise InvalidAgentJson(f"expected a list of AgentSpec objects, got "
                                   f"{type(data).__name__}")
        return [AgentSpec.from_dict(item) for item in data]

    return _parsed(text, what, each)


def _parsed(text: str | bytes, what: str, read: Callable[[Any], T]) -> T:
    try:
        data = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as exc:  # TypeError: not str or bytes
        raise InvalidAgentJson(f"invalid {what} JSON: {exc}") from None
    try:
        return read(data)
    except InvalidAgentJson as exc:
        raise InvalidAgentJson(f"invalid {what} JSON: {exc}") from None


def run_json(pattern: str, farm: Farm, budget_json: str | bytes | None,
             run: Callable[[SharedInfra | None], _Result]) -> str:
    """Run a pattern against the farm's world (with budget_json, against a handle on it
    with a budget of its own) and give its result JSON; PatternFailed when it fails."""
    limits = None if budget_json is None else BudgetLimits.from_json(budget_json)
    infra = None if limits is None \
        else SharedInfra.attach(*farm.infra.segment_names()).with_budget(limits)
    try:
        return run(infra).to_json()
    except MultiError as failure:
        raise PatternFailed(f"{pattern} error: {failure}") from failure
    finally:
        if infra is not None:
            infra.close()


def items_of(text: str | bytes) -> list[str]:
    """MapReduce items from JSON, a list of str; InvalidPattern "invalid items JSON: ..."."""
    try:
        items = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise InvalidPattern(f"invalid items JSON: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise InvalidPattern("invalid items JSON: expected a list of str")
    return items


def run_swarm(mode: str, agents_json: str | bytes, task: str,
              synthesizer_json: str | bytes | None = None,
              budget_json: str | bytes | None = None, *, runner: Runner, farm: Farm) -> str:
    """CAR's run_swarm: SwarmResult JSON."""
    swarm_mode = SwarmMode.parse(mode)  # CAR reads the mode first
    swarm = Swarm(specs_of(agents_json, "agents"), swarm_mode,
                  None if synthesizer_json is None else spec_of(synthesizer_json, "synthesizer"))
    return run_json("swarm", farm, budget_json,
                    lambda infra: swarm.run(task, runner, farm, infra=infra))


def run_pipeline(stages_json: str | bytes, task: str, budget_json: str | bytes | None = None,
                 *, runner: Runner, farm: Farm) -> str:
    """CAR's run_pipeline: PipelineResult JSON."""
    pipeline = Pipeline(specs_of(stages_json, "stages"))
    return run_json("pipeline", farm, budget_json,
                    lambda infra: pipeline.run(task, runner, farm, infra=infra))


def run_supervisor(workers_json: str | bytes, supervisor_json: str | bytes, task: str,
                   max_rounds: int = DEFAULT_MAX_ROUNDS, budget_json: str | bytes | None = None,
                   *, runner: Runner, farm: Farm) -> str:
    """CAR's run_supervisor: SupervisorResult JSON."""
    supervisor = Supervisor(specs_of(workers_json, "workers"),
                            spec_of(supervisor_json, "supervisor"), max_rounds)
    return run_json("supervisor", farm, budget_json,
                    lambda infra: supervisor.run(task, runner, farm, infra=infra))


def run_map_reduce(mapper_json: str | bytes, reducer_json: str | bytes, task: str,
                   items_json: str | bytes, budget_json: str | bytes | None = None, *,
                   runner: Runner, farm: Farm) -> str:
    """CAR's run_map_reduce: MapReduceResult JSON (MapReduce's default max_concurrent)."""
    map_reduce = MapReduce(spec_of(mapper_json, "mapper"), spec_of(reducer_json, "reducer"))
    items = items_of(items_json)
    return run_json("map_reduce", farm, budget_json,
                    lambda infra: map_reduce.run(task, items, runner, farm, infra=infra))


def run_vote(agents_json: str | bytes, task: str, synthesizer_json: str | bytes | None = None,
             budget_json: str | bytes | None = None, *, runner: Runner, farm: Farm) -> str:
    """CAR's run_vote: VoteResult JSON."""
    vote = Vote(specs_of(agents_json, "agents"),
                None if synthesizer_json is None else spec_of(synthesizer_json, "synthesizer"))
    return run_json("vote", farm, budget_json,
                    lambda infra: vote.run(task, runner, farm, infra=infra))


def run_tournament(competitors_json: str | bytes, judge_json: str | bytes, task: str,
                   budget_json: str | bytes | None = None, *, runner: Runner,
                   farm: Farm) -> str:
    """CAR's run_tournament: TournamentResult JSON (winner_name, ranking, matches, ...)."""
    tournament = Tournament(specs_of(competitors_json, "competitors"),
                            spec_of(judge_json, "judge"))
    return run_json("tournament", farm, budget_json,
                    lambda infra: tournament.run(task, runner, farm, infra=infra))
