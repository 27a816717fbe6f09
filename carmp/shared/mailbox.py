"""Mailbox: bounded per-agent message queues that every process of a run shares
(CAR-SPEC 2.9), in one segment attached by name.

CAR's Mailbox is a map of in-process channels; this one lives in shared memory, so an
agent running in one worker process can message an agent running in another.

- `register(name)` gives the agent a queue and returns its MailboxReceiver. Registering
  a name again replaces its receiver (CAR: "re-registering a name replaces its sender"):
  the queue, with the messages already in it, passes to the new receiver and the old one
  gets MailboxClosed. So an agent restarted in a fresh worker finds what was sent to it.
- `send(msg)` routes by `msg.to`. A name that is not registered (never, or no longer) is
  MailboxSend naming it. A full queue blocks the sender (backpressure) until the receiver
  makes room, or until `timeout` passes (MailboxFull); a message over max_message_bytes is
  MessageTooLarge. Either way nothing is sent.
- `broadcast(msg)` sends to every registered agent except `msg.sender` (CAR leaves this
  open; an agent has no use for its own announcement).
- `unregister(name)` frees the slot and discards what its queue held.
- `receiver.recv(timeout)` returns the oldest message, or raises MailboxTimeout(agent)
  once `timeout` passes; `try_recv()` returns None at once when the queue is empty.

A queue is bounded twice: at most capacity_per_agent messages, and at most queue_bytes
of records (a message takes its JSON length plus 8 bytes, rounded up to 8). It is FIFO,
so messages from one sender arrive in the order they were sent.

How it holds up across processes: every change to a queue happens under its slot's
RobustLock, held by senders and receivers alike, so any number of each may share a queue;
register and unregister hold the table lock first. A process killed while holding a lock
wedges nothing: the next acquirer takes the lock over, the undo log rolls back a
half-written registration, and a repair hook fixes the message count and wakes the
waiters. Waiters sleep (GIL released, Ctrl-C honoured) on their slot's `changes` word,
which every send, receive, register and unregister bumps. Messages cross as JSON
(orjson), never as pickles.

Payload layout (offsets from the payload start, 8-byte little-endian words):

    offset  size                 field
    0       8                    max_agents: slots in the table
    8       8                    capacity_per_agent: messages a queue holds
    16      8                    queue_bytes: record bytes a queue holds (a power of two)
    24      8                    max_message_bytes
    32      8                    full waits: sends that found their queue full and waited
    64      RobustLock.size(0)   the table lock, held by register and unregister
    SLOTS   SLOT * max_agents    agent slots, each laid out as below

Slot layout (offsets from the slot's start):

    0       8                    state: 0 free, 1 registered
    8       8                    generation: bumped by every register and unregister
    16      8                    hash64 of the name
    24      8                    name length in bytes
    32      8                    queued messages
    40      8                    changes: futex word, bumped by every change of the slot
    48      8                    waiters: processes asleep on `changes`
    64      64                   name, UTF-8, NUL-padded
    128     RobustLock.size(16)  the slot lock; its undo log covers a registration
    BELLS   2 * BELL_SIZE        the queue's channel bells (nobody sleeps on them)
    QUEUE   256 + queue_bytes    the queue: a native Channel of [length, tag, JSON] records
"""

from __future__ import annotations

import enum
import functools
import math
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from carmp import _native
from carmp.errors import (
    InvalidAgentJson,
    InvalidMailbox,
    MailboxClosed,
    MailboxFull,
    MailboxSend,
    MailboxTableFull,
    MailboxTimeout,
    MessageTooLarge,
    SegmentCorrupt,
)
from carmp.shared.lock import RobustLock
from carmp.shared.segment import HEADER_SIZE, Segment
from carmp.shared.wire import Wire

LAYOUT_VERSION = 1
KIND = "mailbox"
DEFAULT_CAPACITY = 64
DEFAULT_MAX_AGENTS = 64
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024
DEFAULT_QUEUE_BYTES = 64 * 1024
MAX_QUEUE_BYTES = 1 << 32
MAX_AGENTS_LIMIT = 4096
MAX_NAME_BYTES = 64
UNDO_CAPACITY = 16
_RECORD_HEADER = 8
_TAG = 1
_FREE, _REGISTERED = 0, 1
_NAME_WORDS = struct.Struct(f"<{MAX_NAME_BYTES // 8}Q")

