"""Role: bring streams up to their user's inbox.

A stream catches up from its inbox when the client asks (SYNC), when a live push
found it behind (a gap: a doorbell lost or overtaken), when the periodic check finds
its inbox ahead of it (a doorbell lost for good: a node died between storing and
ringing, or Redis dropped its pub/sub clients), and at login if messages came while
the login read where the inbox stood. One catch-up at a time per stream; it reads
pages until it has passed everything the inbox and the live pushes have shown it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter

from cim.backends import Inbox
from cim.config import Config
from cim.server.peer import Peer
from cim.server.sessions import SessionTable
from cim.server.streams import Stream
from cim.wire import frame_sequenced

log = logging.getLogger("cim.server")

PAGE = 256  # messages per inbox read: one write of a few tens of KiB
RETRY_SECONDS = 1.0  # after a failed inbox read
LATEST_CHUNK = 1000  # users per ``Inbox.latest`` call of the periodic check


class Catchup:
    """Catch-ups of this node's streams, and the periodic inbox check."""

    def __init__(self, config: Config, sessions: SessionTable, inbox: Inbox, metrics: Counter[str]) -> None:
        self.config = config
        self.sessions = sessions
        self.inbox = inbox
        self.metrics = metrics
        self.heartbeat_seconds = math.ceil(config.heartbeat_interval)
        self._running: dict[Stream, asyncio.Task[bool]] = {}

    # -- starting ------------------------------------------------------------------

    def gap(self, stream: Stream) -> None:
        """A live push found ``stream`` behind its inbox (see ``cim.server.streams``)."""
        self.metrics["catchups_gap"] += 1
        self._start(stream)

    def _start(self, stream: Stream) -> asyncio.Task[bool]:
        task = self._running.get(stream)
        if task is None:
            task = self._running[stream] = asyncio.ensure_future(self._run(stream))
            task.add_done_callback(lambda _: self._running.pop(stream, None))
        return task

    async def logged_in(self, peer: Peer, stream: Stream) -> None:
        """A login was accepted and its stream bound: tell the client where the inbox stands,
        then let live pushes through (catching up first on any that came meanwhile)."""
        user_id = peer.user_id
        latest = (await self.inbox.latest([user_id]))[0]
        stream.cursor_written = await self.inbox.cursor(user_id, stream.device_id)
        stream.sent = stream.login_seq = latest
        peer.send_login_answer(latest, self.heartbeat_seconds, stream.cursor_written)
        peer.flush()  # before any push: one written at once would overtake it
        if stream.missed > latest:
            self._start(stream)
        else:
            stream.catching_up = False

    async def sync(self, peer: Peer, after_seq: int) -> None:
        """The client's SYNC: everything after ``after_seq`` in seq order, then live, then
        the answer. Live pushes this connection got before the SYNC was read come again
        in their place: the client drops seqs it has, and never waits for one it dropped."""
        session = self.sessions.of(peer)
        stream = session.stream(peer) if session is not None else None
        if stream is None:
            return
        running = self._running.get(stream)
        if running is not None:
            await asyncio.shield(running)
        self.metrics["syncs"] += 1
        stream.syncs = True
        stream.catching_up = True
        stream.sent = after_seq
        truncated = await asyncio.shield(self._start(stream))
        peer.send_sync_done(stream.sent, truncated)

    # -- the catch-up itself ---------------------------------------------------------

    async def _run(self, stream: Stream) -> bool:
        """Write what the inbox has after ``stream.sent`` until live pushes can take over;
        returns whether retention had dropped some of it."""
        peer = stream.peer
        truncated = False
        while not peer.closed:
            try:
                page = await self.inbox.read(peer.user_id, stream.sent, PAGE)
            except Exception as err:  # the store is away: live pushes keep waiting, nothing is skipped
                self.metrics["errors"] += 1
                log.warning("catch-up of user %d failed, retrying: %r", peer.user_id, err)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            session = self.sessions.of(peer)
            if session is None:
                break
            entries = page.entries
            if entries:
                peer.push(frame_sequenced([body for _, body in entries], entries[0][0], session.receiver_entry))
                stream.sent = entries[-1][0]
                self.metrics["messages_caught_up"] += len(entries)
            truncated = truncated or page.truncated
            if page.latest < stream.sent:
                # The client has seqs the inbox never reached: a store that lost its last
                # writes (Redis AOF everysec after a crash). Go on from what is there.
                log.warning("user %d: client at seq %d, inbox at %d", peer.user_id, stream.sent, page.latest)
                stream.sent = page.latest
            if stream.sent >= page.latest and (stream.missed <= stream.sent or not entries):
                break
        stream.catching_up = False
        return truncated

    async def check_inboxes(self) -> None:
        """Catch up every stream whose inbox is ahead of it (lost doorbells)."""
        sessions = list(self.sessions.by_user.values())
        for start in range(0, len(sessions), LATEST_CHUNK):
            chunk = sessions[start : start + LATEST_CHUNK]
            latest = await self.inbox.latest([session.user_id for session in chunk])
            for session, seq in zip(chunk, latest, strict=True):
                for stream in session.streams:
                    if not stream.catching_up and seq > stream.sent:
                        self.metrics["catchups_checked"] += 1
                        stream.catching_up = True
                        self._start(stream)

    async def run(self) -> None:
        """``check_inboxes`` every ``inbox_check_interval`` until cancelled."""
        while True:
            await asyncio.sleep(self.config.inbox_check_interval)
            try:
                await self.check_inboxes()
            except Exception as err:  # the store is away: the next round tries again
                self.metrics["errors"] += 1
                log.warning("inbox check failed: %r", err)
