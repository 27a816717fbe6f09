"""Waiting on a hosted primitive without blocking its actor.

A hosted primitive answers each call at once (its actor runs one call at a time, so a
call that waited for room or for a message would stall every other client). A client
that must wait (for a message, for room in a queue or a budget) asks again with short
calls, pausing a little longer each time, until it gets an answer or its deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

FIRST_PAUSE = 0.001   # seconds between the first tries: a message sent just now arrives fast
LONGEST_PAUSE = 0.05  # the pause grows to this, so a long wait costs the actor ~20 calls/s

T = TypeVar("T")


def poll(attempt: Callable[[], T | None], deadline: float | None) -> T | None:
    """attempt() until it returns something other than None (returned), or until the
    `deadline` (time.monotonic(); None: no end) has passed (None). It tries at least once."""
    pause = FIRST_PAUSE
    while True:
        result = attempt()
        if result is not None:
            return result
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        time.sleep(pause if left is None else min(pause, left))
        pause = min(2 * pause, LONGEST_PAUSE)
