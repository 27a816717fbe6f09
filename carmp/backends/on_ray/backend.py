"""The Ray backend: Farm(backend="ray", address=None).

It joins the Ray cluster this process already joined, the one at `address`, or starts a
single-node one on 127.0.0.1; starts the world's actors (world.py) with their journals
in a fresh directory; and runs tasks on worker actors (executor.py). Closing the farm
ends its actors, removes the journal directory, and disconnects from Ray if the farm
connected.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from carmp.backends.base import Backend, Capabilities, WorkerOptions, WorldOptions
from carmp.backends.on_ray.cluster import connect, ray_module
from carmp.backends.on_ray.executor import RayExecutor
from carmp.backends.on_ray.mailbox import RayMailbox, start_mailbox
from carmp.backends.on_ray.world import RayInfra, open_world
from carmp.errors import BackendUnsupported
from carmp.shared.budget import CoordinationBudget


class RayBackend(Backend):
    name = "ray"
    capabilities = Capabilities(shared_memory=False, per_task_timeout=True,
                                kill_running_task=True, max_rss=False, recycle_workers=True,
                                start_methods=False, multi_node=True)

    def __init__(self, address: str | None = None, *, num_cpus: int = 1,
                 state_shards: int = 1) -> None:
        self.ray = ray_module(single_node=address is None)
        self.address = address
        self.num_cpus = num_cpus
        self.state_shards = state_shards
        self.connected = False
        self.journal_dir: str | None = None

    def open_world(self, options: WorldOptions) -> tuple[RayInfra, list[Any]]:
        local = [name for name, part in (("state", options.state), ("log", options.log))
                 if part is not None]
        if isinstance(options.budget, CoordinationBudget):
            local.append("budget")
        if local or isinstance(options.budget, CoordinationBudget):
            raise BackendUnsupported(
                f"backend='ray' cannot use local {', '.join(local)} objects (they live in "
                "this machine's shared memory, out of reach of Ray workers); leave them out "
                "and use farm.infra, pass budget=BudgetLimits(...), or log_path= for a journal")
        self.connected = connect(self.address, self.num_cpus)
        self.journal_dir = tempfile.mkdtemp(prefix=f"carmp-{options.run_id}-")
        infra = open_world(self.journal_dir, limits=options.budget, log_path=options.log_path,
                           state_shards=self.state_shards)
        return infra, [infra]

    def start(self, options: WorkerOptions, infra: Any) -> RayExecutor:
        return RayExecutor(self.ray, options, infra)

    def new_mailbox(self, run_id: str) -> RayMailbox:
        mailbox = start_mailbox()
        mailbox.owner = True
        return mailbox

    def describe(self) -> str:
        return "ray" if self.address is None else f"ray@{self.address}"

    def close(self) -> None:
        if self.journal_dir is not None:
            shutil.rmtree(self.journal_dir, ignore_errors=True)
            self.journal_dir = None
        if self.connected:
            self.connected = False
            self.ray.shutdown()
