"""The event log's JSONL journal: a drainer that writes every event, and replay.

The creating process runs one JournalWriter thread. It reads the ring through a cursor
that writers wait for (a registered reader), so an event is never overwritten before it
is journaled, and writes one JSON object per line (Event.to_dict()). With chain=True each
line also carries prev_hash and hash (SHA-256 over its fields and the previous hash), in
sequence order, which only a single drainer can give a multi-writer log.

read_journal() never trusts a line: it parses JSON only, checks every field, sequence
order and the hash chain, and skips (or, strict, refuses) what fails, saying where.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from carmp.errors import (
    CarmpError,
    EventJournalWarning,
    InvalidEvent,
    JournalCorrupt,
    JournalWriteFailed,
)
from carmp.shared.event import Event, chain_hash, chained

DRAIN_BATCH = 4096
DRAIN_POLL = 0.1  # seconds a drainer sleeps between checks for stop when nothing comes
TAIL_CHUNK = 64 * 1024

JournalPath = str | os.PathLike[str]


class Cursor(Protocol):
    """What the drainer reads from: the event log's registered cursor."""

    next_seq: int

    def read(self, max_events: int, timeout: float | None) -> list[Event]: ...

    def caught_up(self) -> bool: ...

    def close(self) -> None: ...


class JournalWriter:
    """Drains a cursor into a JSONL file on a daemon thread of the creating process."""

    def __init__(self, path: JournalPath, cursor: Cursor, *, chain: bool, prev_hash: str | None,
                 newline_first: bool, wake: Callable[[], None]) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "ab")  # here, so a bad path fails the constructor
            if newline_first:
                self._file.write(b"\n")  # end a line a crash cut short; replay skips it
        except OSError as exc:
            raise JournalWriteFailed(
                f"cannot open the journal {self.path} for appending ({exc.strerror or exc}); "
                "create its folder, fix its permissions or choose another path"
            ) from None
        self._cursor = cursor
        self._chain = chain
        self._prev_hash = prev_hash
        self._wake = wake
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._fd = -1
        self.owner_pid = os.getpid()  # the drainer thread runs only in this process
        self.journaled_seq = cursor.next_seq  # every event below it is in the file
        self.lines_written = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"carmp-journal {self.path.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._file as file:
                self._fd = file.fileno()
                while True:
                    stopping = self._stop.is_set()
                    events = self._cursor.read(DRAIN_BATCH, DRAIN_POLL if not stopping else 0.01)
                    if events:
                        file.write(self._lines(events))
                        file.flush()
                        with self._progress:
                            self.journaled_seq = self._cursor.next_seq
                            self.lines_written += len(events)
                            self._progress.notify_all()
                    elif stopping and self._cursor.caught_up():
                        break
        except (OSError, CarmpError) as exc:  # disk trouble, or the log closed under us
            self.error = exc
        finally:
            self._cursor.close()  # writers must not wait for a drainer that is gone
            self._fd = -1
            with self._progress:
                self._progress.notify_all()

    def _lines(self, events: list[Event]) -> bytes:
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        if not self._chain:
            return b"".join([dumps(event.to_dict(), option=newline) for event in events])
        lines = []
        prev = self._prev_hash
        for event in events:
            event = chained(event, prev)
            prev = event.hash
            lines.append(dumps(event.to_dict(), option=newline))
        self._prev_hash = prev
        return b"".join(lines)

    def sync(self, target_seq: int, timeout: float | None) -> None:
        """Wait until every event below target_seq is written, then fsync the file."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self.journaled_seq < target_seq and self.error is None and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise JournalWriteFailed(
                        f"journal {self.path} is at seq {self.journaled_seq}, not {target_seq}, "
                        f"after {timeout} s; a writer may be stuck mid-append (it is skipped "
                        "after the hole timeout) or the disk is slow: call sync() again"
                    )
                self._progress.wait(left)
            self.check()
            fd = self._fd
            if fd >= 0:
                os.fsync(fd)

    def check(self) -> None:
        if self.error is not None:
            raise JournalWriteFailed(
                f"the journal {self.path} stopped at seq {self.journaled_seq}: "
                f"{self.error}; events after it are only in the ring. "
                "Free disk space or fix permissions and start a new log"
            )

    def stop(self, timeout: float) -> None:
        """Drain what is committed (holes resolve within the log's hole timeout), close."""
        if threading.current_thread() is self._thread:
            return
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self.check()


# ---- replay ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkippedLine:
    line: int  # 1-based
    reason: str


@dataclass(frozen=True, slots=True)
class JournalReport:
    """What a load found: events read, lines skipped, and hash chain breaks."""

    path: str
    lines: int
    events: int
    skipped: tuple[SkippedLine, ...]
    chain_breaks: tuple[int, ...]  # seqs whose hash or prev_hash does not match
    chained: bool                  # lines carried hashes

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.chain_breaks


def read_journal(path: JournalPath, *, strict: bool = False) -> tuple[list[Event], JournalReport]:
    """Every valid event of a journal in order. Bad lines are skipped and reported (one
    EventJournalWarning per load); strict=True raises JournalCorrupt at the first one."""
    events: list[Event] = []
    skipped: list[SkippedLine] = []
    breaks: list[int] = []
    last_seq = -1
    prev_hash: str | None = None
    lines = 0

    def broken(number: int, seq: int) -> None:
        if strict:
            raise JournalCorrupt(
                f"{path}:{number}: the hash chain breaks at seq {seq}: the line was "
                "changed, or a line before it was removed or changed"
            )
        breaks.append(seq)

    def bad(number: int, reason: str) -> None:
        if strict:
            raise JournalCorrupt(
                f"{path}:{number}: {reason}. Load without strict=True to skip bad lines, "
                "or restore the journal from a copy"
            )
        skipped.append(SkippedLine(number, reason))

    with open(path, "rb") as file:
        for number, raw in enumerate(file, 1):
            lines = number
            if not raw.endswith(b"\n"):
                bad(number, "truncated line (no newline): its writer stopped mid-line")
                continue
            try:
                event = Event.from_dict(orjson.loads(raw))
            except orjson.JSONDecodeError as exc:
                bad(number, f"not JSON ({exc})")
                continue
            except InvalidEvent as exc:
                bad(number, f"not an event ({exc})")
                continue
            if event.seq <= last_seq:
                bad(number, f"seq {event.seq} does not follow seq {last_seq}")
                continue
            if event.hash is not None:
                if prev_hash is None and event.prev_hash is not None and events:
                    # chained to a line before it that carries no hash: that line lost it
                    broken(number - 1, events[-1].seq)
                linked = prev_hash is None or event.prev_hash == prev_hash
                if not linked or chain_hash(event, event.prev_hash) != event.hash:
                    broken(number, event.seq)
                prev_hash = event.hash
            elif prev_hash is not None or event.prev_hash is not None:
                broken(number, event.seq)  # a line of a chained journal without its hash
            events.append(event)
            last_seq = event.seq
    report = JournalReport(str(path), lines, len(events), tuple(skipped), tuple(breaks),
                           chained=prev_hash is not None)
    if skipped or breaks:
        first = f"line {skipped[0].line}: {skipped[0].reason}" if skipped else f"seq {breaks[0]}"
        warnings.warn(
            f"{path}: skipped {len(skipped)} bad line(s), {len(breaks)} hash chain break(s); "
            f"first at {first}. See the log's load_report",
            EventJournalWarning, stacklevel=3,
        )
    return events, report


def journal_tail(path: JournalPath) -> tuple[Event | None, bool]:
    """The last valid event of an existing journal (None if there is none) and whether the
    file ends mid-line; read backwards, so resuming a long journal stays cheap."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return None, False
    if size == 0:
        return None, False
    with open(path, "rb") as file:
        file.seek(size - 1)
        cut_short = file.read(1) != b"\n"
        end, carry = size, b""
        while end > 0:
            start = max(0, end - TAIL_CHUNK)
            file.seek(start)
            chunk = file.read(end - start) + carry
            pieces = chunk.split(b"\n")
            carry = pieces[0] if start > 0 else b""
            complete = pieces[1:] if start > 0 else pieces
            for line in reversed(complete):
                try:
                    return Event.from_dict(orjson.loads(line)), cut_short
                except (orjson.JSONDecodeError, InvalidEvent):
                    continue
            end = start
    return None, cut_short
