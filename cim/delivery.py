"""Sending messages: the one code path behind the route's HTTP endpoints and in-band sends.

Private: look up the receiver's server; offline -> stored (7000); on this node ->
written directly; elsewhere -> one publish to that node's bus channel. Everyone
(CIM's group chat): one broadcast; every node fans out to its own users. A node
that gets a private message for a user no longer connected stores it offline, so
nothing is lost between the route lookup and the write.
"""

from __future__ import annotations

from typing import Protocol

from cim.backends import Backends
from cim.destinations import Destination, ToEveryone, ToGroup, ToUser
from cim.messages import MessageIds, Sender
from cim.proto import Delivery
from cim.status import CimError, Status
from cim.wire import push_bodies


class LocalSessions(Protocol):
    """The node a Messenger runs in, if any: lets it skip the bus for local receivers."""

    @property
    def node_id(self) -> str: ...

    def deliver_local(self, user_id: int, bodies: list[bytes]) -> bool: ...


class Messenger:
    """Sends messages from a sender to a destination, through the backends."""

    def __init__(self, backends: Backends, ids: MessageIds, local: LocalSessions | None = None) -> None:
        self.backends = backends
        self.ids = ids
        self.local = local

    async def require_user(self, user_id: int, field: str) -> str:
        name = await self.backends.accounts.user_name(user_id)
        if name is None:
            raise CimError(Status.VALIDATION_FAIL, f"{field} {user_id} is not a registered user")
        return name

    async def send(self, sender: Sender, destination: Destination, texts: list[bytes]) -> tuple[Status, int]:
        """Returns (SUCCESS or OFF_LINE, the first message id: the k-th text got
        first + k); raises CimError for a destination that cannot be served."""
        if isinstance(destination, ToUser):
            return await self.send_private(sender, destination.user_id, texts)
        if isinstance(destination, ToEveryone):
            return Status.SUCCESS, await self.send_group(sender, texts)
        assert isinstance(destination, ToGroup)
        raise CimError(Status.VALIDATION_FAIL, f"groupId {destination.group_id!r}: named groups are not available yet")

    async def send_private(self, sender: Sender, receiver_id: int, texts: list[bytes]) -> tuple[Status, int]:
        """Returns (SUCCESS or OFF_LINE, the first message id); raises CimError for an unknown receiver."""
        await self.require_user(receiver_id, "receiveUserId")
        first_id, now_ms = self.ids.take(len(texts))
        bodies = push_bodies(sender.prefix, texts, first_id, now_ms)
        server = await self.backends.presence.route(receiver_id)
        if server is None:
            await self.backends.inbox.append(receiver_id, bodies)
            return Status.OFF_LINE, first_id
        local = self.local
        if local is not None and server == local.node_id and local.deliver_local(receiver_id, bodies):
            return Status.SUCCESS, first_id
        delivery = Delivery(messages=bodies, receiverIds=[receiver_id], storeIfAbsent=True)
        await self.backends.bus.publish(server, delivery.SerializeToString())
        return Status.SUCCESS, first_id

    async def send_group(self, sender: Sender, texts: list[bytes]) -> int:
        """Every online user but the sender gets each text, in order; one broadcast for
        all of them, so each node visits its users once per batch, not once per text.
        Returns the first message id: the k-th text got first + k."""
        first_id, now_ms = self.ids.take(len(texts))
        bodies = push_bodies(sender.prefix, texts, first_id, now_ms)
        delivery = Delivery(messages=bodies, broadcast=True, excludeUserId=sender.id)
        await self.backends.bus.broadcast(delivery.SerializeToString())
        return first_id

    async def deliver_offline(self, user_id: int) -> int:
        """Send a user's stored messages to their connection, in order, once.

        Raises CimError(OFF_LINE) when the user is not logged in: the messages stay stored.
        """
        server = await self.backends.presence.route(user_id)
        if server is None:
            raise CimError(Status.OFF_LINE, f"user {user_id} is not online; messages stay stored")
        bodies = await self.backends.inbox.take(user_id)
        if bodies:
            delivery = Delivery(messages=bodies, receiverIds=[user_id], storeIfAbsent=True, restore=True)
            await self.backends.bus.publish(server, delivery.SerializeToString())
        return len(bodies)

    async def kick(self, user_id: int, server: str) -> None:
        """Ask the user's node to close their connection."""
        await self.backends.bus.publish(server, Delivery(receiverIds=[user_id], kick=True).SerializeToString())
