"""Role: hand one peer's events to the dispatcher in arrival order.

Events the dispatcher can settle at once (a ping, a message to a user on this
node) are, as long as nothing earlier is waiting; the rest (a login, messages that
need the backends) go into a backlog drained by one task, which exists only while
there is a backlog. So a message never overtakes an earlier one, and the common
case costs no task and no queue. Events are screened against the connection's quota
(``cim.server.quotas``) as they arrive, before either.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from cim.protocols.connection import Event
from cim.server.dispatch import Dispatcher
from cim.server.peer import Peer
from cim.server.quotas import PeerQuota, Screened


class Backlog(deque[Screened]):
    """Events waiting for the dispatcher, and when each was read (``time.monotonic()``):
    a run's receipt latency counts from its oldest message's read. Made only while needed."""

    __slots__ = ("read_at",)

    def __init__(self) -> None:
        super().__init__()
        self.read_at: deque[float] = deque()


class OrderedEvents:
    """One peer's event stream: screened, then settled at once or queued, never reordered."""

    __slots__ = ("idle", "take_plain", "_peer", "_dispatcher", "_quota", "_backlog", "_drainer")

    def __init__(self, peer: Peer, dispatcher: Dispatcher, quota: PeerQuota | None = None) -> None:
        self._peer = peer
        self._dispatcher = dispatcher
        self._quota = quota  # None: no limit applies to this connection
        # EventSink.take_plain: the lane's, for this peer, with no call of its own in between.
        self.take_plain: Callable[[int, list[bytes], list[int], float, int], bool] = partial(
            dispatcher.lane.take, peer, quota)
        self._backlog: Backlog | None = None
        self._drainer: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        # Nothing received earlier is still being handled. An attribute, not a property:
        # the transport reads it on every read.
        self.idle = True

    def feed(self, events: list[Event], now: float, size: int) -> None:
        dispatcher, peer, quota = self._dispatcher, self._peer, self._quota
        screened: Sequence[Screened] = events if quota is None else quota.screen(events, now, size)
        for event in screened:
            if self._backlog is None:
                if dispatcher.handle_now(peer, event):
                    continue
                self._backlog = Backlog()
                self.idle = False
                self._drainer = asyncio.create_task(self._drain(self._backlog))
            self._backlog.append(event)
            self._backlog.read_at.append(time.monotonic())  # fed as read: the read's time, to the microsecond

    async def _drain(self, backlog: Backlog) -> None:
        try:
            read_at = backlog.read_at
            while backlog:
                # Takes one event, or a run it can batch: the run's latency is its oldest's.
                await self._dispatcher.handle(self._peer, backlog, read_at[0])
                for _ in range(len(read_at) - len(backlog)):
                    read_at.popleft()
                self._peer.flush()
        finally:
            # Once the backlog is empty, events may be settled at once again.
            self._backlog = None
            self.idle = True
            self._drainer = None
