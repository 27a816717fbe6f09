"""Process identity that survives pid reuse: a pid plus its kernel start time.

Owners of locks, leases and segments are recorded as (pid, start time) so that a
recycled pid is never mistaken for the original, still-living owner.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


_own_start: tuple[int, int] | None = None


def own_identity() -> tuple[int, int]:
    """(pid, start time) of the calling process, cached per process (fork-safe)."""
    global _own_start
    pid = os.getpid()
    if _own_start is None or _own_start[0] != pid:
        _own_start = (pid, process_start_time(pid) or 0)
    return _own_start


def is_alive(pid: int, start_time: int) -> bool:
    """True while the process that had `start_time` still runs under `pid`."""
    if pid <= 0:
        return False
    current = process_start_time(pid)
    return current is not None and (start_time == 0 or current == start_time)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


_pause_lock = threading.Lock()
_pauses = 0  # bursts in progress, in any thread
_collector_was_on = False  # before the first of them


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold this process's cyclic collector for a bounded burst of allocations that all
    stay alive (a batch of events, a map's tasks): the young-generation collections they
    would trigger free nothing and cost a large share of the burst. Bursts in several
    threads nest; the collector comes back as it was once the last one ends."""
    global _pauses, _collector_was_on
    with _pause_lock:
        if _pauses == 0:
            _collector_was_on = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _collector_was_on:
                gc.enable()


def _after_fork_in_child() -> None:
    """A child forked during another thread's burst: that thread is not here to end it."""
    global _pause_lock, _pauses
    _pause_lock = threading.Lock()
    if _pauses:
        _pauses = 0
        if _collector_was_on:
            gc.enable()


os.register_at_fork(after_in_child=_after_fork_in_child)