_P = HEADER_SIZE
MAX_AGENTS = _P
CAPACITY = _P + 8
QUEUE_BYTES = _P + 16
MAX_MESSAGE = _P + 24
FULL_WAITS = _P + 32
TABLE_LOCK = _P + 64
SLOTS = TABLE_LOCK + RobustLock.size(0)

_STATE, _GENERATION, _HASH, _NAME_LENGTH, _QUEUED, _CHANGES, _WAITERS = 0, 8, 16, 24, 32, 40, 48
_NAME = 64
_LOCK = 128
_BELLS = _LOCK + RobustLock.size(UNDO_CAPACITY)
_QUEUE = _BELLS + 2 * _native.BELL_SIZE


def slot_size(queue_bytes: int) -> int:
    """Bytes one agent slot takes, a multiple of 64."""
    return (_QUEUE + _native.CHANNEL_HEADER + queue_bytes + 63) // 64 * 64


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


# ---- messages ----------------------------------------------------------------------------


class MessageKind(enum.StrEnum):
    """What a message is for (CAR names the type; the kinds are carmp's)."""

    TEXT = "text"          # plain content, no answer expected
    REQUEST = "request"    # asks the recipient for something
    RESPONSE = "response"  # answers a request (reply_to holds the request's id)
    EVENT = "event"        # tells about something that happened, e.g. by broadcast


def _new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Message(Wire):
    """One inter-agent message, routed by `to`.

    Wire form (JSON): {"id", "sender", "to", "kind", "content", "timestamp"} plus
    "reply_to" when set. `content` is any JSON value; `timestamp` is seconds since the
    Unix epoch (a float orders and subtracts without parsing; CAR leaves the format open).
    Only `to` is required on the wire; unknown keys are ignored."""

    to: str
    sender: str = ""
    content: Any = None
    kind: MessageKind = MessageKind.TEXT
    reply_to: str | None = None
    id: str = field(default_factory=_new_message_id)
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        def bad(name: str, wanted: str) -> InvalidAgentJson:
            return InvalidAgentJson(f"Message.{name} must be {wanted}, got "
                                    f"{type(getattr(self, name)).__name__} "
                                    f"{getattr(self, name)!r:.80}")

        if type(self.to) is not str or not self.to:
            raise bad("to", "the non-empty name of the recipient agent")
        if type(self.sender) is not str:
            raise bad("sender", "a str (the sending agent's name, or '')")
        if type(self.id) is not str or not self.id:
            raise bad("id", "a non-empty str")
        if self.reply_to is not None and type(self.reply_to) is not str:
            raise bad("reply_to", "the id of the message answered, or None")
        stamp = self.timestamp
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) \
                or not math.isfinite(stamp):
            raise bad("timestamp", "seconds since the Unix epoch")
        try:
            object.__setattr__(self, "kind", MessageKind(self.kind))
        except ValueError:
            raise bad("kind", f"one of {[k.value for k in MessageKind]}") from None
        try:
            orjson.dumps(self.content)
        except TypeError as exc:
            raise InvalidAgentJson(f"Message.content must be JSON (dicts with str keys, "
                                   f"lists, str, numbers, bools, None): {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "sender": self.sender, "to": self.to,
                                "kind": self.kind.value, "content": self.content,
                                "timestamp": self.timestamp}
        if self.reply_to is not None:
            data["reply_to"] = self.reply_to
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        if not isinstance(data, Mapping):
            raise InvalidAgentJson(f"Message JSON must be an object, got {type(data).__name__}")
        if "to" not in data:
            raise InvalidAgentJson("Message JSON lacks the required field 'to' (the recipient)")
        known = {name: data[name] for name in _MESSAGE_FIELDS if name in data}
        for name in _DEFAULTED_WHEN_NULL:
            if name in known and known[name] is None:
                del known[name]
        return cls(**known)


