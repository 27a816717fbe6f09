"""The backend seam: what a Farm needs from the place its workers and world live.

A backend makes two things for a Farm: the shared world (a SharedInfra: state, event
log, budget, policies) and an executor that runs tasks and reports their outcomes to
sinks. The local backend's executor is the shared-memory Supervisor; the Ray backend's
drives worker actors. Farm's whole task API (submit, map, imap, futures, retries,
timeouts) is written once against the Executor protocol below.

Capabilities say which Farm options a backend honours, so an option it cannot honour is
refused when the Farm is made, not silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from carmp.errors import BackendUnsupported

if TYPE_CHECKING:
    from carmp.pool.tasks import FarmStatistics, Sink
    from carmp.runtime.infra import SharedInfra
    from carmp.shared.budget import BudgetLimits, CoordinationBudget
    from carmp.shared.eventlog import EventLog
    from carmp.shared.mailbox import Mailbox
    from carmp.shared.state import StateStore


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; Farm checks its options against these."""

    shared_memory: bool       # workers and world share this machine's memory
    per_task_timeout: bool    # timeout= kills just the task's worker
    kill_running_task: bool   # TaskFuture.kill() stops a task that runs
    max_rss: bool             # max_rss_mb recycles a worker that grew too large
    recycle_workers: bool     # max_tasks_per_worker
    start_methods: bool       # start_method= chooses fork, forkserver or spawn
    multi_node: bool          # workers may run on other machines


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The Farm options that shape its workers."""

    workers: int
    run_id: str
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    max_rss_mb: float | None
    spin: float
    task_events: bool


@dataclass(frozen=True, slots=True)
class WorldOptions:
    """The Farm options that shape its shared world: parts passed in (local objects,
    which stay open when the farm closes) or what to make."""

    run_id: str
    state: StateStore | None
    log: EventLog | None
    budget: BudgetLimits | CoordinationBudget | None
    log_path: str | None
    workers: int  # how many the farm will start (the local dispatch segment is sized by it)


class Executor(Protocol):
    """Runs tasks for a Farm. Task, function entry and payload are the executor's own
    types; the Farm passes them back unchanged."""

    def function_entry(self, function: Callable[..., Any]) -> Any: ...

    def pickle_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    def pickle_each(self, arguments: list[tuple[Any, ...]]) -> list[Any]: ...

    def make_task(self, entry: Any, payload: Any, sink: Sink, index: int, retries: int,
                  timeout: float | None) -> Any: ...

    def make_tasks(self, entry: Any, payloads: list[Any], sink: Sink, first_index: int,
                   retries: int, timeout: float | None) -> list[Any]: ...

    def submit_tasks(self, tasks: Iterable[Any], entry: Any) -> None: ...

    def help_until(self, done: Callable[[], bool], timeout: float | None) -> bool: ...

    def cancel_task(self, task_id: int, reason: str) -> bool: ...

    def cancel_pending(self) -> None: ...

    def wait_idle(self, timeout: float | None) -> bool: ...

    def stop(self, grace: float) -> None: ...

    def statistics(self) -> FarmStatistics: ...

    def worker_pids(self) -> list[int]: ...


class Backend:
    """A place to run a farm. Subclasses fill in the capabilities and the three hooks."""

    name = "?"
    capabilities: Capabilities

    def check(self, options: dict[str, Any]) -> None:
        """Refuse the Farm options (name -> value; None or False: not used) that this
        backend cannot honour."""
        needs = {"timeout": "per_task_timeout", "max_rss_mb": "max_rss",
                 "max_tasks_per_worker": "recycle_workers", "start_method": "start_methods"}
        for option, capability in needs.items():
            if options.get(option) not in (None, False) \
                    and not getattr(self.capabilities, capability):
                raise BackendUnsupported(
                    f"the {self.name} backend cannot honour {option}={options[option]!r}; "
                    f"leave it out, or use a backend whose capabilities include {capability}")

    def open_world(self, options: WorldOptions) -> tuple[SharedInfra, list[Any]]:
        """The farm's world, and the parts of it this call made (the farm closes those,
        last first, after its workers stopped)."""
        raise NotImplementedError

    def start(self, options: WorkerOptions, infra: SharedInfra) -> Executor:
        """Start the workers of a farm whose world is `infra`."""
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for the farm's repr."""
        return self.name

    def new_mailbox(self, run_id: str) -> Mailbox | Any:
        """A mailbox every worker of this backend can reach; its close() ends it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend itself holds (a Ray connection it opened)."""
