"""The backend contracts, run against the embedded implementations and real Redis / ZooKeeper,
and the registry that picks them by URL (the Inbox has a suite of its own: test_inbox.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from cim.backends.base import Accounts, Bus, DeviceLogin, Presence, Store
from cim.backends.memory import MemoryBus, MemoryDiscovery, MemoryHub, MemoryStore
from cim.backends.redis import RedisBus, RedisStore, connect
from cim.backends.registry import DISCOVERIES, STORES, in_process, open_backends
from cim.backends.zookeeper import ZooKeeperDiscovery
from cim.cli import _config, build_parser
from cim.config import Config
from cim.server_info import ServerInfo
from tests.conftest import eventually


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store, opened through the registry as a deployment opens it."""
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    opened = await STORES.open(url, Config(key_prefix=f"t{uuid.uuid4().hex[:8]}"), MemoryHub())
    yield opened
    await opened.close()


@pytest.fixture
def accounts(store: Store) -> Accounts:
    return store.accounts


@pytest.fixture
def presence(store: Store) -> Presence:
    return store.presence


@pytest.fixture(params=["memory", "redis"])
async def bus_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Bus, Bus]]:
    if request.param == "memory":
        shared = MemoryBus()
        yield shared, shared
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a, b = RedisBus(connect(url), prefix), RedisBus(connect(url), prefix)
    yield a, b
    await a.close()
    await b.close()


async def test_accounts(accounts: Accounts) -> None:
    alice, created = await accounts.register("alice", "hash-a")
    assert created
    assert await accounts.register("alice", "hash-b") == (alice, False)
    bob, created = await accounts.register("bob", None)
    assert created and bob != alice
    assert await accounts.user_name(alice) == "alice"
    assert await accounts.user_name(10**12) is None
    assert (await accounts.user_id("alice"), await accounts.user_id("bob"), await accounts.user_id("carol")) == (alice, bob, None)
    assert await accounts.user_names([bob, 10**12, alice]) == ["bob", None, "alice"]
    assert await accounts.user_names([]) == []


async def test_a_taken_name_keeps_its_password_hash(accounts: Accounts) -> None:
    alice, _ = await accounts.register("alice", "hash-a")
    await accounts.register("alice", "hash-of-a-stranger")
    assert await accounts.password_hash(alice) == "hash-a"
    bob, _ = await accounts.register("bob", None)  # made under --auth none
    assert await accounts.password_hash(bob) is None
    assert await accounts.password_hash(10**12) is None
    await accounts.set_password_hash(alice, "hash-a-rehashed")
    assert await accounts.password_hash(alice) == "hash-a-rehashed"
    assert await accounts.password_hash(bob) is None  # only alice's changed


def servers_of(devices: dict[str, DeviceLogin]) -> dict[str, str]:
    """device id -> server, as confirm_login and logout answer."""
    return {device_id: login.server_id for device_id, login in devices.items()}


async def test_a_device_logs_in_once_and_out_once(presence: Presence) -> None:
    u = 1
    await presence.reserve_login(u, "s1", ttl=30)
    await presence.reserve_login(u, "s2", ttl=30)  # the same device claimed again: the new claim replaces the old
    assert await presence.servers(u) == ["s2"]
    assert await presence.devices(u) == {}  # claimed only: not logged in
    assert await presence.confirm_login(u, "s2", "", 5) == {}
    assert await presence.confirm_login(u, "s2", "", 5) == {"": "s2"}  # its own earlier login is reported
    assert await presence.logout(u, "s1") == {}  # not on s1
    assert await presence.logout(u, "s2", "phone") == {}  # no such device
    assert await presence.logout(u, "s2") == {"": "s2"}
    assert await presence.logout(u, "s2") == {}  # cleared once
    assert await presence.servers(u) == []


