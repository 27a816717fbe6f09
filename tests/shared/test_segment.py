"""carmp.shared.segment: named shared-memory segments, their header checks, and sweep()."""

from __future__ import annotations

import gc
import os
import time
import re
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import multiprocess
import posix_ipc
import pytest

from carmp.errors import (
    CarmpError,
    SegmentClosed,
    SegmentCorrupt,
    SegmentError,
    SegmentExists,
    SegmentNotFound,
    SharedMemoryFull,
)
from carmp.shared import segment as segment_mod
from carmp.shared.proc import own_identity
from carmp.shared.segment import (
    HEADER_SIZE,
    HEADER_VERSION,
    MAGIC,
    MAX_NAME_LENGTH,
    Segment,
    new_run_id,
    segment_name,
    sweep,
)
from tests.conftest import kill

KIND = "segt"
LAYOUT = 3
PAYLOAD = 256
CHILD_WAIT = 30.0
NAME_PATTERN = re.compile(r"^/carmp-[a-z0-9]{1,12}-[a-z][a-z0-9]{0,9}$")


def shm_path(name: str) -> str:
    return f"/dev/shm/{name[1:]}"


def exists(name: str) -> bool:
    return os.path.exists(shm_path(name))


def force_unlink(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


@pytest.fixture
def make() -> Iterator[Callable[..., Segment]]:
    """Create segments that are closed (and so unlinked) after the test, whatever happens."""
    made: list[Segment] = []

    def create(kind: str = KIND, payload: int = PAYLOAD, *, layout_version: int = LAYOUT,
               run_id: str | None = None, ready: bool = True) -> Segment:
        segment = Segment.create(kind, payload, layout_version=layout_version, run_id=run_id)
        made.append(segment)
        if ready:
            segment.mark_ready()
        return segment

    yield create
    for segment in made:
        segment.close()
        force_unlink(segment.name)  # in case a test's bug left the object unable to unlink


@pytest.fixture
def only_names(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Limit sweep() to the names a test made: other xdist workers' segments (and their
    killed children's) share /dev/shm and must be neither touched nor counted."""

    def limit(*names: str) -> None:
        real = segment_mod.list_segment_names
        monkeypatch.setattr(segment_mod, "list_segment_names",
                            lambda: [n for n in real() if n in names])

    return limit


# ---- names --------------------------------------------------------------------------------


def test_name_format(make: Callable[..., Segment]) -> None:
    run_id = new_run_id()
    assert re.fullmatch(r"[0-9a-f]{12}", run_id)
    segment = make(run_id=run_id)
    assert segment.name == f"/carmp-{run_id}-{KIND}"
    assert NAME_PATTERN.match(segment.name)
    assert len(segment.name) <= MAX_NAME_LENGTH == 30
    assert segment.run_id == run_id and segment.kind == KIND
    assert exists(segment.name)
    assert segment.name in segment_mod.list_segment_names()


def test_generated_run_ids_differ(make: Callable[..., Segment]) -> None:
    first, second = make(), make()
    assert first.run_id != second.run_id
    assert NAME_PATTERN.match(first.name) and NAME_PATTERN.match(second.name)


def test_longest_name_fits(make: Callable[..., Segment]) -> None:
    run_id = new_run_id()  # 12 characters, the most allowed
    segment = make("abcdefghij", run_id=run_id)  # 10 characters, the most allowed
    assert len(segment.name) == MAX_NAME_LENGTH
    attached = Segment.attach(segment.name, kind="abcdefghij", layout_version=LAYOUT)
    attached.close()


def test_file_mode_is_0600(make: Callable[..., Segment]) -> None:
    segment = make()
    info = os.stat(shm_path(segment.name))
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    assert info.st_size == HEADER_SIZE + PAYLOAD


@pytest.mark.parametrize("kind", ["", "A", "Kind", "1abc", "a-b", "a_b", "abcdefghijk", "ö"])
def test_invalid_kind(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        Segment.create(kind, PAYLOAD, layout_version=LAYOUT, run_id=new_run_id())
    with pytest.raises(ValueError, match="kind"):
        segment_name("abc", kind)


@pytest.mark.parametrize("run_id", ["ABC", "a-b", "a_b", "abcdefghijklm", "run id", "/x"])
def test_invalid_run_id(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        Segment.create(KIND, PAYLOAD, layout_version=LAYOUT, run_id=run_id)
    with pytest.raises(ValueError, match="run id"):
        segment_name(run_id, KIND)


def test_empty_run_id_means_a_fresh_one(make: Callable[..., Segment]) -> None:
    segment = make(run_id="")
    assert NAME_PATTERN.match(segment.name) and len(segment.run_id) == 12


def test_negative_payload_is_refused() -> None:
    run_id = new_run_id()
    with pytest.raises(ValueError, match="payload"):
        Segment.create(KIND, -1, layout_version=LAYOUT, run_id=run_id)
    assert not exists(segment_name(run_id, KIND))


def test_zero_payload(make: Callable[..., Segment]) -> None:
    segment = make(payload=0)
    assert segment.size == HEADER_SIZE
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    assert attached.size == HEADER_SIZE
    attached.close()


# ---- header --------------------------------------------------------------------------------


def test_header_fields(make: Callable[..., Segment]) -> None:
    run_id = new_run_id()
    segment = make(run_id=run_id, ready=False)
    header = segment.header()
    assert header.magic == MAGIC
    assert header.header_version == HEADER_VERSION
    assert header.layout_version == LAYOUT
    assert header.size == HEADER_SIZE + PAYLOAD == segment.size
    assert header.creator_pid == os.getpid()
    assert header.creator_start == own_identity()[1] != 0
    assert header.run_id == run_id
    assert header.kind == KIND
    assert header.ready is False
    segment.mark_ready()
    assert segment.header().ready is True
    # The payload starts zeroed and the reserved bytes stay zero.
    assert segment.region.read(HEADER_SIZE, PAYLOAD) == bytes(PAYLOAD)
    assert segment.region.read(80, HEADER_SIZE - 80) == bytes(HEADER_SIZE - 80)
    # The file on /dev/shm holds the same header.
    with open(shm_path(segment.name), "rb") as f:
        raw = f.read(HEADER_SIZE)
    assert segment_mod.SegmentHeader.parse(raw) == segment.header()


def test_attached_header_matches(make: Callable[..., Segment]) -> None:
    segment = make()
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    try:
        assert attached.header() == segment.header()
        assert attached.run_id == segment.run_id
        assert attached.size == segment.size
        assert attached.layout_version == LAYOUT
        assert attached.is_creator is False
        assert segment.is_creator is True
    finally:
        attached.close()


def test_truncated_header_is_corrupt() -> None:
    with pytest.raises(SegmentCorrupt, match="truncated"):
        segment_mod.SegmentHeader.parse(b"CARMPSEG")


def test_memory_is_shared(make: Callable[..., Segment]) -> None:
    segment = make()
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    try:
        segment.region.store(HEADER_SIZE, 7)
        assert attached.region.fetch_add(HEADER_SIZE, 1) == 7
        assert segment.region.load(HEADER_SIZE) == 8
    finally:
        attached.close()
    assert exists(segment.name)  # closing an attachment does not unlink


# ---- attach checks ----------------------------------------------------------------------------


def test_attach_wrong_kind(make: Callable[..., Segment]) -> None:
    segment = make()
    with pytest.raises(SegmentCorrupt, match="'other'"):
        Segment.attach(segment.name, kind="other", layout_version=LAYOUT)


def test_attach_wrong_layout_version(make: Callable[..., Segment]) -> None:
    segment = make()
    with pytest.raises(SegmentCorrupt, match=f"layout version {LAYOUT}"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT + 1)


def test_attach_wrong_header_version(make: Callable[..., Segment]) -> None:
    segment = make()
    raw = bytearray(segment.region.read(8, 8))
    raw[0:4] = (HEADER_VERSION + 1).to_bytes(4, "little")
    segment.region.store(8, int.from_bytes(raw, "little"))
    with pytest.raises(SegmentCorrupt, match="header layout version"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)


def test_attach_bad_magic_through_region(make: Callable[..., Segment]) -> None:
    segment = make()
    segment.region.store(0, int.from_bytes(b"NOTCARMP", "little"))
    with pytest.raises(SegmentCorrupt, match="magic"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)


def test_attach_bad_magic_through_file(make: Callable[..., Segment]) -> None:
    segment = make()
    with open(shm_path(segment.name), "r+b") as f:
        f.write(b"GARBAGE!")
    assert segment.header().magic == b"GARBAGE!"  # the creator's mapping sees the write
    with pytest.raises(SegmentCorrupt, match="magic"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)


def test_attach_size_mismatch_grown_file(make: Callable[..., Segment]) -> None:
    segment = make()
    os.truncate(shm_path(segment.name), segment.size + 4096)
    with pytest.raises(SegmentCorrupt, match="bytes"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)


def test_attach_size_mismatch_in_header(make: Callable[..., Segment]) -> None:
    segment = make()
    segment.region.store(16, segment.size - 8)
    with pytest.raises(SegmentCorrupt, match=f"{segment.size - 8} bytes"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)


def test_attach_file_smaller_than_header() -> None:
    name = f"/carmp-{new_run_id()}-tiny"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=16)
    shm.close_fd()
    try:
        with pytest.raises(SegmentCorrupt, match="smaller than a carmp header"):
            Segment.attach(name, kind="tiny", layout_version=LAYOUT)
    finally:
        force_unlink(name)


def test_attach_not_ready(make: Callable[..., Segment], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_mod, "ATTACH_READY_WAIT", 0.05)
    segment = make(ready=False)
    with pytest.raises(SegmentCorrupt, match=f"creator pid {os.getpid()} never finished"):
        Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    segment.mark_ready()
    Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT).close()


def test_attach_waits_for_ready(make: Callable[..., Segment],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacher racing the creator's initialisation waits (boundedly) instead of failing."""
    monkeypatch.setattr(segment_mod, "ATTACH_READY_WAIT", CHILD_WAIT)
    segment = make(ready=False)
    marker = threading.Timer(0.1, segment.mark_ready)
    marker.start()
    try:
        attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
        assert attached.header().ready
        attached.close()
    finally:
        marker.join(CHILD_WAIT)


def test_attach_nonexistent() -> None:
    name = f"/carmp-{new_run_id()}-{KIND}"
    with pytest.raises(SegmentNotFound, match="no shared-memory segment") as info:
        Segment.attach(name, kind=KIND, layout_version=LAYOUT)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, CarmpError)
    with pytest.raises(FileNotFoundError):
        Segment.attach(name, kind=KIND, layout_version=LAYOUT)


def test_duplicate_create(make: Callable[..., Segment]) -> None:
    segment = make()
    segment.region.store(HEADER_SIZE, 99)
    with pytest.raises(SegmentExists, match="already exists") as info:
        Segment.create(KIND, PAYLOAD, layout_version=LAYOUT, run_id=segment.run_id)
    assert isinstance(info.value, FileExistsError)
    # The refused create neither unlinked nor touched the original.
    assert exists(segment.name)
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    assert attached.region.load(HEADER_SIZE) == 99
    attached.close()


def test_same_run_id_other_kind_is_fine(make: Callable[..., Segment]) -> None:
    first = make()
    second = make("other", run_id=first.run_id)
    assert first.name != second.name


# ---- close / unlink ------------------------------------------------------------------------


def test_close_unlinks_and_is_idempotent() -> None:
    segment = Segment.create(KIND, PAYLOAD, layout_version=LAYOUT)
    segment.mark_ready()
    name = segment.name
    assert segment.is_creator and not segment.closed
    segment.close()
    assert segment.closed
    assert not exists(name)
    segment.close()
    assert "closed" in repr(segment)
    with pytest.raises(SegmentNotFound):
        Segment.attach(name, kind=KIND, layout_version=LAYOUT)


def test_context_manager_closes() -> None:
    with Segment.create(KIND, PAYLOAD, layout_version=LAYOUT) as segment:
        name = segment.name
        assert exists(name)
    assert segment.closed and not exists(name)


def test_use_after_close(make: Callable[..., Segment]) -> None:
    segment = make()
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    attached.close()
    attached.close()
    uses: list[Callable[[Segment], object]] = [
        lambda s: s.region.load(HEADER_SIZE),
        lambda s: s.region.store(HEADER_SIZE, 1),
        lambda s: s.header(),
        lambda s: s.mark_ready(),
        lambda s: s.region.lock_init(HEADER_SIZE),
    ]
    for use in uses:
        with pytest.raises(SegmentClosed, match="closed") as info:
            use(attached)
        assert isinstance(info.value, ValueError)
    segment.close()
    with pytest.raises(SegmentClosed):
        segment.region.load(0)
    with pytest.raises(SegmentClosed):
        segment.header()


def test_close_of_attachment_keeps_creator_working(make: Callable[..., Segment]) -> None:
    segment = make()
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    attached.close()
    segment.region.store(HEADER_SIZE, 5)
    assert segment.region.load(HEADER_SIZE) == 5
    assert exists(segment.name)


def test_unlink_by_non_creator_in_another_process(make: Callable[..., Segment]) -> None:
    segment = make()
    ctx = multiprocess.get_context("spawn")
    child = ctx.Process(target=_attach_and_unlink, args=(segment.name,))
    child.start()
    child.join(CHILD_WAIT)
    assert child.exitcode == 0
    assert exists(segment.name)


def _attach_and_unlink(name: str) -> None:
    attached = Segment.attach(name, kind=KIND, layout_version=LAYOUT)
    try:
        attached.unlink()
    except SegmentError as exc:
        assert "only the object that created" in str(exc)
    else:
        raise AssertionError("an attached process unlinked the segment")
    attached.close()


def test_unlink_by_attachment_in_creator_process(make: Callable[..., Segment]) -> None:
    segment = make()
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    try:
        with pytest.raises(SegmentError, match="only the object that created"):
            attached.unlink()
        assert exists(segment.name)
    finally:
        attached.close()


def test_attached_keeps_working_after_creator_unlinks() -> None:
    segment = Segment.create(KIND, PAYLOAD, layout_version=LAYOUT)
    segment.mark_ready()
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    try:
        attached.region.store(HEADER_SIZE, 1)
        segment.close()
        assert not exists(attached.name)
        with pytest.raises(SegmentNotFound):
            Segment.attach(attached.name, kind=KIND, layout_version=LAYOUT)
        assert attached.region.fetch_add(HEADER_SIZE, 1) == 1
        assert attached.region.load(HEADER_SIZE) == 2
        assert attached.header().ready
    finally:
        attached.close()


def _attach_then_outlive_unlink(name: str, attached_event, unlinked_event, results) -> None:  # type: ignore[no-untyped-def]
    attached = Segment.attach(name, kind=KIND, layout_version=LAYOUT)
    attached.region.fetch_add(HEADER_SIZE, 1)
    attached_event.set()
    if not unlinked_event.wait(CHILD_WAIT):
        results.put("creator never unlinked")
        return
    name_gone = not exists(name)
    attached.region.fetch_add(HEADER_SIZE, 10)
    results.put((name_gone, attached.region.load(HEADER_SIZE)))
    attached.close()


def test_attached_process_keeps_working_after_creator_unlinks(mp_context) -> None:  # type: ignore[no-untyped-def]
    segment = Segment.create(KIND, PAYLOAD, layout_version=LAYOUT)
    segment.mark_ready()
    attached_event, unlinked_event = mp_context.Event(), mp_context.Event()
    results = mp_context.Queue()
    child = mp_context.Process(target=_attach_then_outlive_unlink,
                               args=(segment.name, attached_event, unlinked_event, results))
    child.start()
    try:
        assert attached_event.wait(CHILD_WAIT)
        segment.close()
        assert not exists(segment.name)
        unlinked_event.set()
        assert results.get(timeout=CHILD_WAIT) == (True, 11)
        child.join(CHILD_WAIT)
        assert child.exitcode == 0
    finally:
        segment.close()
        if child.is_alive():
            kill(child.pid)
            child.join(CHILD_WAIT)
        results.close()
        results.join_thread()


# ---- fork inheritance --------------------------------------------------------------------


def _inherit_and_exit(segment: Segment) -> None:
    if segment.is_creator:
        raise AssertionError("a forked child thinks it created the segment")
    try:
        segment.unlink()
    except SegmentError:
        pass
    else:
        raise AssertionError("a forked child unlinked its parent's segment")
    segment.region.fetch_add(HEADER_SIZE, 1)  # the inherited mapping works in the child
    # What the child's exit does: drop the object (GC runs __del__ -> close) and run
    # carmp's atexit hook. multiprocess ends forked children with os._exit, so run it here.
    segment.close()
    del segment
    gc.collect()
    segment_mod._close_created_segments()


@pytest.mark.parametrize("mp_context", ["fork"], indirect=True)
def test_forked_child_exit_does_not_unlink(mp_context, make: Callable[..., Segment]) -> None:  # type: ignore[no-untyped-def]
    segment = make()
    child = mp_context.Process(target=_inherit_and_exit, args=(segment,))
    child.start()
    child.join(CHILD_WAIT)
    assert child.exitcode == 0
    assert exists(segment.name)
    assert not segment.closed
    assert segment.region.load(HEADER_SIZE) == 1
    attached = Segment.attach(segment.name, kind=KIND, layout_version=LAYOUT)
    attached.close()


def _fork_child_drops_global(name_holder) -> None:  # type: ignore[no-untyped-def]
    name_holder.clear()  # the child's only reference: the copy of the parent's list
    gc.collect()
    segment_mod._close_created_segments()


@pytest.mark.parametrize("mp_context", ["fork"], indirect=True)
def test_forked_child_gc_of_last_reference_does_not_unlink(mp_context) -> None:  # type: ignore[no-untyped-def]
    holder = [Segment.create(KIND, PAYLOAD, layout_version=LAYOUT)]
    name = holder[0].name
    try:
        holder[0].mark_ready()
        child = mp_context.Process(target=_fork_child_drops_global, args=(holder,))
        child.start()
        child.join(CHILD_WAIT)
        assert child.exitcode == 0
        assert exists(name)
        Segment.attach(name, kind=KIND, layout_version=LAYOUT).close()
    finally:
        holder[0].close()
    assert not exists(name)


# ---- creator lost by the cyclic GC ---------------------------------------------------------


class _Cycle:
    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.me = self


def test_creator_collected_in_a_cycle_still_unlinks() -> None:
    segment = Segment.create(KIND, PAYLOAD, layout_version=LAYOUT)
    name = segment.name
    try:
        _Cycle(segment)
        del segment
        gc.collect()
        assert not exists(name)
    finally:
        force_unlink(name)


# ---- free space ------------------------------------------------------------------------------


def test_shared_memory_full_before_anything_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    def nearly_full(path: str) -> os.statvfs_result:
        assert path == "/dev/shm"
        return SimpleNamespace(f_bavail=1, f_frsize=4096)  # type: ignore[return-value]

    monkeypatch.setattr("carmp.shared.segment.os.statvfs", nearly_full)
    run_id = new_run_id()
    before = {e for e in os.listdir("/dev/shm") if run_id in e}
    with pytest.raises(SharedMemoryFull, match="free") as info:
        Segment.create(KIND, PAYLOAD, layout_version=LAYOUT, run_id=run_id)
    assert isinstance(info.value, MemoryError)
    assert "carmp cleanup" in str(info.value)
    assert not exists(segment_name(run_id, KIND))
    assert {e for e in os.listdir("/dev/shm") if run_id in e} == before == set()


def test_headroom_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    size = HEADER_SIZE + PAYLOAD
    free = size + segment_mod.SHM_HEADROOM - 1
    monkeypatch.setattr("carmp.shared.segment.os.statvfs",
                        lambda path: SimpleNamespace(f_bavail=free, f_frsize=1))
    with pytest.raises(SharedMemoryFull):
        Segment.create(KIND, PAYLOAD, layout_version=LAYOUT)


def test_statvfs_failure_is_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: str) -> os.statvfs_result:
        raise OSError("no statvfs here")

    monkeypatch.setattr("carmp.shared.segment.os.statvfs", broken)
    with Segment.create(KIND, PAYLOAD, layout_version=LAYOUT) as segment:
        assert exists(segment.name)


# ---- sweep -------------------------------------------------------------------------------------


def _create_and_wait(run_id: str, created, stop) -> None:  # type: ignore[no-untyped-def]
    segment = Segment.create(KIND, PAYLOAD, layout_version=LAYOUT, run_id=run_id)
    segment.mark_ready()
    created.set()
    stop.wait(CHILD_WAIT)  # SIGKILLed long before this returns


def _orphan_segment(ctx) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """A segment whose creator (a child) was SIGKILLed, so its atexit hook never ran."""
    run_id = new_run_id()
    created, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_create_and_wait, args=(run_id, created, stop))
    child.start()
    try:
        assert created.wait(CHILD_WAIT), "child never created its segment"
    finally:
        kill(child.pid)
        child.join(CHILD_WAIT)
    assert child.exitcode == -signal.SIGKILL
    name = segment_name(run_id, KIND)
    assert exists(name)
    return name, child.pid


