"""The local backend: workers are this machine's processes, the world shared memory."""

from __future__ import annotations

from typing import Any

import multiprocess
from multiprocess import forkserver

from carmp.backends.base import Backend, Capabilities, WorkerOptions, WorldOptions
from carmp.pool import dispatch
from carmp.pool.supervisor import Supervisor, sigint_ignored
from carmp.runtime.infra import SharedInfra
from carmp.shared import budget as budget_segment
from carmp.shared import eventlog as eventlog_segment
from carmp.shared import policy as policy_segment
from carmp.shared import state as state_segment
from carmp.shared.budget import BudgetLimits, CoordinationBudget
from carmp.shared.eventlog import EventLog
from carmp.shared.mailbox import Mailbox
from carmp.shared.segment import check_planned_space, sweep

START_METHODS = ("fork", "forkserver", "spawn")


class LocalBackend(Backend):
    name = "local"
    capabilities = Capabilities(shared_memory=True, per_task_timeout=True,
                                kill_running_task=True, max_rss=True, recycle_workers=True,
                                start_methods=True, multi_node=False)

    def __init__(self, start_method: str = "forkserver") -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        self.start_method = start_method

    def open_world(self, options: WorldOptions) -> tuple[SharedInfra, list[Any]]:
        sweep()  # segments of dead runs go before this run adds its own
        # all of the world fits in /dev/shm, or none of it is made (and no process started)
        check_planned_space(_planned_world(options))
        context = multiprocess.get_context(self.start_method)
        if self.start_method == "forkserver":
            context.set_forkserver_preload(["carmp.pool.worker"])
            # boot the forkserver now: it imports carmp in its own process while this one
            # creates the segments, and the first worker starts as soon as both are done
            with sigint_ignored():  # the forkserver, and so every worker, start ignoring it
                forkserver.ensure_running()
        self.context = context
        made: list[Any] = []
        budget, log = options.budget, options.log
        try:
            if isinstance(budget, BudgetLimits):
                budget = CoordinationBudget(budget, run_id=options.run_id)
                made.append(budget)
            if log is None and options.log_path is not None:
                log = EventLog(journal=options.log_path, run_id=options.run_id)
                made.append(log)
            infra = SharedInfra(options.state, log, budget, run_id=options.run_id)
            made.append(infra)
        except BaseException:
            for part in reversed(made):
                part.close()
            raise
        return infra, made

    def start(self, options: WorkerOptions, infra: SharedInfra) -> Supervisor:
        return Supervisor(
            workers=options.workers, context=self.context, run_id=options.run_id,
            initializer=options.initializer, initargs=options.initargs,
            max_tasks_per_worker=options.max_tasks_per_worker, max_rss_mb=options.max_rss_mb,
            spin=options.spin, log=infra.log, infra_names=infra.segment_names(),
            task_events=options.task_events)

    def new_mailbox(self, run_id: str) -> Mailbox:
        return Mailbox(run_id=run_id)

    def describe(self) -> str:
        return self.start_method


def _planned_world(options: WorldOptions) -> dict[str, int]:
    """The segments open_world will create (what -> bytes): the parts not passed in."""
    planned = {}
    if options.state is None:
        planned["state"] = state_segment.segment_size()
    if options.log is None:
        planned["event log"] = eventlog_segment.segment_size()
    if not isinstance(options.budget, CoordinationBudget):
        planned["budget"] = budget_segment.segment_size()
    planned["policy set"] = policy_segment.segment_size()
    planned["dispatch"] = dispatch.segment_size(options.workers)
    return planned
