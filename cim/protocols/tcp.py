"""The TCP transport: an asyncio Protocol that only moves bytes, and a ``Peer``.

Protocol decisions live in ``ServerConnection`` (sans-I/O), application decisions
in the node, reached only through ``cim.server.peer.PeerHost``; events go to the
node in arrival order through the ``EventSink`` it hands back at admission.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from cim.protocols.connection import CLOSED, MAX_PING_FRAME, ServerConnection
from cim.server.peer import EventSink, PeerHost
from cim.status import Status

log = logging.getLogger("cim.server")


class TcpPeer(asyncio.Protocol):
    """One client's TCP connection: bytes in to the sans-I/O connection, frames out."""

    # Slots: one of these per connection (100k per node).
    __slots__ = (
        "host", "conn", "events", "transport", "ip", "connected_at", "last_seen", "paused_at", "closed", "_queued",
        "_resume_reading", "send_receipts", "write_now", "_write_direct", "_held", "_receipts_at",
    )

    def __init__(self, host: PeerHost) -> None:
        settings = host.settings
        self.host = host
        self.conn = ServerConnection(settings.max_frame_size, settings.max_message_bytes)
        # Peer.send_receipts is the connection's own: bound once, no wrapper call on the
        # hot path (every read of messages answers with receipts).
        self.send_receipts = self.conn.send_receipts
        self.events: EventSink | None = None  # set once admitted
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.connected_at = 0.0
        self.last_seen = 0.0
        self.paused_at: float | None = None  # when the write buffer went over the high mark
        self.closed = False
        self._queued = False  # has frames waiting for the end-of-turn flush
        self._held = False  # has receipts waiting for the node's receipt tick (a busy sender's)
        self._receipts_at = -host.settings.receipt_interval  # loop time a read's receipts last went to the flush
        self._resume_reading: asyncio.TimerHandle | None = None  # reading paused over the bytes rate
        # Peer.write_now: _write_direct while a frame may go straight out (open, nothing queued
        # ahead of it, the buffer under its high mark), else None. Kept as each of those changes,
        # so an at-once push (every delivery of a group message) is one attribute read and a
        # call into the transport, with no Python frame of ours in between.
        self.write_now: Callable[[bytes], None] | None = None
        self._write_direct: Callable[[bytes], None] | None = None

    @property
    def user_id(self) -> int:
        return self.conn.user_id

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio's interface without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.ip = peername[0] if isinstance(peername, tuple) else ""  # a Unix socket has no address
        self.connected_at = self.last_seen = self.host.loop.time()
        high = self.host.settings.write_buffer_high
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self._write_direct = self._direct_writer(transport)
        self.write_now = self._write_direct
        self.events = self.host.admit(self)

    def data_received(self, data: bytes) -> None:
        events = self.events
        if events is None:
            return  # refused: closing
        host = self.host
        size = len(data)
        self.last_seen = now = host.loop.time()
        host.metrics["bytes_in"] += size
        if size <= MAX_PING_FRAME and events.idle and not self._queued:  # nothing earlier waits
            pong = self.conn.answer_ping(data)
            if pong is not None:
                self.push(pong, at_once=True)
                return
        conn = self.conn
        # A read of messages to one user (CIM's client's, a read each; the SDK's, with
        # clientMsgIds) goes by the lane (cim.server.lane) when it can, with no event.
        run = conn.plain_read(data) if events.idle else None
        if run is not None and events.take_plain(run[0], run[1], run[2], now, size):
            if conn.outgoing and not self._queued and not self._held:  # the read's receipts, alone
                self._flush_receipts(now, len(run[1]))
            return  # else nothing to answer (CIM's client's), or it goes with what waits already
        events.feed(conn.receive_data(data), now, size)
        # What the read produced (receipts, errors) is written at the end of the loop turn,
        # with what else the turn queued: writes bunched in time find their readers still awake from
        # the first one, and waking a reader is most of a loopback write's cost (p2p with a
        # receipt per message: +14 % msgs/s against writing after each read). A read that
        # produced nothing to write here (CIM's client sending: no receipts) queues nothing.
        if not self._queued and (conn.outgoing or conn.state is CLOSED):
            self._queue_flush()

    def pause_writing(self) -> None:
        self.paused_at = self.host.loop.time()
        self.write_now = None  # pushes queue: the flush that writes them checks for a swamped buffer
        self.host.writing_paused(self)

    def resume_writing(self) -> None:
        self.paused_at = None
        if not self._queued and not self._held:
            self._open_writes()
        self.host.writing_resumed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.write_now = None
        if self._resume_reading is not None:
            self._resume_reading.cancel()
        self.host.lost(self)

    # -- Peer ------------------------------------------------------------------------

    def push(self, frame: bytes, at_once: bool = False) -> None:
        if at_once and (write := self.write_now) is not None:
            write(frame)  # uvloop writes at once: one syscall
            return
        self.conn.send_push(frame)
        if not self._queued:  # _queue_flush, inline: once per read that pushes to this peer
            self._queued = True
            self.write_now = None
            self.host.flush_at_end_of_turn(self)

    def _queue_flush(self) -> None:
        """Frames wait in the connection for the end-of-turn flush: none may overtake them."""
        self._queued = True
        self.write_now = None
        self.host.flush_at_end_of_turn(self)

    def _flush_receipts(self, now: float, messages: int) -> None:
        """A read's receipts go out with the turn's writes, or, from a sender that pipelines
        (several messages in the read) and got receipts less than ``receipt_interval`` ago, with
        the next receipt tick's: a busy sender's receipts are written together, each at most that
        late (the kernel's writes were over half of p2p's server CPU; with the receipts held,
        +20 % msgs/s: bench/RESULTS.md). A sender awaiting each receipt before its next
        send sends one message a read and waits for nothing; a push to the peer in between takes
        the held receipts along with it."""
        if messages == 1 or now - self._receipts_at >= self.host.settings.receipt_interval:
            self._receipts_at = now
            self._queue_flush()
        else:
            self._held = True
            self.write_now = None
            self.host.at_receipt_tick(self._flush_held)

    def _flush_held(self, now: float) -> None:
        if self._held:  # else a flush took them
            self._receipts_at = now
            self.flush()

    def _direct_writer(self, transport: asyncio.Transport) -> Callable[[bytes], None]:
        """How framed bytes go to the client: TCP carries them as they are."""
        return transport.write

    def _open_writes(self) -> None:
        """Nothing is queued any more: at-once pushes go straight out again, if they may."""
        if self.transport is not None and not self.closed and self.paused_at is None:
            self.write_now = self._write_direct

    def send_pong(self) -> None:
        self.conn.send_pong()

    def send_receipt(self, client_msg_id: int, status: Status, text: str, msg_id: int = 0) -> None:
        self.conn.send_receipt(client_msg_id, status, text, msg_id)

    def send_login_answer(self, latest_seq: int, heartbeat_seconds: int, acked_seq: int) -> None:
        self.conn.send_login_answer(latest_seq, heartbeat_seconds, acked_seq)

    def send_sync_done(self, latest_seq: int, truncated: bool) -> None:
        self.conn.send_sync_done(latest_seq, truncated)

    def send_error(self, status: Status, reason: str) -> None:
        self.conn.send_error(status, reason)

    def pause_reading(self, seconds: float) -> None:
        if self.transport is None or self.closed or self._resume_reading is not None:
            return
        self.transport.pause_reading()
        self._resume_reading = self.host.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._resume_reading = None
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def refuse(self, status: Status, reason: str) -> None:
        self.conn.refuse(status, reason)
        self.flush()

    def end(self, reason: str, reconnect: bool) -> None:
        self.conn.close(reason, reconnect)
        self.flush()

    def abort(self, reason: str) -> None:
        log.warning("disconnecting user %s: %s", self.user_id, reason)
        self.closed = True
        self.write_now = None
        if self.transport is not None:
            self.transport.abort()

    def flush(self) -> None:
        self._queued = self._held = False
        self.write_now = None  # until the end: this may close the connection
        transport = self.transport
        if transport is None or self.closed:
            return
        conn = self.conn
        data = conn.data_to_send()
        if data:
            transport.write(data)  # as push does at once: once per read
            if self.paused_at is not None:
                self._cut_if_swamped(transport)
        if conn.state is CLOSED:
            self.closed = True
            transport.close()
        elif self.paused_at is None:  # _open_writes, inline: once per flush (a cut, closing, is only while paused)
            self.write_now = self._write_direct

    def _cut_if_swamped(self, transport: asyncio.Transport) -> None:
        """A paused writer (a slow reader) whose buffer still grows far past the mark is cut off."""
        limit = 4 * self.host.settings.write_buffer_high
        if transport.get_write_buffer_size() > limit:
            self.host.metrics["slow_consumer_cuts"] += 1
            self.abort(f"slow consumer: write buffer over {limit} bytes")
