"""AgentContext: one agent's private overlay on the shared StateStore (CAR's task_context).

CAR semantics: reads look in the overlay first, then in the parent store; writes stay
in the overlay; `merge_to_parent()` copies the overlay's changes into the parent (a
pattern merges only agents that succeeded and drops the rest). Code deep inside an
agent finds its context with `current_context()` / `TaskScope`.

Beyond CAR: deletes are tombstones, so an overlay can remove parent keys; the overlay
remembers the parent's version of every key when it first read or wrote it, and the
merge reports the keys it changed that the parent changed too in between (lost
updates). Policy `last_writer_wins` (CAR's, the default) merges anyway and reports
them; `reject` merges nothing and raises MergeConflict naming them. A merge is one
atomic batch in the parent, its transitions tagged "merge:<agent name>".

Overlay values are kept as JSON bytes, like the parent's, so a value read back is a
copy and a non-JSON value fails at `set`, naming its key.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson

from carmp.errors import MergeConflict
from carmp.shared.state import DELETE, StateStore, StateTransition

MergePolicy = Literal["last_writer_wins", "reject"]
POLICIES: tuple[MergePolicy, ...] = ("last_writer_wins", "reject")
T = TypeVar("T")

NO_ENTRY: Any = object()
"""entry() of a key the overlay never wrote or deleted."""

_current: contextvars.ContextVar[AgentContext | None] = contextvars.ContextVar(
    "carmp_agent_context", default=None)


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What merge_to_parent() did. `conflicts`: keys this overlay changed that the parent
    also changed after the overlay first read or wrote them (lost updates); `stale_reads`:
    keys only read here that changed in the parent since."""

    agent_name: str
    merged: tuple[str, ...]
    conflicts: tuple[str, ...]
    stale_reads: tuple[str, ...]
    transitions: list[StateTransition]


@dataclass(frozen=True, slots=True)
class OverlayDelta:
    """An overlay in transit: `changes` maps each key to its JSON text (None: deleted),
    `seen` to the parent version it was first read or written at; `reads` lists the keys
    read from the parent (a changed key among them was read, then modified: the
    concurrency gate tells such a read-modify-write from a blind write)."""

    agent_name: str
    changes: dict[str, str | None]
    seen: dict[str, int]
    reads: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"agent_name": self.agent_name, "changes": self.changes, "seen": self.seen,
                "reads": list(self.reads)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OverlayDelta:
        return cls(data["agent_name"], dict(data["changes"]), dict(data["seen"]),
                   tuple(data.get("reads", ())))


