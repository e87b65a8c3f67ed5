"""Two cim-server processes and a route process on real Redis and ZooKeeper."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cim.client import Client, ClientError, Message, register
from cim.testing.services import CimProcess, free_port
from tests.conftest import PASSWORD, eventually, new_secret

ZK_SESSION_TIMEOUT = 2.0


class Cluster:
    def __init__(self, workdir: Path, redis_url: str, zk_hosts: str, server_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.server_args = list(server_args)
        self.prefix = f"c{workdir.name[-6:].replace('-', '')}"
        self.backend = ["--redis", redis_url, "--zk", zk_hosts, "--zk-root", f"/{self.prefix}",
                        "--key-prefix", self.prefix, "--zk-session-timeout", str(ZK_SESSION_TIMEOUT)]
        self.env = {"CIM_SECRET": new_secret()}  # the route's tokens are the servers' too
        self.servers: list[tuple[CimProcess, int]] = []
        self.route_port = free_port()
        self.route = CimProcess(workdir, "route", ["route", "--host", "127.0.0.1", "--port", str(self.route_port),
                                                   "--balance", "loop", *self.backend], self.env)
        self.route.wait_http(self.route_port)
        for i in range(2):
            self.add_server(f"server{i}")

    def add_server(self, name: str) -> tuple[CimProcess, int]:
        port, http_port = free_port(), free_port()
        proc = CimProcess(self.workdir, name, ["server", "--host", "127.0.0.1", "--port", str(port),
                                               "--http-port", str(http_port), *self.backend, *self.server_args],
                          self.env)
        proc.wait_http(http_port)
        self.servers.append((proc, port))
        return proc, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.route_port}"

    def route_servers(self) -> list[str]:
        servers: list[str] = httpx.get(f"{self.url}/health").json()["servers"]
        return servers

    def stop(self) -> None:
        for proc, _ in self.servers:
            proc.stop()
        self.route.stop()


def server_port(client: Client) -> int:
    """The TCP port of the cim-server the (connected) client is on."""
    assert client.server is not None
    return client.server.port


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, zk_hosts: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, redis_url, zk_hosts)
    try:
        yield c
    finally:
        c.stop()


async def test_cluster_flow(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    names = ["ann", "ben", "cat", "dan", "eve"]
    ids = {n: await register(cluster.url, n, PASSWORD) for n in names}
    inbox: dict[str, list[Message]] = {n: [] for n in names}

    def client(name: str) -> Client:
        return Client(cluster.url, ids[name], name, password=PASSWORD, on_message=inbox[name].append,
                      heartbeat_interval=1.0, backoff_base=0.2, backoff_max=1.0, reconnect_attempts=40)

    clients = {n: client(n) for n in names[:4]}
    for c in clients.values():
        await c.connect()
    ports = {n: server_port(c) for n, c in clients.items()}
    assert len(set(ports.values())) == 2, "loop balancing spreads the 4 users over both servers"

    # /onlineUser is right.
    online = httpx.get(f"{cluster.url}/onlineUser").json()["dataBody"]
    assert sorted((u["userId"], u["userName"]) for u in online) == sorted((ids[n], n) for n in names[:4])

    # Private messages cross nodes, in order.
    a, b = next((x, y) for x in names[:4] for y in names[:4] if ports[x] != ports[y])
    for i in range(20):
        receipt = await clients[a].send_private(ids[b], f"p{i}")
        assert receipt.code == 9000
    await eventually(lambda: len(inbox[b]) == 20)
    assert [m.text for m in inbox[b]] == [f"p{i}" for i in range(20)]
    assert inbox[b][0].sender_name == a and inbox[b][0].receiver_id == ids[b]

    # Group messages reach every other user on both nodes, once.
    await clients[b].send_group("hello group")
    await eventually(lambda: all(any(m.text == "hello group" for m in inbox[n]) for n in names[:4] if n != b))
    await asyncio.sleep(0.3)
    assert [m.text for m in inbox[b] if m.text == "hello group"] == []
    assert all(sum(m.text == "hello group" for m in inbox[n]) == 1 for n in names[:4] if n != b)

    # Duplicate login: 5000.
    with pytest.raises(ClientError) as dup:
        await Client(cluster.url, ids[a], a, password=PASSWORD).connect()
    assert dup.value.code == 5000

    # An offline receiver's messages arrive in order on next login.
    for i in range(5):
        receipt = await clients[a].send_private(ids["eve"], f"o{i}")
        assert receipt.code == 7000 and receipt.stored_offline
    eve = client("eve")
    await eve.connect()  # the SDK asks /fetchOfflineMsgs after login
    await eventually(lambda: len(inbox["eve"]) == 5)
    assert [m.text for m in inbox["eve"]] == [f"o{i}" for i in range(5)]
    await eve.close()

    # SIGKILL a server: it leaves the route's list, its users log in again elsewhere and chat.
    victim, victim_port = next((p, port) for p, port in cluster.servers if port == ports[a])
    victim.stop(signal.SIGKILL)
    await eventually(lambda: len(cluster.route_servers()) == 1, timeout=ZK_SESSION_TIMEOUT + 10)
    moved = [n for n in names[:4] if ports[n] == victim_port]
    await eventually(lambda: all(clients[n].connected and server_port(clients[n]) != victim_port for n in moved),
                     timeout=ZK_SESSION_TIMEOUT + 15)
    other = next(n for n in names[:4] if n not in moved)
    await clients[a].send_private(ids[other], "after the crash")
    await eventually(lambda: any(m.text == "after the crash" for m in inbox[other]))
    online = httpx.get(f"{cluster.url}/onlineUser").json()["dataBody"]
    assert sorted(u["userName"] for u in online) == sorted(names[:4])

    for c in clients.values():
        await c.close()
    await eventually(lambda: httpx.get(f"{cluster.url}/onlineUser").json()["dataBody"] == [])

    # SIGTERM: the survivor unregisters at once, well before a session timeout would.
    survivor = next(p for p, port in cluster.servers if port != victim_port)
    assert survivor.stop(signal.SIGTERM) == 0
    await eventually(lambda: cluster.route_servers() == [], timeout=ZK_SESSION_TIMEOUT / 2)
