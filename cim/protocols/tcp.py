"""The asyncio Protocol of a client connection: it only moves bytes.

Protocol decisions live in ``ServerConnection`` (sans-I/O), application decisions
in ``Node``. Events are handled in arrival order: ones the node can settle at once
(a ping, a message to a user on this node) are, the rest (login, group messages,
routes on other nodes) go through a per-connection backlog drained by one task that
exists only while there is a backlog, so a message never overtakes an earlier one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from cim.messages import Sender
from cim.protocols.connection import Event, ServerConnection, State

if TYPE_CHECKING:
    from cim.node import Node

log = logging.getLogger("cim.server")


class CimServerProtocol(asyncio.Protocol):
    __slots__ = (
        "node", "conn", "transport", "connected_at", "last_seen", "paused_at",
        "logged_in", "closed", "receiver_entry", "sender", "dirty", "_backlog", "_drainer",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        self.conn = ServerConnection(node.config.max_frame_size, node.config.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.connected_at = 0.0
        self.last_seen = 0.0
        self.paused_at: float | None = None  # when the write buffer went over the high mark
        self.logged_in = False
        self.closed = False
        # The serialized receiveUserId entry every push to this user ends with (set at login).
        self.receiver_entry = b""
        self.sender: Sender | None = None  # this user as a sender, serialized once (set at login)
        self.dirty = False  # has pushes waiting for the node's end-of-turn flush
        self._backlog: deque[Event] | None = None
        self._drainer: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    @property
    def user_id(self) -> int:
        return self.conn.user_id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        self.connected_at = self.last_seen = self.node.loop.time()
        high = self.node.config.write_buffer_high
        self.transport.set_write_buffer_limits(high=high, low=high // 4)
        if not self.node.connection_made(self):
            self.flush()  # the refusal frame, then close

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.node.loop.time()
        self.node.metrics["bytes_in"] += len(data)
        if self._backlog is None and not self.dirty:  # nothing earlier is unanswered or queued
            pong = self.conn.answer_ping(data)
            if pong is not None:
                self.write_now(pong)
                return
        events = self.conn.receive_data(data)
        for event in events:
            if self._backlog is None and self.node.handle_now(self, event):
                continue
            if self._backlog is None:
                self._backlog = deque()
                self._drainer = asyncio.create_task(self._drain())
            self._backlog.append(event)
        self.flush()

    async def _drain(self) -> None:
        backlog = self._backlog
        assert backlog is not None
        try:
            while backlog:
                await self.node.handle(self, backlog)  # takes one event, or a run it can batch
                self.flush()
                # Once the backlog is empty, events may be settled at once again.
        finally:
            self._backlog = None
            self._drainer = None

    def flush(self) -> None:
        """Write everything the connection queued, in one write; close if it ended."""
        if self.transport is None or self.closed:
            return
        data = self.conn.data_to_send()
        if data:
            self.write_now(data)
        if self.conn.state is State.CLOSED and not self.closed:
            self.closed = True
            self.transport.close()

    def write_now(self, data: bytes) -> None:
        """Write ``data`` at once. Only for a connection with nothing queued (not
        ``dirty``), so nothing is overtaken; uvloop writes at once too, so this is
        one syscall."""
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.write(data)
        if self.paused_at is not None and transport.get_write_buffer_size() > 4 * self.node.config.write_buffer_high:
            self.abort(f"slow consumer: write buffer over {4 * self.node.config.write_buffer_high} bytes")

    def end_session(self, reason: str, reconnect: bool) -> None:
        """End the session from outside its own events (shutdown, kick, idle): tell
        the client why and whether to come back, then close."""
        self.conn.close(reason, reconnect)
        self.flush()

    def pause_writing(self) -> None:
        self.paused_at = self.node.loop.time()
        self.node.slow.add(self)

    def resume_writing(self) -> None:
        self.paused_at = None
        self.node.slow.discard(self)

    def abort(self, reason: str) -> None:
        """Drop the connection now, unsent data and all (a reader that cannot keep up)."""
        log.warning("disconnecting user %s: %s", self.user_id, reason)
        self.node.metrics["slow_consumer_cuts"] += 1
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.node.connection_lost(self)
