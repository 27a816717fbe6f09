"""Named shared-memory segments with a checked header.

Only the creator (the supervisor) creates and unlinks; any process attaches by
name. Names are `/carmp-<run id>-<kind>` (at most 30 characters, so they also
work on macOS) and segments are mode 0600. Pages are reserved at creation so a
full /dev/shm fails here with a clear error, never later with SIGBUS.

Header layout (HEADER_SIZE bytes at offset 0, little-endian):

    offset  size  field
    0       8     magic b"CARMPSEG"
    8       4     header layout version (HEADER_VERSION)
    12      4     payload layout version (the owning primitive's LAYOUT_VERSION)
    16      8     total size in bytes, header included
    24      8     creator pid
    32      8     creator start time (clock ticks since boot; tells pid reuse apart)
    40      16    run id, ASCII, NUL-padded
    56      16    kind, ASCII, NUL-padded
    72      8     ready word: 0 while the creator initialises, READY_MARK once usable
    80      48    reserved, zero

The payload starts at HEADER_SIZE; the primitive that owns a segment documents
its payload layout at the top of its own module.
"""

from __future__ import annotations

import atexit
import mmap
import os
import re
import secrets
import struct
import time
import weakref
from dataclasses import dataclass
import posix_ipc

from carmp import _native
from carmp.errors import (
    SegmentClosed,
    SegmentCorrupt,
    SegmentError,
    SegmentExists,
    SegmentNotFound,
    SharedMemoryFull,
)
from carmp.shared.proc import is_alive, own_identity

MAGIC = b"CARMPSEG"
HEADER_VERSION = 1
HEADER_SIZE = 128
READY_MARK = 0x5245414459  # "READY"
_HEADER = struct.Struct("<8sIIQQQ16s16sQ")
_READY_OFFSET = 72
SHM_DIR = "/dev/shm"
NAME_PREFIX = "carmp-"
MAX_NAME_LENGTH = 30
_KIND_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_RUN_ID_PATTERN = re.compile(r"^[a-z0-9]{1,12}$")
# Keep this much of /dev/shm free beyond what a segment needs.
SHM_HEADROOM = 4 * 1024 * 1024
ATTACH_READY_WAIT = 1.0


def new_run_id() -> str:
    """A fresh unguessable run id (12 hex characters, 48 random bits)."""
    return secrets.token_hex(6)


def segment_name(run_id: str, kind: str) -> str:
    if not _RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-12 lowercase letters or digits")
    if not _KIND_PATTERN.match(kind):
        raise ValueError(
            f"segment kind {kind!r} must be 1-10 lowercase letters or digits, starting with a letter"
        )
    name = f"/{NAME_PREFIX}{run_id}-{kind}"
    assert len(name) <= MAX_NAME_LENGTH
    return name


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    magic: bytes
    header_version: int
    layout_version: int
    size: int
    creator_pid: int
    creator_start: int
    run_id: str
    kind: str
    ready: bool

    @classmethod
    def parse(cls, raw: bytes) -> SegmentHeader:
        if len(raw) < HEADER_SIZE:
            raise SegmentCorrupt(
                f"segment header is truncated ({len(raw)} of {HEADER_SIZE} bytes); "
                "the segment is not a carmp segment or was cut short: remove it with `carmp cleanup`"
            )
        magic, hv, lv, size, pid, start, run_id, kind, ready = _HEADER.unpack_from(raw)
        return cls(
            magic=magic,
            header_version=hv,
            layout_version=lv,
            size=size,
            creator_pid=pid,
            creator_start=start,
            run_id=run_id.rstrip(b"\0").decode("ascii", "replace"),
            kind=kind.rstrip(b"\0").decode("ascii", "replace"),
            ready=ready == READY_MARK,
        )


def check_planned_space(planned: dict[str, int]) -> None:
    """Refuse a group of segments (what -> bytes, headers included) that would not all fit,
    before any of them is created, so a too-small /dev/shm never leaves part of a world."""
    parts = ", ".join(f"{what} {size // 1024} KiB" for what, size in planned.items())
    _check_free_space(sum(planned.values()), f"the planned segments ({parts}) need")


def _check_free_space(size: int, what: str = "a carmp segment needs") -> None:
    try:
        stats = os.statvfs(SHM_DIR)
    except OSError:
        return  # no /dev/shm to inspect (not Linux); fallocate below still guards us
    free = stats.f_bavail * stats.f_frsize
    if free < size + SHM_HEADROOM:
        raise SharedMemoryFull(
            f"{SHM_DIR} has {free // 1024} KiB free but {what} "
            f"{(size + SHM_HEADROOM) // 1024} KiB (with headroom); remove dead runs with "
            f"`carmp cleanup`, choose smaller capacities, or enlarge {SHM_DIR} "
            "(mount -o remount,size=... or docker --shm-size)"
        )