async def test_two_devices_of_one_user_on_two_servers(presence: Presence) -> None:
    await presence.reserve_login(1, "s1", ttl=30, device_id="phone")
    await presence.reserve_login(1, "s2", ttl=30, device_id="web")
    assert sorted(await presence.servers(1)) == ["s1", "s2"]  # claims route: delivery rings both
    assert await presence.confirm_login(1, "s1", "phone", 5) == {}
    assert await presence.online_user_ids() == [1]
    assert await presence.confirm_login(1, "s2", "web", 5) == {"phone": "s1"}
    devices = await presence.devices(1)
    assert servers_of(devices) == {"phone": "s1", "web": "s2"}
    now_ms = time.time_ns() // 1_000_000
    assert all(abs(login.since_ms - now_ms) < 60_000 for login in devices.values()), devices  # ms since the epoch
    assert sorted(await presence.servers(1)) == ["s1", "s2"]
    assert await presence.logout(1, device_id="phone") == {"phone": "s1"}
    assert servers_of(await presence.devices(1)) == {"web": "s2"}  # the other device stays
    assert await presence.servers(1) == ["s2"]
    assert await presence.online_user_ids() == [1]
    assert await presence.logout(1, device_id="web") == {"web": "s2"}
    assert await presence.online_user_ids() == []


async def test_logout_of_a_server_clears_only_its_devices(presence: Presence) -> None:
    for device, server in (("phone", "s1"), ("tablet", "s1"), ("web", "s2")):
        assert await presence.confirm_login(1, server, device, 5) is not None
    assert await presence.logout(1, "s2", "phone") == {}  # phone is not on s2
    assert await presence.logout(1, "s1") == {"phone": "s1", "tablet": "s1"}
    assert servers_of(await presence.devices(1)) == {"web": "s2"}
    assert await presence.servers(1) == ["s2"]


async def test_max_devices_refuses_another_device_and_records_nothing(presence: Presence) -> None:
    assert await presence.confirm_login(1, "s1", "a", 2) == {}
    assert await presence.confirm_login(1, "s1", "b", 2) == {"a": "s1"}
    await presence.reserve_login(1, "s2", ttl=30, device_id="c")
    assert await presence.confirm_login(1, "s2", "c", 2) is None  # two others logged in already
    assert servers_of(await presence.devices(1)) == {"a": "s1", "b": "s1"}
    assert await presence.confirm_login(1, "s2", "a", 2) == {"a": "s1", "b": "s1"}  # a device logging in again is no new one
    assert await presence.logout(1, device_id="b") == {"b": "s1"}
    assert await presence.confirm_login(1, "s2", "c", 2) == {"a": "s2"}  # room again
    assert servers_of(await presence.devices(1)) == {"a": "s2", "c": "s2"}
    assert await presence.confirm_login(2, "s1", "", 0) is None  # 0: no other device allowed...
    assert await presence.confirm_login(2, "s1", "", 1) == {}
    assert await presence.confirm_login(2, "s1", "", 1) == {"": "s1"}  # ...and its own earlier login is no other


async def test_logout_without_a_server_clears_wherever_the_user_is(presence: Presence) -> None:
    assert await presence.confirm_login(1, "s1", "", 5) == {}
    assert await presence.confirm_login(1, "s2", "phone", 5) == {"": "s1"}
    assert await presence.logout(1) == {"": "s1", "phone": "s2"}
    assert await presence.servers(1) == []
    assert await presence.clear_server("s1") == []  # gone from s1's users too


async def test_a_claim_may_be_confirmed_by_another_node(presence: Presence) -> None:
    await presence.reserve_login(1, "worker0", ttl=30)
    assert await presence.confirm_login(1, "worker2", "", 5) == {}  # the kernel's pick, not the route's
    assert await presence.servers(1) == ["worker2"]  # the claim is gone


async def test_unconfirmed_claim_expires(presence: Presence) -> None:
    await presence.reserve_login(1, "s2", ttl=30, device_id="phone")
    await presence.reserve_login(1, "s1", ttl=0.2)
    await asyncio.sleep(0.35)
    assert await presence.servers(1) == ["s2"]  # the short claim cut the phone's long one no shorter
    assert await presence.devices(1) == {}


async def test_confirmed_login_does_not_expire(presence: Presence) -> None:
    await presence.reserve_login(1, "s1", ttl=0.2)
    assert await presence.confirm_login(1, "s1", "", 5) == {}
    await asyncio.sleep(0.35)
    assert await presence.servers(1) == ["s1"]
    assert servers_of(await presence.devices(1)) == {"": "s1"}


