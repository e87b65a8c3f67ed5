"""Role: each device's cursor in its user's inbox: what it has.

Cursors come from DELIVERY_ACK (cumulative) and are written to the store in
batches, once a second, and when a connection closes; a client that never acks
(CIM's) has what was written to it, kept when it leaves, so ``/fetchOfflineMsgs``
later pushes only what it missed.

The flush is also where receipts start (``cim.receipts``), off every read's path: the
acked ranges it wrote become DELIVERED for their senders, and the MARK_READs since the
last flush (the user's read mark, one per user) READ. What was written to a client that
never acks is not a delivery: no DELIVERED for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from cim.backends import Inbox
from cim.receipts import Receipts
from cim.server.peer import Peer
from cim.server.sessions import SessionTable
from cim.server.streams import Stream

log = logging.getLogger("cim.server")

FLUSH_SECONDS = 1.0


class Cursors:
    """Acks of this node's streams, and their batched writes."""

    def __init__(self, sessions: SessionTable, inbox: Inbox, metrics: Counter[str], receipts: Receipts,
                 delivered: bool = False) -> None:
        self.sessions = sessions
        self.inbox = inbox
        self.metrics = metrics
        self.delivered = delivered  # --delivered-receipts: acked ranges become DELIVERED
        self.receipts = receipts
        self._moved: set[tuple[int, Stream]] = set()  # (user, stream) with a cursor the store has not
        self._read: dict[int, int] = {}  # user -> the highest seq a MARK_READ named since the last flush
        self._flushing: asyncio.Future[None] | None = None  # a flush for streams that left

    def ack(self, peer: Peer, seq: int, read: bool = False) -> None:
        """DELIVERY_ACK: the client has everything up to ``seq`` (of what it was sent);
        ``read`` (MARK_READ): the user has read it."""
        session = self.sessions.of(peer)
        stream = session.stream(peer) if session is not None else None
        if stream is None:
            return
        seq = min(seq, max(stream.sent, stream.login_seq))
        if read:
            if seq > self._read.get(peer.user_id, 0):
                self._read[peer.user_id] = seq
        elif seq > stream.acked:
            stream.acked = seq
            self._moved.add((peer.user_id, stream))

    def left(self, user_id: int, stream: Stream) -> None:
        """A stream's connection closed: its cursor is written now (in the next loop turns,
        with any others that moved), so a login of the device right after finds it."""
        if stream.cursor > stream.cursor_written:
            self._moved.add((user_id, stream))
            if self._flushing is None:
                self._flushing = asyncio.ensure_future(self._flush_now())

    async def _flush_now(self) -> None:
        try:
            await self.flush()
        except Exception as err:  # the store is away: the periodic flush writes them
            self.metrics["errors"] += 1
            log.warning("writing device cursors failed: %r", err)
        finally:
            self._flushing = None

    async def flush(self) -> None:
        """Write the cursors that moved, in one call; then the receipts of what they and the
        MARK_READs since the last flush cover."""
        moved = [(user_id, stream) for user_id, stream in self._moved if stream.cursor > stream.cursor_written]
        self._moved.clear()
        read, self._read = self._read, {}
        if moved:
            try:
                await self.inbox.set_cursors([(user_id, stream.device_id, stream.cursor) for user_id, stream in moved])
            except BaseException:
                self._moved.update(moved)  # written with the next batch
                for user_id, seq in read.items():
                    self._read[user_id] = max(seq, self._read.get(user_id, 0))
                raise
        acked = [(user_id, stream.cursor_written, stream.acked) for user_id, stream in moved
                 if stream.acked > stream.cursor_written] if self.delivered else []
        for _, stream in moved:
            stream.cursor_written = stream.cursor
        if acked or read:
            await self._receipts(acked, read)

    async def _receipts(self, acked: list[tuple[int, int, int]], read: dict[int, int]) -> None:
        """Best effort: a failure (the store or bus away) loses these receipts, never a cursor."""
        try:
            if acked:
                await self.receipts.delivered(acked)
            if read:
                await self.receipts.read(read)
        except Exception as err:
            self.metrics["errors"] += 1
            log.warning("sending receipts failed: %r", err)

    async def run(self) -> None:
        """Flush every ``FLUSH_SECONDS`` until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self._flush_now()