def test_sweep_removes_segment_of_killed_creator(  # type: ignore[no-untyped-def]
    mp_context, make: Callable[..., Segment], only_names: Callable[..., None]
) -> None:
    orphan, child_pid = _orphan_segment(mp_context)
    try:
        live = make()
        only_names(orphan, live.name)

        dry = sweep(dry_run=True)
        assert [(s.name, s.creator_pid, s.reason) for s in dry] == [
            (orphan, child_pid, "creator is dead")
        ]
        assert exists(orphan) and exists(live.name)

        swept = sweep()
        assert [(s.name, s.creator_pid, s.reason) for s in swept] == [
            (orphan, child_pid, "creator is dead")
        ]
        assert not exists(orphan)
        assert exists(live.name)
        live.region.store(HEADER_SIZE, 1)  # untouched and still usable
        Segment.attach(live.name, kind=KIND, layout_version=LAYOUT).close()

        assert sweep() == []
    finally:
        force_unlink(orphan)


def test_sweep_keeps_not_ready_segment_of_live_creator(
    make: Callable[..., Segment], only_names: Callable[..., None]
) -> None:
    live = make(ready=False)
    only_names(live.name)
    assert sweep(include_corrupt=True) == []
    assert exists(live.name)


def test_sweep_treats_reused_pid_as_dead(
    make: Callable[..., Segment], only_names: Callable[..., None]
) -> None:
    """Same pid, other start time: the creator is gone and the pid was recycled."""
    segment = make()
    only_names(segment.name)
    segment.region.store(32, segment.header().creator_start + 1)
    swept = sweep()
    assert [(s.name, s.reason) for s in swept] == [(segment.name, "creator is dead")]
    assert not exists(segment.name)