class AgentContext:
    """An agent's overlay: `get` falls through to the parent, `set`/`delete` stay here
    until `merge_to_parent()`."""

    def __init__(self, agent_name: str, parent_state: StateStore, *,
                 policy: MergePolicy = "last_writer_wins") -> None:
        if policy not in POLICIES:
            raise ValueError(f"merge policy must be one of {POLICIES}, got {policy!r}")
        self.agent_name = agent_name
        self.policy: MergePolicy = policy
        self._parent = parent_state
        self._local: dict[str, bytes | None] = {}  # JSON bytes; None: deleted here
        self._seen: dict[str, int] = {}             # parent version at first read or write
        self._reads: set[str] = set()               # keys read from the parent

    @property
    def parent_state(self) -> StateStore:
        return self._parent

    # ---- reads -----------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The overlay's value, else the parent's; None when absent or deleted here."""
        return self.get_or(key, None)

    def get_or(self, key: str, default: Any) -> Any:
        if key in self._local:
            data = self._local[key]
            return default if data is None else orjson.loads(data)
        value, version = self._parent.get_with_version(key)
        self._seen.setdefault(key, version)
        self._reads.add(key)
        return default if version == 0 else value

    def exists(self, key: str) -> bool:
        if key in self._local:
            return self._local[key] is not None
        version = self._parent.version(key)
        self._seen.setdefault(key, version)
        self._reads.add(key)
        return version != 0

    def keys(self) -> list[str]:
        visible = set(self._parent.keys())
        for key, data in self._local.items():
            if data is None:
                visible.discard(key)
            else:
                visible.add(key)
        return sorted(visible)

    def changes(self) -> dict[str, Any]:
        """The overlay's pending changes: key -> value, or DELETE."""
        return {key: DELETE if data is None else orjson.loads(data)
                for key, data in self._local.items()}

    # ---- writes (local) ------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        data = self._parent.encode(key, value)
        self._remember(key)
        self._local[key] = data

    def delete(self, key: str) -> None:
        """Hide the key here; the merge deletes it in the parent."""
        self._parent.check_key(key)
        self._remember(key)
        self._local[key] = None

    def _remember(self, key: str) -> None:
        if key not in self._seen:
            self._seen[key] = self._parent.version(key)

    def entry(self, key: str) -> object:
        """The overlay's own entry for `key`: its JSON bytes, None when deleted here, or
        NO_ENTRY when the overlay never touched it (reads fall through)."""
        entry: object = self._local.get(key, NO_ENTRY)
        return entry

    def put_entry(self, key: str, entry: object) -> None:
        """Put back an entry that entry() returned (NO_ENTRY drops the key's entry): how
        a proposal's rollback undoes its writes to an overlay."""
        if entry is NO_ENTRY:
            self._local.pop(key, None)
        else:
            assert entry is None or isinstance(entry, bytes)
            self._local[key] = entry

    def delta(self) -> OverlayDelta:
        """The pending changes and the parent versions they rest on, as plain data: what
        an agent in a worker process sends home for its pattern to merge."""
        return OverlayDelta(self.agent_name,
                            {key: None if data is None else data.decode()
                             for key, data in self._local.items()},
                            dict(self._seen), tuple(sorted(self._reads)))

    @classmethod
    def from_delta(cls, parent_state: StateStore, delta: OverlayDelta, *,
                   policy: MergePolicy = "last_writer_wins") -> AgentContext:
        """An overlay over `parent_state` holding `delta`, ready to merge_to_parent()."""
        context = cls(delta.agent_name, parent_state, policy=policy)
        context._local = {key: None if text is None else text.encode()
                          for key, text in delta.changes.items()}
        context._seen = dict(delta.seen)
        context._reads = set(delta.reads)
        return context

    def discard(self) -> None:
        """Drop every local change (an agent that failed)."""
        self._local.clear()
        self._seen.clear()
        self._reads.clear()

    # ---- merge ------------------------------------------------------------------------------

    def merge_to_parent(self, policy: MergePolicy | None = None) -> MergeReport:
        """Write the overlay's changes into the parent as one atomic batch, then start
        afresh. With policy "reject", a lost-update conflict merges nothing, keeps the
        overlay, and raises MergeConflict."""
        policy = self.policy if policy is None else policy
        if policy not in POLICIES:
            raise ValueError(f"merge policy must be one of {POLICIES}, got {policy!r}")
        changes = {key: DELETE if data is None else orjson.Fragment(data)
                   for key, data in self._local.items()}
        outcome = self._parent.apply(
            changes, f"merge:{self.agent_name}",
            expected_versions={key: self._seen[key] for key in changes},
            abort_on_change=policy == "reject")
        if not outcome.applied:
            raise MergeConflict(self.agent_name, outcome.changed)
        stale = tuple(key for key, version in self._seen.items()
                      if key not in changes and self._parent.version(key) != version)
        report = MergeReport(self.agent_name, tuple(changes), outcome.changed, stale,
                             outcome.transitions)
        self.discard()
        return report

    # ---- finding the current context ------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self) -> Iterator[AgentContext]:
        """`with ctx.scope():` makes ctx the current context in this thread or task."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def __repr__(self) -> str:
        return (f"<AgentContext {self.agent_name!r} over {self._parent.name}: "
                f"{len(self._local)} local changes>")


def current_context() -> AgentContext | None:
    """The context of the agent running here, or None outside any scope."""
    return _current.get()


class TaskScope:
    """CAR's TaskScope: run code with an agent's context installed."""

    @staticmethod
    def run(ctx: AgentContext, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        with ctx.scope():
            return fn(*args, **kwargs)

    @staticmethod
    async def run_async(ctx: AgentContext, awaitable: Awaitable[T]) -> T:
        with ctx.scope():
            return await awaitable

    @staticmethod
    def try_with(fn: Callable[[AgentContext], T]) -> T | None:
        """fn(current context), or None outside any scope."""
        ctx = _current.get()
        return None if ctx is None else fn(ctx)

    @staticmethod
    def agent_name() -> str | None:
        ctx = _current.get()
        return None if ctx is None else ctx.agent_name
