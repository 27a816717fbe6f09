"""What tests of hosted primitives check about their actors: the actor's process and the
shared-memory segments it created."""

from __future__ import annotations

import time
from typing import Any

import psutil

from carmp.shared.segment import list_segment_names, peek_header

GONE_WAIT = 30.0  # how long an ended actor process may take to go (a bound, not a timing)


def actor_pid(client: Any) -> int:
    """The pid of the actor process a client (RayEventLog, RayPolicySet, ...) talks to."""
    import ray

    pid: int = ray.get(client.hosted.handle.pid.remote())
    return pid


def world_pids(infra: Any) -> list[int]:
    """The pids of the actors that host a RayInfra's state shards, log, budget and policies."""
    import ray

    clients = [*infra.state._shards, infra.log.hosted, infra.budget.hosted,
               infra._policy_set.hosted]
    return [int(pid) for pid in ray.get([client.handle.pid.remote() for client in clients])]


def segments_of(pid: int) -> list[str]:
    """The carmp segments in /dev/shm that process `pid` created."""
    found = []
    for name in list_segment_names():
        try:
            header = peek_header(name)
        except FileNotFoundError:
            continue
        if header is not None and header.creator_pid == pid:
            found.append(name)
    return found


def wait_gone(pid: int) -> bool:
    """True once process `pid` has exited (False if it is still there after GONE_WAIT)."""
    deadline = time.monotonic() + GONE_WAIT
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