async def test_online_users_and_clear_server(presence: Presence) -> None:
    users = list(range(1, 1201))  # more than one SCAN batch
    for i, u in enumerate(users):
        server = "dead" if i % 2 else "live"
        await presence.reserve_login(u, server, ttl=30)
        assert await presence.confirm_login(u, server, "", 5) == {}
    await presence.reserve_login(5000, "live", ttl=30)  # claimed only: not online
    assert await presence.confirm_login(6000, "dead", "phone", 5) == {}
    assert await presence.confirm_login(6000, "live", "web", 5) == {"phone": "dead"}
    assert sorted(await presence.online_user_ids()) == users + [6000]
    gone = await presence.clear_server("dead")
    assert sorted(gone) == users[1::2] + [6000]
    assert sorted(await presence.online_user_ids()) == users[0::2] + [6000]  # 6000's web is on live
    assert servers_of(await presence.devices(6000)) == {"web": "live"}
    assert await presence.clear_server("dead") == []


async def test_clear_server_spares_users_who_moved(presence: Presence) -> None:
    await presence.confirm_login(1, "old", "", 5)
    await presence.logout(1, "old")
    await presence.confirm_login(1, "new", "", 5)
    assert await presence.confirm_login(2, "old", "phone", 5) == {}
    assert await presence.confirm_login(2, "new", "phone", 5) == {"phone": "old"}  # moved without a logout
    assert await presence.clear_server("old") == []
    assert await presence.servers(1) == ["new"]
    assert servers_of(await presence.devices(2)) == {"phone": "new"}


async def test_node_numbers_are_distinct(presence: Presence) -> None:
    numbers = [await presence.allocate_node_number() for _ in range(5)]
    assert len(set(numbers)) == 5


async def test_bus_node_channel_order_and_broadcast(bus_pair: tuple[Bus, Bus]) -> None:
    a, b = bus_pair
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    await a.subscribe("node-a", got_a.append)
    await b.subscribe("node-b", got_b.append)
    for i in range(200):
        await a.publish("node-b", b"%d" % i)
    await a.broadcast(b"all")
    await eventually(lambda: len(got_b) == 201 and got_a, 2)
    assert got_b == [b"%d" % i for i in range(200)] + [b"all"]
    assert got_a == [b"all"]


async def test_zookeeper_discovery_watch_and_session_loss(zk_hosts: str) -> None:
    root = f"/t{uuid.uuid4().hex[:8]}"
    watcher = ZooKeeperDiscovery(zk_hosts, root)
    server = ZooKeeperDiscovery(zk_hosts, root, session_timeout=2)
    await watcher.start()
    await server.start()
    seen: list[list[ServerInfo]] = []
    await watcher.watch(seen.append)
    assert seen == [[]]
    info = ServerInfo("127.0.0.1", 9000, 8081)
    await server.register(info)
    await eventually(lambda: seen[-1] == [info], 5)
    assert seen[-1] == [info]
    # CIM's layout: an ephemeral znode named ip:cimServerPort:httpPort under the root.
    from kazoo.client import KazooClient

    reader = KazooClient(hosts=zk_hosts)
    reader.start(10)
    assert reader.get_children(root) == ["127.0.0.1:9000:8081"]
    assert reader.exists(f"{root}/127.0.0.1:9000:8081").ephemeralOwner != 0
    reader.stop()
    await server.unregister(info)
    await eventually(lambda: seen[-1] == [], 5)
    assert seen[-1] == []
    await server.register(info)
    await server.close()  # session ends: the ephemeral node goes with it
    await eventually(lambda: seen[-1] == [], 5)
    assert seen[-1] == [] and watcher.servers() == []
    await watcher.close()


async def test_memory_discovery() -> None:
    discovery = MemoryDiscovery()
    seen: list[list[ServerInfo]] = []
    await discovery.watch(seen.append)
    info = ServerInfo("h", 1, 2)
    await discovery.register(info)
    await discovery.unregister(info)
    assert seen == [[], [info], []]


