"""A cim-server whose ZooKeeper session expires while its clients stay connected
(real Redis and ZooKeeper; server and route in this process, each with its own
backends and so its own ZooKeeper session)."""

from __future__ import annotations

import asyncio

import pytest
from kazoo.client import KazooClient

from cim.backends.zookeeper import ZooKeeperDiscovery
from cim.client import ClientError, RouteClient
from cim.run import start
from cim.status import Status
from tests.conftest import PASSWORD, RawClient, eventually, mint_token, route_url, stack_config


async def expire_session(discovery: ZooKeeperDiscovery, hosts: str) -> None:
    """ZooKeeper's own way to expire a live session: a second client joins it and closes it."""
    session_id, password = discovery._client.client_id
    twin = KazooClient(hosts=hosts, client_id=(session_id, password))
    await asyncio.to_thread(twin.start)
    await asyncio.to_thread(twin.stop)
    twin.close()


async def test_users_stay_reachable_when_the_servers_zookeeper_session_expires(redis_url: str, zk_hosts: str) -> None:
    server_config = stack_config(redis=redis_url, zk=zk_hosts, zk_session_timeout=2.0)
    route_config = stack_config(redis=redis_url, zk=zk_hosts, zk_session_timeout=2.0, key_prefix=server_config.key_prefix,
                                zk_root=server_config.zk_root, secret=server_config.secret)
    server = await start(server_config, {"server"})
    route = await start(route_config, {"route"})
    try:
        node, route_service = server.node, route.route
        assert node is not None and route_service is not None
        await eventually(lambda: len(route_service.servers) == 1)
        async with RouteClient(route_url(route)) as route_client:
            ids = {name: await route_client.register(name, PASSWORD) for name in ("alice", "bob")}
            login = await route_client.login(ids["alice"], "alice", PASSWORD)
            alice = await RawClient.connect(login.server.port)
            alice.login(ids["alice"], "alice", login.token)
            assert (await alice.ping(ids["alice"])).resMsg == "pong"

            discovery = node.backends.discovery
            assert isinstance(discovery, ZooKeeperDiscovery)
            await expire_session(discovery, zk_hosts)
            # The route sees the server leave (and logs its users out), then come back;
            # the server claims its users back twice, the second time a session timeout later.
            await eventually(lambda: node.metrics["registrations_restored"] == 1, timeout=30)

            assert (ids["alice"], "alice") in await route_client.online_users()
            stored_offline = await route_client.p2p(ids["bob"], ids["alice"], "still here?", token=mint_token(server, ids["bob"]))
            assert not stored_offline  # delivered
            assert (await alice.next()).resMsg == "still here?"
            # ...and she cannot be logged in a second time meanwhile.
            with pytest.raises(ClientError) as refused:
                await route_client.login(ids["alice"], "alice", PASSWORD)
            assert refused.value.code == Status.REPEAT_LOGIN.code
            alice.close()
    finally:
        await route.stop()
        await server.stop()
