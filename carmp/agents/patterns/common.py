"""What the patterns share: checking their agents, listing answers in agents' tasks,
starting agents through an AgentLauncher with CAR's budget rules, and the options every
pattern takes beyond CAR."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carmp.agents.budgeting import check_budget_modes
from carmp.agents.runner import AgentLauncher, AgentRun, Prepare, Runner
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.errors import (
    AgentLimit,
    BudgetError,
    BudgetExhausted,
    InvalidAgentJson,
    InvalidPattern,
    NoOutput,
)
from carmp.shared.budget import TokenAccounting

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox

# How one agent's answer is listed in other agents' tasks.
ENTRY_TEMPLATE = "[{name}]: {answer}"
NONE_LISTED = "(none)"


def listing(outputs: Iterable[AgentOutput]) -> str:
    """The successful answers among `outputs`, one ENTRY_TEMPLATE line each."""
    lines = [ENTRY_TEMPLATE.format(name=output.name, answer=output.answer)
             for output in outputs if output.succeeded()]
    return "\n".join(lines) or NONE_LISTED


def agent_specs(what: str, agents: Iterable[AgentSpec]) -> tuple[AgentSpec, ...]:
    """A pattern's agents as a tuple: one or more AgentSpecs."""
    specs = tuple(agents)
    if not specs:
        raise InvalidPattern(f"{what} needs one or more agents")
    for spec in specs:
        if not isinstance(spec, AgentSpec):
            raise TypeError(f"{what} agents must be AgentSpecs, got {type(spec).__name__}")
    return specs


def checked_spec(what: str, value: object) -> AgentSpec:
    """`value`, an AgentSpec; else TypeError naming `what`."""
    if not isinstance(value, AgentSpec):
        raise TypeError(f"{what} must be an AgentSpec, got {type(value).__name__}")
    return value


def why_failed(output: AgentOutput) -> str:
    """An output's error, or what made it fail without one."""
    return output.error or "its outcome was not a success"


def outputs_of(where: str, data: Any) -> tuple[AgentOutput, ...]:
    if not isinstance(data, list):
        raise InvalidAgentJson(f"{where} must be a list of AgentOutput objects")
    return tuple(AgentOutput.from_dict(item) for item in data)


def as_exhausted(refusal: BudgetError, infra: SharedInfra) -> BudgetExhausted:
    """CAR's MultiError::BudgetExhausted for a refused load-bearing agent; an agent limit
    becomes one too, its reason naming max_agents."""
    if isinstance(refusal, BudgetExhausted):
        return refusal
    reason = (f"max_agents={refusal.max} reached ({refusal.started} agents started)"
              if isinstance(refusal, AgentLimit) else str(refusal))
    exhausted = BudgetExhausted(reason, infra.budget.snapshot())
    exhausted.__cause__ = refusal
    return exhausted


def run_required(launcher: AgentLauncher, spec: AgentSpec, task: str) -> AgentRun:
    """Run an agent its pattern cannot do without; BudgetExhausted when the budget
    refuses to start it."""
    refusal = launcher.begin()
    if refusal is not None:
        raise as_exhausted(refusal, launcher.infra)
    return launcher.submit(spec, task).result()


class Spawner:
    """Starts one pattern run's agents through its launcher, each gated right before
    its spawn, and remembers the budget's refusals."""

    def __init__(self, launcher: AgentLauncher) -> None:
        self.launcher = launcher
        self.refusals: list[BudgetError] = []

    def start(self, spec: AgentSpec, task: str) -> Future[AgentRun]:
        refusal = self.launcher.begin()
        if refusal is None:
            return self.launcher.submit(spec, task)
        self.refusals.append(refusal)
        return self.launcher.skipped(spec, refusal)

    def run(self, spec: AgentSpec, task: str) -> AgentRun:
        return self.start(spec, task).result()

    def all(self, jobs: Iterable[tuple[AgentSpec, str]]) -> list[AgentRun]:
        """Start every (spec, task) at once; their runs in job order."""
        futures = [self.start(spec, task) for spec, task in jobs]
        return [future.result() for future in futures]

    def require_output(self, outputs: Sequence[AgentOutput], refused: int) -> None:
        """Raise when no output succeeded: BudgetExhausted when all `refused` of them
        were budget refusals (the last ones this spawner saw), else NoOutput."""
        if any(output.succeeded() for output in outputs):
            return
        if outputs and refused == len(outputs):
            raise as_exhausted(self.refusals[-refused], self.launcher.infra)
        raise NoOutput()


@dataclass(frozen=True, kw_only=True)
class PatternOptions:
    """What every pattern takes beyond CAR: the budget modes of
    carmp/agents/budgeting.py and a per-agent timeout in seconds."""

    reserve: TokenAccounting | None = None
    cancel_on_exhaustion: bool = False
    timeout: float | None = None

    def __post_init__(self) -> None:
        check_budget_modes(self.reserve, self.cancel_on_exhaustion)
        if self.timeout is not None and not self.timeout > 0:
            raise InvalidPattern(f"timeout must be > 0 seconds or None, got {self.timeout!r}")

    def launcher(self, farm: Farm, runner: Runner, infra: SharedInfra | None,
                 mailbox: Mailbox | None, *, isolated: bool = False,
                 prepare: Prepare | None = None) -> AgentLauncher:
        return AgentLauncher(farm, runner, infra=infra, isolated=isolated, mailbox=mailbox,
                             timeout=self.timeout, reserve=self.reserve,
                             cancel_on_exhaustion=self.cancel_on_exhaustion, prepare=prepare)