def test_sweep_corrupt_files(make: Callable[..., Segment], only_names: Callable[..., None]) -> None:
    garbage = f"/carmp-zz-garbage-{new_run_id()}"
    bad_magic = make()
    live = make()
    with open(shm_path(garbage), "wb") as f:
        f.write(b"this is not a carmp segment")
    try:
        bad_magic.region.store(0, 0)
        only_names(garbage, bad_magic.name, live.name)
        # a young unreadable segment may be one whose creator is still writing its header
        assert sweep(dry_run=True, include_corrupt=True) == []
        old = time.time() - 2 * segment_mod.SWEEP_CORRUPT_MIN_AGE
        for name in (garbage, bad_magic.name):
            os.utime(shm_path(name), (old, old))

        assert sweep() == []
        assert len(sweep(dry_run=True, include_corrupt=True)) == 2
        assert exists(garbage) and exists(bad_magic.name)

        swept = sweep(include_corrupt=True)
        assert sorted((s.name, s.creator_pid, s.reason) for s in swept) == sorted(
            [(garbage, 0, "unreadable header"), (bad_magic.name, 0, "unreadable header")]
        )
        assert not exists(garbage) and not exists(bad_magic.name)
        assert exists(live.name)
    finally:
        if exists(garbage):
            os.unlink(shm_path(garbage))


def test_list_segment_names_sees_only_carmp(make: Callable[..., Segment]) -> None:
    other = f"/notcarmp-{new_run_id()}"
    shm = posix_ipc.SharedMemory(other, posix_ipc.O_CREX, mode=0o600, size=HEADER_SIZE)
    shm.close_fd()
    try:
        segment = make()
        names = segment_mod.list_segment_names()
        assert segment.name in names
        assert other not in names
        assert names == sorted(names)
        assert all(n.startswith("/carmp-") for n in names)
    finally:
        force_unlink(other)
