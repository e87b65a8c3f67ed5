"""Role: when what transports queued is written: at the end of the loop turn, or at the
receipt tick (a busy sender's receipts, cim.protocols.tcp).

Both are one list and one loop callback for the whole node, not a timer per connection:
a turn's writes go out together, after all the turn's reads were handled, and so do a
tick's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cim.server.peer import Peer


class Flushes:
    """The node's queued flushes (``PeerHost.flush_at_end_of_turn`` and ``at_receipt_tick``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, receipt_interval: float) -> None:
        self.loop = loop
        self.receipt_interval = receipt_interval
        self._turn: list[Peer] = []  # peers with frames queued this loop turn
        self._tick: list[Callable[[float], None]] = []  # the flushes of receipts held for the next tick

    def at_end_of_turn(self, peer: Peer) -> None:
        if not self._turn:
            self.loop.call_soon(self._flush_turn)
        self._turn.append(peer)

    def _flush_turn(self) -> None:
        peers, self._turn = self._turn, []
        for peer in peers:
            peer.flush()

    def at_receipt_tick(self, flush: Callable[[float], None]) -> None:
        if not self._tick:
            self.loop.call_later(self.receipt_interval, self._flush_tick)
        self._tick.append(flush)

    def _flush_tick(self) -> None:
        flushes, self._tick = self._tick, []
        now = self.loop.time()
        for flush in flushes:
            flush(now)
