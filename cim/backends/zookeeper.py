"""ZooKeeper discovery (kazoo): each cim-server is an ephemeral node under a root path.

Its URL is ``zookeeper://host:port,host:port`` or the bare hosts (``--zk``); the
root path and session timeout come from the Config.

Node names follow CIM: ``{root}/{host}:{tcp_port}:{http_port}`` (root ``/cim``, as
CIM hard-codes it), so a CIM route and a cim route can read the same registry. The node
vanishes when the server's ZooKeeper session ends, which is how routes learn of a
server killed with SIGKILL. What the name cannot carry without changing it goes in the
node's data, as JSON: ``{"id": name, "wsPort": N}`` (the WebSocket port, 0: none). A
node whose data is anything else (CIM's, an older cim's: the bare name) has no
WebSocket port.

kazoo runs callbacks on its own threads and has no asyncio handler: everything that
reaches the event loop goes through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from cim.backends.base import Discovery, ServersCallback
from cim.server_info import ServerInfo

if TYPE_CHECKING:
    from cim.backends.memory import MemoryHub
    from cim.config import Config

log = logging.getLogger("cim.backends.zookeeper")

SCHEME = "zookeeper://"


def parse_children(children: list[str]) -> list[ServerInfo]:
    servers = []
    for child in children:
        try:
            servers.append(ServerInfo.parse(child))
        except ValueError:
            log.warning("ignoring malformed registry node %r", child)
    return sorted(servers)


def node_data(server: ServerInfo) -> bytes:
    return json.dumps({"id": server.id, "wsPort": server.ws_port}).encode()


def with_node_data(server: ServerInfo, data: bytes) -> ServerInfo:
    """``server`` with what its node's data adds to its name: its WebSocket port."""
    try:
        fields = json.loads(data)
        ws_port = fields["wsPort"] if isinstance(fields, dict) else 0
    except (ValueError, KeyError):  # CIM's or an older cim's data: the bare name
        return server
    if not isinstance(ws_port, int) or not 0 <= ws_port < 65536:
        log.warning("ignoring wsPort %r of registry node %s", ws_port, server.id)
        return server
    return ServerInfo(server.host, server.tcp_port, server.http_port, ws_port)


class ZooKeeperDiscovery(Discovery):
    """The registry under ``root``, over one kazoo session."""

    def __init__(self, hosts: str, root: str = "/cim", session_timeout: float = 10.0) -> None:
        self._root = root.rstrip("/") or "/"
        self._client = KazooClient(hosts=hosts, timeout=session_timeout)
        self._registered: ServerInfo | None = None
        self._restored: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[ServerInfo] = []
        self._session_lost = False

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> ZooKeeperDiscovery:
        discovery = cls(url.removeprefix(SCHEME), config.zk_root, config.zk_session_timeout)
        await discovery.start()
        return discovery

    def _path(self, server: ServerInfo) -> str:
        return f"{self._root.rstrip('/')}/{server.id}"

    async def start(self, timeout: float = 15.0) -> None:
        await asyncio.to_thread(self._client.start, timeout)
        self._client.add_listener(self._on_state)
        await asyncio.to_thread(self._client.ensure_path, self._root)

    def _on_state(self, state: str) -> None:
        # kazoo thread; must not block. A lost session took our ephemeral node with
        # it: put it back once a new session is up.
        if state == KazooState.LOST:
            self._session_lost = True
        elif state == KazooState.CONNECTED and self._session_lost:
            self._session_lost = False
            if self._registered is not None:
                self._client.handler.spawn(self._recreate, self._registered)

    def _recreate(self, server: ServerInfo) -> None:  # kazoo thread
        self._create(server)
        log.warning("ZooKeeper session was lost: re-registered %s", self._path(server))
        if self._restored is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._restored)

    def _create(self, server: ServerInfo) -> None:
        try:
            self._client.create(self._path(server), node_data(server), ephemeral=True, makepath=True)
        except NodeExistsError:
            # Our previous session's node, not yet expired: replace it with ours.
            self._client.delete(self._path(server))
            self._client.create(self._path(server), node_data(server), ephemeral=True, makepath=True)

    async def register(self, server: ServerInfo, restored: Callable[[], None] | None = None) -> None:
        self._registered = server
        self._restored = restored
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._create, server)
        log.info("registered %s in ZooKeeper", self._path(server))

    async def unregister(self, server: ServerInfo) -> None:
        self._registered = None
        # kazoo's async call, bridged to a future: a blocking call in a worker thread
        # would hold up the process's exit if ZooKeeper were unreachable.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:  # on the loop
            if not done.done():
                done.set_result(None)

        def finished(result: object) -> None:  # on a kazoo thread
            loop.call_soon_threadsafe(resolve)

        self._client.delete_async(self._path(server)).rawlink(finished)
        await done

    async def watch(self, callback: ServersCallback) -> None:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()

        def deliver(servers: list[ServerInfo]) -> None:  # on the loop
            self._servers = servers
            result = callback(servers)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(_log_failure)
            if not first.done():
                first.set_result(None)

        def on_children(children: list[str]) -> None:  # on a kazoo thread
            servers = self._read_data(parse_children(children))
            if not loop.is_closed():
                loop.call_soon_threadsafe(deliver, servers)

        ChildrenWatch(self._client, self._root, on_children)
        await first

    def _read_data(self, servers: list[ServerInfo]) -> list[ServerInfo]:
        """Each server with its node's data (kazoo thread: the watch's own, so one change at a
        time; the reads go out together). A node gone meanwhile is left out: the watch fires again."""
        reads = [(server, self._client.get_async(self._path(server))) for server in servers]
        found = []
        for server, read in reads:
            try:
                data, _stat = read.get()
            except NoNodeError:
                continue
            found.append(with_node_data(server, data))
        return found

    def servers(self) -> list[ServerInfo]:
        return list(self._servers)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.stop)
        await asyncio.to_thread(self._client.close)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("server-list callback failed", exc_info=task.exception())
