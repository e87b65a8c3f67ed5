"""Embedded backends: store and discovery in this process (``memory://``, ``cim up``).

One ``MemoryHub`` per process is shared by the route and the server running in it,
the way Redis and ZooKeeper are shared by separate processes.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from cim.backends.base import (
    Accounts,
    Bus,
    DeliveryHandler,
    Discovery,
    Inbox,
    Presence,
    ServersCallback,
    Store,
)
from cim.server_info import ServerInfo

if TYPE_CHECKING:
    from cim.config import Config


class MemoryAccounts(Accounts):
    """Accounts in dicts; ids count up from 1, as Redis's INCR does."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._names: dict[int, str] = {}
        self._ids_by_name: dict[str, int] = {}
        self._password_hashes: dict[int, str] = {}

    async def register(self, user_name: str, password_hash: str | None) -> tuple[int, bool]:
        user_id = self._ids_by_name.get(user_name)
        if user_id is not None:
            return user_id, False
        user_id = next(self._ids)
        self._ids_by_name[user_name] = user_id
        self._names[user_id] = user_name
        if password_hash is not None:
            self._password_hashes[user_id] = password_hash
        return user_id, True

    async def user_id(self, user_name: str) -> int | None:
        return self._ids_by_name.get(user_name)

    async def password_hash(self, user_id: int) -> str | None:
        return self._password_hashes.get(user_id)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        self._password_hashes[user_id] = password_hash

    async def user_name(self, user_id: int) -> str | None:
        return self._names.get(user_id)

    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        return [self._names.get(u) for u in user_ids]


class MemoryPresence(Presence):
    """Routes in one dict; a claim's expiry is checked whenever the route is read."""

    def __init__(self) -> None:
        # user -> (server id, claim expiry or None once the server confirmed)
        self._routes: dict[int, tuple[str, float | None]] = {}
        self._node_numbers = itertools.count()

    def _live_route(self, user_id: int) -> str | None:
        entry = self._routes.get(user_id)
        if entry is None:
            return None
        server_id, expires = entry
        if expires is not None and expires <= time.monotonic():
            del self._routes[user_id]
            return None
        return server_id

    async def reserve_login(self, user_id: int, server_id: str, ttl: float) -> bool:
        if self._live_route(user_id) is not None:
            return False
        self._routes[user_id] = (server_id, time.monotonic() + ttl)
        return True

    async def confirm_login(self, user_id: int, server_id: str) -> bool:
        current = self._live_route(user_id)
        # A claim (with expiry) may be confirmed by any node; a confirmed login elsewhere blocks.
        if current not in (None, server_id) and self._routes[user_id][1] is None:
            return False
        self._routes[user_id] = (server_id, None)
        return True

    async def logout(self, user_id: int, server_id: str | None = None) -> str | None:
        current = self._live_route(user_id)
        if current is None or (server_id is not None and current != server_id):
            return None
        del self._routes[user_id]
        return current

    async def route(self, user_id: int) -> str | None:
        return self._live_route(user_id)

    async def online_user_ids(self) -> list[int]:
        return [u for u in list(self._routes) if self._live_route(u) is not None]

    async def clear_server(self, server_id: str) -> list[int]:
        gone = [u for u, (s, expires) in self._routes.items() if s == server_id and expires is None]
        for user_id in gone:
            del self._routes[user_id]
        return gone

    async def allocate_node_number(self) -> int:
        return next(self._node_numbers)


class MemoryInbox(Inbox):
    """A deque per user: appends at the back, restores at the front."""

    def __init__(self) -> None:
        self._stored: defaultdict[int, deque[bytes]] = defaultdict(deque)

    async def append(self, user_id: int, payloads: list[bytes]) -> None:
        self._stored[user_id].extend(payloads)

    async def restore(self, user_id: int, payloads: list[bytes]) -> None:
        self._stored[user_id].extendleft(reversed(payloads))

    async def take(self, user_id: int) -> list[bytes]:
        queue = self._stored.pop(user_id, None)
        return list(queue) if queue else []


class MemoryBus(Bus):
    """Handlers by node id, called on a later loop turn."""

    def __init__(self) -> None:
        self._handlers: dict[str, DeliveryHandler] = {}

    async def subscribe(self, node_id: str, handler: DeliveryHandler) -> None:
        self._handlers[node_id] = handler

    async def publish(self, node_id: str, payload: bytes) -> None:
        handler = self._handlers.get(node_id)
        if handler is not None:
            # Delivered on a later loop turn, as a network bus would: a publisher
            # never re-enters its own handler. call_soon keeps FIFO order.
            asyncio.get_running_loop().call_soon(handler, payload)

    async def broadcast(self, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        for handler in list(self._handlers.values()):
            loop.call_soon(handler, payload)

    def unsubscribe(self, node_id: str) -> None:
        self._handlers.pop(node_id, None)


class MemoryStore(Store):
    """``memory://``: the four store parts in this process."""

    in_process: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__(MemoryAccounts(), MemoryPresence(), MemoryInbox(), MemoryBus())

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> MemoryStore:
        return hub.store


class MemoryDiscovery(Discovery):
    """``memory://``: the servers registered in this process."""

    in_process: ClassVar[bool] = True

    def __init__(self) -> None:
        self._servers: set[ServerInfo] = set()
        self._callbacks: list[ServersCallback] = []

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> MemoryDiscovery:
        return hub.discovery

    async def register(self, server: ServerInfo, restored: Callable[[], None] | None = None) -> None:
        self._servers.add(server)  # in-process: never dropped, so never restored
        await self._notify()

    async def unregister(self, server: ServerInfo) -> None:
        self._servers.discard(server)
        await self._notify()

    async def watch(self, callback: ServersCallback) -> None:
        self._callbacks.append(callback)
        result = callback(self.servers())
        if inspect.isawaitable(result):
            await result

    def servers(self) -> list[ServerInfo]:
        return sorted(self._servers)

    async def _notify(self) -> None:
        for callback in list(self._callbacks):
            result = callback(self.servers())
            if inspect.isawaitable(result):
                await result


class MemoryHub:
    """The embedded backends one process shares: every ``memory://`` URL opened with
    this hub gets its store or its discovery."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.discovery = MemoryDiscovery()
