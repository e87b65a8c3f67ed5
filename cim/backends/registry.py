"""Backends by URL: the scheme names the class, so a new backend is one class and one line here.

Store URLs (accounts, presence, inbox and bus; ``--store``, shorthand ``--redis``):
    memory://                          in this process (the default); with ``--data-dir DIR``
                                       accounts and inboxes on disk in DIR (SQLite)
    redis://host:port/db, rediss://…, unix:///path/redis.sock?db=0    Redis
Discovery URLs (the live cim-server list; ``--discovery``, shorthand ``--zk``):
    memory://                          in this process (the default)
    zookeeper://host:port,host:port    ZooKeeper; bare ``host:port,host:port`` too

A backend class opens itself with ``await Class.open(url, config, hub)``: ``hub`` is the
process's ``MemoryHub``, which ``memory://`` hands out so that a route and a server in
one process share it; the others connect to ``url`` with their options from the Config.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from cim.backends.base import Backends, Discovery, Store
from cim.backends.memory import MemoryDiscovery, MemoryHub, MemoryStore
from cim.backends.redis import RedisStore
from cim.backends.sqlite import SqliteStore
from cim.backends.zookeeper import ZooKeeperDiscovery
from cim.config import Config

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Backend(Protocol[T_co]):
    """What a registry holds: a class that opens itself from a URL."""

    in_process: bool  # Store.in_process, Discovery.in_process

    async def open(self, url: str, config: Config, hub: MemoryHub) -> T_co: ...


class Registry(Generic[T]):
    """One kind of backend (store or discovery) by URL scheme."""

    def __init__(
        self,
        kind: str,
        backends: dict[str, Backend[T]],
        bare: str | None = None,
        on_disk: dict[str, Backend[T]] | None = None,
    ) -> None:
        self.kind = kind
        self.backends = backends
        # The scheme of a URL given without one (``--zk 127.0.0.1:2181``).
        self.bare = bare
        # A scheme's backend under ``--data-dir``; with this kind, a data dir is only for these schemes.
        self.on_disk = on_disk or {}

    def resolve(self, url: str, config: Config | None = None) -> Backend[T]:
        """The class ``url`` names (under ``config``'s data dir, if any); ValueError naming the
        known schemes for any other, or the schemes a data dir is for."""
        scheme: str | None
        scheme, separator, _ = url.partition("://")
        if not separator:
            scheme = self.bare
        backend = self.backends.get(scheme) if scheme else None
        if backend is None:
            known = ", ".join(f"{s}://" for s in self.backends)
            raise ValueError(f"unknown {self.kind} URL {url!r}: known schemes are {known}")
        if self.on_disk and config is not None and config.data_dir is not None:
            if scheme not in self.on_disk:
                schemes = ", ".join(f"{s}://" for s in self.on_disk)
                raise ValueError(f"a data dir is for the {schemes} {self.kind} only, not {url!r}")
            backend = self.on_disk[scheme]
        return backend

    async def open(self, url: str, config: Config, hub: MemoryHub) -> T:
        return await self.resolve(url, config).open(url, config, hub)


STORES = Registry[Store](
    "store",
    {"memory": MemoryStore, "redis": RedisStore, "rediss": RedisStore, "unix": RedisStore},
    on_disk={"memory": SqliteStore},
)
DISCOVERIES = Registry[Discovery](
    "discovery", {"memory": MemoryDiscovery, "zookeeper": ZooKeeperDiscovery}, bare="zookeeper"
)


def in_process(config: Config) -> bool:
    """Whether the configured store or discovery lives in this process only (``memory://``)."""
    return STORES.resolve(config.store, config).in_process or DISCOVERIES.resolve(config.discovery).in_process


async def open_backends(config: Config, hub: MemoryHub | None = None) -> Backends:
    """The store and discovery the Config's URLs name; ``memory://`` ones are ``hub``'s
    (a new hub if none is given), shared with whatever else in this process uses it (with a
    data dir, the store's presence and bus: its accounts and inboxes are in the database)."""
    hub = hub or MemoryHub()
    store = await STORES.open(config.store, config, hub)
    try:
        discovery = await DISCOVERIES.open(config.discovery, config, hub)
    except BaseException:
        await store.close()
        raise
    return Backends(store, discovery)