_created: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()


class Segment:
    """A mapped shared-memory segment: `region` gives atomics and locks over its bytes."""

    __slots__ = ("name", "kind", "run_id", "size", "layout_version", "region", "creator_pid",
                 "_mmap", "_owner_pid", "_unlinked", "__weakref__")

    def __init__(self, name: str, kind: str, run_id: str, size: int, layout_version: int,
                 mapping: mmap.mmap, creator_pid: int, *, created_here: bool) -> None:
        self.name = name
        self.kind = kind
        self.run_id = run_id
        self.size = size
        self.layout_version = layout_version
        self.creator_pid = creator_pid
        self._mmap = mapping
        # The process that may unlink: set only on the object create() returned;
        # copies inherited through fork see a different pid.
        self._owner_pid = creator_pid if created_here else 0
        self._unlinked = False
        self.region = _native.Region(mapping, SegmentClosed)

    # ---- create / attach ------------------------------------------------------

    @classmethod
    def create(cls, kind: str, payload_size: int, *, layout_version: int,
               run_id: str | None = None) -> Segment:
        """Create, reserve and map a new segment; the caller initialises the payload,
        then calls mark_ready()."""
        if payload_size < 0:
            raise ValueError(f"payload size must be >= 0, got {payload_size}")
        run_id = run_id or new_run_id()
        name = segment_name(run_id, kind)
        size = HEADER_SIZE + payload_size
        _check_free_space(size)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600)
        except posix_ipc.ExistentialError:
            raise SegmentExists(
                f"shared-memory segment {name} already exists; another run uses this run id, "
                "or a dead run left it behind (remove it with `carmp cleanup`)"
            ) from None
        try:
            try:
                os.posix_fallocate(shm.fd, 0, size)
            except OSError as exc:
                raise SharedMemoryFull(
                    f"could not reserve {size} bytes for {name} in {SHM_DIR} ({exc.strerror}); "
                    "free space with `carmp cleanup` or enlarge /dev/shm"
                ) from None
            mapping = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            shm.unlink()
            raise
        shm.close_fd()
        pid, start = own_identity()
        mapping[:HEADER_SIZE] = _HEADER.pack(
            MAGIC, HEADER_VERSION, layout_version, size, pid, start,
            run_id.encode(), kind.encode(), 0,
        ).ljust(HEADER_SIZE, b"\0")
        segment = cls(name, kind, run_id, size, layout_version, mapping, creator_pid=pid,
                      created_here=True)
        _created[name] = segment
        return segment

    def mark_ready(self) -> None:
        """Publish the initialised payload: attachers refuse a segment before this."""
        self.region.store(_READY_OFFSET, READY_MARK)

    @classmethod
    def attach(cls, name: str, *, kind: str, layout_version: int) -> Segment:
        """Map an existing segment after checking its header."""
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise SegmentNotFound(
                f"no shared-memory segment named {name}; its creator closed it or exited. "
                "Attach while the supervisor that created it is running"
            ) from None
        except posix_ipc.PermissionsError:
            raise SegmentError(
                f"shared-memory segment {name} belongs to another user (carmp segments are "
                "mode 0600); attach from a process of the user whose run created it"
            ) from None
        try:
            size = os.fstat(shm.fd).st_size
            if size < HEADER_SIZE:
                raise SegmentCorrupt(
                    f"segment {name} is {size} bytes, smaller than a carmp header; "
                    "it is not a carmp segment: remove it with `carmp cleanup`"
                )
            mapping = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        try:
            header = _await_ready(mapping, name)
            _check_header(header, name, size, kind, layout_version)
        except BaseException:
            mapping.close()
            raise
        return cls(name, kind, header.run_id, size, layout_version, mapping,
                   creator_pid=header.creator_pid, created_here=False)

    def header(self) -> SegmentHeader:
        return SegmentHeader.parse(self.region.read(0, HEADER_SIZE))

    # ---- close / unlink ---------------------------------------------------------

    @property
    def is_creator(self) -> bool:
        """True in the process that created the segment, on the object create() returned."""
        return self._owner_pid == os.getpid()

    @property
    def closed(self) -> bool:
        return bool(self.region.closed)

    def close(self) -> None:
        """Unmap; the creator also unlinks the name. Safe to call twice."""
        creator = self.is_creator
        if not self.region.closed:
            self.region.release()
            self._mmap.close()
        if creator:
            self.unlink()

    def unlink(self) -> None:
        """Remove the name (creator only, once); processes already attached keep their mapping."""
        if not self.is_creator:
            raise SegmentError(
                f"only the object that created {self.name} (in pid {self.creator_pid}) may "
                "unlink it; call close() to detach instead"
            )
        if self._unlinked:
            return
        self._unlinked = True
        _created.pop(self.name, None)
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size} bytes"
        return f"<Segment {self.name} {state}>"


