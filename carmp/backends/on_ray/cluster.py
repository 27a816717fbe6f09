"""Starting or joining the Ray cluster a farm runs on."""

from __future__ import annotations

import os
import sys
from types import ModuleType

from carmp.errors import BackendUnavailable

LOOPBACK = "127.0.0.1"
# Ray swaps a node address of 127.0.0.1 for the machine's outward address unless multi-node
# clusters are off; it reads this once, when it is imported. A cluster the farm starts
# itself has one node, so it stays on loopback.
SINGLE_NODE_SETTING = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_module(*, single_node: bool = False) -> ModuleType:
    """`ray`, or a clear error saying how to install it. `single_node`: this process will
    start a one-node cluster on loopback (it matters only before ray is first imported)."""
    if single_node and "ray" not in sys.modules:
        os.environ.setdefault(SINGLE_NODE_SETTING, "0")
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend='ray' needs Ray, which is not importable here ({exc}); install it "
            "with: pip install 'carmp[ray]'") from exc
    return ray


def connect(address: str | None, num_cpus: int) -> bool:
    """Join Ray: the cluster this process already joined, the one at `address`, or (no
    address) a new single-node cluster on 127.0.0.1 with `num_cpus` CPUs. True when this
    call started or joined it, so the farm must disconnect when it closes."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    # a cluster this process starts sends no usage reports
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK,
                 include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True
