"""Idempotency caches: an idempotent tool call repeated with the same parameters gets the
first call's output instead of running again (CAR-SPEC 2.8). Only successful calls are
cached; a failed call leaves no trace, so the next one runs.

The key is a SHA-256 of the tool name and the parameters as canonical JSON (keys sorted
at every depth), so {"a": 1, "b": 2} and {"b": 2, "a": 1} are the same call.

- LocalIdempotency is CAR's per-runtime cache. When two threads of one runtime make the
  same call at once, the second waits for the first and takes its output.
- SharedIdempotency keeps the cache in a state store, so that every runtime in every
  process sharing the store deduplicates against the others (CAR-SPEC 5.10). The entry
  for a call is state key "carmp/idempotency/<key>":
      {"status": "running", "owner": [pid, start time], "token": hex}   while it runs
      {"status": "done", "output": <output>}                             once it succeeded
  The first caller claims the key with compare_and_set from absent. A caller that finds
  it running waits for the winner's output (polling the key, 1 ms doubling up to 50 ms).
  If the winner fails, it removes its claim and a waiter claims the key and runs the call
  itself. If the winner's process died, a waiter takes the claim over. A wait lasts at
  most until the caller's deadline (TimeoutError), forever without one.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from carmp.shared.proc import is_alive, own_identity
from carmp.shared.state import DELETE, StateStore

PREFIX = "carmp/idempotency/"
ACTION_ID = "idempotency"
FIRST_POLL = 0.001
LONGEST_POLL = 0.05


def idempotency_key(tool: str, parameters: Mapping[str, Any]) -> str:
    """The cache key of a call: same tool and same parameters, same key."""
    canonical = orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(tool.encode() + b"\0" + canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Cached:
    """A call made before: its output."""

    output: Any


class Claim(Protocol):
    """The right to make a call; end it with finish(output) or, on failure, abandon()."""

    def finish(self, output: Any) -> None: ...

    def abandon(self) -> None: ...


class IdempotencyCache(Protocol):
    def claim(self, key: str, deadline: float | None) -> Cached | Claim:
        """The cached output, or the claim to run the call; a call running elsewhere is
        waited for until `deadline` (time.monotonic(); TimeoutError past it)."""
        ...


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _waited_too_long(key: str) -> TimeoutError:
    return TimeoutError(f"gave up waiting for another run of the same idempotent call "
                        f"(key {key[:12]}...) to finish before this action's timeout")


class LocalIdempotency:
    """CAR's per-runtime cache, safe for the runtime's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outputs: dict[str, bytes] = {}  # JSON: every hit gets its own copy
        self._running: dict[str, threading.Event] = {}

    def claim(self, key: str, deadline: float | None) -> Cached | Claim:
        while True:
            with self._lock:
                if key in self._outputs:
                    return Cached(orjson.loads(self._outputs[key]))
                running = self._running.get(key)
                if running is None:
                    self._running[key] = threading.Event()
                    return _LocalClaim(self, key)
            if not running.wait(_remaining(deadline)):
                raise _waited_too_long(key)

    def _settle(self, key: str, output: bytes | None) -> None:
        with self._lock:
            if output is not None:
                self._outputs[key] = output
            self._running.pop(key).set()


class _LocalClaim:
    def __init__(self, cache: LocalIdempotency, key: str) -> None:
        self._cache = cache
        self._key = key

    def finish(self, output: Any) -> None:
        self._cache._settle(self._key, orjson.dumps(output))

    def abandon(self) -> None:
        self._cache._settle(self._key, None)


class SharedIdempotency:
    """The cache in a state store, shared by every process attached to it."""

    def __init__(self, store: StateStore, sleep: Callable[[float], None] = time.sleep) -> None:
        self._store = store
        self._sleep = sleep

    def claim(self, key: str, deadline: float | None) -> Cached | Claim:
        state_key = PREFIX + key
        poll = FIRST_POLL
        while True:
            record, version = self._store.get_with_version(state_key)
            if version and isinstance(record, dict) and record.get("status") == "done":
                return Cached(record.get("output"))
            if version == 0 or not _owner_alive(record):
                token = uuid.uuid4().hex
                running = {"status": "running", "owner": list(own_identity()), "token": token}
                if self._store.compare_and_set(state_key, version, running, ACTION_ID):
                    return _SharedClaim(self._store, state_key, token)
                continue  # someone else claimed or finished it first: look again
            remaining = _remaining(deadline)
            if remaining == 0.0:
                raise _waited_too_long(key)
            self._sleep(poll if remaining is None else min(poll, remaining))
            poll = min(poll * 2, LONGEST_POLL)


def _owner_alive(record: Any) -> bool:
    """True when `record` is a running claim whose process still lives."""
    if not isinstance(record, dict) or record.get("status") != "running":
        return False
    owner = record.get("owner")
    if not (isinstance(owner, list) and len(owner) == 2
            and all(type(part) is int for part in owner)):
        return False
    return is_alive(owner[0], owner[1])


class _SharedClaim:
    def __init__(self, store: StateStore, state_key: str, token: str) -> None:
        self._store = store
        self._state_key = state_key
        self._token = token

    def finish(self, output: Any) -> None:
        self._store.set(self._state_key, {"status": "done", "output": output}, ACTION_ID)

    def abandon(self) -> None:
        """Remove the claim, unless a waiter already took it over."""
        record, version = self._store.get_with_version(self._state_key)
        if isinstance(record, dict) and record.get("token") == self._token:
            self._store.apply({self._state_key: DELETE}, ACTION_ID,
                              expected_versions={self._state_key: version},
                              abort_on_change=True)
