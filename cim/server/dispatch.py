"""Role: act on a peer's events: login, send, ping, offline.

``handle_now`` settles what needs no I/O (the hot path: messages to a user on this
node, pings); ``handle`` does the rest, one event (or one batchable run) at a time,
in the order ``cim.server.ordering`` keeps.
"""

from __future__ import annotations

import logging
from collections import Counter, deque

from cim.auth import AuthError, Tokens
from cim.backends import Backends
from cim.delivery import Messenger
from cim.destinations import ToEveryone, ToUser
from cim.messages import MessageIds
from cim.protocols.connection import ChatMessages, Login, Offline, Ping, ProtocolViolation
from cim.server.metrics import Latencies
from cim.server.peer import Peer
from cim.server.quotas import OverRate, Screened
from cim.server.sessions import SessionTable
from cim.server.tasks import BackgroundTasks
from cim.status import CimError, Status
from cim.wire import push_bodies

log = logging.getLogger("cim.server")


def _token_refusal(tokens: Tokens | None, login: Login) -> str | None:
    """Why the login's token does not prove the user it names; None when it does, or
    when nothing is checked (``--auth none``)."""
    if tokens is None:
        return None
    try:
        tokens.verify_for(login.request.token, login.user_id)
    except AuthError as err:
        return f"login refused: {err.reason}"
    return None


def _take_event(backlog: deque[Screened]) -> Screened:
    """The event at the head of ``backlog``, taken off; a run of messages to everyone
    is taken whole, as one event (one broadcast, one pass over each node's users)."""
    event = backlog.popleft()
    if isinstance(event, ChatMessages) and type(event.destination) is ToEveryone:
        event = ChatMessages(list(event.texts), event.destination, list(event.client_msg_ids))
        while (
            backlog
            and isinstance(head := backlog[0], ChatMessages)
            and type(head.destination) is ToEveryone
            and len(event.texts) + len(head.texts) <= MessageIds.MAX_BLOCK
        ):
            backlog.popleft()
            event.texts += head.texts
            event.client_msg_ids += head.client_msg_ids
    return event


class Dispatcher:
    """What the node does with each event a peer's connection produces."""

    def __init__(
        self, node_id: str, sessions: SessionTable, backends: Backends, messenger: Messenger,
        metrics: Counter[str], tasks: BackgroundTasks, tokens: Tokens | None, latencies: Latencies,
    ) -> None:
        self.node_id = node_id
        self.tokens = tokens  # None: --auth none, a login names its user unchecked (CIM)
        self.sessions = sessions
        self.backends = backends
        self.messenger = messenger
        self.metrics = metrics
        self.tasks = tasks
        self.latencies = latencies
        # Bound once: the hot path below runs for every read of chat messages.
        self._by_user = sessions.by_user
        self._session_of = sessions.by_peer.get
        self._take_ids = messenger.ids.take

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
            texts = event.texts
            count = len(texts)
            first_id, now_ms = self._take_ids(count)
            target.push(push_bodies(session.sender.prefix, texts, first_id, now_ms))
            peer.send_receipts(event.client_msg_ids, first_id)
            metrics = self.metrics
            metrics["messages_in"] += count
            metrics["messages_out"] += count
            return True
        if isinstance(event, Ping):
            peer.send_pong()
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
            if isinstance(event, Login):
                await self._login(peer, event)
            elif isinstance(event, ChatMessages):
                await self._send(peer, event, read_at)
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

    async def _login(self, peer: Peer, login: Login) -> None:
        # The token first: a connection without one for the user it names learns
        # nothing (not even whether they are connected) and claims nothing.
        if (denied := _token_refusal(self.tokens, login)) is not None:
            self.metrics["logins_unauthorized"] += 1
            peer.refuse(Status.UNAUTHORIZED, denied)
            return
        if self.sessions.busy(login.user_id):
            peer.refuse(Status.REPEAT_LOGIN, "user already connected")
            return
        with self.sessions.logging_in(login.user_id):
            refusal = await self._check_login(peer, login)
        if refusal is not None:
            peer.refuse(*refusal)

    async def _check_login(self, peer: Peer, login: Login) -> tuple[Status, str] | None:
        """Accept the login (None) or say why not."""
        name = await self.backends.accounts.user_name(login.user_id)
        if name is None:
            return Status.VALIDATION_FAIL, f"userId {login.user_id} is not a registered user"
        if name != login.user_name:
            return Status.ACCOUNT_NOT_MATCH, Status.ACCOUNT_NOT_MATCH.message
        presence = self.backends.presence
        if not await presence.confirm_login(login.user_id, self.node_id):
            return Status.REPEAT_LOGIN, "user is logged in on another server"
        if peer.closed:  # the client left while we asked the store
            await presence.logout(login.user_id, self.node_id)
            return None
        self.sessions.bind(peer, login.user_id, login.user_name)
        self.metrics["logins"] += 1
        return None

    async def _send(self, peer: Peer, messages: ChatMessages, read_at: float) -> None:
        """Messages that need the backends: to everyone, or to a user not on this node."""
        session = self.sessions.of(peer)
        if session is None:
            return  # the login was refused; its connection is closing
        self.metrics["messages_in"] += len(messages.texts)
        # The rest of messages_in took the hot path, answered 9000 (see cim.server.metrics).
        self.metrics["messages_backend"] += len(messages.texts)
        try:
            status, first_id = await self.messenger.send(session.sender, messages.destination, messages.texts)
        except CimError as err:
            for client_msg_id in messages.client_msg_ids:
                peer.send_receipt(client_msg_id, err.status, err.message)
            self._answered(messages, err.status, read_at)
        else:
            peer.send_receipts(messages.client_msg_ids, first_id, status)
            self._answered(messages, status, read_at)

    def _answered(self, messages: ChatMessages, status: Status, read_at: float) -> None:
        """Count and time the receipts of messages that went through the backends."""
        self.metrics[f"receipts_{status.code}"] += len(messages.client_msg_ids)
        self.latencies.receipts_queued(read_at)

    def lost(self, peer: Peer) -> None:
        """Clean up after a closed connection exactly once, whatever closed it."""
        session = self.sessions.remove(peer)
        if session is not None:
            self.metrics["logouts"] += 1
            self.tasks.spawn(self.backends.presence.logout(session.user_id, self.node_id))
