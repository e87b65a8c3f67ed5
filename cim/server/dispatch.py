"""Role: act on a peer's events: login, send, sync, ack, ping, offline.

``handle_now`` settles what needs no I/O (the hot path: messages to a user on this
node with an in-process inbox, pings, acks); ``handle`` does the rest, one event (or
one batchable run) at a time, in the order ``cim.server.ordering`` keeps. A message
is answered only once it is in its receiver's inbox (``cim.delivery``).
"""

from __future__ import annotations

import logging
from collections import Counter, deque

from cim.backends import Backends
from cim.delivery import Messenger
from cim.destinations import ToEveryone, ToGroup, ToUser
from cim.messages import MessageIds
from cim.protocols.connection import (
    ChatMessages,
    DeliveryAck,
    HistoryRequest,
    Login,
    Offline,
    Ping,
    PresenceSubscription,
    ProtocolViolation,
    Sync,
)
from cim.server.catchup import Catchup
from cim.server.cursors import Cursors
from cim.server.history import answer_history
from cim.server.lane import PrivateLane
from cim.server.logins import Logins
from cim.server.metrics import Latencies
from cim.server.peer import Peer
from cim.server.quotas import OverRate, Screened
from cim.server.resends import answer_duplicates
from cim.server.sessions import SessionTable
from cim.server.tasks import BackgroundTasks
from cim.status import CimError, Status

log = logging.getLogger("cim.server")


def _take_event(backlog: deque[Screened]) -> Screened:
    """The event at the head of ``backlog``, taken off; a run of messages to everyone, or
    to one named group, is taken whole, as one event (one membership lookup, one append
    call and one broadcast, one pass over each node's users)."""
    event = backlog.popleft()
    if isinstance(event, ChatMessages) and type(event.destination) in (ToEveryone, ToGroup):
        event = ChatMessages(list(event.texts), event.destination, list(event.client_msg_ids))
        while (
            backlog
            and isinstance(head := backlog[0], ChatMessages)
            and type(head.destination) is type(event.destination)
            and head.destination == event.destination
            and bool(head.client_msg_ids[0]) == bool(event.client_msg_ids[0])  # homogeneous, as ChatMessages
            and len(event.texts) + len(head.texts) <= MessageIds.MAX_BLOCK
        ):
            backlog.popleft()
            event.texts += head.texts
            event.client_msg_ids += head.client_msg_ids
    return event


