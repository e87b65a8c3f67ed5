"""A cim-server whose ZooKeeper session expires while its clients stay connected
(real Redis and ZooKeeper; server and route in this process, each with its own
backends and so its own ZooKeeper session)."""

from __future__ import annotations

import asyncio
from kazoo.client import KazooClient

from cim.backends.zookeeper import ZooKeeperDiscovery
from cim.run import Running, start
from tests.conftest import RawClient, eventually, stack_config
from tests.test_server import post


async def expire_session(discovery: ZooKeeperDiscovery, hosts: str) -> None:
    """ZooKeeper's own way to expire a live session: a second client joins it and closes it."""
    session_id, password = discovery._client.client_id
    twin = KazooClient(hosts=hosts, client_id=(session_id, password))
    await asyncio.to_thread(twin.start)
    await asyncio.to_thread(twin.stop)
    twin.close()


async def test_users_stay_reachable_when_the_servers_zookeeper_session_expires(redis_url: str, zk_hosts: str) -> None:
    server_config = stack_config(redis=redis_url, zk=zk_hosts, zk_session_timeout=2.0)
    route_config = stack_config(redis=redis_url, zk=zk_hosts, zk_session_timeout=2.0,
                                key_prefix=server_config.key_prefix, zk_root=server_config.zk_root)
    server = await start(server_config, {"server"})
    route = await start(route_config, {"route"})
    try:
        node = server.node
        assert node is not None and route.route is not None
        await eventually(lambda: len(route.route.servers) == 1)  # type: ignore[union-attr]
        ids = {}
        for name in ("alice", "bob"):
            ids[name] = int((await post(route, "/registerAccount", {"userName": name}))["dataBody"]["userId"])
        login = await post(route, "/login", {"userId": ids["alice"], "userName": "alice"})
        alice = await RawClient.connect(login["dataBody"]["cimServerPort"])
        alice.login(ids["alice"], "alice")
        assert (await alice.ping(ids["alice"])).resMsg == "pong"

        discovery = node.backends.discovery
        assert isinstance(discovery, ZooKeeperDiscovery)
        await expire_session(discovery, zk_hosts)
        # The route sees the server leave (and logs its users out), then come back;
        # the server claims its users back twice, the second time a session timeout later.
        await eventually(lambda: node.metrics["registrations_restored"] == 1, timeout=30)

        online = (await post(route, "/onlineUser", {}))["dataBody"]
        assert {"userId": ids["alice"], "userName": "alice"} in online
        sent = await post(route, "/p2pRoute", {"userId": ids["bob"], "receiveUserId": ids["alice"], "msg": "still here?"})
        assert sent["code"] == "9000"  # delivered, not stored offline
        assert (await alice.next()).resMsg == "still here?"
        # ...and she cannot be logged in a second time meanwhile.
        assert (await post(route, "/login", {"userId": ids["alice"], "userName": "alice"}))["code"] == "5000"
        alice.close()
    finally:
        await route.stop()
        await server.stop()
