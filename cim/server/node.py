"""Role: a cim-server node's lifecycle, and admission of its connections.

``Node`` builds the parts (see ``cim.server``), starts and stops them, and is the
``PeerHost`` its transports talk to: it admits connections (or refuses them when
the open-files budget is used up, or their IP address has too many), hears when
they go, and flushes the pushes queued during a loop turn together at its end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter

from cim.auth import Tokens
from cim.backends import Backends
from cim.config import Config
from cim.delivery import Messenger
from cim.limits import connection_capacity, kernel_warnings, raise_nofile_limit
from cim.messages import MessageIds
from cim.receipts import Receipts
from cim.server.catchup import Catchup
from cim.server.cursors import Cursors
from cim.server.delays import DelayPoller
from cim.server.devices import DevicePolicy
from cim.server.dispatch import Dispatcher
from cim.server.flushes import Flushes
from cim.server.intake import Deliveries
from cim.server.listeners import Listeners
from cim.server.logins import Logins
from cim.server.metrics import Counts, NodeMetrics
from cim.server.ordering import OrderedEvents
from cim.server.peer import Peer, PeerSettings
from cim.server.presence import PresenceWatch
from cim.server.quotas import Quotas
from cim.server.registration import Registration
from cim.server.sessions import SessionTable
from cim.server.streams import Stream
from cim.server.sweeper import Sweeper
from cim.server.tasks import BackgroundTasks
from cim.status import Status

log = logging.getLogger("cim.server")


class Node:
    """One cim-server: its sessions, its listener, and the parts that serve them."""

    def __init__(self, config: Config, backends: Backends) -> None:
        self.config = config
        self.backends = backends
        self.info = config.server_info
        self.node_id = self.info.id
        self.loop = asyncio.get_running_loop()
        self.settings = PeerSettings(config.max_frame_size, config.max_message_bytes, config.write_buffer_high,
                                     config.receipt_interval)
        self.metrics: Counter[str] = Counts()
        self.started_at = time.time()
        self.max_connections = 0
        self.sessions = SessionTable(gap=self._gap)
        self.catchup = Catchup(config, self.sessions, backends.inbox, self.metrics)
        self.quotas = Quotas(config, self.metrics, self.loop.time)
        self.tasks = BackgroundTasks(self.metrics)
        self.sweeper = Sweeper(config, self.sessions, self.metrics)
        self.prometheus = NodeMetrics(self.metrics, self.sessions, self.sweeper.slow)
        self.registration = Registration(config, backends, self.sessions, self.metrics, self.tasks)
        self.deliveries = Deliveries(self.node_id, self.sessions, self.metrics, self.prometheus.latencies)
        self.cursors = Cursors(self.sessions, backends.inbox, self.metrics, Receipts(backends, local=self.deliveries),
                               config.delivered_receipts)
        # The node number comes from the store at start; ids are taken only after.
        self.ids = MessageIds(0)
        messenger = Messenger(backends, self.ids, local=self.deliveries, max_delay_seconds=config.max_delay_seconds)
        self.delays = DelayPoller(messenger, self.metrics)
        self.presence = PresenceWatch(self.node_id, backends, config.presence_debounce_seconds, self.metrics, self.tasks)
        self.deliveries.presence_changes = self.presence.on_changes
        self.dispatcher = Dispatcher(
            self.node_id, self.sessions, backends, messenger, self.catchup, self.cursors, self.metrics, self.tasks,
            Logins(self.node_id, self.sessions, backends, self.catchup, self.metrics, Tokens.from_config(config),
                   self.presence, DevicePolicy(config, self.node_id, self.sessions, backends)),
            self.prometheus.latencies,
        )
        flushes = Flushes(self.loop, config.receipt_interval)
        # PeerHost's, bound: a transport's call reaches the list with no frame of the node's.
        self.flush_at_end_of_turn = flushes.at_end_of_turn
        self.at_receipt_tick = flushes.at_receipt_tick
        self.listeners = Listeners(config, self)
        self._sweeping: asyncio.Task[None] | None = None
        self._upkeep: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        soft, hard = raise_nofile_limit()
        self.max_connections = connection_capacity(soft, self.config.max_connections)
        self.metrics.update(nofile_soft=soft, nofile_hard=hard, max_connections=self.max_connections)
        log.info("open files soft/hard %d/%d: room for %d client connections", soft, hard, self.max_connections)
        for warning in kernel_warnings(
            self.config.backlog, self.config.workers, self.max_connections, self.config.max_connections
        ):
            log.warning("%s", warning)
        await self.registration.clear_stale()
        self.ids.assign_node(await self.backends.presence.allocate_node_number())
        await self.backends.bus.subscribe(self.node_id, self.deliveries.on_delivery)
        await self.listeners.open()
        self._sweeping = asyncio.create_task(self.sweeper.run(), name="cim-sweeper")
        self._upkeep = [asyncio.create_task(self.cursors.run(), name="cim-cursors"),
                        asyncio.create_task(self.delays.run(), name="cim-delays"),
                        asyncio.create_task(self.presence.run(), name="cim-presence")]
        if not self.backends.inbox.in_process:  # an in-process store rings every doorbell it stores
            self._upkeep.append(asyncio.create_task(self.catchup.run(), name="cim-inbox-check"))
        self.prometheus.start()
        await self.registration.register()
        log.info("cim-server %s listening on %s:%d (WebSocket: %s)", self.node_id, self.config.host, self.config.port,
                 self.config.ws_port or "off")

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        return self.listeners.tcp_port

    async def stop(self) -> None:
        """Graceful: leave the registry, stop accepting, tell clients, close, clean up."""
        await self.registration.unregister()
        self.listeners.close()
        if self._sweeping is not None:
            self._sweeping.cancel()
        for peer in self.sessions.peers():
            peer.end("server shutting down", reconnect=True)
        deadline = self.loop.time() + self.config.shutdown_timeout
        while (self.sessions.connections or self.tasks) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.listeners.wait_closed()
        for task in self._upkeep:
            task.cancel()
        try:  # the cursors of the connections just closed
            await asyncio.wait_for(self.cursors.flush(), self.config.shutdown_timeout)
        except Exception as err:
            log.warning("could not write device cursors: %r", err)
        self.prometheus.stop()

    def _gap(self, stream: Stream) -> None:
        self.catchup.gap(stream)

    # -- PeerHost ----------------------------------------------------------------

    def admit(self, peer: Peer) -> OrderedEvents | None:
        self.metrics["connections_total"] += 1
        ip_allowed = self.quotas.connect(peer.ip)  # counted until lost(), even if refused here
        if self.sessions.connections >= self.max_connections:
            self.metrics["refused_full"] += 1
            peer.refuse(Status.FAIL, f"server full: {self.max_connections} connections")
            return None
        if not ip_allowed:
            self.metrics["limit_hits_connections"] += 1
            peer.refuse(
                Status.RATE_LIMITED, f"too many connections from {peer.ip}: {self.config.max_connections_per_ip} at most"
            )
            return None
        self.sessions.admit(peer)
        return OrderedEvents(peer, self.dispatcher, self.quotas.for_peer(peer))

    def lost(self, peer: Peer) -> None:
        self.quotas.disconnect(peer.ip)
        self.sweeper.slow.discard(peer)
        self.presence.lost(peer, self.sessions)  # before the session table forgets the peer
        self.dispatcher.lost(peer)

    def writing_paused(self, peer: Peer) -> None:
        self.sweeper.slow.add(peer)

    def writing_resumed(self, peer: Peer) -> None:
        self.sweeper.slow.discard(peer)

    def snapshot(self) -> dict[str, object]:
        return {
            "node": self.node_id,
            "pid": os.getpid(),
            "connections": self.sessions.connections,
            "sessions": len(self.sessions),
            "slow_consumers": len(self.sweeper.slow),
            "uptime_s": round(time.time() - self.started_at, 1),
            **self.metrics,
        }
