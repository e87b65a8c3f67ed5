"""Sending messages: the one code path behind the route's HTTP endpoints and in-band sends.

Every message is stored in each receiver's inbox (``cim.backends.base.Inbox``: one
round trip, numbered by seq, duplicates of a resent clientMsgId left out) before
anything else happens, so a receipt of 9000 or 7000 means the message will arrive.
Then its receivers' nodes are rung: on this node the pushes are written directly,
elsewhere one publish (private) or broadcast (group) carries them with their seqs.
The bus is only a doorbell: a lost one loses no message, the receiver's next sync
or its node's periodic inbox check finds it (``cim.server.catchup``).

Private: 7000 when the receiver is not logged in (stored for their next sync or
``/fetchOfflineMsgs``). Everyone (CIM's group chat): every user logged in then. A named
group: every member, logged in or not (``cim.groups`` keeps who they are).

The sender's copy: a send with clientMsgIds (a client that syncs its inbox: the SDK, the
web client) is stored in the sender's own inbox too, the same body in the same append
call, so every device of the sender gets it in order with everything else, and history
has both sides of a conversation (on the embedded hot path the sending connection gets it as
its receipt, which carries the copy's seq: ``PrivateLane.deliver_answered``, ``cim.server.lane``). A private
push carries ``toUserId``, and every push the sender's clientMsgId, so a device tells its own
sends from its other devices' ones. A send without (CIM's client, the route's HTTP sends)
keeps CIM's behaviour: no copy, nothing of
one's own comes back.

Later (a delayed message): checked as its destination would be, given its msgId and
answered 9000 at once, kept in the store's ``Delays``; when it comes due a node's poller
(``cim.server.delays``) sends it the normal way, with that msgId, so inboxes, seq, sync
and dedup apply then. Everyone means who is logged in at that time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

from cim.backends import Backends, Stored, merged_duplicates
from cim.destinations import EVERYONE, Destination, Later, Now, ToEveryone, ToGroup, ToUser
from cim.messages import MessageIds, Sender, group_prefix, to_user_field
from cim.proto import Delivery
from cim.status import CimError, Status
from cim.wire import push_bodies

log = logging.getLogger("cim.delivery")

FETCH_PAGE = 1000  # messages per replay of /fetchOfflineMsgs
MAX_REGISTERED_KNOWN = 1_000_000  # receivers remembered as registered (then forgotten, and asked again)
DUE_BATCH = 100  # delayed messages one take claims


class LocalSessions(Protocol):
    """The node a Messenger runs in, if any: lets it skip the bus for local receivers."""

    @property
    def node_id(self) -> str: ...

    def local_user_ids(self) -> list[int]:
        """Every user logged in on this node."""

    def is_here(self, user_id: int) -> bool:
        """The user is logged in on this node."""

    def deliver_local(self, user_id: int, stored: Stored) -> bool:
        """Push what was stored to the user if they are here; False if not."""

    def deliver_each(self, user_ids: list[int], stored: list[Stored]) -> None:
        """``deliver_local`` for many users (a group send), written at once."""


@dataclass(slots=True)
class Sent:
    """The outcome of a send: the k-th text got message id ``first_id + k``, except
    duplicates of an earlier send, which keep the id they got then."""

    status: Status
    first_id: int
    duplicates: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DelayedMessage:
    """A delayed message as ``Delays`` keeps it (JSON): who sends what to whom, with its ids."""

    sender_id: int
    sender_name: str
    to_user: int  # 0: not a private message
    to_group: str  # "": not to a named group; neither: to everyone
    text: str
    client_msg_id: int
    msg_id: int

    @classmethod
    def of(cls, sender: Sender, destination: Now, text: bytes, client_msg_id: int, msg_id: int) -> DelayedMessage:
        to_user = destination.user_id if isinstance(destination, ToUser) else 0
        to_group = destination.group_id if isinstance(destination, ToGroup) else ""
        return cls(sender.id, sender.name, to_user, to_group, text.decode(), client_msg_id, msg_id)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, payload: bytes) -> DelayedMessage:
        return cls(**json.loads(payload))

    @property
    def destination(self) -> Now:
        if self.to_user:
            return ToUser(self.to_user)
        return ToGroup(self.to_group) if self.to_group else EVERYONE


def kick(user_id: int, device_ids: list[str], reason: str) -> Delivery:
    """The Delivery that ends the user's connections of ``device_ids`` (none: all) on a node."""
    named = [reason.encode(), *(d.encode() for d in device_ids)] if device_ids else []
    return Delivery(receiverIds=[user_id], kick=True, messages=named)


