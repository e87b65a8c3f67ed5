"""Role: the timeouts, in one sweep over the session table instead of a timer per connection.

Logged-in connections silent for 3 heartbeat intervals are ended (they may
reconnect); connections that have not logged in within the login timeout are
refused; slow consumers whose write buffer stayed over the high mark too long are
cut off.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from cim.config import Config
from cim.server.peer import Peer
from cim.server.sessions import SessionTable
from cim.status import Status


class Sweeper:
    """Closes the connections that overstayed a limit."""

    def __init__(self, config: Config, sessions: SessionTable, metrics: Counter[str]) -> None:
        self.config = config
        self.sessions = sessions
        self.metrics = metrics
        # Connections whose write buffer is over the high-water mark (slow readers).
        self.slow: set[Peer] = set()

    async def run(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        period = min(config.heartbeat_interval, config.login_timeout, config.slow_consumer_timeout) / 2
        next_session_sweep = loop.time() + config.heartbeat_interval
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            self._refuse_late_logins(now)
            self._cut_slow_consumers(now)
            if now >= next_session_sweep:
                next_session_sweep = now + config.heartbeat_interval
                self._end_silent_sessions(now)

    def _refuse_late_logins(self, now: float) -> None:
        timeout = self.config.login_timeout
        for peer in [p for p in self.sessions.pending if now - p.connected_at > timeout]:
            # A login frame may have come and still be checked (a slow store): say which.
            what = "login not confirmed in time" if peer.user_id else "no login frame received"
            # 4000, not 3000: nothing was wrong with what the client sent, it came late (an
            # overloaded client or node), and the SDK gives up on 3000 but retries 4000.
            peer.refuse(Status.FAIL, f"login timeout: {what}")
            self.metrics["login_timeouts"] += 1

    def _end_silent_sessions(self, now: float) -> None:
        idle_limit = 3 * self.config.heartbeat_interval
        silent = [p for s in self.sessions.by_user.values() for p in s.peers if now - p.last_seen > idle_limit]
        for peer in silent:
            peer.end(f"heartbeat timeout: nothing received for {idle_limit:g} s", reconnect=True)
            self.metrics["heartbeat_timeouts"] += 1

    def _cut_slow_consumers(self, now: float) -> None:
        timeout = self.config.slow_consumer_timeout
        for peer in [p for p in self.slow if p.paused_at is not None and now - p.paused_at > timeout]:
            self.metrics["slow_consumer_cuts"] += 1
            peer.abort(f"slow consumer: write buffer over {self.config.write_buffer_high} bytes for {timeout:g} s")
