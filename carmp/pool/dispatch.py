"""The dispatch segment: one task channel and one result channel per worker slot.

The supervisor is the only producer of every task channel and the only consumer of
every result channel; the worker in a slot is the other end of both. One bell, the
collector bell, is every result channel's "readable" bell and every task channel's
"room" bell: the single collector thread sleeps there until any worker has something
to say or has made room for the rest of a large task. A respawned worker takes over
its slot after the supervisor resets both channels.

Payload layout (offsets from the payload start; 8-byte little-endian words):

    offset  size   field
    0       16     collector bell: every result channel's "readable" bell
    64      8      slot count
    72      8      task channel capacity (bytes, a power of two)
    80      8      result channel capacity (bytes, a power of two)
    128     n*S    slots, S = slot_size(task capacity, result capacity) bytes each

Slot layout (offsets from the slot start):

    0       16     task bell: the worker sleeps here for tasks
    16      16     reserved
    32      16     result-room bell: the worker sleeps here when its result channel is full
    64      8      worker pid
    72      8      generation: how many processes have held this slot
    80      8      running task id (0 = idle), written by the worker before it decodes a task
    88      8      when that task started (CLOCK_MONOTONIC ns)
    96      8      tasks finished by the current process
    128     ...    task channel (CHANNEL_HEADER + task capacity)
    ...     ...    result channel (CHANNEL_HEADER + result capacity)

Message tags (the low byte is the kind; FRAGMENT marks every piece of a message too
large for one record except the last):

    supervisor -> worker   FUNCTION  u64 function id + cloudpickle(function)
                           TASK      u64 task id, u64 function id + pickle((args, kwargs))
                           STOP      (empty) finish and exit
                           FORGET    u64 function id: drop that definition
    worker -> supervisor   READY     u64 pid; the initializer ran
                           RESULT    u64 task id + JSON of the result
                           RESULT_PIPED / ERROR_PIPED
                                     u64 task id; a pickle follows on the worker's pipe
                           ERROR     u64 task id + JSON {type, message, traceback}
                           RETIRING  JSON {reason}: the worker exits after this message
                           INIT_FAILED JSON {type, message, traceback}

Results the supervisor reads from shared memory are JSON only: anything that does
not survive a JSON round trip travels pickled over the worker's private pipe, so
nothing read from shared memory is ever unpickled on the supervisor's side.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from carmp import _native
from carmp.errors import SegmentCorrupt
from carmp.shared.segment import HEADER_SIZE, Segment

LAYOUT_VERSION = 1
KIND = "dispatch"

FUNCTION, TASK, STOP, FORGET = 1, 2, 3, 4
READY, RESULT, RESULT_PIPED, ERROR, ERROR_PIPED, RETIRING, INIT_FAILED = 10, 11, 12, 13, 14, 15, 16
FRAGMENT = 1 << 8
KIND_MASK = 0xFF

TASK_HEADER = struct.Struct("<QQ")
ID = struct.Struct("<Q")

_P = HEADER_SIZE
COLLECTOR_BELL = _P + 0
SLOT_COUNT = _P + 64
TASK_CAPACITY = _P + 72
RESULT_CAPACITY = _P + 80
SLOTS = _P + 128

_TASK_BELL, _RESULT_ROOM_BELL = 0, 32
_PID, _GENERATION, _RUNNING, _STARTED_NS, _FINISHED = 64, 72, 80, 88, 96
_CHANNELS = 128

DEFAULT_TASK_CAPACITY = 1 << 18
DEFAULT_RESULT_CAPACITY = 1 << 18


def segment_size(slot_count: int, task_capacity: int = DEFAULT_TASK_CAPACITY,
                 result_capacity: int = DEFAULT_RESULT_CAPACITY) -> int:
    """The /dev/shm bytes (header included) of a dispatch segment for `slot_count` workers,
    so a farm can check that its whole world fits before it creates any of it."""
    return SLOTS + slot_count * slot_size(task_capacity, result_capacity)


def slot_size(task_capacity: int, result_capacity: int) -> int:
    return _CHANNELS + 2 * _native.CHANNEL_HEADER + task_capacity + result_capacity


class Slot:
    """One worker's end of the dispatch segment, seen from either side."""

    __slots__ = ("index", "base", "tasks", "results", "_region")

    def __init__(self, region: _native.Region, index: int, base: int, task_capacity: int) -> None:
        self.index = index
        self.base = base
        self._region = region
        task_channel = base + _CHANNELS
        result_channel = task_channel + _native.CHANNEL_HEADER + task_capacity
        self.tasks = _native.Channel(region, task_channel, base + _TASK_BELL, COLLECTOR_BELL)
        self.results = _native.Channel(region, result_channel, COLLECTOR_BELL,
                                       base + _RESULT_ROOM_BELL)

    # ---- the worker's marks ---------------------------------------------------------

    def mark_running(self, task_id: int, now_ns: int) -> None:
        self._region.store(self.base + _STARTED_NS, now_ns)
        self._region.store(self.base + _RUNNING, task_id)

    def mark_idle(self) -> None:
        self._region.store(self.base + _RUNNING, 0)
        self._region.fetch_add(self.base + _FINISHED, 1)

    def running(self) -> tuple[int, int]:
        """(task id, started at ns) of the task the worker is on; (0, 0) when idle."""
        task_id = self._region.load(self.base + _RUNNING)
        return (task_id, self._region.load(self.base + _STARTED_NS)) if task_id else (0, 0)

    @property
    def pid(self) -> int:
        return self._region.load(self.base + _PID)

    @property
    def generation(self) -> int:
        return self._region.load(self.base + _GENERATION)

    @property
    def finished(self) -> int:
        return self._region.load(self.base + _FINISHED)

    # ---- the supervisor's reset before a (re)spawn --------------------------------

    def reset(self, task_capacity: int, result_capacity: int) -> int:
        """Empty both channels for a new process; returns the new generation."""
        region = self._region
        self.tasks.initialize(task_capacity)
        self.results.initialize(result_capacity)
        for offset in (_PID, _RUNNING, _STARTED_NS, _FINISHED):
            region.store(self.base + offset, 0)
        return region.fetch_add(self.base + _GENERATION, 1) + 1

    def set_pid(self, pid: int) -> None:
        self._region.store(self.base + _PID, pid)


