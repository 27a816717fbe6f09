"""Fleet: independent agents on different missions (CAR-SPEC 2.11), and what every
pattern uses to start an agent it cannot do without.

A Fleet runs every (AgentSpec, mission) pair at once, each agent a task in a farm worker
with a runtime of its own over the shared world: the same state, event log, policies and
(one per run) mailbox, which is how its agents may exchange what they learn. There is no
ordering and no review. Each spawn passes the budget gate first; an agent the budget
refuses becomes a budget-skipped output in its place and counts as failed. Outputs keep
the missions' order; `duration_ms` is the wall clock of the whole fleet. Like every
pattern it takes the budget modes `reserve` and `cancel_on_exhaustion`
(carmp/agents/budgeting.py) and a per-agent `timeout`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carmp.agents.patterns.common import PatternOptions
from carmp.agents.runner import Runner
from carmp.agents.types import AgentOutput, AgentSpec
from carmp.shared.wire import JsonOut

if TYPE_CHECKING:
    from carmp.pool.farm import Farm
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.mailbox import Mailbox


@dataclass(frozen=True, slots=True)
class FleetResult(JsonOut):
    """CAR's FleetResult: every mission's output in mission order, the fleet's wall
    clock, and how many agents succeeded and failed (a skipped agent failed)."""

    outputs: tuple[AgentOutput, ...]
    duration_ms: float
    succeeded: int
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [output.to_dict() for output in self.outputs],
                "duration_ms": self.duration_ms, "succeeded": self.succeeded,
                "failed": self.failed}


@dataclass(frozen=True)
class Fleet(PatternOptions):
    """Independent agents, each on its own mission, all at once."""

    missions: Sequence[tuple[AgentSpec, str]]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "missions", tuple(self.missions))
        for index, mission in enumerate(self.missions):
            if (not isinstance(mission, tuple) or len(mission) != 2
                    or not isinstance(mission[0], AgentSpec) or not isinstance(mission[1], str)):
                raise TypeError(f"fleet mission #{index} must be an (AgentSpec, str) pair, "
                                f"got {mission!r:.120}")

    def run(self, runner: Runner, farm: Farm, *, infra: SharedInfra | None = None,
            mailbox: Mailbox | None = None) -> FleetResult:
        """Run every mission in the farm's workers; `infra` runs them against another
        world (e.g. one with its own budget)."""
        began = time.perf_counter()
        with self.launcher(farm, runner, infra, mailbox) as launcher:
            started = [launcher.start(spec, mission) for spec, mission in self.missions]
            outputs = tuple(future.result().output for future in started)
        succeeded = sum(output.succeeded() for output in outputs)
        return FleetResult(outputs, (time.perf_counter() - began) * 1e3, succeeded,
                           len(outputs) - succeeded)
