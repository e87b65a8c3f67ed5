"""Delivery and read receipts: MESSAGE_STATUS frames to the senders of messages a receiver has.

DELIVERED: a device of the receiver acknowledged a range of its inbox (DELIVERY_ACK, as the
node's cursor flush writes it). READ: the receiver marked their inbox read up to a seq
(MARK_READ in-band, or the route's ``/read``); the user's read mark is kept in the store as the
cursor of a device no login names (``READ_MARK``), so a range is reported read once, whichever
node or route marks it. Either way the range is read from the inbox, each message's sender and
msgId are taken from its stored body, and each sender gets one frame per status with the
range's msgIds (a group message: one per receiver).

Only connections that logged in with ``wantsReceipts`` get them: CIM's client stops at a
frame it does not know. A sender who is not logged in when it happens gets nothing (dropped,
not stored): a receipt is a status of a message the sender has, not a message, so storing it
would spend the sender's inbox seqs and retention on it and replay it as text to CIM's
``/fetchOfflineMsgs``; a client back online learns what happened next from later receipts.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Protocol

from cim.backends import Backends
from cim.proto import DELIVERED, MESSAGE, MESSAGE_STATUS, READ, Delivery, MessageStatus, Response

log = logging.getLogger("cim.receipts")

READ_MARK = "\x00read"  # the device id under which a user's read mark is kept (one no client is likely to name)
PAGE = 1000  # inbox messages per read of a range
MAX_RANGE = 10_000  # messages reported per range at most (an inbox keeps 10,000 by default): the newest


class StatusSink(Protocol):
    """The node a Receipts runs in, if any: frames to its own users skip the bus."""

    @property
    def node_id(self) -> str: ...

    def push_statuses(self, user_id: int, bodies: list[bytes]) -> bool:
        """MESSAGE_STATUS bodies to the user's connections that asked; False if the user is not here."""


def status_body(receiver_id: int, status: MessageStatus, msg_ids: list[int]) -> bytes:
    """A MESSAGE_STATUS push without ``receiveUserId`` (the sender's node appends theirs)."""
    return Response(cmd=MESSAGE_STATUS, responseId=receiver_id, status=status, msgIds=msg_ids).SerializeToString()


class Receipts:
    """Finds the senders of a receiver's inbox ranges and sends them MESSAGE_STATUS."""

    def __init__(self, backends: Backends, local: StatusSink | None = None) -> None:
        self.backends = backends
        self.local = local

    async def delivered(self, ranges: list[tuple[int, int, int]]) -> None:
        """(receiver, after seq, up to seq): a device of the receiver acknowledged that range."""
        bodies: dict[int, list[bytes]] = defaultdict(list)
        for receiver_id, after, upto in ranges:
            await self._collect(receiver_id, after, upto, DELIVERED, bodies)
        await self._send(bodies)

    async def read(self, marks: dict[int, int]) -> None:
        """user -> seq: each user has read their inbox up to seq. What is past their read mark
        is reported READ, and the mark moves (it never moves back)."""
        inbox = self.backends.inbox
        bodies: dict[int, list[bytes]] = defaultdict(list)
        moved: list[tuple[int, str, int]] = []
        for user_id, seq in marks.items():
            upto = min(seq, (await inbox.latest([user_id]))[0])
            after = await inbox.cursor(user_id, READ_MARK)
            if upto > after:
                moved.append((user_id, READ_MARK, upto))
                await self._collect(user_id, after, upto, READ, bodies)
        # The mark first: a failure between the two loses receipts, never repeats them.
        await inbox.set_cursors(moved)
        await self._send(bodies)

    async def _collect(self, receiver_id: int, after: int, upto: int, status: MessageStatus,
                       bodies: dict[int, list[bytes]]) -> None:
        """Add to ``bodies`` (sender -> MESSAGE_STATUS bodies) one per sender of seqs after..upto."""
        by_sender: dict[int, list[int]] = defaultdict(list)
        seq = max(after, upto - MAX_RANGE)
        while seq < upto:
            entries = (await self.backends.inbox.read(receiver_id, seq, min(PAGE, upto - seq))).entries
            if not entries:
                break
            for entry_seq, body in entries:
                if entry_seq > upto:
                    break
                push = Response.FromString(body)
                # Membership notices are the group's news, not a message anyone waits on.
                if push.cmd == MESSAGE and push.msgId and not push.notice and push.responseId != receiver_id:
                    by_sender[push.responseId].append(push.msgId)
            seq = entries[-1][0]
        for sender_id, msg_ids in by_sender.items():
            bodies[sender_id].append(status_body(receiver_id, status, msg_ids))

    async def _send(self, bodies: dict[int, list[bytes]]) -> None:
        """Each sender's frames to their node: pushed here if they are here, else one publish
        per node; a sender who is not logged in gets none."""
        local = self.local
        by_server: dict[str, Delivery] = defaultdict(Delivery)
        for sender_id, frames in bodies.items():
            if local is not None and local.push_statuses(sender_id, frames):
                continue
            for server in await self.backends.presence.servers(sender_id):  # every node with a device of theirs
                if local is not None and server == local.node_id:
                    continue  # logged in here a moment ago, gone already
                delivery = by_server[server]
                delivery.receiverIds.extend([sender_id] * len(frames))
                delivery.statuses.extend(frames)
        for server, delivery in by_server.items():
            await self.backends.bus.publish(server, delivery.SerializeToString())