class Dispatch:
    """The dispatch segment; created by the supervisor, attached by each worker."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        region = segment.region
        self.slot_count = region.load(SLOT_COUNT)
        self.task_capacity = region.load(TASK_CAPACITY)
        self.result_capacity = region.load(RESULT_CAPACITY)
        stride = slot_size(self.task_capacity, self.result_capacity)
        self.slots = [Slot(region, i, SLOTS + i * stride, self.task_capacity)
                      for i in range(self.slot_count)]

    @classmethod
    def create(cls, slot_count: int, *, run_id: str,
               task_capacity: int = DEFAULT_TASK_CAPACITY,
               result_capacity: int = DEFAULT_RESULT_CAPACITY) -> Dispatch:
        size = segment_size(slot_count, task_capacity, result_capacity) - HEADER_SIZE
        segment = Segment.create(KIND, size, layout_version=LAYOUT_VERSION, run_id=run_id)
        region = segment.region
        region.store(SLOT_COUNT, slot_count)
        region.store(TASK_CAPACITY, task_capacity)
        region.store(RESULT_CAPACITY, result_capacity)
        dispatch = cls(segment)  # each slot's channels are set up as its worker is spawned
        segment.mark_ready()
        return dispatch

    @classmethod
    def attach(cls, name: str) -> Dispatch:
        """Attach the supervisor's dispatch segment, refusing one whose slot count or
        channel capacities do not fit its size (a corrupt segment)."""
        segment = Segment.attach(name, kind=KIND, layout_version=LAYOUT_VERSION)
        region = segment.region
        slots, tasks, results = (region.load(word)
                                 for word in (SLOT_COUNT, TASK_CAPACITY, RESULT_CAPACITY))
        if not 1 <= slots or SLOTS + slots * slot_size(tasks, results) > segment.header().size:
            segment.close()
            raise SegmentCorrupt(
                f"dispatch segment {name} says {slots} slots of {tasks} + {results} channel "
                f"bytes, more than its {segment.header().size} bytes hold: it is corrupt; stop "
                "its farm and remove it with `carmp cleanup`")
        return cls(segment)

    def __iter__(self) -> Iterator[Slot]:
        return iter(self.slots)

    def close(self) -> None:
        self.segment.close()


def fragments(tag: int, payload: bytes, limit: int) -> list[tuple[int, bytes]]:
    """Split a payload into records of at most `limit` bytes; all but the last carry FRAGMENT.
    A list: most payloads are one record, on the dispatch hot path."""
    if len(payload) <= limit:
        return [(tag, payload)]
    view = memoryview(payload)
    return [((tag if start + limit >= len(payload) else tag | FRAGMENT),
             bytes(view[start:start + limit])) for start in range(0, len(payload), limit)]


class Reassembler:
    """Joins FRAGMENT pieces back into whole messages on the receiving side."""

    __slots__ = ("_pieces",)

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    @property
    def idle(self) -> bool:
        """No message is half assembled: a whole one may skip feed()."""
        return not self._pieces

    def feed(self, tag: int, payload: bytes) -> tuple[int, bytes] | None:
        if tag & FRAGMENT:
            self._pieces.append(payload)
            return None
        if self._pieces:
            self._pieces.append(payload)
            payload = b"".join(self._pieces)
            self._pieces = []
        return tag & KIND_MASK, payload

    def reset(self) -> None:
        self._pieces = []
