"""Shared key/value throughput: carmp's StateStore against the usual ways to share a dict
between processes, in one run (see /work/shared/design/BENCHMARKS.md).

Workload, per worker process: 1,000 keys holding small JSON values (a 3-field object);
the worker walks a fixed pseudo-random sequence of keys and alternates get and set
(50/50); every call counts as one op. A second case times `get` alone. Peers, each used
the way its users would:

- Manager dict: multiprocessing.Manager().dict(), values pickled by the proxy;
- UltraDict: UltraDict with its shared lock (shared_lock=True), a 4 MiB buffer;
- LMDB: an environment on /dev/shm (tmpfs), one transaction per op, sync off, values
  as orjson bytes;
- Redis: redis-server on 127.0.0.1 (started on a free port for the run, stopped after),
  GET/SET of orjson bytes; the row is skipped, with a note, when redis-server is absent.

Subjects are filled before timing; workers attach each one by name or path where it has
one, as real workers would, and start together on a barrier (_harness.time_in_processes).
Slow peers run fewer ops per measurement: only rates are compared.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import orjson
from _harness import (
    Body,
    Prepare,
    Spread,
    command_line,
    interleaved,
    machine_line,
    markdown_table,
    si,
    target_line,
    time_in_processes,
    write_result,
)

from carmp import StateStore

KEYS = [f"key-{i}" for i in range(1000)]
REPEATS = 3
CARMP = "carmp"
MANAGER = "Manager dict"
ULTRADICT = "UltraDict"
LMDB = "LMDB"
REDIS = "Redis"
# ops per process per measurement; slow peers run fewer (rates are what count)
DEFAULT_OPS = {CARMP: 1_000_000, ULTRADICT: 200_000, LMDB: 400_000, MANAGER: 20_000, REDIS: 20_000}
QUICK_DIVISOR = 50
TARGET_TOTAL = 1e6        # carmp ops/s, 2 processes, 50/50
TARGET_VS = {ULTRADICT: 8.0, MANAGER: 30.0, LMDB: 3.0}
TARGET_SINGLE_GET = 2e6   # carmp get ops/s, 1 process
MIXED, GETS = "50/50 get/set", "get"

Ops = tuple[Callable[[str], Any], Callable[[str, Any], Any]]
"""A subject's get and set, bound in one worker process."""
Attach = Callable[[], Ops]
"""Runs in a worker: attaches the subject and returns its ops."""


def small_value(i: int) -> dict[str, Any]:
    return {"n": i, "agent": f"agent-{i % 17}", "ok": i % 2 == 0}


@contextmanager
def carmp_store() -> Iterator[Attach]:
    store = StateStore(max_keys=4096, capacity_bytes=8 << 20)
    try:
        for i, key in enumerate(KEYS):
            store.set(key, small_value(i), "fill")

        def attach() -> Ops:
            mine = StateStore.attach(store.name)
            return mine.get, lambda key, value: mine.set(key, value, "bench")

        yield attach
    finally:
        store.close()


@contextmanager
def manager_peer() -> Iterator[Attach]:
    with multiprocessing.get_context("fork").Manager() as manager:
        shared = manager.dict({key: small_value(i) for i, key in enumerate(KEYS)})

        def attach() -> Ops:
            return shared.get, shared.__setitem__

        yield attach


@contextmanager
def ultradict_peer() -> Iterator[Attach]:
    from UltraDict import UltraDict

    name = f"bench_state_{os.getpid()}_{secrets.token_hex(3)}"
    shared = UltraDict(name=name, create=True, buffer_size=4 << 20, shared_lock=True,
                       full_dump_size=4 << 20, auto_unlink=False)
    try:
        shared.update({key: small_value(i) for i, key in enumerate(KEYS)})

        def attach() -> Ops:
            mine = UltraDict(name=name, create=False, shared_lock=True, auto_unlink=False)
            return mine.get, mine.__setitem__

        yield attach
    finally:
        shared.unlink()
        shared.close()


@contextmanager
def lmdb_peer() -> Iterator[Attach]:
    import lmdb

    directory = tempfile.mkdtemp(prefix="bench-state-lmdb-", dir="/dev/shm")
    options = dict(map_size=256 << 20, sync=False, metasync=False, max_dbs=0)
    try:
        with lmdb.open(directory, **options) as env, env.begin(write=True) as txn:
            for i, key in enumerate(KEYS):
                txn.put(key.encode(), orjson.dumps(small_value(i)))

        def attach() -> Ops:
            env = lmdb.open(directory, **options)  # opened after fork, as LMDB requires

            def get(key: str) -> Any:
                with env.begin() as txn:
                    raw = txn.get(key.encode())
                return None if raw is None else orjson.loads(raw)

            def put(key: str, value: Any) -> None:
                with env.begin(write=True) as txn:
                    txn.put(key.encode(), orjson.dumps(value))

            return get, put

        yield attach
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_peer() -> Iterator[Attach]:
    import redis

    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {port}") from None
                time.sleep(0.05)
        client.mset({key: orjson.dumps(small_value(i)) for i, key in enumerate(KEYS)})

        def attach() -> Ops:
            mine = redis.Redis(port=port)

            def get(key: str) -> Any:
                raw = mine.get(key)
                return None if raw is None else orjson.loads(raw)

            return get, lambda key, value: mine.set(key, orjson.dumps(value))

        yield attach
    finally:
        server.terminate()
        server.wait(10)