def doorbell(receiver_ids: list[int], stored: list[Stored]) -> Delivery:
    """The Delivery that rings the receivers' nodes: the pushes with each one's seq
    when every receiver stored the same messages; else no pushes (the nodes read the
    inboxes: duplicates left some out)."""
    bodies = stored[0].bodies if stored else []
    if all(s.bodies is bodies or s.bodies == bodies for s in stored):
        return Delivery(messages=bodies, receiverIds=receiver_ids, firstSeqs=[s.first_seq for s in stored])
    return Delivery(receiverIds=receiver_ids)


class Messenger:
    """Sends messages from a sender to a destination, through the backends."""

    def __init__(self, backends: Backends, ids: MessageIds, local: LocalSessions | None = None, *,
                 max_delay_seconds: int) -> None:
        self.backends = backends
        self.ids = ids
        self.local = local
        self.max_delay_seconds = max_delay_seconds
        # Receivers known to be registered: accounts are never deleted, so a positive
        # answer holds for good and a send to a known receiver skips the lookup.
        self._registered: set[int] = set()

    async def require_user(self, user_id: int, field: str) -> str:
        name = await self.backends.accounts.user_name(user_id)
        if name is None:
            raise CimError(Status.VALIDATION_FAIL, f"{field} {user_id} is not a registered user")
        return name

    async def _require_receiver(self, user_id: int) -> None:
        if user_id in self._registered:
            return
        await self.require_user(user_id, "receiveUserId")
        if len(self._registered) >= MAX_REGISTERED_KNOWN:
            self._registered.clear()
        self._registered.add(user_id)

    async def send(self, sender: Sender, destination: Destination, texts: list[bytes],
                   client_msg_ids: list[int], msg_id: int = 0, sender_copy: bool | None = None) -> Sent:
        """Store and ring (a Later: schedule); raises CimError for a destination that cannot be
        served. ``client_msg_ids[k]``: the sender's id of text k (0: none, never deduplicated).
        ``msg_id``: the first text's id if it has one already (a delayed message), else 0.
        ``sender_copy``: keep the sender's copy (None: when the send has clientMsgIds, see the module)."""
        if isinstance(destination, Later):
            return await self.schedule(sender, destination, texts, client_msg_ids)
        copy = any(client_msg_ids) if sender_copy is None else sender_copy
        if isinstance(destination, ToUser):
            return await self.send_private(sender, destination.user_id, texts, client_msg_ids, msg_id, copy)
        if isinstance(destination, ToEveryone):
            return await self.send_group(sender, texts, client_msg_ids, msg_id, copy)
        return await self.send_to_group(sender, destination.group_id, texts, client_msg_ids, msg_id, copy)

    def _take_ids(self, count: int, msg_id: int) -> tuple[int, int]:
        """``count`` new ids and the time, or ``msg_id`` on: a delayed message's, given when it was sent."""
        return self.ids.take(count) if not msg_id else (msg_id, time.time_ns() // 1_000_000)

    async def schedule(self, sender: Sender, later: Later, texts: list[bytes], client_msg_ids: list[int]) -> Sent:
        """Keep the texts for ``later.destination`` until their time; SUCCESS with their msgIds.
        Raises CimError for a delay out of range or a destination a send now would refuse."""
        delay, destination = later.delay_seconds, later.destination
        if not 0 < delay <= self.max_delay_seconds:
            raise CimError(Status.VALIDATION_FAIL,
                           f"delaySeconds {delay}: 1 to {self.max_delay_seconds} (--max-delay-seconds)")
        if isinstance(destination, ToUser):
            await self._require_receiver(destination.user_id)
        elif isinstance(destination, ToGroup):
            await self._group_receivers(sender, destination.group_id)
        first_id, now_ms = self.ids.take(len(texts))
        for k, (text, client_msg_id) in enumerate(zip(texts, client_msg_ids, strict=True)):
            message = DelayedMessage.of(sender, destination, text, client_msg_id, first_id + k)
            await self.backends.delays.add(now_ms + delay * 1000, message.encode())
        return Sent(Status.SUCCESS, first_id)

    async def deliver_due(self, limit: int = DUE_BATCH) -> int:
        """Send the delayed messages due now (up to ``limit``); how many were taken.

        One the store fails for stays claimed and comes due again (``Delays``); its inbox
        append then dedups by clientMsgId or, without one, by its msgId (outside the range of
        the SDK's clientMsgIds, microseconds since 1970, so no real pair is taken for it). One
        that cannot be sent any more (its group dissolved, its sender left) is dropped."""
        delays = self.backends.delays
        taken = await delays.take_due(time.time_ns() // 1_000_000, limit)
        done: list[int] = []
        for entry_id, payload in taken:
            message = DelayedMessage.decode(payload)
            sender = Sender.of(message.sender_id, message.sender_name)
            try:
                await self.send(sender, message.destination, [message.text.encode()],
                                [message.client_msg_id or message.msg_id], message.msg_id, bool(message.client_msg_id))
            except CimError as err:
                log.info("delayed message %d dropped: %s", message.msg_id, err.message)
            except Exception as err:
                log.warning("delayed message %d not sent, it comes due again: %r", message.msg_id, err)
                continue
            done.append(entry_id)
        await delays.done(done)
        return len(taken)

    async def send_private(self, sender: Sender, receiver_id: int, texts: list[bytes],
                           client_msg_ids: list[int], msg_id: int = 0, copy: bool = False) -> Sent:
        """SUCCESS (stored, a device of the receiver online) or OFF_LINE (stored for later); raises
        CimError for an unknown receiver. ``copy``: the sender's copy too (see the module)."""
        local = self.local
        if not (local is not None and local.is_here(receiver_id)):  # logged in here: registered
            await self._require_receiver(receiver_id)
        first_id, now_ms = self._take_ids(len(texts), msg_id)
        bodies = push_bodies(sender.prefix + to_user_field(receiver_id), texts, first_id, now_ms, client_msg_ids)
        owners = [receiver_id, sender.id] if copy and receiver_id != sender.id else [receiver_id]
        stored = await self.backends.inbox.append_each(owners, sender.id, bodies, first_id, client_msg_ids)
        reached = await self._ring(owners[0], stored[0])
        if len(owners) > 1:
            await self._ring(owners[1], stored[1])
        duplicates = stored[0].duplicates
        return Sent(Status.SUCCESS if reached else Status.OFF_LINE, first_id, duplicates)

    async def _ring(self, user_id: int, stored: Stored) -> bool:
        """Push what was stored to every device of the user: here directly, on other nodes by the bus;
        False if they have none online. A doorbell that fails is logged and counts as rung: the message
        is stored and will arrive (the receiver's sync, or its node's inbox check)."""
        local = self.local
        here = local is not None and local.deliver_local(user_id, stored)
        if here and self.backends.store.in_process:  # the store is this process's: this is the only node
            return True
        try:
            servers = await self.backends.presence.servers(user_id)  # every server with a device of theirs
            for server in servers:
                if not (here and local is not None and server == local.node_id):
                    await self.backends.bus.publish(server, doorbell([user_id], [stored]).SerializeToString())
        except Exception as err:
            log.warning("message for user %d stored, its doorbell failed: %r", user_id, err)
            return True
        return here or bool(servers)

    async def send_group(self, sender: Sender, texts: list[bytes], client_msg_ids: list[int], msg_id: int = 0,
                         copy: bool = False) -> Sent:
        """Into the inbox of every user logged in but the sender (and the sender's copy), in order: one
        append call and one broadcast for the whole run of texts."""
        local = self.local
        if local is not None and self.backends.store.in_process:
            online = local.local_user_ids()  # the store is this process's: this node is the only one
        else:
            online = await self.backends.presence.online_user_ids()
        if sender.id in online:  # a list of its own, each user once: no loop in Python over thousands
            online.remove(sender.id)
        return await self._fan_out(sender.prefix, sender.id, online, texts, client_msg_ids, msg_id, copy)

    async def _group_receivers(self, sender: Sender, group_id: str) -> list[int]:
        """The members of a named group but the sender; CimError for a group that does not
        exist or a sender who is not in it."""
        members = await self.backends.groups.members(group_id)
        if members is None:
            raise CimError(Status.VALIDATION_FAIL, f"groupId {group_id!r}: no such group")
        if sender.id not in members:
            raise CimError(Status.VALIDATION_FAIL, f"groupId {group_id!r}: user {sender.id} is not a member")
        return [user_id for user_id in members if user_id != sender.id]

    async def send_to_group(self, sender: Sender, group_id: str, texts: list[bytes], client_msg_ids: list[int],
                            msg_id: int = 0, copy: bool = False) -> Sent:
        """Into the inbox of every member of a named group but the sender, whether online or
        not (write diffusion, as for everyone: see README "Named groups"); the pushes carry the
        groupId. Raises CimError for a group that does not exist or a sender who is not in it."""
        receivers = await self._group_receivers(sender, group_id)
        return await self._fan_out(group_prefix(sender.prefix, group_id), sender.id, receivers, texts, client_msg_ids,
                                   msg_id, copy)

    async def notify(self, actor: Sender, group_id: str, receiver_ids: list[int], text: str) -> None:
        """A membership notice from ``actor`` into the receivers' inboxes, as a group message
        flagged ``notice`` (a client that does not know the flag prints it as a message)."""
        await self._fan_out(group_prefix(actor.prefix, group_id, notice=True), actor.id, receiver_ids, [text.encode()], [0])

    async def _fan_out(self, prefix: bytes, sender_id: int, receivers: list[int], texts: list[bytes],
                       client_msg_ids: list[int], msg_id: int = 0, copy: bool = False) -> Sent:
        """Store the texts in every receiver's inbox and (``copy``) the sender's (one append call), then
        ring: on this node directly when the store is this process's, else one broadcast with each one's seq."""
        local = self.local
        if copy:
            receivers = [*receivers, sender_id]
        first_id, now_ms = self._take_ids(len(texts), msg_id)
        bodies = push_bodies(prefix, texts, first_id, now_ms, client_msg_ids)
        stored = await self.backends.inbox.append_each(receivers, sender_id, bodies, first_id, client_msg_ids)
        duplicates = merged_duplicates(stored)
        if local is not None and self.backends.store.in_process:
            local.deliver_each(receivers, stored)
        elif receivers:
            try:
                await self.backends.bus.broadcast(doorbell(receivers, stored).SerializeToString())
            except Exception as err:  # stored: as in send_private
                log.warning("group message stored for %d users, its doorbell failed: %r", len(receivers), err)
        return Sent(Status.SUCCESS, first_id, duplicates)

    async def deliver_offline(self, user_id: int) -> int:
        """CIM's ``/fetchOfflineMsgs``: push what the user's default device has not had
        (after its cursor) to their connection, in order, once; returns how many.

        Raises CimError(OFF_LINE) when the user is not logged in: the messages stay stored.
        """
        servers = await self.backends.presence.servers(user_id)
        if not servers:
            raise CimError(Status.OFF_LINE, f"user {user_id} is not online; messages stay stored")
        inbox = self.backends.inbox
        cursor = await inbox.cursor(user_id, "")
        count = 0
        while True:
            entries = (await inbox.read(user_id, cursor, FETCH_PAGE)).entries
            if not entries:
                return count
            replay = Delivery(messages=[body for _, body in entries], receiverIds=[user_id],
                              firstSeqs=[entries[0][0]], replay=True)
            for server in servers:
                await self.backends.bus.publish(server, replay.SerializeToString())
            cursor = entries[-1][0]
            await inbox.set_cursors([(user_id, "", cursor)])
            count += len(entries)

    async def kick(self, user_id: int, server: str, device_ids: list[str] | None = None, reason: str = "") -> None:
        """Ask the user's node to close their connections (of ``device_ids`` only, told ``reason``)."""
        await self.backends.bus.publish(server, kick(user_id, device_ids or [], reason).SerializeToString())
