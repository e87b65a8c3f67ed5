"""Role: this node's entry in the registry, and its users' logins after a registry outage.

At start, logins left under this node's id by a predecessor (a restarted worker)
are stale and cleared. A registry that drops a live node for a while (a ZooKeeper
session that expired) makes routes log its users out though their connections
stayed open: once re-registered, the node claims them back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from cim.backends import Backends
from cim.config import Config
from cim.presence import changes_payload
from cim.server.devices import UNLIMITED
from cim.server.sessions import SessionTable
from cim.server.tasks import BackgroundTasks

log = logging.getLogger("cim.server")


class Registration:
    """Registers the node, and reclaims its users when the registry restores it."""

    def __init__(
        self, config: Config, backends: Backends, sessions: SessionTable, metrics: Counter[str], tasks: BackgroundTasks
    ) -> None:
        self.config = config
        self.info = config.server_info
        self.backends = backends
        self.sessions = sessions
        self.metrics = metrics
        self.tasks = tasks

    async def clear_stale(self) -> None:
        # A fresh node holds no sessions: anything recorded under its id is left
        # from a predecessor with the same id (a restarted worker) and is stale.
        stale = await self.backends.presence.clear_server(self.info.id)
        if stale:
            log.warning("cleared %d stale logins left by a previous %s", len(stale), self.info.id)
            await self.backends.bus.broadcast(changes_payload(self.info.id, [], stale))  # their watchers: offline

    async def register(self) -> None:
        await self.backends.discovery.register(self.info, restored=lambda: self.tasks.spawn(self._reclaim()))

    async def unregister(self) -> None:
        try:
            await asyncio.wait_for(self.backends.discovery.unregister(self.info), self.config.shutdown_timeout)
        except Exception as err:  # the registry is unreachable: its session expiry will do it
            log.warning("could not unregister %s: %r", self.info.id, err)

    async def _reclaim(self) -> None:
        """Claim back the users routes logged out; a user who logged in elsewhere
        meanwhile is ended here."""
        presence = self.backends.presence
        # Twice: a route that saw the node leave may clear its users after the first
        # pass; confirming a login this node holds already changes nothing.
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(self.config.zk_session_timeout)
            reclaimed = 0
            for user_id, session in list(self.sessions.by_user.items()):
                confirmed = [await presence.confirm_login(user_id, self.info.id, s.device_id, UNLIMITED)
                             for s in session.streams]  # no device limit: accepted before the outage
                if all(c is not None for c in confirmed):
                    reclaimed += 1
                elif self.sessions.by_user.get(user_id) is session:
                    for peer in list(session.peers):
                        peer.end("logged in on another server", reconnect=False)
            log.warning("registration restored: reclaimed %d of %d sessions", reclaimed, len(self.sessions))
        self.metrics["registrations_restored"] += 1
