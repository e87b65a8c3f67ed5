"""Two cim-server processes and a route process on real Redis and ZooKeeper."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from cim.client import Client, ClientError, Message, register
from tests.conftest import PASSWORD, ZK_SESSION_TIMEOUT, Cluster, eventually, server_port


async def test_cluster_flow(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    names = ["ann", "ben", "cat", "dan", "eve"]
    ids = {n: await register(cluster.url, n, PASSWORD) for n in names}
    inbox: dict[str, list[Message]] = {n: [] for n in names}
    own: dict[str, list[Message]] = {n: [] for n in names}  # each one's copies of what they sent (cim.delivery)

    def client(name: str) -> Client:
        def keep(message: Message) -> None:
            (own if message.outgoing else inbox)[name].append(message)
        return Client(cluster.url, ids[name], name, password=PASSWORD, on_message=keep,
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
    assert [(m.text, m.from_this_device) for m in own[b]] == [("hello group", True)]  # her copy, once
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
