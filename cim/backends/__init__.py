"""Backends chosen at start-up from the Config: memory, redis, zookeeper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cim.backends.base import Bus, Discovery, ServerInfo, StateStore
from cim.backends.memory import MemoryHub

if TYPE_CHECKING:  # cim.config imports ServerInfo from here
    from cim.config import Config

__all__ = ["Backends", "Bus", "Discovery", "ServerInfo", "StateStore", "open_backends"]


@dataclass
class Backends:
    state: StateStore
    bus: Bus
    discovery: Discovery

    async def close(self) -> None:
        await self.bus.close()
        await self.discovery.close()
        await self.state.close()


async def open_backends(config: Config, hub: MemoryHub | None = None) -> Backends:
    """State and bus on Redis when ``config.redis`` is set, discovery on ZooKeeper
    when ``config.zk`` is set; the rest embedded in ``hub`` (shared in-process)."""
    hub = hub or MemoryHub()
    state: StateStore = hub.state
    bus: Bus = hub.bus
    discovery: Discovery = hub.discovery
    if config.redis:
        from cim.backends.redis import RedisBus, RedisState, connect

        client = connect(config.redis)
        await client.ping()
        state = RedisState(client, config.key_prefix)
        # Pub/sub holds its own connection; publishing shares the pool.
        bus = RedisBus(connect(config.redis), config.key_prefix)
    if config.zk:
        from cim.backends.zookeeper import ZooKeeperDiscovery

        zk = ZooKeeperDiscovery(config.zk, config.zk_root, config.zk_session_timeout)
        await zk.start()
        discovery = zk
    return Backends(state, bus, discovery)
