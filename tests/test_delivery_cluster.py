"""Acknowledged delivery across nodes on real Redis (AOF on) and ZooKeeper, with faults:
a receiver's node SIGKILLed mid-conversation, and a message stored whose doorbell never rang."""

from __future__ import annotations

import asyncio
import signal

import pytest

from cim.backends.memory import MemoryHub
from cim.backends.registry import open_backends
from cim.client import ClientError, RouteClient, register
from cim.config import Config
from cim.messages import Sender
from cim.proto import MESSAGE, SYNC, Response
from cim.status import Status
from tests.conftest import PASSWORD, Cluster, RawClient, eventually

pytestmark = pytest.mark.cluster(server_args=("--inbox-check-interval", "1"))


async def connect(cluster: Cluster, user_id: int, name: str) -> tuple[RawClient, int]:
    """A raw client logged in where the route says; (client, that server's port). A 5000
    (still logged in on a node that died: the route clears it after a grace) is retried."""
    async with RouteClient(cluster.url) as route:
        for _ in range(40):
            try:
                answer = await route.login(user_id, name, PASSWORD)
                break
            except ClientError as err:
                if err.code != Status.REPEAT_LOGIN.code:
                    raise
                await asyncio.sleep(0.25)
        else:
            raise AssertionError(f"user {user_id} stayed logged in")
    client = await RawClient.connect(answer.server.port)
    client.login(user_id, name, answer.token)
    assert (await client.ping(user_id)).resMsg == "pong"
    return client, answer.server.port


async def test_messages_acknowledged_while_the_receivers_node_dies_all_arrive(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    alice_id = await register(cluster.url, "alice", PASSWORD)
    bob_id = await register(cluster.url, "bob", PASSWORD)
    # The route balances by loop: log in until the two are on different nodes.
    alice, alice_port = await connect(cluster, alice_id, "alice")
    bob, bob_port = await connect(cluster, bob_id, "bob")
    while bob_port == alice_port:
        bob.close()
        await asyncio.sleep(0.3)
        bob, bob_port = await connect(cluster, bob_id, "bob")
    bob_node = next(proc for proc, port in cluster.servers if port == bob_port)

    receipts: list[Response] = []
    for k in range(1, 41):
        alice.send(cmd=MESSAGE, reqMsg=f"m{k}", properties={"receiveUserId": str(bob_id)}, clientMsgId=k)
        if k == 10:
            bob_node.proc.send_signal(signal.SIGKILL)  # mid-conversation, no goodbye
        await asyncio.sleep(0.05)
    while len(receipts) < 40:
        receipts.append(await alice.next(timeout=15))
    accepted = {r.clientMsgId for r in receipts if r.code in (9000, 7000)}
    assert len(accepted) >= 10  # whatever was answered 9000/7000 must arrive; failures may be resent

    # bob comes back on the surviving node (the route drops the dead one) and syncs from nothing
    await eventually(lambda: len(cluster.route_servers()) == 1, timeout=20)
    bob, _ = await connect(cluster, bob_id, "bob")
    bob.send(cmd=SYNC, ackSeq=0)
    got: list[Response] = []
    while (frame := await bob.next(timeout=10)).cmd != SYNC:
        got.append(frame)
    texts = [r.resMsg for r in got]
    assert len(texts) == len(set(texts))  # nothing twice
    assert [r.seq for r in got] == list(range(1, len(got) + 1))  # gap-free from 1
    numbers = [int(t[1:]) for t in texts]
    assert numbers == sorted(numbers)  # in send order
    assert accepted <= set(numbers)  # every acknowledged message arrived


async def test_a_message_stored_without_its_doorbell_is_found_by_the_nodes_check(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    alice_id = await register(cluster.url, "alice", PASSWORD)
    bob_id = await register(cluster.url, "bob", PASSWORD)
    bob, _ = await connect(cluster, bob_id, "bob")
    # A sender's node that stored the message and died before ringing: the store has it, no bus message came.
    config = Config(redis=cluster.backend[1], key_prefix=cluster.prefix)
    backends = await open_backends(config, MemoryHub())
    try:
        body = Sender.of(alice_id, "alice").prefix + Response(resMsg="orphan", msgId=77).SerializeToString()
        stored = await backends.inbox.append(bob_id, alice_id, [body], 77, [5])
    finally:
        await backends.close()
    pushed = await bob.next(timeout=10)  # the node's periodic check (every second here) finds it
    assert (pushed.cmd, pushed.resMsg, pushed.seq, pushed.msgId) == (MESSAGE, "orphan", stored.first_seq, 77)
