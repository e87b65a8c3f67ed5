"""A cim-server node: the session table, in-band messaging, bus delivery, heartbeats, registration."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable

from cim.backends import Backends
from cim.config import Config
from cim.delivery import Messenger
from cim.limits import connection_capacity, kernel_warnings, raise_nofile_limit
from cim.messages import MessageIds, Sender, receiver_entry
from cim.proto import Delivery
from cim.protocols.connection import ChatMessages, Event, Login, Offline, Ping, ProtocolViolation
from cim.protocols.tcp import CimServerProtocol
from cim.status import CimError, Status
from cim.wire import frame_each, push_bodies

log = logging.getLogger("cim.server")


class Node:
    def __init__(self, config: Config, backends: Backends) -> None:
        self.config = config
        self.backends = backends
        self.info = config.server_info
        self.node_id = self.info.id
        self.sessions: dict[int, CimServerProtocol] = {}
        self.pending: set[CimServerProtocol] = set()
        # Connections whose write buffer is over the high-water mark (slow readers).
        self.slow: set[CimServerProtocol] = set()
        # Connections with pushes queued this loop turn: flushed together at its end,
        # so a burst of deliveries to one connection goes out in one write.
        self._dirty: list[CimServerProtocol] = []
        self.max_connections = 0
        # Users whose login is being checked: a second connection racing the first
        # across the state store's await is refused like a duplicate.
        self._logging_in: set[int] = set()
        self.metrics: Counter[str] = Counter()
        self.started_at = time.time()
        self.loop = asyncio.get_running_loop()
        self.messenger: Messenger | None = None
        self._take_ids: Callable[[int], tuple[int, int]] = MessageIds(0).take  # replaced at start
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        state, bus = self.backends.state, self.backends.bus
        soft, hard = raise_nofile_limit()
        self.max_connections = connection_capacity(soft, self.config.max_connections)
        self.metrics.update(nofile_soft=soft, nofile_hard=hard, max_connections=self.max_connections)
        log.info("open files soft/hard %d/%d: room for %d client connections", soft, hard, self.max_connections)
        for warning in kernel_warnings(
            self.config.backlog, self.config.workers, self.max_connections, self.config.max_connections
        ):
            log.warning("%s", warning)
        # A fresh node holds no sessions: anything recorded under its id is left
        # from a predecessor with the same id (a restarted worker) and is stale.
        stale = await state.clear_server(self.node_id)
        if stale:
            log.warning("cleared %d stale logins left by a previous %s", len(stale), self.node_id)
        self.messenger = Messenger(state, bus, MessageIds(await state.allocate_node_number()), local=self)
        self._take_ids = self.messenger.ids.take
        await bus.subscribe(self.node_id, self.on_delivery)
        self._server = await self.loop.create_server(
            lambda: CimServerProtocol(self),
            self.config.host,
            self.config.port,
            reuse_port=self.config.workers > 1,
            backlog=self.config.backlog,
        )
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="cim-heartbeat-sweep")
        await self.backends.discovery.register(self.info, restored=lambda: self._spawn(self._reclaim_sessions()))
        log.info("cim-server %s listening on %s:%d", self.node_id, self.config.host, self.config.port)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Graceful: leave the registry, stop accepting, tell clients, close, clean up."""
        try:
            await asyncio.wait_for(self.backends.discovery.unregister(self.info), self.config.shutdown_timeout)
        except Exception as err:  # the registry is unreachable: its session expiry will do it
            log.warning("could not unregister %s: %r", self.node_id, err)
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for proto in list(self.sessions.values()) + list(self.pending):
            proto.end_session("server shutting down", reconnect=True)
        deadline = self.loop.time() + self.config.shutdown_timeout
        while (self.sessions or self.pending or self._tasks) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.metrics["errors"] += 1
            log.error("background task failed", exc_info=task.exception())

    # -- connections -----------------------------------------------------------

    def connection_made(self, proto: CimServerProtocol) -> bool:
        """Admit a new connection, or refuse it (False) when the node is full."""
        self.metrics["connections_total"] += 1
        if len(self.sessions) + len(self.pending) >= self.max_connections:
            self.metrics["refused_full"] += 1
            proto.conn.refuse(Status.FAIL, f"server full: {self.max_connections} connections")
            return False
        self.pending.add(proto)
        return True

    def connection_lost(self, proto: CimServerProtocol) -> None:
        self.pending.discard(proto)
        self.slow.discard(proto)
        if proto.logged_in:
            proto.logged_in = False  # clean up exactly once, whatever closed it
            if self.sessions.get(proto.user_id) is proto:
                del self.sessions[proto.user_id]
            self.metrics["logouts"] += 1
            self._spawn(self.backends.state.logout(proto.user_id, self.node_id))

    def handle_now(self, proto: CimServerProtocol, event: Event) -> bool:
        """Settle an event synchronously when no I/O is needed; False defers it to ``handle``."""
        kind = type(event)
        if kind is ChatMessages:  # the hot path first: messages to a user on this node
            target = self.sessions.get(event.receiver_id)  # type: ignore[union-attr, arg-type]
            if target is None:
                return False
            texts = event.texts  # type: ignore[union-attr]
            first_id, now_ms = self._take_ids(len(texts))
            self._push(target, push_bodies(proto.sender.prefix, texts, first_id, now_ms))  # type: ignore[union-attr]
            proto.conn.send_receipts(event.client_msg_ids, first_id)  # type: ignore[union-attr]
            self.metrics["messages_in"] += len(texts)
            self.metrics["messages_out"] += len(texts)
            return True
        if kind is Ping:
            proto.conn.send_pong()
            return True
        if kind is ProtocolViolation:
            self.metrics["protocol_errors"] += 1
            log.info("closing connection of user %s: %s", proto.user_id, event.reason)  # type: ignore[union-attr]
            return True  # the error frame is queued; flush closes
        if kind is Offline:
            proto.conn.close("bye", reconnect=False)
            return True
        return False

    async def handle(self, proto: CimServerProtocol, backlog: deque[Event]) -> None:
        """Handle the event at the head of ``backlog``, taking it off; a run of group
        messages is taken and sent together (one broadcast, one pass over each node's users)."""
        event = backlog.popleft()
        if type(event) is ChatMessages and event.receiver_id is None:
            event = ChatMessages(list(event.texts), None, list(event.client_msg_ids))
            while (
                backlog
                and type(head := backlog[0]) is ChatMessages
                and head.receiver_id is None
                and len(event.texts) + len(head.texts) <= MessageIds.MAX_BLOCK
            ):
                backlog.popleft()
                event.texts += head.texts
                event.client_msg_ids += head.client_msg_ids
        try:
            if isinstance(event, Login):
                await self._login(proto, event)
            elif isinstance(event, ChatMessages):
                await self._send(proto, event)
            elif not self.handle_now(proto, event):
                raise AssertionError(f"unhandled event {event!r}")
        except Exception as err:
            # A backend failure is answered, never swallowed: the login is refused,
            # each send gets a failed receipt, and the client can retry.
            self.metrics["errors"] += 1
            log.error("handling %s for user %s failed: %r", type(event).__name__, proto.user_id, err)
            if isinstance(event, Login):
                proto.conn.refuse(Status.FAIL, f"login failed: {type(err).__name__}; try again")
            elif isinstance(event, ChatMessages):
                for client_msg_id in event.client_msg_ids:
                    proto.conn.send_receipt(client_msg_id, Status.FAIL, f"send failed: {type(err).__name__}; try again")

    async def _login(self, proto: CimServerProtocol, login: Login) -> None:
        if login.user_id in self.sessions or login.user_id in self._logging_in:
            proto.conn.refuse(Status.REPEAT_LOGIN, "user already connected")
            return
        self._logging_in.add(login.user_id)
        try:
            await self._check_login(proto, login)
        finally:
            self._logging_in.discard(login.user_id)

    async def _check_login(self, proto: CimServerProtocol, login: Login) -> None:
        state = self.backends.state
        name = await state.user_name(login.user_id)
        if name is None:
            proto.conn.refuse(Status.VALIDATION_FAIL, f"userId {login.user_id} is not a registered user")
            return
        if name != login.user_name:
            proto.conn.refuse(Status.ACCOUNT_NOT_MATCH, Status.ACCOUNT_NOT_MATCH.message)
            return
        if not await state.confirm_login(login.user_id, self.node_id):
            proto.conn.refuse(Status.REPEAT_LOGIN, "user is logged in on another server")
            return
        if proto.closed:  # the client left while we asked the state store
            await state.logout(login.user_id, self.node_id)
            return
        self.pending.discard(proto)
        proto.receiver_entry = receiver_entry(login.user_id)
        proto.sender = Sender.of(login.user_id, login.user_name)
        proto.logged_in = True
        self.sessions[login.user_id] = proto
        self.metrics["logins"] += 1

    async def _send(self, proto: CimServerProtocol, messages: ChatMessages) -> None:
        """Messages that need the backends: to the group, or to a user not on this node."""
        if not proto.logged_in:
            return  # the login was refused; its connection is closing
        assert self.messenger is not None and proto.sender is not None
        self.metrics["messages_in"] += len(messages.texts)
        if messages.receiver_id is None:
            first_id = await self.messenger.send_group(proto.sender, messages.texts)
            proto.conn.send_receipts(messages.client_msg_ids, first_id)
            return
        try:
            status, first_id = await self.messenger.send_private(proto.sender, messages.receiver_id, messages.texts)
        except CimError as err:
            for client_msg_id in messages.client_msg_ids:
                proto.conn.send_receipt(client_msg_id, err.status, err.message)
        else:
            proto.conn.send_receipts(messages.client_msg_ids, first_id, status)

    async def _reclaim_sessions(self) -> None:
        """The registry dropped this node for a while (its ZooKeeper session expired)
        and routes logged its users out, though their connections stayed open: claim
        them back. A user who logged in elsewhere meanwhile is ended here."""
        state = self.backends.state
        # Twice: a route that saw the node leave may clear its users after the first
        # pass; confirming a login this node holds already changes nothing.
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(self.config.zk_session_timeout)
            reclaimed = 0
            for user_id, proto in list(self.sessions.items()):
                if await state.confirm_login(user_id, self.node_id):
                    reclaimed += 1
                elif self.sessions.get(user_id) is proto:
                    proto.end_session("logged in on another server", reconnect=False)
            log.warning("registration restored: reclaimed %d of %d sessions", reclaimed, len(self.sessions))
        self.metrics["registrations_restored"] += 1

    # -- delivery --------------------------------------------------------------

    def deliver_local(self, user_id: int, bodies: list[bytes]) -> bool:
        proto = self.sessions.get(user_id)
        if proto is None:
            return False
        self._push(proto, bodies)
        self.metrics["messages_out"] += len(bodies)
        return True

    def _push(self, proto: CimServerProtocol, bodies: list[bytes], at_once: bool = False) -> None:
        """Queue pushes for the end of the loop turn: all a connection gets in one
        turn (several senders writing to one user) goes out in one write.

        ``at_once`` (a broadcast: one push per connection per turn, the common case)
        writes now instead, unless the connection already has pushes queued this
        turn: then it goes behind them."""
        frame = frame_each(bodies, proto.receiver_entry)
        if at_once and not proto.dirty:
            proto.write_now(frame)
            return
        proto.conn.send_push(frame)
        if not proto.dirty:
            proto.dirty = True
            if not self._dirty:
                self.loop.call_soon(self._flush_dirty)
            self._dirty.append(proto)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for proto in dirty:
            proto.dirty = False
            proto.flush()

    def on_delivery(self, payload: bytes) -> None:
        """A Delivery from the bus (runs on the loop)."""
        delivery = Delivery.FromString(payload)
        if delivery.kick:
            for user_id in delivery.receiverIds:
                proto = self.sessions.get(user_id)
                if proto is not None:
                    proto.end_session("logged out", reconnect=False)
            return
        bodies = list(delivery.messages)  # once: the repeated field copies on every access
        sessions = self.sessions
        if delivery.broadcast:
            exclude = delivery.excludeUserId
            pushed = 0
            for user_id, proto in list(sessions.items()):
                if user_id != exclude:
                    self._push(proto, bodies, at_once=True)
                    pushed += 1
            self.metrics["messages_out"] += pushed * len(bodies)
            return
        for user_id in delivery.receiverIds:
            proto = sessions.get(user_id)
            if proto is not None:
                self._push(proto, bodies)
                self.metrics["messages_out"] += len(bodies)
            elif delivery.storeIfAbsent:
                state = self.backends.state
                store = state.restore_offline if delivery.restore else state.store_offline
                self._spawn(store(user_id, bodies))

    # -- heartbeats ------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        """One sweep over the session table instead of a timer per connection.

        Logged-in connections silent for 3 heartbeat intervals are closed; so are
        connections that have not logged in within the login timeout, and slow
        consumers whose write buffer stayed over the high mark too long.
        """
        interval = self.config.heartbeat_interval
        login_timeout = self.config.login_timeout
        period = min(interval, login_timeout, self.config.slow_consumer_timeout) / 2
        next_session_sweep = self.loop.time() + interval
        while True:
            await asyncio.sleep(period)
            now = self.loop.time()
            for proto in [p for p in self.pending if now - p.connected_at > login_timeout]:
                proto.conn.refuse(Status.VALIDATION_FAIL, "login timeout: no login frame received")
                proto.flush()
                self.metrics["login_timeouts"] += 1
            self._cut_slow_consumers(now)
            if now >= next_session_sweep:
                next_session_sweep = now + interval
                idle_limit = 3 * interval
                for proto in [p for p in self.sessions.values() if now - p.last_seen > idle_limit]:
                    proto.end_session(f"heartbeat timeout: nothing received for {idle_limit:g} s", reconnect=True)
                    self.metrics["heartbeat_timeouts"] += 1

    def _cut_slow_consumers(self, now: float) -> None:
        timeout = self.config.slow_consumer_timeout
        for proto in [p for p in self.slow if p.paused_at is not None and now - p.paused_at > timeout]:
            proto.abort(f"slow consumer: write buffer over {self.config.write_buffer_high} bytes for {timeout:g} s")

    def snapshot(self) -> dict[str, object]:
        return {
            "node": self.node_id,
            "pid": os.getpid(),
            "connections": len(self.sessions) + len(self.pending),
            "sessions": len(self.sessions),
            "slow_consumers": len(self.slow),
            "uptime_s": round(time.time() - self.started_at, 1),
            **self.metrics,
        }
