"""Idempotency caches: canonical keys, the per-runtime cache, and the cache shared through
the state store (claims, waiting for the winner, failed and dead winners)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import multiprocess
import pytest

from carmp import StateStore
from carmp.runtime.idempotency import (
    PREFIX,
    Cached,
    LocalIdempotency,
    SharedIdempotency,
    idempotency_key,
)

WAIT = 60.0  # bounded waits: only hit when something is broken


@pytest.fixture
def store() -> Iterator[StateStore]:
    with StateStore(max_keys=64, capacity_bytes=1 << 16, transition_log_bytes=1 << 14) as made:
        yield made


def test_the_key_is_the_tool_and_the_canonical_parameters() -> None:
    key = idempotency_key("search", {"q": "x", "opts": {"a": 1, "b": [1, 2]}})
    assert key == idempotency_key("search", {"opts": {"b": [1, 2], "a": 1}, "q": "x"})
    assert key != idempotency_key("fetch", {"q": "x", "opts": {"a": 1, "b": [1, 2]}})
    assert key != idempotency_key("search", {"q": "x", "opts": {"a": 1, "b": [2, 1]}})
    assert idempotency_key("t", {"n": 1}) != idempotency_key("t", {"n": "1"})


def claim_of(found: Any) -> Any:
    assert not isinstance(found, Cached)
    return found


def test_local_cache_keeps_successes_as_copies_and_forgets_failures() -> None:
    cache = LocalIdempotency()
    claim_of(cache.claim("k", None)).abandon()           # a failed call leaves no trace
    claim_of(cache.claim("k", None)).finish({"items": [1]})
    hit = cache.claim("k", None)
    assert hit == Cached({"items": [1]})
    assert isinstance(hit, Cached)
    hit.output["items"].append(2)                         # the caller's copy, not the cache's
    assert cache.claim("k", None) == Cached({"items": [1]})


def test_local_cache_makes_a_second_caller_wait_for_the_first() -> None:
    cache = LocalIdempotency()
    first = claim_of(cache.claim("k", None))
    with pytest.raises(TimeoutError, match="gave up waiting"):
        cache.claim("k", time.monotonic())              # running elsewhere: it waits
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(cache.claim("k", None)))
    waiter.start()
    first.finish("out")
    waiter.join(WAIT)
    assert got == [Cached("out")]


def test_shared_cache_claims_in_the_store_and_hits_across_handles(store: StateStore) -> None:
    key = idempotency_key("t", {"n": 1})
    claim = claim_of(SharedIdempotency(store).claim(key, None))
    running = store.get(PREFIX + key)
    assert running["status"] == "running" and running["owner"][0] > 0
    claim.finish({"v": 1})
    with StateStore.attach(store.name) as attached:
        assert SharedIdempotency(attached).claim(key, None) == Cached({"v": 1})
    assert store.get(PREFIX + key) == {"status": "done", "output": {"v": 1}}


def test_a_waiter_gets_the_winners_output(store: StateStore) -> None:
    winner = claim_of(SharedIdempotency(store).claim("k", None))
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the waiter's poll: the winner finishes meanwhile
        polls.append(seconds)
        if len(polls) == 3:
            winner.finish("done by the winner")

    assert SharedIdempotency(store, sleep).claim("k", None) == Cached("done by the winner")
    assert polls == [0.001, 0.002, 0.004]


def test_when_the_winner_fails_a_waiter_runs_the_call_itself(store: StateStore) -> None:
    winner = claim_of(SharedIdempotency(store).claim("k", None))
    waiter = SharedIdempotency(store, lambda seconds: winner.abandon())
    second = claim_of(waiter.claim("k", None))
    second.finish(2)
    assert SharedIdempotency(store).claim("k", None) == Cached(2)


def test_a_wait_ends_at_the_deadline(store: StateStore) -> None:
    claim_of(SharedIdempotency(store).claim("k", None))
    with pytest.raises(TimeoutError, match="gave up waiting"):
        SharedIdempotency(store, lambda seconds: None).claim("k", time.monotonic())


def test_a_dead_winners_claim_is_taken_over(store: StateStore) -> None:
    child = multiprocess.get_context("fork").Process(target=claim_and_exit, args=(store,))
    child.start()
    child.join(WAIT)
    assert child.exitcode == 0 and store.get(PREFIX + "k")["status"] == "running"
    taken = claim_of(SharedIdempotency(store, lambda s: pytest.fail("waited")).claim("k", None))
    taken.finish("mine")
    assert store.get(PREFIX + "k") == {"status": "done", "output": "mine"}


def claim_and_exit(store: StateStore) -> None:
    SharedIdempotency(store).claim("k", None)  # and never finish: the process ends


def test_an_abandon_leaves_a_claim_that_was_taken_over(store: StateStore) -> None:
    stale = claim_of(SharedIdempotency(store).claim("k", None))
    store.set(PREFIX + "k", {"status": "running", "owner": [0, 0], "token": "dead"}, "test")
    taker = claim_of(SharedIdempotency(store).claim("k", None))
    stale.abandon()                                       # not its claim any more
    assert store.get(PREFIX + "k")["status"] == "running"
    taker.finish(1)
    assert SharedIdempotency(store).claim("k", None) == Cached(1)