class Dispatcher:
    """What the node does with each event a peer's connection produces."""

    def __init__(
        self, node_id: str, sessions: SessionTable, backends: Backends, messenger: Messenger, catchup: Catchup,
        cursors: Cursors, metrics: Counter[str], tasks: BackgroundTasks, logins: Logins, latencies: Latencies,
    ) -> None:
        self.node_id = node_id
        self.logins = logins
        self.cursors = cursors
        self.sessions = sessions
        self.backends = backends
        self.messenger = messenger
        self.catchup = catchup
        self.metrics = metrics
        self.tasks = tasks
        self.latencies = latencies
        # Bound once: the hot path below runs for every read of chat messages.
        self._by_user = sessions.by_user
        self._session_of = sessions.by_peer.get
        inbox_here = backends.inbox if backends.inbox.in_process else None  # else no lane: the general way
        self.lane = PrivateLane(sessions.by_user, sessions.by_peer, inbox_here, messenger.ids, metrics)

    def handle_now(self, peer: Peer, event: Screened) -> bool:
        """Settle an event synchronously when no I/O is needed; False defers it to ``handle``."""
        if type(event) is ChatMessages:  # the hot path first: messages to a user on this node
            destination = event.destination
            if type(destination) is not ToUser:
                return False
            target = self._by_user.get(destination.user_id)
            session = self._session_of(peer)
            if target is None or session is None:
                return False
            return self.lane.settle(peer, session, target, event.texts, event.client_msg_ids)
        if isinstance(event, Ping):
            peer.send_pong()
            return True
        if isinstance(event, DeliveryAck):
            self.cursors.ack(peer, event.seq, event.read)
            return True
        if isinstance(event, ProtocolViolation):
            self.metrics["protocol_errors"] += 1
            log.info("closing connection of user %s: %s", peer.user_id, event.reason)
            return True  # the error frame is queued; flush closes
        if isinstance(event, Offline):
            peer.end("bye", reconnect=False)
            return True
        if isinstance(event, OverRate):
            for client_msg_id in event.client_msg_ids:
                peer.send_receipt(client_msg_id, Status.RATE_LIMITED, Status.RATE_LIMITED.message)
            self.metrics[f"receipts_{Status.RATE_LIMITED.code}"] += len(event.client_msg_ids)
            return True
        return False

    async def handle(self, peer: Peer, backlog: deque[Screened], read_at: float) -> None:
        """Handle the event at the head of ``backlog``, taking it off; a run of messages
        to everyone is taken and sent together (one broadcast, one pass over each node's users).
        ``read_at``: when the event was read (``time.monotonic()``)."""
        event = _take_event(backlog)
        try:
            if isinstance(event, Login | PresenceSubscription):  # a subscription: to the presence the logins announce
                await self.logins.handle(peer, event)
            elif isinstance(event, ChatMessages):
                await self._send(peer, event, read_at)
            elif isinstance(event, Sync):
                await self.catchup.sync(peer, event.after_seq)
            elif isinstance(event, HistoryRequest):
                await answer_history(peer, event, self.backends)
            elif not self.handle_now(peer, event):
                raise AssertionError(f"unhandled event {event!r}")
        except Exception as err:
            # A backend failure is answered, never swallowed: the login is refused,
            # each send gets a failed receipt, and the client can retry.
            self.metrics["errors"] += 1
            log.error("handling %s for user %s failed: %r", type(event).__name__, peer.user_id, err)
            if isinstance(event, Login):
                peer.refuse(Status.FAIL, f"login failed: {type(err).__name__}; try again")
            elif isinstance(event, ChatMessages):
                for client_msg_id in event.client_msg_ids:
                    peer.send_receipt(client_msg_id, Status.FAIL, f"send failed: {type(err).__name__}; try again")
                self._answered(event, Status.FAIL, read_at)
            elif isinstance(event, Sync):
                peer.send_error(Status.FAIL, f"sync failed: {type(err).__name__}; send SYNC again")

    async def _send(self, peer: Peer, messages: ChatMessages, read_at: float) -> None:
        """Messages that need the backends: to everyone, a named group, or a user not on this node."""
        session = self.sessions.of(peer)
        if session is None:
            return  # the login was refused; its connection is closing
        self.metrics["messages_in"] += len(messages.texts)
        # The rest of messages_in took the hot path, answered 9000 (see cim.server.metrics).
        self.metrics["messages_backend"] += len(messages.texts)
        client_msg_ids = messages.client_msg_ids
        try:
            sent = await self.messenger.send(session.sender, messages.destination, messages.texts, client_msg_ids)
        except CimError as err:
            for client_msg_id in client_msg_ids:
                peer.send_receipt(client_msg_id, err.status, err.message)
            self._answered(messages, err.status, read_at)
        else:
            if sent.duplicates:
                answer_duplicates(peer, client_msg_ids, sent, self.metrics)
            else:
                peer.send_receipts(client_msg_ids, sent.first_id, sent.status)
            self._answered(messages, sent.status, read_at)

    def _answered(self, messages: ChatMessages, status: Status, read_at: float) -> None:
        """Count and time the receipts of messages that went through the backends."""
        self.metrics[f"receipts_{status.code}"] += len(messages.client_msg_ids)
        self.latencies.receipts_queued(read_at)

    def lost(self, peer: Peer) -> None:
        """Clean up after a closed connection exactly once, whatever closed it."""
        removed = self.sessions.remove(peer)
        if removed is None:
            return
        session, stream, last = removed
        self.cursors.left(session.user_id, stream)
        if last:
            self.metrics["logouts"] += 1
        self.tasks.spawn(self.logins.devices.left(session.user_id, stream.device_id))
