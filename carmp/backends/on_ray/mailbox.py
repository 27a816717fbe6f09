"""The mailbox on Ray: a host actor over a local Mailbox, and the RayMailbox client.

The actor (a PrimitiveHost) holds a local Mailbox, so queues, capacities, size limits,
FIFO order and re-registration are the local code's. Messages cross as their JSON text
(Message.to_json / from_json), never as pickles of the content.

The actor never waits, so the clients do, by polling (carmp/backends/on_ray/polling.py):
a send to a full queue tries again until its timeout (then MailboxFull, as locally),
recv() tries try_recv until its timeout (then MailboxTimeout). The mailbox's full_waits
statistic therefore counts each try that found a queue full, not each send.

A receiver is the actor's MailboxReceiver, named by an id the actor hands out: the
client, RayReceiver, pickles as that id and the mailbox client. Registering a name again
replaces its receiver, as locally; the actor forgets the old one, and its client gets
MailboxClosed. Sends, receives and registrations travel as idempotent mutations
(HostedClient.mutate), so a resent call delivers, takes or registers once.

What an actor restart loses: the queues live in the actor's process, so a restarted
mailbox has no registered agents; receivers and sends then get MailboxClosed and
MailboxSend until the agents register again. The killed incarnation's segment is
removed by the next one (incarnations.py).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from carmp.backends.on_ray.cluster import ray_module
from carmp.backends.on_ray.host import HostedClient, HostedPart, start_host
from carmp.backends.on_ray.incarnations import (
    dead_predecessors,
    incarnation_run_id,
    new_host_id,
    unlink,
)
from carmp.backends.on_ray.polling import poll
from carmp.errors import InvalidMailbox, MailboxClosed, MailboxFull, MailboxTimeout
from carmp.shared.mailbox import (
    DEFAULT_CAPACITY,
    DEFAULT_MAX_AGENTS,
    DEFAULT_MAX_MESSAGE_BYTES,
    KIND,
    Mailbox,
    MailboxReceiver,
    MailboxStatistics,
    Message,
    _check_options,
    _deadline,
    broadcast_each,
)

WHAT = "mailbox"


class MailboxHost:
    """The mailbox actor's object: a local Mailbox, and the receivers it handed out."""

    def __init__(self, host_id: str, options: dict[str, Any]) -> None:
        for name in dead_predecessors(host_id, KIND):  # a killed incarnation's segment
            unlink(name)
        self.mailbox = Mailbox(run_id=incarnation_run_id(host_id), **options)
        self.receivers: dict[int, MailboxReceiver] = {}
        self._receiver_ids = itertools.count(1)

    def actor_id(self) -> str:
        return str(ray_module().get_runtime_context().get_actor_id())

    def register(self, name: str) -> int:
        """Register `name`; returns its new receiver's id (the previous one is closed)."""
        receiver = self.mailbox.register(name)
        self._forget(name)
        receiver_id = next(self._receiver_ids)
        self.receivers[receiver_id] = receiver
        return receiver_id

    def unregister(self, name: str) -> int:
        discarded = self.mailbox.unregister(name)
        self._forget(name)
        return discarded

    def _forget(self, name: str) -> None:
        """Drop the receivers of `name`: closed now, they could never receive again."""
        for receiver_id in [i for i, r in self.receivers.items() if r.agent == name]:
            del self.receivers[receiver_id]

    def registered(self) -> list[str]:
        return self.mailbox.registered()

    def statistics(self) -> MailboxStatistics:
        return self.mailbox.statistics()

    def try_send(self, text: str, to: str, waited: float | None) -> None:
        """Deliver the message (JSON) to `to` if its queue has room now, else MailboxFull."""
        self.mailbox.try_send_to(to, Message.from_json(text), waited)

    def try_recv(self, receiver_id: int, agent: str) -> str | None:
        """The oldest message of the receiver's queue, as JSON, or None when it is empty."""
        message = self._receiver(receiver_id, agent).try_recv()
        return None if message is None else message.to_json()

    def closed(self, receiver_id: int) -> bool:
        receiver = self.receivers.get(receiver_id)
        return receiver is None or receiver.closed

    def _receiver(self, receiver_id: int, agent: str) -> MailboxReceiver:
        receiver = self.receivers.get(receiver_id)
        if receiver is None:
            raise MailboxClosed(agent)
        return receiver

    def close(self) -> None:
        self.mailbox.close()


