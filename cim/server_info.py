"""Which cim-server a node is: the one value config, discovery, routes and balancers share.

A module of its own (not in ``cim.backends``) so that ``cim.config`` can build it without
importing the backends package, which itself needs the Config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WS_PATH = "/ws"  # the WebSocket endpoint's path on every cim-server


@dataclass(frozen=True, order=True)
class ServerInfo:
    """A cim-server node as registered: where clients connect and its HTTP port.

    ``id`` (``host:tcp_port:http_port``) names the node everywhere: in routes, in
    bus channels and in the registry. Workers of one host share the TCP port but
    each has its own HTTP port, so each is its own node. ``ws_port`` (0: none) is
    its WebSocket port, which workers share too; it is not part of the name (CIM's
    route parses the names), so it compares as no part of the node either.
    """

    host: str
    tcp_port: int
    http_port: int
    ws_port: int = field(default=0, compare=False)

    @property
    def ws_url(self) -> str | None:
        """Where a WebSocket client connects, or None when the node has no WebSocket port."""
        return f"ws://{self.host}:{self.ws_port}{WS_PATH}" if self.ws_port else None

    @property
    def id(self) -> str:
        return f"{self.host}:{self.tcp_port}:{self.http_port}"

    @classmethod
    def parse(cls, node_id: str) -> ServerInfo:
        """Parse ``host:tcp_port:http_port``; raises ValueError on anything else."""
        host, tcp, http = node_id.rsplit(":", 2)
        if not host:
            raise ValueError(f"no host in server id {node_id!r}")
        return cls(host, int(tcp), int(http))
