"""One of carmp's shared primitives, hosted in a Ray actor.

The Ray backend does not reimplement the state store, event log, budget, policy set or
mailbox. Each lives in one actor process as the very same local object (the same code,
limits and journal format), and a client forwards calls to it. This module is the
generic part:

- `PrimitiveHost`, the actor: it builds its object from a picklable factory (again after
  a restart: a factory that replays a journal recovers the object) and answers
  `call(method, args, kwargs, key)`. Errors travel back as values, so the caller gets the
  primitive's own exception types.
- `HostedClient`, the caller's side: it resends a call the actor lost while it restarted,
  for up to RESTART_WAIT seconds, then raises WorldUnavailable. A mutation carries an
  idempotency key, and the actor answers a repeated key with the first reply instead of
  applying it again: Ray actor calls are at-most-once, and a call reported as failed may
  still have run. Those replies live in the actor's memory; a primitive that must answer
  a repeat after a restart too defines `call_keyed(key, method, args, kwargs)`, which
  receives the mutations with their key ("<writer>-<n>") and keeps its own durable record.

Host actors take no CPU slot (num_cpus=0): the cluster's CPUs are the workers'. A call
runs to completion on the actor's one thread, so a client waits (for room, for a
message) by polling with short calls, never by blocking the actor.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Self

from carmp.backends.on_ray.cluster import ray_module
from carmp.errors import WorldUnavailable

RESTART_WAIT = 30.0        # how long a client resends to an actor that is restarting
RESEND_PAUSE = 0.05
REMEMBERED_REPLIES = 8192  # idempotency keys an actor answers from memory


class PrimitiveHost:
    """The actor body: one primitive, built by `factory` (in every incarnation)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.target = factory()
        self.replies: collections.OrderedDict[str, tuple[bool, Any]] = collections.OrderedDict()

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             key: str | None) -> tuple[bool, Any]:
        if key is not None:
            known = self.replies.get(key)
            if known is not None:
                return known
        if method.startswith("_"):
            return False, AttributeError(f"{method!r} is not a public method of "
                                         f"{type(self.target).__name__}")
        keyed = None if key is None else getattr(self.target, "call_keyed", None)
        try:
            reply: tuple[bool, Any] = (
                True, getattr(self.target, method)(*args, **kwargs) if keyed is None
                else keyed(key, method, args, kwargs))
        except Exception as exc:  # the primitive's error is the caller's answer
            reply = (False, exc)
        if key is not None:
            self.replies[key] = reply
            if len(self.replies) > REMEMBERED_REPLIES:
                self.replies.popitem(last=False)
        return reply

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        close = getattr(self.target, "close", None)
        if close is not None:
            close()



class HostedPart:
    """The lifecycle every client of a hosted primitive shares: close() lets go of it
    here (by default nothing: the actor lives on for other clients), close_host() is the
    owner's, closing the primitive and ending its actor; a client is a context manager."""

    hosted: HostedClient

    def close(self) -> None:
        """Nothing to let go: the actor lives on for other clients."""

    def close_host(self) -> None:
        """For the owner: close the hosted primitive (its segments, journal) and end its actor."""
        self.hosted.close_host()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

def start_host(factory: Callable[[], Any], *, what: str,
               max_restarts: int = -1) -> HostedClient:
    """A new PrimitiveHost actor, restarted by Ray when its process dies, and a client of
    it that names it `what` in its errors."""
    return HostedClient(_host_class(max_restarts).remote(factory), what)


@functools.cache
def _host_class(max_restarts: int) -> Any:
    """The actor class, made once per process: Ray exports a class each time it is made."""
    return ray_module().remote(num_cpus=0, max_restarts=max_restarts)(PrimitiveHost)


class HostedClient:
    """Calls one hosted primitive. Pickles as its actor handle, so it travels to workers."""

    def __init__(self, handle: Any, what: str) -> None:
        self.handle = handle
        self.what = what
        self._writer = secrets.token_hex(6)
        self._keys = itertools.count(1)

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        return (HostedClient, (self.handle, self.what))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A read: resent as is if the actor restarts."""
        return self._send(method, args, kwargs, None)

    def mutate(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A change: resent with the same idempotency key, so it applies at most once."""
        return self._send(method, args, kwargs, f"{self._writer}-{next(self._keys)}")

    def _send(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              key: str | None) -> Any:
        ray = ray_module()
        deadline = time.monotonic() + RESTART_WAIT
        while True:
            try:
                ok, value = ray.get(self.handle.call.remote(method, args, kwargs, key))
                break
            except ray.exceptions.RayActorError as exc:
                if time.monotonic() > deadline:
                    raise WorldUnavailable(
                        f"the {self.what} actor did not answer {method}() for {RESTART_WAIT} s: "
                        f"it died and did not come back ({exc}); check the Ray cluster "
                        "(`ray status`) and start the farm again") from exc
                time.sleep(RESEND_PAUSE)
        if not ok:
            raise value
        return value

    def close_host(self) -> None:
        """Close the primitive (its segments and journal) and end the actor."""
        ray = ray_module()
        try:
            ray.get(self.handle.close.remote())
        except ray.exceptions.RayActorError:
            pass  # already gone
        ray.kill(self.handle, no_restart=True)
