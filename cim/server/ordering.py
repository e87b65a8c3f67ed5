"""Role: hand one peer's events to the dispatcher in arrival order.

Events the dispatcher can settle at once (a ping, a message to a user on this
node) are, as long as nothing earlier is waiting; the rest (a login, messages that
need the backends) go into a backlog drained by one task, which exists only while
there is a backlog. So a message never overtakes an earlier one, and the common
case costs no task and no queue.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cim.protocols.connection import Event
from cim.server.dispatch import Dispatcher
from cim.server.peer import Peer


class OrderedEvents:
    """One peer's event stream: settled at once or queued, never reordered."""

    __slots__ = ("idle", "_peer", "_dispatcher", "_backlog", "_drainer")

    def __init__(self, peer: Peer, dispatcher: Dispatcher) -> None:
        self._peer = peer
        self._dispatcher = dispatcher
        self._backlog: deque[Event] | None = None
        self._drainer: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        # Nothing received earlier is still being handled. An attribute, not a property:
        # the transport reads it on every read.
        self.idle = True

    def feed(self, events: list[Event]) -> None:
        dispatcher, peer = self._dispatcher, self._peer
        for event in events:
            if self._backlog is None:
                if dispatcher.handle_now(peer, event):
                    continue
                self._backlog = deque()
                self.idle = False
                self._drainer = asyncio.create_task(self._drain(self._backlog))
            self._backlog.append(event)

    async def _drain(self, backlog: deque[Event]) -> None:
        try:
            while backlog:
                await self._dispatcher.handle(self._peer, backlog)  # takes one event, or a run it can batch
                self._peer.flush()
        finally:
            # Once the backlog is empty, events may be settled at once again.
            self._backlog = None
            self.idle = True
            self._drainer = None
