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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from cim.backends import Backends, Stored
from cim.destinations import Destination, ToEveryone, ToGroup, ToUser
from cim.messages import MessageIds, Sender, group_prefix
from cim.proto import Delivery
from cim.status import CimError, Status
from cim.wire import push_bodies

log = logging.getLogger("cim.delivery")

FETCH_PAGE = 1000  # messages per replay of /fetchOfflineMsgs
MAX_REGISTERED_KNOWN = 1_000_000  # receivers remembered as registered (then forgotten, and asked again)


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
    duplicates: dict[int, int] = field(default_factory=dict)


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

    def __init__(self, backends: Backends, ids: MessageIds, local: LocalSessions | None = None) -> None:
        self.backends = backends
        self.ids = ids
        self.local = local
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
                   client_msg_ids: list[int]) -> Sent:
        """Store and ring; raises CimError for a destination that cannot be served.
        ``client_msg_ids[k]``: the sender's id of text k (0: none, never deduplicated)."""
        if isinstance(destination, ToUser):
            return await self.send_private(sender, destination.user_id, texts, client_msg_ids)
        if isinstance(destination, ToEveryone):
            return await self.send_group(sender, texts, client_msg_ids)
        assert isinstance(destination, ToGroup)
        return await self.send_to_group(sender, destination.group_id, texts, client_msg_ids)

    async def send_private(self, sender: Sender, receiver_id: int, texts: list[bytes],
                           client_msg_ids: list[int]) -> Sent:
        """SUCCESS (stored, receiver online) or OFF_LINE (stored for later); raises
        CimError for an unknown receiver."""
        local = self.local
        here = local if local is not None and local.is_here(receiver_id) else None  # logged in, so registered
        if here is None:
            await self._require_receiver(receiver_id)
        first_id, now_ms = self.ids.take(len(texts))
        bodies = push_bodies(sender.prefix, texts, first_id, now_ms)
        stored = await self.backends.inbox.append(receiver_id, sender.id, bodies, first_id, client_msg_ids)
        if here is not None and here.deliver_local(receiver_id, stored):
            return Sent(Status.SUCCESS, first_id, stored.duplicates)
        try:
            server = await self.backends.presence.route(receiver_id)
            if server is None:
                return Sent(Status.OFF_LINE, first_id, stored.duplicates)
            if not (local is not None and server == local.node_id and local.deliver_local(receiver_id, stored)):
                await self.backends.bus.publish(server, doorbell([receiver_id], [stored]).SerializeToString())
        except Exception as err:
            # Stored: the message will arrive (the receiver's sync, or its node's inbox
            # check), so the send succeeded; only its doorbell is lost.
            log.warning("message for user %d stored, its doorbell failed: %r", receiver_id, err)
        return Sent(Status.SUCCESS, first_id, stored.duplicates)

    async def send_group(self, sender: Sender, texts: list[bytes], client_msg_ids: list[int]) -> Sent:
        """Into the inbox of every user logged in but the sender, in order: one append
        call and one broadcast for the whole run of texts."""
        local = self.local
        if local is not None and self.backends.store.in_process:
            online = local.local_user_ids()  # the store is this process's: this node is the only one
        else:
            online = await self.backends.presence.online_user_ids()
        receivers = [user_id for user_id in online if user_id != sender.id]
        return await self._fan_out(sender.prefix, sender.id, receivers, texts, client_msg_ids)

    async def send_to_group(self, sender: Sender, group_id: str, texts: list[bytes], client_msg_ids: list[int]) -> Sent:
        """Into the inbox of every member of a named group but the sender, whether online or
        not (write diffusion, as for everyone: see README "Named groups"); the pushes carry the
        groupId. Raises CimError for a group that does not exist or a sender who is not in it."""
        members = await self.backends.groups.members(group_id)
        if members is None:
            raise CimError(Status.VALIDATION_FAIL, f"groupId {group_id!r}: no such group")
        if sender.id not in members:
            raise CimError(Status.VALIDATION_FAIL, f"groupId {group_id!r}: user {sender.id} is not a member")
        receivers = [user_id for user_id in members if user_id != sender.id]
        return await self._fan_out(group_prefix(sender.prefix, group_id), sender.id, receivers, texts, client_msg_ids)

    async def notify(self, actor: Sender, group_id: str, receiver_ids: list[int], text: str) -> None:
        """A membership notice from ``actor`` into the receivers' inboxes, as a group message
        flagged ``notice`` (a client that does not know the flag prints it as a message)."""
        await self._fan_out(group_prefix(actor.prefix, group_id, notice=True), actor.id, receiver_ids, [text.encode()], [0])

    async def _fan_out(self, prefix: bytes, sender_id: int, receivers: list[int], texts: list[bytes],
                       client_msg_ids: list[int]) -> Sent:
        """Store the texts in every receiver's inbox (one append call), then ring: on this node
        directly when the store is this process's, else one broadcast with each one's seq."""
        local = self.local
        first_id, now_ms = self.ids.take(len(texts))
        bodies = push_bodies(prefix, texts, first_id, now_ms)
        stored = await self.backends.inbox.append_each(receivers, sender_id, bodies, first_id, client_msg_ids)
        duplicates: dict[int, int] = {}
        for each in stored:
            duplicates.update(each.duplicates)
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
        server = await self.backends.presence.route(user_id)
        if server is None:
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
            await self.backends.bus.publish(server, replay.SerializeToString())
            cursor = entries[-1][0]
            await inbox.set_cursors([(user_id, "", cursor)])
            count += len(entries)

    async def kick(self, user_id: int, server: str) -> None:
        """Ask the user's node to close their connection."""
        await self.backends.bus.publish(server, Delivery(receiverIds=[user_id], kick=True).SerializeToString())