def start_mailbox(capacity_per_agent: int = DEFAULT_CAPACITY, *,
                  max_agents: int = DEFAULT_MAX_AGENTS,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  queue_bytes: int | None = None) -> RayMailbox:
    """A new mailbox actor with the local Mailbox's options, and its client. Bad options
    are refused here (InvalidMailbox), before an actor starts."""
    _check_options(capacity_per_agent, max_agents, max_message_bytes, queue_bytes)
    options = {"capacity_per_agent": capacity_per_agent, "max_agents": max_agents,
               "max_message_bytes": max_message_bytes, "queue_bytes": queue_bytes}
    factory = functools.partial(MailboxHost, new_host_id(), options)
    client = start_host(factory, what=WHAT)
    return RayMailbox(client, f"ray-mailbox-{client.call('actor_id')[:12]}")


def _encode(msg: Message) -> str:
    if not isinstance(msg, Message):
        raise InvalidMailbox(f"the mailbox carries Message objects, got {type(msg).__name__}")
    return msg.to_json()


class RayMailbox(HostedPart):
    """A Mailbox's surface, answered by the mailbox actor. Pickles as its HostedClient
    and name, so it travels into worker actors."""

    def __init__(self, hosted: HostedClient, name: str) -> None:
        self.hosted = hosted
        self.name = name
        self.owner = False  # set by whoever hands it out to be closed: close() ends the actor

    def __reduce__(self) -> tuple[Any, tuple[HostedClient, str]]:
        return (RayMailbox, (self.hosted, self.name))

    def __repr__(self) -> str:
        return f"<RayMailbox {self.name}>"

    def register(self, name: str) -> RayReceiver:
        """Give agent `name` a queue and return its receiver; registering a name again
        passes its queue to the new receiver, and the previous one gets MailboxClosed."""
        return RayReceiver(self, name, self.hosted.mutate("register", name))

    def unregister(self, name: str) -> int:
        """Free agent `name`'s slot; returns how many queued messages were discarded."""
        return self.hosted.mutate("unregister", name)  # type: ignore[no-any-return]

    def registered(self) -> list[str]:
        return self.hosted.call("registered")  # type: ignore[no-any-return]

    def statistics(self) -> MailboxStatistics:
        return self.hosted.call("statistics")  # type: ignore[no-any-return]

    def send(self, msg: Message, timeout: float | None = None) -> None:
        """Put `msg` in the queue of agent `msg.to`, waiting while that queue is full (for
        at most `timeout` seconds; None waits as long as it takes)."""
        text = _encode(msg)
        self._deliver(msg.to, text, _deadline(timeout), timeout)

    def broadcast(self, msg: Message, timeout: float | None = None) -> list[str]:
        """Send `msg` as it is to every registered agent except `msg.sender`; returns the
        names it reached. `timeout` bounds the whole broadcast."""
        text, deadline = _encode(msg), _deadline(timeout)
        return broadcast_each(msg, self.registered(),
                              lambda name: self._deliver(name, text, deadline, timeout))

    def _deliver(self, to: str, text: str, deadline: float | None,
                 timeout: float | None) -> None:
        full: MailboxFull | None = None

        def attempt() -> bool | None:
            nonlocal full
            try:
                self.hosted.mutate("try_send", text, to, timeout)
            except MailboxFull as exc:
                full = exc
                return None
            return True

        if poll(attempt, deadline) is None:
            assert full is not None
            raise full

    def close(self) -> None:
        """End the mailbox if this is its owner's client; copies (in workers) own nothing."""
        if self.owner:
            self.owner = False
            self.close_host()


class RayReceiver:
    """The receiving end of one agent's queue, from RayMailbox.register(). It pickles
    (with its mailbox client), so an agent can receive in another process."""

    __slots__ = ("mailbox", "agent", "receiver_id")

    def __init__(self, mailbox: RayMailbox, agent: str, receiver_id: int) -> None:
        self.mailbox = mailbox
        self.agent = agent
        self.receiver_id = receiver_id

    def __reduce__(self) -> tuple[Any, tuple[RayMailbox, str, int]]:
        return (RayReceiver, (self.mailbox, self.agent, self.receiver_id))

    def __repr__(self) -> str:
        return f"<RayReceiver {self.agent!r} of {self.mailbox.name}>"

    def recv(self, timeout: float | None = None) -> Message:
        """The oldest message, waiting for one at most `timeout` seconds (None: as long as
        it takes); MailboxTimeout(agent) when none came."""
        message = poll(self.try_recv, _deadline(timeout))
        if message is None:
            raise MailboxTimeout(self.agent, timeout)
        return message

    def try_recv(self) -> Message | None:
        """The oldest message, or None at once when the queue is empty."""
        text = self.mailbox.hosted.mutate("try_recv", self.receiver_id, self.agent)
        return None if text is None else Message.from_json(text)

    @property
    def closed(self) -> bool:
        """True once the agent was unregistered or registered again."""
        return self.mailbox.hosted.call("closed", self.receiver_id)  # type: ignore[no-any-return]