def _await_ready(mapping: mmap.mmap, name: str) -> SegmentHeader:
    deadline = time.monotonic() + ATTACH_READY_WAIT
    while True:
        header = SegmentHeader.parse(mapping[:HEADER_SIZE])
        if header.ready or header.magic != MAGIC or time.monotonic() >= deadline:
            return header
        time.sleep(0.001)


def _check_header(header: SegmentHeader, name: str, size: int, kind: str,
                  layout_version: int) -> None:
    def corrupt(what: str) -> SegmentCorrupt:
        return SegmentCorrupt(f"segment {name}: {what}")

    def version_mismatch(what: str, found: int, expected: int) -> SegmentCorrupt:
        return corrupt(f"{what} layout version {found}, this carmp reads {expected}; "
                       "run the same carmp version in every process")

    if header.magic != MAGIC:
        raise corrupt(f"bad magic {header.magic!r}; it is not a carmp segment")
    if header.header_version != HEADER_VERSION:
        raise version_mismatch("header", header.header_version, HEADER_VERSION)
    if header.kind != kind:
        raise corrupt(f"holds a {header.kind!r} segment, not the {kind!r} expected")
    if header.layout_version != layout_version:
        raise version_mismatch(kind, header.layout_version, layout_version)
    if header.size != size:
        raise corrupt(f"header says {header.size} bytes but the segment has {size}")
    if not header.ready:
        raise corrupt(
            f"creator pid {header.creator_pid} never finished initialising it; "
            "if that process is gone, remove it with `carmp cleanup`"
        )


# ---- sweeping dead runs ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweptSegment:
    name: str
    creator_pid: int
    reason: str


def store_bytes(region: _native.Region, offset: int, data: bytes) -> None:
    """Write `data` at `offset` as whole 8-byte words (the last one zero-padded), each an
    atomic store, so a reader that checks a length or CRC word first sees no torn word."""
    padded = data.ljust((len(data) + 7) // 8 * 8, b"\0")
    for i, (word,) in enumerate(struct.iter_unpack("<Q", padded)):
        region.store(offset + 8 * i, word)


def list_segment_names() -> list[str]:
    try:
        return sorted("/" + e for e in os.listdir(SHM_DIR) if e.startswith(NAME_PREFIX))
    except FileNotFoundError:
        return []


def peek_header(name: str) -> SegmentHeader | None:
    """The header of segment `name` read from /dev/shm without mapping it; None when it is
    not a readable carmp header. FileNotFoundError when there is no such segment."""
    with open(os.path.join(SHM_DIR, name.lstrip("/")), "rb") as f:
        raw = f.read(HEADER_SIZE)
    try:
        header = SegmentHeader.parse(raw)
    except SegmentCorrupt:
        return None
    return header if header.magic == MAGIC else None


# A segment younger than this may still be getting its header written.
SWEEP_CORRUPT_MIN_AGE = 10.0


def sweep(*, dry_run: bool = False, include_corrupt: bool = False) -> list[SweptSegment]:
    """Remove carmp segments whose creator process is dead. Live runs are untouched;
    unreadable segments are removed only with include_corrupt=True, and only once they
    are older than SWEEP_CORRUPT_MIN_AGE seconds."""
    removed = []
    for name in list_segment_names():
        try:
            age = time.time() - os.stat(os.path.join(SHM_DIR, name[1:])).st_mtime
            header = peek_header(name)
        except FileNotFoundError:
            continue
        except OSError:
            age, header = 0.0, None
        if header is None:
            if not include_corrupt or age < SWEEP_CORRUPT_MIN_AGE:
                continue
            record = SweptSegment(name, 0, "unreadable header")
        elif is_alive(header.creator_pid, header.creator_start):
            continue
        else:
            record = SweptSegment(name, header.creator_pid, "creator is dead")
        if not dry_run:
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                continue
        removed.append(record)
    return removed


@atexit.register
def _close_created_segments() -> None:
    for segment in list(_created.values()):
        if segment.is_creator:
            segment.close()
