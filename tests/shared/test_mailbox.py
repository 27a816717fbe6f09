"""Mailbox and Message: CAR's mailbox case (CAR-SPEC 3, case 35), the bounds and
backpressure, registration, bad input, corrupt segments, and the guarantees across
processes (fork, forkserver, spawn): many senders, pickled receivers, dead lock holders,
killed senders, Ctrl-C."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from carmp import (
    CarmpError,
    InvalidAgentJson,
    InvalidMailbox,
    Mailbox,
    MailboxClosed,
    MailboxFull,
    MailboxReceiver,
    MailboxSend,
    MailboxTableFull,
    MailboxTimeout,
    Message,
    MessageKind,
    MessageTooLarge,
    MultiError,
    SegmentCorrupt,
)
from carmp.shared import mailbox as layout
from carmp.shared.segment import SHM_DIR
from tests.conftest import kill

WAIT = 60.0  # bounded waits on other threads and processes: only hit on deadlock


@pytest.fixture
def make_mailbox() -> Iterator[Callable[..., Mailbox]]:
    made: list[Mailbox] = []

    def make(capacity_per_agent: int = 8, **options: Any) -> Mailbox:
        options.setdefault("max_agents", 8)
        options.setdefault("max_message_bytes", 1024)
        mailbox = Mailbox(capacity_per_agent, **options)
        made.append(mailbox)
        return mailbox

    yield make
    for mailbox in made:
        mailbox.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


def drain(receiver: MailboxReceiver) -> list[Any]:
    contents = []
    while (message := receiver.try_recv()) is not None:
        contents.append(message.content)
    return contents


# ---- Message ------------------------------------------------------------------------------


def test_message_round_trips_through_json_with_its_chosen_field_names() -> None:
    message = Message(to="bob", sender="alice", content={"task": [1, 2]},
                      kind=MessageKind.REQUEST)
    wire = orjson.loads(message.to_json())
    assert set(wire) == {"id", "sender", "to", "kind", "content", "timestamp"}
    assert wire["kind"] == "request" and wire["to"] == "bob" and wire["sender"] == "alice"
    assert Message.from_json(message.to_json()) == message
    reply = Message(to="alice", sender="bob", kind="response", reply_to=message.id, content=3)
    assert reply.kind is MessageKind.RESPONSE
    assert orjson.loads(reply.to_json())["reply_to"] == message.id
    assert Message.from_dict(reply.to_dict()) == reply


def test_message_reading_needs_only_to_and_ignores_unknown_keys() -> None:
    message = Message.from_dict({"to": "bob", "sender": None, "priority": 9})
    assert (message.to, message.sender, message.kind, message.content) == \
        ("bob", "", MessageKind.TEXT, None)
    assert message.id and message.timestamp > 0
    with pytest.raises(InvalidAgentJson, match="'to'"):
        Message.from_dict({"sender": "alice"})
    with pytest.raises(InvalidAgentJson, match="not valid JSON"):
        Message.from_json(b"{nope")


@pytest.mark.parametrize("bad", [
    dict(to=""), dict(to=7), dict(to="b", sender=None), dict(to="b", kind="shout"),
    dict(to="b", content={1: "non-str key"}), dict(to="b", content=object()),
    dict(to="b", timestamp="now"), dict(to="b", reply_to=5), dict(to="b", id=""),
])
def test_bad_messages_are_refused_naming_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidAgentJson, match=r"Message\."):
        Message(**bad)


# ---- CAR's case 35 --------------------------------------------------------------------------


def test_send_to_an_unregistered_name_is_mailbox_send_naming_it(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    mailbox.register("alice")
    with pytest.raises(MailboxSend) as caught:
        mailbox.send(Message(to="ghost", sender="alice"))
    assert str(caught.value).startswith("mailbox send error: no agent 'ghost'")
    assert caught.value.agent == "ghost"
    assert isinstance(caught.value, MultiError) and isinstance(caught.value, CarmpError)


def test_broadcast_reaches_every_registered_agent_but_its_sender(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    receivers = {name: mailbox.register(name) for name in ("a", "b", "c")}
    reached = mailbox.broadcast(Message(to="*", sender="a", content="news"))
    assert reached == ["b", "c"]
    assert {name: drain(r) for name, r in receivers.items()} == \
        {"a": [], "b": ["news"], "c": ["news"]}
    # a message from no agent reaches all of them
    assert mailbox.broadcast(Message(to="*", content="from the host")) == ["a", "b", "c"]
    assert all(drain(r) == ["from the host"] for r in receivers.values())


def test_after_unregister_send_fails_and_the_receiver_is_closed(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    receiver = mailbox.register("bob")
    mailbox.send(Message(to="bob", content=1))
    mailbox.send(Message(to="bob", content=2))
    assert mailbox.unregister("bob") == 2  # the queued messages are discarded
    with pytest.raises(MailboxSend, match="no agent 'bob'"):
        mailbox.send(Message(to="bob"))
    assert receiver.closed
    with pytest.raises(MailboxClosed, match="bob"):
        receiver.recv(timeout=WAIT)
    assert mailbox.unregister("bob") == 0  # not registered: nothing to do, as in CAR
    assert mailbox.registered() == []
    fresh = mailbox.register("bob")  # a new registration starts empty
    assert fresh.try_recv() is None


def test_recv_on_an_empty_queue_times_out_naming_the_agent(make_mailbox: Any) -> None:
    receiver = make_mailbox().register("idle")
    assert receiver.try_recv() is None
    with pytest.raises(MailboxTimeout) as caught:
        receiver.recv(timeout=0.01)
    assert str(caught.value).startswith("mailbox recv timeout for agent idle")
    assert caught.value.agent == "idle" and isinstance(caught.value, TimeoutError)


# ---- order, bounds, backpressure ----------------------------------------------------------------


def test_a_queue_is_fifo(make_mailbox: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=64)
    receiver = mailbox.register("r")
    for i in range(50):
        mailbox.send(Message(to="r", sender="s", content=i))
    assert [receiver.recv(timeout=0).content for _ in range(50)] == list(range(50))


def test_a_full_queue_blocks_the_sender_until_the_receiver_takes_a_message(
        make_mailbox: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=2)
    receiver = mailbox.register("slow")
    for i in range(2):
        mailbox.send(Message(to="slow", content=i))
    sent = threading.Event()

    def send_third() -> None:
        mailbox.send(Message(to="slow", content=2))
        sent.set()

    sender = threading.Thread(target=send_third)
    sender.start()
    wait_until(lambda: mailbox.statistics().full_waits == 1, "the sender found the queue full")
    assert not sent.is_set() and mailbox.statistics().queued == {"slow": 2}
    assert receiver.recv(timeout=0).content == 0
    sender.join(WAIT)
    assert sent.is_set()
    assert drain(receiver) == [1, 2]


def test_a_send_that_stays_blocked_past_its_timeout_is_mailbox_full(make_mailbox: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=1)
    receiver = mailbox.register("r")
    mailbox.send(Message(to="r", content="first"))
    with pytest.raises(MailboxFull) as caught:
        mailbox.send(Message(to="r", content="second"), timeout=0.01)
    assert caught.value.agent == "r" and isinstance(caught.value, TimeoutError)
    assert str(caught.value).startswith("mailbox send error: the queue of agent 'r'")
    assert drain(receiver) == ["first"]  # nothing of the refused message went in


def test_a_queue_is_bounded_in_bytes_too(make_mailbox: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=1000, max_message_bytes=8000)
    assert mailbox.queue_bytes == 64 * 1024
    receiver = mailbox.register("r")
    big = "x" * 7000
    sent = 0
    with pytest.raises(MailboxFull):
        while True:
            mailbox.send(Message(to="r", content=big), timeout=0)
            sent += 1
    assert 0 < sent < 10  # the bytes ran out long before the 1000 messages
    assert len(drain(receiver)) == sent


def test_an_oversize_message_is_refused_and_nothing_is_sent(make_mailbox: Any) -> None:
    mailbox = make_mailbox(max_message_bytes=200)
    receiver = mailbox.register("r")
    probe = len(Message(to="r", content="", id="x", timestamp=1.0).to_json())
    fits = Message(to="r", content="y" * (200 - probe), id="x", timestamp=1.0)
    assert len(fits.to_json()) == 200
    mailbox.send(fits)
    too_big = Message(to="r", content="y" * (201 - probe), id="x", timestamp=1.0)
    with pytest.raises(MessageTooLarge) as caught:
        mailbox.send(too_big)
    assert "201-byte message" in str(caught.value) and "max_message_bytes=200" in str(caught.value)
    assert isinstance(caught.value, MailboxSend) and isinstance(caught.value, ValueError)
    with pytest.raises(MessageTooLarge):
        mailbox.broadcast(too_big)
    assert receiver.recv(timeout=0) == fits and receiver.try_recv() is None


# ---- registration -------------------------------------------------------------------------------


def test_registering_again_hands_the_queue_to_the_new_receiver(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    old = mailbox.register("worker")
    mailbox.send(Message(to="worker", content="sent before the restart"))
    new = mailbox.register("worker")
    assert old.closed and not new.closed
    with pytest.raises(MailboxClosed):
        old.try_recv()
    mailbox.send(Message(to="worker", content="sent after"))
    assert drain(new) == ["sent before the restart", "sent after"]
    assert mailbox.registered() == ["worker"]


def test_a_sender_blocked_on_a_full_queue_fails_when_the_agent_is_unregistered(
        make_mailbox: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=1)
    mailbox.register("gone")
    mailbox.send(Message(to="gone"))
    failures: list[BaseException] = []

    def send() -> None:
        try:
            mailbox.send(Message(to="gone"))
        except MailboxSend as exc:
            failures.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: mailbox.statistics().full_waits == 1, "the sender blocked")
    mailbox.unregister("gone")
    sender.join(WAIT)
    assert len(failures) == 1 and "no agent 'gone'" in str(failures[0])


def test_the_table_is_bounded(make_mailbox: Any) -> None:
    mailbox = make_mailbox(max_agents=2)
    mailbox.register("a")
    mailbox.register("b")
    with pytest.raises(MailboxTableFull, match="max_agents"):
        mailbox.register("c")
    mailbox.unregister("a")
    mailbox.register("c")  # the freed slot is reused
    assert sorted(mailbox.registered()) == ["b", "c"]


@pytest.mark.parametrize("name", ["", 5, None, "x" * 65, "é" * 33, "\ud800"])
def test_bad_agent_names_are_refused(make_mailbox: Any, name: Any) -> None:
    mailbox = make_mailbox()
    with pytest.raises(InvalidMailbox):
        mailbox.register(name)
    assert mailbox.registered() == []


def test_names_of_up_to_64_utf8_bytes_are_told_apart(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    long_a, long_b = "a" * 63 + "1", "a" * 63 + "2"
    receivers = [mailbox.register(name) for name in (long_a, long_b, "é" * 32)]
    for receiver in receivers:
        mailbox.send(Message(to=receiver.agent, content=receiver.agent))
    assert [drain(r) for r in receivers] == [[long_a], [long_b], ["é" * 32]]


@pytest.mark.parametrize("options", [
    dict(capacity_per_agent=0), dict(max_agents=0), dict(max_agents=10**6),
    dict(max_message_bytes=0), dict(queue_bytes=3 * 4096), dict(queue_bytes=1024),
    dict(capacity_per_agent=True),
])
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidMailbox):
        Mailbox(**options)


def test_bad_calls_are_refused_and_change_nothing(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    receiver = mailbox.register("r")
    with pytest.raises(InvalidMailbox, match="Message"):
        mailbox.send({"to": "r"})  # type: ignore[arg-type]
    with pytest.raises(InvalidMailbox, match="timeout"):
        mailbox.send(Message(to="r"), timeout=-1)
    with pytest.raises(InvalidMailbox, match="timeout"):
        receiver.recv(timeout="soon")  # type: ignore[arg-type]
    assert receiver.try_recv() is None


def test_a_message_whose_content_stopped_being_json_is_refused(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    receiver = mailbox.register("r")
    content: dict[str, Any] = {"ok": 1}
    message = Message(to="r", content=content)
    content["later"] = object()  # changed in place after the Message was checked
    with pytest.raises(InvalidAgentJson, match="nothing was sent"):
        mailbox.send(message)
    assert receiver.try_recv() is None


# ---- segments: attach, pickle, corruption ---------------------------------------------------


def test_attach_and_pickle_reach_the_same_queues(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    receiver = mailbox.register("r")
    attached = Mailbox.attach(mailbox.name)
    copy = pickle.loads(pickle.dumps(mailbox))
    try:
        attached.send(Message(to="r", content="via attach"))
        copy.send(Message(to="r", content="via pickle"))
        moved = pickle.loads(pickle.dumps(receiver))
        assert moved.agent == "r"
        assert drain(moved) == ["via attach", "via pickle"]
    finally:
        attached.close()
        copy.close()


def test_a_corrupt_header_or_geometry_is_refused_on_attach(make_mailbox: Any) -> None:
    mailbox = make_mailbox()
    mailbox._region.store(layout.MAX_AGENTS, 999)
    with pytest.raises(SegmentCorrupt, match="do not fit"):
        Mailbox.attach(mailbox.name)
    with open(os.path.join(SHM_DIR, mailbox.name.lstrip("/")), "r+b") as raw:
        raw.write(b"NOTCARMP")
    with pytest.raises(SegmentCorrupt, match="magic"):
        Mailbox.attach(mailbox.name)


# ---- across processes -----------------------------------------------------------------------------


def send_numbered(mailbox: Mailbox, sender: str, count: int) -> None:
    for seq in range(count):
        mailbox.send(Message(to="sink", sender=sender, content=seq))


def test_many_senders_in_processes_lose_and_duplicate_nothing(make_mailbox: Any,
                                                               mp_context: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=4)  # small: senders block and are woken
    sink = mailbox.register("sink")
    senders, per_sender = 4, 150
    procs = [mp_context.Process(target=send_numbered, args=(mailbox, f"s{i}", per_sender))
             for i in range(senders)]
    for proc in procs:
        proc.start()
    received: dict[str, list[int]] = {f"s{i}": [] for i in range(senders)}
    for _ in range(senders * per_sender):
        message = sink.recv(timeout=WAIT)
        received[message.sender].append(message.content)
    for proc in procs:
        proc.join(WAIT)
        assert proc.exitcode == 0
    assert sink.try_recv() is None
    assert all(seqs == list(range(per_sender)) for seqs in received.values())  # FIFO per sender


def echo_once(receiver: MailboxReceiver, mailbox: Mailbox) -> None:
    """In a child: answer one request through the pickled receiver, then register an agent
    of its own and answer through that too."""
    request = receiver.recv(timeout=WAIT)
    mine = mailbox.register("child")
    mailbox.send(Message(to=request.sender, sender="child", kind=MessageKind.RESPONSE,
                         reply_to=request.id, content=request.content * 2))
    second = mine.recv(timeout=WAIT)
    mailbox.send(Message(to=second.sender, sender="child", content=second.content + 1))


def test_a_pickled_receiver_and_mailbox_work_in_a_child(make_mailbox: Any,
                                                        mp_context: Any) -> None:
    mailbox = make_mailbox()
    worker, parent = mailbox.register("worker"), mailbox.register("parent")
    child = mp_context.Process(target=echo_once, args=(worker, mailbox))
    child.start()
    request = Message(to="worker", sender="parent", kind=MessageKind.REQUEST, content=21)
    mailbox.send(request)
    answer = parent.recv(timeout=WAIT)
    assert (answer.content, answer.reply_to, answer.kind) == (42, request.id, MessageKind.RESPONSE)
    wait_until(lambda: "child" in mailbox.registered(), "the child registered")
    mailbox.send(Message(to="child", sender="parent", content=1))
    assert parent.recv(timeout=WAIT).content == 2
    child.join(WAIT)
    assert child.exitcode == 0


def hold_a_lock_until_killed(mailbox: Mailbox, slot: int | None, ready: Any) -> None:
    lock = mailbox._table_lock if slot is None else mailbox._locks[slot]
    lock.acquire()
    ready.set()
    while True:
        signal.pause()


@pytest.mark.parametrize("which", ["slot", "table"])
def test_a_process_killed_holding_a_lock_does_not_wedge_the_mailbox(
        make_mailbox: Any, mp_context: Any, which: str) -> None:
    mailbox = make_mailbox()
    receiver = mailbox.register("r")
    mailbox.send(Message(to="r", content="queued"))
    ready = mp_context.Event()
    slot = receiver._slot if which == "slot" else None
    holder = mp_context.Process(target=hold_a_lock_until_killed, args=(mailbox, slot, ready))
    holder.start()
    try:
        assert ready.wait(WAIT)
    finally:
        kill(holder.pid)
        holder.join(WAIT)
    mailbox.send(Message(to="r", content="after"))
    mailbox.register("s")
    assert drain(receiver) == ["queued", "after"]
    assert mailbox.statistics().lock_recoveries == 1


def send_until_killed(mailbox: Mailbox, started: Any) -> None:
    started.set()
    seq = 0
    while True:
        mailbox.send(Message(to="sink", sender="doomed", content=seq))
        seq += 1


def test_a_sender_killed_mid_send_leaves_whole_messages_and_a_true_count(
        make_mailbox: Any, mp_context: Any) -> None:
    mailbox = make_mailbox(capacity_per_agent=100_000, max_agents=1, queue_bytes=1 << 22)
    sink = mailbox.register("sink")
    started = mp_context.Event()
    sender = mp_context.Process(target=send_until_killed, args=(mailbox, started))
    sender.start()
    try:
        assert started.wait(WAIT)
        wait_until(lambda: mailbox.statistics().queued["sink"] >= 200, "sends are under way")
    finally:
        kill(sender.pid)
        sender.join(WAIT)
    contents = drain(sink)
    assert contents == list(range(len(contents)))  # whole, in order, none lost or doubled
    assert mailbox.statistics().queued == {"sink": 0}  # a count left one high is put right
    mailbox.send(Message(to="sink", content="still works"))
    assert sink.recv(timeout=0).content == "still works"


def wait_for_ctrl_c(receiver: MailboxReceiver) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the parent had
    try:
        receiver.recv()
    except KeyboardInterrupt:
        os._exit(42)
    os._exit(1)


def test_ctrl_c_interrupts_a_blocked_recv(make_mailbox: Any, mp_context: Any) -> None:
    mailbox = make_mailbox()
    receiver = mailbox.register("r")
    child = mp_context.Process(target=wait_for_ctrl_c, args=(receiver,))
    child.start()
    waiters = mailbox._base(receiver._slot) + layout._WAITERS
    wait_until(lambda: mailbox._region.load(waiters) == 1, "the child is asleep in recv")
    os.kill(child.pid, signal.SIGINT)
    child.join(WAIT)
    assert child.exitcode == 42