async def test_memory_urls_share_the_hub() -> None:
    hub = MemoryHub()
    first, second = await open_backends(Config(), hub), await open_backends(Config(), hub)
    assert first.store is second.store is hub.store and first.discovery is second.discovery is hub.discovery
    assert (first.accounts, first.presence, first.inbox, first.bus) == (
        hub.store.accounts, hub.store.presence, hub.store.inbox, hub.store.bus,
    )
    assert (await open_backends(Config())).store is not hub.store  # no hub given: a new one


async def test_open_backends_on_redis_and_zookeeper(redis_url: str, zk_hosts: str) -> None:
    config = Config(redis=redis_url, zk=zk_hosts, key_prefix=f"t{uuid.uuid4().hex[:8]}", zk_root=f"/t{uuid.uuid4().hex[:8]}")
    backends = await open_backends(config)
    try:
        assert isinstance(backends.store, RedisStore) and isinstance(backends.discovery, ZooKeeperDiscovery)
        alice, _ = await backends.accounts.register("alice", None)
        await backends.presence.reserve_login(alice, "s1", ttl=30)
        assert await backends.presence.online_user_ids() == []  # claimed only
        assert await backends.presence.confirm_login(alice, "s1", "", 5) == {}
        assert await backends.presence.online_user_ids() == [alice]
    finally:
        await backends.close()


def test_registry_resolves_urls_by_scheme() -> None:
    assert STORES.resolve("memory://") is MemoryStore
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache:6380", "unix:///run/redis.sock?db=1"):
        assert STORES.resolve(url) is RedisStore
    assert DISCOVERIES.resolve("memory://") is MemoryDiscovery
    for hosts in ("zookeeper://zk1:2181,zk2:2181", "zk1:2181,zk2:2181", "127.0.0.1:2181", "localhost:2181"):
        assert DISCOVERIES.resolve(hosts) is ZooKeeperDiscovery


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown store URL 'mysql://db'.*memory://, redis://, rediss://, unix://"):
        STORES.resolve("mysql://db")
    with pytest.raises(ValueError, match="unknown store URL '127.0.0.1:6379'"):
        STORES.resolve("127.0.0.1:6379")  # a store URL needs its scheme
    with pytest.raises(ValueError, match="unknown discovery URL 'etcd://e:2379'.*memory://, zookeeper://"):
        DISCOVERIES.resolve("etcd://e:2379")


def test_config_shorthands_and_in_process() -> None:
    assert in_process(Config()) and in_process(Config(redis="redis://r")) and in_process(Config(zk="z:2181"))
    shared = Config(redis="redis://r", zk="z:2181")
    assert (shared.store, shared.discovery) == ("redis://r", "z:2181") and not in_process(shared)
    assert Config(store="redis://r", redis="redis://r").store == "redis://r"
    with pytest.raises(ValueError, match="contradicts"):
        Config(store="redis://a", redis="redis://b")


def test_cli_backend_urls_and_their_shorthands(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*argv: str) -> Config:
        return _config(build_parser().parse_args(["route", *argv]))

    assert (parsed().store, parsed().discovery) == ("memory://", "memory://")
    assert parsed("--redis", "redis://r", "--zk", "z:2181").store == "redis://r"
    assert parsed("--store", "unix:///s", "--discovery", "zookeeper://z:2181").discovery == "zookeeper://z:2181"
    monkeypatch.setenv("CIM_REDIS", "redis://from-env")
    monkeypatch.setenv("CIM_ZK", "zk-env:2181")
    assert (parsed().store, parsed().discovery) == ("redis://from-env", "zk-env:2181")
    assert parsed("--store", "redis://flag").store == "redis://flag"  # a flag beats the environment


def test_server_info_parse() -> None:
    assert ServerInfo.parse("10.0.0.1:9000:8081") == ServerInfo("10.0.0.1", 9000, 8081)
    assert ServerInfo.parse("::1:9000:8081").host == "::1"
    for bad in ("", "host:9000", ":1:2", "h:x:1"):
        with pytest.raises(ValueError):
            ServerInfo.parse(bad)
