"""Role: the node's listening sockets: the client TCP port and, when configured, the WebSocket port.

Each accepted connection becomes a transport (``TcpPeer``, ``WsPeer``) that reaches the
node only as its ``PeerHost``. Under ``--workers N`` both ports are shared by every
worker (SO_REUSEPORT): the kernel spreads the connections over them.
"""

from __future__ import annotations

import asyncio

from cim.config import Config
from cim.protocols.tcp import TcpPeer
from cim.protocols.ws import WsPeer
from cim.server.peer import PeerHost


class Listeners:
    """The servers accepting one node's client connections."""

    def __init__(self, config: Config, host: PeerHost) -> None:
        self.config = config
        self.host = host
        self.servers: list[asyncio.Server] = []

    async def open(self) -> None:
        config, loop, host = self.config, self.host.loop, self.host
        reuse_port = config.workers > 1
        tcp = await loop.create_server(lambda: TcpPeer(host), config.host, config.port, reuse_port=reuse_port,
                                       backlog=config.backlog)
        self.servers = [tcp]
        if config.ws_port:
            ws = await loop.create_server(lambda: WsPeer(host), config.host, config.ws_port, reuse_port=reuse_port,
                                          backlog=config.backlog)
            self.servers.append(ws)

    @property
    def tcp_port(self) -> int:
        return int(self.servers[0].sockets[0].getsockname()[1])

    @property
    def ws_port(self) -> int:
        """The bound WebSocket port, 0 when there is none."""
        return int(self.servers[1].sockets[0].getsockname()[1]) if len(self.servers) > 1 else 0

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()