SUBJECTS: dict[str, Callable[[], AbstractContextManager[Attach]]] = {
    CARMP: carmp_store,
    ULTRADICT: ultradict_peer,
    LMDB: lmdb_peer,
    MANAGER: manager_peer,
    REDIS: redis_peer,
}


def workload(attach: Attach, ops: int, mixed: bool, seed: int) -> Prepare:
    """One worker's prepare step: attach, then time `ops` calls on a fixed key sequence."""

    def prepare() -> Body:
        get, put = attach()
        rng = random.Random(seed + os.getpid())
        keys = [rng.choice(KEYS) for _ in range(4096)]
        values = [small_value(i) for i in range(4096)]

        def mixed_body() -> None:
            for i in range(ops // 2):
                key = keys[i & 4095]
                get(key)
                put(key, values[i & 4095])

        def get_body() -> None:
            for i in range(ops):
                get(keys[i & 4095])

        return mixed_body if mixed else get_body

    return prepare


def ops_per_second(attach: Attach, ops: int, processes: int, mixed: bool) -> Callable[[], float]:
    """A measure for interleaved(): total ops/s over all processes."""
    prepare = workload(attach, ops, mixed, seed=processes)
    total = (ops // 2 * 2 if mixed else ops) * processes
    return lambda: total / time_in_processes(prepare, processes)


CASES = ((2, MIXED), (1, MIXED), (1, GETS))


def case_name(processes: int, kind: str, subject: str) -> str:
    return f"{processes} process{'es' if processes > 1 else ''}, {kind}, {subject}"


def report(spreads: dict[str, Spread], ops: dict[str, int], skipped: dict[str, str]) -> str:
    rows = []
    for processes, kind in CASES:
        carmp = spreads[case_name(processes, kind, CARMP)].median
        for subject in SUBJECTS:
            name = case_name(processes, kind, subject)
            if subject in skipped:
                rows.append([name, "-", "-", "-", f"skipped: {skipped[subject]}"])
                continue
            spread = spreads[name]
            ratio = "-" if subject == CARMP else f"{carmp / spread.median:.1f}x"
            rows.append([name, si(spread.median), si(spread.low), si(spread.high), ratio])
    table = markdown_table(["case", "median ops/s", "min", "max", "carmp / peer"], rows)
    total = spreads[case_name(2, MIXED, CARMP)].median
    single_get = spreads[case_name(1, GETS, CARMP)].median
    targets = [target_line(f">= {si(TARGET_TOTAL)} ops/s total, 2 processes, {MIXED}", si(total),
                           total >= TARGET_TOTAL)]
    for peer, factor in TARGET_VS.items():
        if peer in skipped:
            continue
        ratio = total / spreads[case_name(2, MIXED, peer)].median
        targets.append(target_line(f">= {factor:g}x {peer}, 2 processes, {MIXED}",
                                   f"{ratio:.1f}x", ratio >= factor))
    targets.append(target_line(f">= {si(TARGET_SINGLE_GET)} get ops/s, 1 process", si(single_get),
                               single_get >= TARGET_SINGLE_GET))
    counts = ", ".join(f"{subject} {count:,}" for subject, count in ops.items())
    return "\n".join([
        "## Shared key/value: 1,000 keys, small JSON values",
        "",
        f"{machine_line()}; fork",
        f"`{command_line()}`: ops per process per measurement: {counts}; "
        f"median of {REPEATS} interleaved repeats",
        "",
        table,
        "",
        *targets,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Shared key/value throughput: carmp vs Manager dict, UltraDict, LMDB, Redis.")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run with 1/{QUICK_DIVISOR} of the ops")
    args = parser.parse_args()
    ops = {subject: max(2, count // (QUICK_DIVISOR if args.quick else 1))
           for subject, count in DEFAULT_OPS.items()}
    skipped = {} if shutil.which("redis-server") else {
        REDIS: "redis-server is not installed (apt-get install redis-server)"}
    with ExitStack() as stack:
        measures = {}
        for subject, open_subject in SUBJECTS.items():
            if subject in skipped:
                continue
            attach = stack.enter_context(open_subject())
            for processes, kind in CASES:
                measures[case_name(processes, kind, subject)] = ops_per_second(
                    attach, ops[subject], processes, kind == MIXED)
        samples = interleaved(measures, REPEATS)
    text = report({name: Spread.of(values) for name, values in samples.items()}, ops, skipped)
    print(text)
    print(f"\nwritten to {write_result('state', text)}")


if __name__ == "__main__":
    main()
