"""The three small interfaces every deployment is built from.

* ``StateStore``: accounts, login status, user -> server routes, offline messages.
* ``Bus``: delivery between cim-server nodes (one channel per node + a broadcast).
* ``Discovery``: the live list of cim-servers, with a watch.

``memory`` implements all three in-process (the embedded default); ``redis``
implements state and bus; ``zookeeper`` implements discovery. Routes and servers
only ever talk to these interfaces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ServerInfo:
    """A cim-server node as registered: where clients connect and its HTTP port.

    ``id`` (``host:tcp_port:http_port``) names the node everywhere: in routes, in
    bus channels and in the registry. Workers of one host share the TCP port but
    each has its own HTTP port, so each is its own node.
    """

    host: str
    tcp_port: int
    http_port: int

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


class StateStore(ABC):
    """Users, logins, routes and offline messages, shared by every route and server."""

    @abstractmethod
    async def register(self, user_name: str) -> int:
        """The id of ``user_name``, creating the account if the name is new."""

    @abstractmethod
    async def user_name(self, user_id: int) -> str | None:
        """The account's name, or None for an unknown id."""

    @abstractmethod
    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        """``user_name`` for many ids in one round trip."""

    @abstractmethod
    async def reserve_login(self, user_id: int, server_id: str, ttl: float) -> bool:
        """Route login: claim the user for ``server_id``. False if already logged in.

        The claim expires after ``ttl`` seconds unless the server confirms it, so a
        client that never connects does not lock its user out.
        """

    @abstractmethod
    async def confirm_login(self, user_id: int, server_id: str) -> bool:
        """Server login: the user's connection arrived on ``server_id``.

        A route's claim may be confirmed by any node (workers sharing a port are
        picked by the kernel, not the route); False if the user's login is already
        confirmed on another server.
        """

    @abstractmethod
    async def logout(self, user_id: int, server_id: str | None = None) -> str | None:
        """Clear login status and route; with ``server_id``, only if they point there.

        Returns the server the user was on, or None if nothing was cleared: calling
        it twice clears once.
        """

    @abstractmethod
    async def route(self, user_id: int) -> str | None:
        """The server id the user is logged in on (claimed or confirmed), or None."""

    @abstractmethod
    async def online_users(self) -> list[tuple[int, str]]:
        """Every logged-in user as (id, name), by incremental iteration."""

    @abstractmethod
    async def clear_server(self, server_id: str) -> list[int]:
        """Log out every user confirmed on a server that died; returns their ids."""

    @abstractmethod
    async def store_offline(self, user_id: int, payloads: list[bytes]) -> None:
        """Append messages for a user who is not connected, in order."""

    @abstractmethod
    async def restore_offline(self, user_id: int, payloads: list[bytes]) -> None:
        """Put taken messages back in front of any stored since, keeping their order."""

    @abstractmethod
    async def take_offline(self, user_id: int) -> list[bytes]:
        """Remove and return a user's stored messages, oldest first, atomically."""

    @abstractmethod
    async def allocate_node_number(self) -> int:
        """A number unique among live nodes, for cluster-unique message ids."""

    async def close(self) -> None:
        """Release connections."""


DeliveryHandler = Callable[[bytes], None]


class Bus(ABC):
    """Node-to-node delivery: a channel per node and one broadcast channel."""

    @abstractmethod
    async def subscribe(self, node_id: str, handler: DeliveryHandler) -> None:
        """Call ``handler(payload)`` on the loop for every payload sent to the node or broadcast."""

    @abstractmethod
    async def publish(self, node_id: str, payload: bytes) -> None:
        """Send to one node; order is kept between payloads from one publisher."""

    @abstractmethod
    async def broadcast(self, payload: bytes) -> None:
        """Send to every node, this one included."""

    async def close(self) -> None:
        """Unsubscribe and release connections."""


ServersCallback = Callable[[list[ServerInfo]], Awaitable[None] | None]


class Discovery(ABC):
    """The live list of cim-servers."""

    @abstractmethod
    async def register(self, server: ServerInfo, restored: Callable[[], None] | None = None) -> None:
        """Announce this server; it disappears when the process dies.

        A registry that can drop a live server (a ZooKeeper session that expired)
        puts it back when it can and then calls ``restored()`` on the loop: routes
        saw the server leave and logged its users out, so the server claims them back.
        """

    @abstractmethod
    async def unregister(self, server: ServerInfo) -> None:
        """Withdraw this server (graceful shutdown)."""

    @abstractmethod
    async def watch(self, callback: ServersCallback) -> None:
        """Call ``callback(servers)`` on the loop now and on every change."""

    @abstractmethod
    def servers(self) -> list[ServerInfo]:
        """The list as last seen (after ``watch``)."""

    async def close(self) -> None:
        """Stop watching and release the session."""
