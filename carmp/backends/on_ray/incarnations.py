"""Finding what a host actor's dead incarnations left in /dev/shm.

Ray restarts a host actor in a new process, which builds its primitive again, while the
shared-memory segment the killed process created stays behind. A host that names its
segments `carmp-<host id><incarnation>-<kind>` (a 12-character run id: 8 hex digits
fixed for the host, 4 random per incarnation) finds its predecessors' segments, recovers
what they held, then removes them, so neither data nor segments are lost to a SIGKILL.
"""

from __future__ import annotations

import re
import secrets

import posix_ipc

from carmp.shared.proc import is_alive
from carmp.shared.segment import list_segment_names, peek_header


def new_host_id() -> str:
    return secrets.token_hex(4)


def incarnation_run_id(host_id: str) -> str:
    """A fresh run id for this incarnation's segments."""
    return host_id + secrets.token_hex(2)


def dead_predecessors(host_id: str, kind: str) -> list[str]:
    """Names of the `kind` segments of this host whose creating process is dead."""
    ours = re.compile(rf"/carmp-{host_id}[0-9a-f]{{4}}-{kind}")
    return [name for name in list_segment_names() if ours.fullmatch(name) and left_behind(name)]


def left_behind(name: str) -> bool:
    """True when segment `name` exists and the process that created it is dead."""
    try:
        header = peek_header(name)
    except FileNotFoundError:
        return False
    return header is None or not is_alive(header.creator_pid, header.creator_start)


def unlink(name: str) -> None:
    """Remove a dead predecessor's segment (its creator cannot any more)."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass
