"""The backend contracts, run against the embedded implementations and real Redis / ZooKeeper."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from cim.backends.base import Bus, ServerInfo, StateStore
from cim.backends.memory import MemoryBus, MemoryDiscovery, MemoryState
from cim.backends.redis import RedisBus, RedisState, connect
from cim.backends.zookeeper import ZooKeeperDiscovery
from tests.conftest import eventually


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryState()
        return
    store = RedisState(connect(request.getfixturevalue("redis_url")), prefix=f"t{uuid.uuid4().hex[:8]}")
    yield store
    await store.close()


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


async def test_accounts(state: StateStore) -> None:
    alice = await state.register("alice")
    assert await state.register("alice") == alice
    bob = await state.register("bob")
    assert bob != alice
    assert await state.user_name(alice) == "alice"
    assert await state.user_name(10**12) is None
    assert await state.user_names([bob, 10**12, alice]) == ["bob", None, "alice"]


async def test_one_login_per_user(state: StateStore) -> None:
    u = await state.register("u")
    assert await state.reserve_login(u, "s1", ttl=30)
    assert not await state.reserve_login(u, "s2", ttl=30)
    assert await state.route(u) == "s1"
    assert await state.confirm_login(u, "s1")
    assert not await state.confirm_login(u, "s2")  # confirmed on s1
    assert await state.logout(u, "s2") is None  # not s2's user
    assert await state.logout(u, "s1") == "s1"
    assert await state.logout(u, "s1") is None  # cleared once
    assert await state.route(u) is None


async def test_a_claim_may_be_confirmed_by_another_node(state: StateStore) -> None:
    u = await state.register("u")
    assert await state.reserve_login(u, "worker0", ttl=30)
    assert await state.confirm_login(u, "worker2")  # the kernel's pick, not the route's
    assert await state.route(u) == "worker2"


async def test_unconfirmed_claim_expires(state: StateStore) -> None:
    u = await state.register("u")
    assert await state.reserve_login(u, "s1", ttl=0.2)
    await asyncio.sleep(0.35)
    assert await state.route(u) is None
    assert await state.reserve_login(u, "s2", ttl=30)


async def test_confirmed_login_does_not_expire(state: StateStore) -> None:
    u = await state.register("u")
    assert await state.reserve_login(u, "s1", ttl=0.2)
    assert await state.confirm_login(u, "s1")
    await asyncio.sleep(0.35)
    assert await state.route(u) == "s1"


async def test_online_users_and_clear_server(state: StateStore) -> None:
    users = [await state.register(f"u{i}") for i in range(1200)]  # more than one SCAN batch
    for i, u in enumerate(users):
        server = "dead" if i % 2 else "live"
        assert await state.reserve_login(u, server, ttl=30)
        assert await state.confirm_login(u, server)
    assert sorted(await state.online_users()) == sorted((u, f"u{i}") for i, u in enumerate(users))
    gone = await state.clear_server("dead")
    assert sorted(gone) == users[1::2]
    assert sorted(u for u, _ in await state.online_users()) == users[0::2]
    assert await state.clear_server("dead") == []


async def test_clear_server_spares_users_who_moved(state: StateStore) -> None:
    u = await state.register("mover")
    await state.confirm_login(u, "old")
    await state.logout(u, "old")
    await state.confirm_login(u, "new")
    assert await state.clear_server("old") == []
    assert await state.route(u) == "new"


async def test_offline_messages_in_order_once(state: StateStore) -> None:
    u = await state.register("u")
    await state.store_offline(u, [b"1", b"2"])
    await state.store_offline(u, [b"3"])
    taken = await state.take_offline(u)
    assert taken == [b"1", b"2", b"3"]
    assert await state.take_offline(u) == []
    await state.store_offline(u, [b"4"])
    await state.restore_offline(u, taken)  # a failed delivery goes back in front
    assert await state.take_offline(u) == [b"1", b"2", b"3", b"4"]


async def test_node_numbers_are_distinct(state: StateStore) -> None:
    numbers = [await state.allocate_node_number() for _ in range(5)]
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


def test_server_info_parse() -> None:
    assert ServerInfo.parse("10.0.0.1:9000:8081") == ServerInfo("10.0.0.1", 9000, 8081)
    assert ServerInfo.parse("::1:9000:8081").host == "::1"
    for bad in ("", "host:9000", ":1:2", "h:x:1"):
        with pytest.raises(ValueError):
            ServerInfo.parse(bad)
