"""The mailbox on Ray: the local mailbox's routing, limits, errors and re-registration
through a mailbox actor, messages between Ray actors in FIFO order per sender, senders
that wait for room by polling, idempotent resends, and a clean shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from carmp.backends.on_ray.mailbox import RayMailbox, RayReceiver, start_mailbox
from carmp.errors import (
    InvalidMailbox,
    MailboxClosed,
    MailboxFull,
    MailboxSend,
    MailboxTimeout,
    MessageTooLarge,
)
from carmp.shared.mailbox import Message, MessageKind
from tests.backends.on_ray.hosts import segments_of, wait_gone

pytestmark = pytest.mark.ray

WAIT = 30.0  # how long something the test caused may take to show (a bound, not a timing)


@pytest.fixture
def mailbox(ray_session: Any) -> Iterator[RayMailbox]:
    mailbox = start_mailbox(capacity_per_agent=3, max_message_bytes=512)
    yield mailbox
    mailbox.close_host()


def test_actors_message_each_other_in_order(mailbox: RayMailbox) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def send_all(mailbox: RayMailbox, sender: str, count: int) -> None:
        for i in range(count):
            mailbox.send(Message("inbox", sender, {"i": i}), timeout=WAIT)

    @ray.remote(num_cpus=0)
    class Agent:
        def __init__(self, mailbox: RayMailbox) -> None:
            self.receiver = mailbox.register("inbox")

        def take(self, count: int) -> list[dict[str, Any]]:
            return [self.receiver.recv(timeout=WAIT).to_dict() for _ in range(count)]

    agent = Agent.remote(mailbox)
    ray.get(agent.take.remote(0))  # registered
    sent = [send_all.remote(mailbox, sender, 6) for sender in ("a", "b")]
    received = ray.get(agent.take.remote(12))  # 12 through a queue of 3: senders wait
    ray.get(sent)
    for sender in ("a", "b"):
        assert [m["content"]["i"] for m in received if m["sender"] == sender] == list(range(6))
    assert all(m["to"] == "inbox" and m["kind"] == "text" for m in received)
    ray.kill(agent)


def test_a_message_arrives_as_it_was_sent(mailbox: RayMailbox) -> None:
    receiver = mailbox.register("b")
    sent = Message("b", "a", {"text": "hi", "n": [1, 2.5, None]}, MessageKind.REQUEST,
                   reply_to="r1")
    mailbox.send(sent)
    assert receiver.try_recv() == sent
    assert receiver.try_recv() is None
    assert receiver.agent == "b" and not receiver.closed


def test_recv_times_out_with_the_agent_named(mailbox: RayMailbox) -> None:
    receiver = mailbox.register("idle")
    with pytest.raises(MailboxTimeout) as waited:
        receiver.recv(timeout=0.2)
    assert waited.value.agent == "idle" and waited.value.timeout == 0.2


def test_a_full_queue_is_mailbox_full_after_the_timeout(mailbox: RayMailbox) -> None:
    receiver = mailbox.register("slow")
    for i in range(3):
        mailbox.send(Message("slow", "a", i))
    with pytest.raises(MailboxFull) as full:
        mailbox.send(Message("slow", "a", 3), timeout=0.2)
    assert full.value.agent == "slow" and "for 0.2 s" in str(full.value)
    assert [receiver.recv(0).content for _ in range(3)] == [0, 1, 2]
    assert receiver.try_recv() is None  # the refused message was not sent


def test_a_sender_waits_until_the_receiver_makes_room(mailbox: RayMailbox) -> None:
    receiver = mailbox.register("slow")
    for i in range(3):
        mailbox.send(Message("slow", "a", i))
    taker = threading.Timer(0.3, receiver.recv)
    taker.start()
    try:
        mailbox.send(Message("slow", "a", 3), timeout=WAIT)
    finally:
        taker.join()
    assert [receiver.recv(0).content for _ in range(3)] == [1, 2, 3]


def test_an_unknown_agent_is_mailbox_send(mailbox: RayMailbox) -> None:
    with pytest.raises(MailboxSend) as unknown:
        mailbox.send(Message("nobody", "a"), timeout=WAIT)
    assert not isinstance(unknown.value, MailboxFull) and unknown.value.agent == "nobody"


def test_a_message_over_the_limit_is_too_large(mailbox: RayMailbox) -> None:
    receiver = mailbox.register("b")
    with pytest.raises(MessageTooLarge):
        mailbox.send(Message("b", "a", "x" * 600))
    assert receiver.try_recv() is None
    with pytest.raises(InvalidMailbox):
        mailbox.send("not a message")  # type: ignore[arg-type]


def test_registering_again_replaces_the_receiver(mailbox: RayMailbox) -> None:
    old = mailbox.register("b")
    mailbox.send(Message("b", "a", "kept"))
    new = mailbox.register("b")
    assert old.closed and not new.closed
    with pytest.raises(MailboxClosed):
        old.recv(timeout=WAIT)
    assert new.recv(0).content == "kept"  # the queue passed to the new receiver
    assert mailbox.registered() == ["b"]
    mailbox.send(Message("b", "a", "later"))
    assert mailbox.unregister("b") == 1
    assert new.closed and mailbox.registered() == []
    with pytest.raises(MailboxClosed):
        new.try_recv()
    with pytest.raises(MailboxSend):
        mailbox.send(Message("b", "a"))


def test_broadcast_reaches_everyone_but_the_sender(mailbox: RayMailbox) -> None:
    receivers = {name: mailbox.register(name) for name in ("a", "b", "c")}
    assert mailbox.broadcast(Message("*", "a", "news", MessageKind.EVENT)) == ["b", "c"]
    assert receivers["a"].try_recv() is None
    for name in ("b", "c"):
        assert receivers[name].recv(0).content == "news"
    assert mailbox.statistics().queued == {"a": 0, "b": 0, "c": 0}


def test_a_receiver_travels_to_another_actor(mailbox: RayMailbox) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def take(receiver: RayReceiver) -> Any:
        return receiver.recv(timeout=WAIT).content

    receiver = mailbox.register("far")
    mailbox.send(Message("far", "a", "there"))
    assert ray.get(take.remote(receiver)) == "there"


def test_a_resent_receive_with_the_same_key_takes_one_message(mailbox: RayMailbox) -> None:
    import ray

    receiver = mailbox.register("b")
    for i in range(2):
        mailbox.send(Message("b", "a", i))
    handle = mailbox.hosted.handle
    call = ("try_recv", (receiver.receiver_id, "b"), {}, "resent-recv")
    first, again = ray.get([handle.call.remote(*call), handle.call.remote(*call)])
    assert first == again and Message.from_json(first[1]).content == 0
    assert receiver.recv(0).content == 1


def test_bad_options_are_refused_before_any_actor_starts(ray_session: Any) -> None:
    with pytest.raises(InvalidMailbox):
        start_mailbox(capacity_per_agent=0)
    with pytest.raises(InvalidMailbox):
        start_mailbox(queue_bytes=1000)


def test_close_host_leaves_no_process_and_no_segment(ray_session: Any) -> None:
    mailbox = start_mailbox()
    pid = ray_session.get(mailbox.hosted.handle.pid.remote())
    assert segments_of(pid)
    mailbox.close()  # a client owns nothing
    assert mailbox.registered() == []
    mailbox.close_host()
    assert wait_gone(pid), f"the mailbox actor's process {pid} did not end"
    assert segments_of(pid) == []


def test_a_restarted_mailbox_asks_agents_to_register_again(mailbox: RayMailbox) -> None:
    import ray

    def pid() -> int:
        found: int = ray.get(mailbox.hosted.handle.pid.remote())
        return found

    receiver = mailbox.register("b")
    mailbox.send(Message("b", "a", "lost"))
    old = pid()
    os.kill(old, signal.SIGKILL)  # as a crash would; Ray restarts the actor

    def restarted() -> bool:
        try:
            return pid() != old
        except ray.exceptions.RayActorError:  # not back yet
            return False

    deadline = time.monotonic() + WAIT
    while not restarted():
        assert time.monotonic() < deadline, "the mailbox actor did not come back"
        time.sleep(0.05)
    assert segments_of(old) == []  # the new incarnation removed the dead one's segment
    with pytest.raises(MailboxClosed):
        receiver.try_recv()
    with pytest.raises(MailboxSend):
        mailbox.send(Message("b", "a"))
    again = mailbox.register("b")
    mailbox.send(Message("b", "a", "after"))
    assert again.recv(timeout=WAIT).content == "after"