_MESSAGE_FIELDS = tuple(f.name for f in fields(Message))
_DEFAULTED_WHEN_NULL = ("sender", "kind", "id", "timestamp")


# ---- the mailbox ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    queued: Mapping[str, int]  # registered agent -> messages waiting in its queue
    max_agents: int
    capacity_per_agent: int
    queue_bytes: int
    max_message_bytes: int
    full_waits: int            # sends that found their queue full and waited (backpressure)
    lock_recoveries: int       # locks taken over from dead processes


def _agent_name(name: Any) -> bytes:
    if type(name) is not str or not name:
        raise InvalidMailbox(f"an agent name must be a non-empty str, got {name!r}")
    try:
        encoded = name.encode()
    except UnicodeEncodeError as exc:
        raise InvalidMailbox(f"agent name {name!r} is not valid Unicode text ({exc})") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidMailbox(f"agent name {name[:40]!r}... is {len(encoded)} bytes as UTF-8; "
                             f"the mailbox holds names of at most {MAX_NAME_BYTES} bytes: "
                             "use a shorter name")
    return encoded


def _deadline(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 <= timeout < math.inf:
        raise InvalidMailbox(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


def _check_options(capacity_per_agent: Any, max_agents: Any, max_message_bytes: Any,
                   queue_bytes: Any) -> int:
    """Refuse bad options (InvalidMailbox); returns the queue bytes to use."""
    def whole(name: str, value: Any, low: int, high: int) -> None:
        if type(value) is not int or not low <= value <= high:
            raise InvalidMailbox(f"{name} must be an int from {low} to {high}, got {value!r}")

    whole("capacity_per_agent", capacity_per_agent, 1, 1 << 32)
    whole("max_agents", max_agents, 1, MAX_AGENTS_LIMIT)
    whole("max_message_bytes", max_message_bytes, 1, MAX_QUEUE_BYTES // 2 - _RECORD_HEADER)
    # a queue must hold one message of the largest size whatever its read position (the
    # channel's wrap marker can waste up to a record): twice the largest record
    needed = _power_of_two_at_least(2 * (_RECORD_HEADER + (max_message_bytes + 7) // 8 * 8))
    if queue_bytes is None:
        return max(needed, DEFAULT_QUEUE_BYTES)
    if type(queue_bytes) is not int or queue_bytes & (queue_bytes - 1) \
            or not needed <= queue_bytes <= MAX_QUEUE_BYTES:
        raise InvalidMailbox(
            f"queue_bytes must be a power of two from {needed} (twice the largest record of "
            f"a {max_message_bytes}-byte message) to {MAX_QUEUE_BYTES}, got {queue_bytes!r}")
    return queue_bytes


class Mailbox:
    """Bounded message queues, one per registered agent, shared by every process of a
    run; pickles by name and re-attaches in the receiving process.

    capacity_per_agent: messages one queue holds (CAR's buffer size). max_agents: agents
    registered at once. max_message_bytes: the longest message, as JSON. queue_bytes: the
    record bytes one queue holds, a power of two; by default 64 KiB, or the least that
    holds two records of the longest message when that is more."""

    def __init__(self, capacity_per_agent: int = DEFAULT_CAPACITY, *,
                 max_agents: int = DEFAULT_MAX_AGENTS,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 queue_bytes: int | None = None, run_id: str | None = None,
                 _segment: Segment | None = None) -> None:
        if _segment is not None:
            self._bind(_segment)
            return
        queue = _check_options(capacity_per_agent, max_agents, max_message_bytes, queue_bytes)
        size = SLOTS - HEADER_SIZE + max_agents * slot_size(queue)
        segment = Segment.create(KIND, size, layout_version=LAYOUT_VERSION, run_id=run_id)
        try:
            region = segment.region
            for offset, value in ((MAX_AGENTS, max_agents), (CAPACITY, capacity_per_agent),
                                  (QUEUE_BYTES, queue), (MAX_MESSAGE, max_message_bytes)):
                region.store(offset, value)
            RobustLock(region, TABLE_LOCK, undo_capacity=0).initialize()
            self._bind(segment)
            for slot in range(max_agents):
                self._locks[slot].initialize()
                self._queues[slot].initialize(queue)
            segment.mark_ready()
        except BaseException:
            segment.close()
            raise

    @classmethod
    def attach(cls, name: str) -> Mailbox:
        """Attach the mailbox segment `name` created by another process."""
        return cls(_segment=Segment.attach(name, kind=KIND, layout_version=LAYOUT_VERSION))

    def _bind(self, segment: Segment) -> None:
        self._segment = segment
        self._region = region = segment.region
        self.max_agents = region.load(MAX_AGENTS)
        self.capacity_per_agent = region.load(CAPACITY)
        self.queue_bytes = region.load(QUEUE_BYTES)
        self.max_message_bytes = region.load(MAX_MESSAGE)
        self._slot_size = slot_size(self.queue_bytes)
        sane = (1 <= self.max_agents <= MAX_AGENTS_LIMIT and self.capacity_per_agent >= 1
                and 1 <= self.max_message_bytes <= self.queue_bytes // 2 - _RECORD_HEADER
                and self.queue_bytes & (self.queue_bytes - 1) == 0)
        if not sane or SLOTS + self.max_agents * self._slot_size != segment.size:
            raise SegmentCorrupt(
                f"mailbox segment {segment.name}: {self.max_agents} slots of "
                f"{self.queue_bytes}-byte queues (max message {self.max_message_bytes}) do not "
                f"fit its {segment.size} bytes; remove it with `carmp cleanup` and create the "
                "mailbox again")
        self._table_lock = RobustLock(region, TABLE_LOCK, undo_capacity=0,
                                      label=f"table lock of mailbox {segment.name}")
        self._locks = [
            RobustLock(region, self._base(slot) + _LOCK, undo_capacity=UNDO_CAPACITY,
                       label=f"lock of slot {slot} of mailbox {segment.name}",
                       on_recover=functools.partial(self._repair, slot))
            for slot in range(self.max_agents)]
        self._queues = [
            _native.Channel(region, self._base(slot) + _QUEUE, self._base(slot) + _BELLS,
                            self._base(slot) + _BELLS + _native.BELL_SIZE)
            for slot in range(self.max_agents)]
        self._slots: dict[str, int] = {}  # where this process last found each agent

    def _base(self, slot: int) -> int:
        return SLOTS + slot * self._slot_size

    @property
    def name(self) -> str:
        return self._segment.name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Mailbox.attach, (self._segment.name,))

    def close(self) -> None:
        """Detach; in the creating process this also removes the segment. Do not close
        while another thread of this process is blocked in the mailbox."""
        self._segment.close()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._segment.closed:
            return f"<Mailbox {self.name} closed>"
        return f"<Mailbox {self.name} max_agents={self.max_agents}>"

    # ---- registration ------------------------------------------------------------------

    def register(self, name: str) -> MailboxReceiver:
        """Give agent `name` a queue and return its receiver. A name registered already
        keeps its queue and messages, which pass to the receiver returned now; the
        previous receiver gets MailboxClosed."""
        encoded = _agent_name(name)
        name_hash = _native.hash64(encoded)
        region = self._region
        with self._table_lock:
            slot = self._find(encoded, name_hash)
            fresh = slot < 0
            if fresh:
                slot = next((s for s in range(self.max_agents)
                             if region.load(self._base(s) + _STATE) == _FREE), -1)
                if slot < 0:
                    raise MailboxTableFull(
                        f"all {self.max_agents} agent slots of mailbox {self.name} are "
                        f"registered, so {name!r} cannot be; unregister agents that are done, "
                        "or create the mailbox with a larger max_agents")
            base = self._base(slot)
            with self._locks[slot] as lock:
                generation = region.load(base + _GENERATION) + 1
                writes = [(base + _GENERATION, generation)]
                if fresh:
                    padded = encoded.ljust(MAX_NAME_BYTES, b"\0")
                    writes += [(base + _NAME + 8 * i, word)
                               for i, word in enumerate(_NAME_WORDS.unpack(padded))]
                    writes += [(base + _HASH, name_hash), (base + _NAME_LENGTH, len(encoded)),
                               (base + _QUEUED, 0), (base + _STATE, _REGISTERED)]
                lock.write_words(writes)
                self._changed(slot)
        self._slots[name] = slot
        return MailboxReceiver(self, name, slot, generation)

    def unregister(self, name: str) -> int:
        """Free agent `name`'s slot: later sends to it raise MailboxSend and its receiver
        gets MailboxClosed. Returns how many queued messages were discarded; a name that
        is not registered is no error (0), as in CAR."""
        encoded = _agent_name(name)
        region = self._region
        with self._table_lock:
            slot = self._find(encoded, _native.hash64(encoded))
            if slot < 0:
                return 0
            base = self._base(slot)
            with self._locks[slot] as lock:
                discarded = region.load(base + _QUEUED)
                self._queues[slot].initialize(self.queue_bytes)
                lock.write_words([(base + _STATE, _FREE), (base + _HASH, 0),
                                  (base + _NAME_LENGTH, 0), (base + _QUEUED, 0),
                                  (base + _GENERATION, region.load(base + _GENERATION) + 1)])
                self._changed(slot)
        self._slots.pop(name, None)
        return discarded

    def registered(self) -> list[str]:
        """Names of the registered agents, in slot order."""
        with self._table_lock:
            return [self._name_at(slot) for slot in self._registered_slots()]

    def _registered_slots(self) -> list[int]:
        load = self._region.load
        return [s for s in range(self.max_agents) if load(self._base(s) + _STATE) == _REGISTERED]

    def _name_at(self, slot: int) -> str:
        base = self._base(slot)
        length = self._region.load(base + _NAME_LENGTH)
        if length > MAX_NAME_BYTES:
            raise SegmentCorrupt(f"mailbox {self.name}: slot {slot} says its name is {length} "
                                 f"bytes, over {MAX_NAME_BYTES}; remove the segment with "
                                 "`carmp cleanup` and create the mailbox again")
        return self._region.read(base + _NAME, length).decode("utf-8", "replace")

    def _holds(self, slot: int, encoded: bytes, name_hash: int) -> bool:
        """Whether `slot` is registered to that name (exact under the slot's lock; a
        hint without it)."""
        base, load = self._base(slot), self._region.load
        return (load(base + _STATE) == _REGISTERED and load(base + _HASH) == name_hash
                and load(base + _NAME_LENGTH) == len(encoded)
                and self._region.read(base + _NAME, len(encoded)) == encoded)

    def _find(self, encoded: bytes, name_hash: int) -> int:
        return next((s for s in range(self.max_agents) if self._holds(s, encoded, name_hash)),
                    -1)

    # ---- sending -----------------------------------------------------------------------------

    def send(self, msg: Message, timeout: float | None = None) -> None:
        """Put `msg` in the queue of agent `msg.to`, waiting while that queue is full (for
        at most `timeout` seconds; None waits as long as it takes)."""
        data = self._encode(msg)
        self._deliver(msg.to, data, _deadline(timeout), timeout)

    def broadcast(self, msg: Message, timeout: float | None = None) -> list[str]:
        """Send `msg` as it is to every registered agent except `msg.sender`, in slot
        order; returns the names it reached. `timeout` bounds the whole broadcast: on
        MailboxFull the agents before the one named have the message already."""
        data = self._encode(msg)
        deadline = _deadline(timeout)
        return broadcast_each(msg, self.registered(),
                              lambda name: self._deliver(name, data, deadline, timeout))

    def try_send_to(self, to: str, msg: Message, waited: float | None) -> None:
        """Put `msg` as it is in the queue of agent `to` if it has room now, else raise
        MailboxFull at once, saying the sender waited `waited` seconds: for senders that
        wait elsewhere, as the Ray mailbox's clients do by polling its actor."""
        self._deliver(to, self._encode(msg), time.monotonic(), waited)

    def _encode(self, msg: Message) -> bytes:
        if not isinstance(msg, Message):
            raise InvalidMailbox(f"the mailbox carries Message objects, got "
                                 f"{type(msg).__name__}")
        try:
            data = orjson.dumps(msg.to_dict())
        except TypeError as exc:  # e.g. content changed in place since the Message was built
            raise InvalidAgentJson(f"the message to {msg.to!r} cannot be encoded as JSON "
                                   f"({exc}); nothing was sent") from None
        if len(data) > self.max_message_bytes:
            raise MessageTooLarge(
                f"a {len(data)}-byte message to agent {msg.to!r} exceeds max_message_bytes="
                f"{self.max_message_bytes} of {self.name}; nothing was sent. Send less (put "
                "bulky data in the state store and send its key), or create the mailbox "
                "with a larger max_message_bytes", agent=msg.to)
        return data

    def _deliver(self, to: str, data: bytes, deadline: float | None,
                 timeout: float | None) -> None:
        encoded = to.encode()
        name_hash = _native.hash64(encoded)
        load, store = self._region.load, self._region.store
        waited = False
        while True:
            slot = self._slot_of(to, encoded, name_hash)
            base = self._base(slot)
            seen = load(base + _CHANGES)
            with self._locks[slot]:
                if not self._holds(slot, encoded, name_hash):
                    self._slots.pop(to, None)  # the slot changed hands: look again
                    continue
                queued = load(base + _QUEUED)
                if queued < self.capacity_per_agent:
                    # count first: a sender killed in between leaves the count one high,
                    # which the next receive that finds the queue empty puts right
                    store(base + _QUEUED, queued + 1)
                    if self._queues[slot].send(_TAG, data):
                        self._changed(slot)
                        return
                    store(base + _QUEUED, queued)
            if not waited:
                waited = True
                self._region.fetch_add(FULL_WAITS, 1)
            if not self._sleep(slot, seen, deadline):
                raise MailboxFull(
                    f"the queue of agent {to!r} stayed full ({self.capacity_per_agent} "
                    f"messages or {self.queue_bytes} bytes) for {timeout} s, so the message "
                    "was not sent; the agent is not receiving: send again later, with a "
                    "longer timeout, or give the mailbox a larger capacity_per_agent",
                    agent=to)

    def _slot_of(self, to: str, encoded: bytes, name_hash: int) -> int:
        slot = self._slots.get(to)
        if slot is None:
            slot = self._find(encoded, name_hash)
            if slot < 0:
                raise MailboxSend(f"no agent {to!r} is registered in mailbox {self.name}; "
                                  "register it before sending to it, or check the name",
                                  agent=to)
            self._slots[to] = slot
        return slot

    # ---- receiving ----------------------------------------------------------------------------

    def _receive(self, receiver: MailboxReceiver, deadline: float | None,
                 timeout: float | None, wait: bool) -> Message | None:
        slot, base = receiver._slot, self._base(receiver._slot)
        load = self._region.load
        while True:
            seen = load(base + _CHANGES)
            with self._locks[slot]:
                if (load(base + _GENERATION) != receiver._generation
                        or load(base + _STATE) != _REGISTERED):
                    raise MailboxClosed(receiver.agent)
                data = self._take(slot)
            if data is not None:
                return self._decode(data, receiver.agent)
            if not wait:
                return None
            if not self._sleep(slot, seen, deadline):
                raise MailboxTimeout(receiver.agent, timeout)

    def _take(self, slot: int) -> bytes | None:
        """The oldest record of the slot's queue (its lock held), or None."""
        base = self._base(slot)
        try:
            record = self._queues[slot].recv()
        except ValueError as exc:
            raise SegmentCorrupt(f"mailbox {self.name}: the queue of slot {slot} is "
                                 f"corrupt ({exc}); remove the segment with `carmp cleanup` "
                                 "and create the mailbox again") from None
        queued = self._region.load(base + _QUEUED)
        if record is None:
            if queued:
                self._region.store(base + _QUEUED, 0)  # a sender died between count and send
            return None
        self._region.store(base + _QUEUED, max(queued - 1, 0))
        self._changed(slot)
        return record[1]

    def _decode(self, data: bytes, agent: str) -> Message:
        try:
            return Message.from_json(data)
        except InvalidAgentJson as exc:
            raise SegmentCorrupt(f"mailbox {self.name}: a message queued for agent {agent!r} "
                                 f"is not a Message ({exc}); something other than carmp wrote "
                                 "into the segment") from None

    # ---- waiting -----------------------------------------------------------------------------

    def _changed(self, slot: int) -> None:
        """Announce a change of the slot to the processes asleep on it."""
        base = self._base(slot)
        self._region.fetch_add(base + _CHANGES, 1)
        if self._region.load(base + _WAITERS):
            self._region.wake(base + _CHANGES)

    def _sleep(self, slot: int, seen: int, deadline: float | None) -> bool:
        """Sleep until the slot changes after `seen` (its changes word read before the
        caller looked at the slot, so no change is missed) or the deadline; False when
        the deadline had passed already."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        base = self._base(slot)
        self._region.fetch_add(base + _WAITERS, 1)
        try:
            self._region.wait(base + _CHANGES, seen & 0xFFFFFFFF, left)
        finally:
            self._region.fetch_add(base + _WAITERS, -1)
        return True

    def _repair(self, slot: int) -> None:
        """on_recover of a slot lock taken over from a dead process: the undo log has
        undone a half-written registration; put the message count right if the queue is
        empty, and wake the waiters the dead process may have left asleep."""
        if not self._queues[slot].readable:
            self._region.store(self._base(slot) + _QUEUED, 0)
        self._changed(slot)

    def statistics(self) -> MailboxStatistics:
        with self._table_lock:
            queued = {self._name_at(slot): self._region.load(self._base(slot) + _QUEUED)
                      for slot in self._registered_slots()}
        return MailboxStatistics(
            queued=queued, max_agents=self.max_agents,
            capacity_per_agent=self.capacity_per_agent, queue_bytes=self.queue_bytes,
            max_message_bytes=self.max_message_bytes,
            full_waits=self._region.load(FULL_WAITS),
            lock_recoveries=self._table_lock.statistics().recoveries
            + sum(lock.statistics().recoveries for lock in self._locks))


def broadcast_each(msg: Message, registered: list[str],
                   deliver: Callable[[str], None]) -> list[str]:
    """Broadcast's rule, whoever delivers: `deliver` to every registered agent but the
    sender, in order; one unregistered since the list was taken is no longer a recipient,
    a full queue ends the broadcast (MailboxFull). Returns the names reached."""
    reached = []
    for name in registered:
        if name == msg.sender:
            continue
        try:
            deliver(name)
        except MailboxFull:
            raise
        except MailboxSend:
            continue
        reached.append(name)
    return reached


class MailboxReceiver:
    """The receiving end of one agent's queue, from Mailbox.register(). It pickles (with
    its mailbox), so an agent can receive in another process."""

    __slots__ = ("mailbox", "agent", "_slot", "_generation")

    def __init__(self, mailbox: Mailbox, agent: str, slot: int, generation: int) -> None:
        self.mailbox = mailbox
        self.agent = agent
        self._slot = slot
        self._generation = generation

    def recv(self, timeout: float | None = None) -> Message:
        """The oldest message, waiting for one at most `timeout` seconds (None: as long as
        it takes); MailboxTimeout(agent) when none came."""
        message = self.mailbox._receive(self, _deadline(timeout), timeout, wait=True)
        assert message is not None
        return message

    def try_recv(self) -> Message | None:
        """The oldest message, or None at once when the queue is empty."""
        return self.mailbox._receive(self, None, None, wait=False)

    @property
    def closed(self) -> bool:
        """True once the agent was unregistered or registered again."""
        base = self.mailbox._base(self._slot)
        load = self.mailbox._region.load
        return load(base + _GENERATION) != self._generation or load(base + _STATE) != _REGISTERED

    def __reduce__(self) -> tuple[Any, tuple[Mailbox, str, int, int]]:
        return (MailboxReceiver, (self.mailbox, self.agent, self._slot, self._generation))

    def __repr__(self) -> str:
        return f"<MailboxReceiver {self.agent!r} of {self.mailbox.name}>"
