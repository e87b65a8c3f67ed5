"""Delivery and read receipts (issue 11, item 5): MESSAGE_STATUS to senders who logged in with
``wantsReceipts``, DELIVERED after a device of the receiver acked and READ after MARK_READ or the
route's ``/read``; through raw frames, the SDK, and across two nodes on Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.client import Client, register
from cim.client.sdk import Message
from cim.proto import DELIVERED, DELIVERY_ACK, MARK_READ, MESSAGE, MESSAGE_STATUS, PING, READ, SEND_RECEIPT, Response
from cim.protocols.client import ClientConnection
from cim.run import Running, start
from tests.conftest import (
    PASSWORD,
    Cluster,
    RawClient,
    eventually,
    register_user,
    route_login,
    route_url,
    server_port,
    stack_config,
)
from tests.test_delivery_cluster import connect

FLUSH_WAIT = 1.5  # past the node's cursor flush (once a second), where receipts start


async def logged_in(running: Running, name: str, receipts: bool = True) -> tuple[int, RawClient, str]:
    """Register and connect ``name``, asking for receipts (or, without, a login exactly as
    CIM's client sends it); (user id, client, route token)."""
    user_id = await register_user(running, name)
    answer = await route_login(running, user_id, name)
    client = await RawClient.connect(answer.server.port)
    client.send_raw(ClientConnection(user_id, name).login(token=answer.token or "", wants_receipts=receipts))
    assert (await client.ping(user_id)).resMsg == "pong"
    return user_id, client, answer.token or ""


async def send(client: RawClient, receiver_id: int, text: str, client_msg_id: int) -> int:
    """A private message; its msgId from the receipt."""
    client.send(cmd=MESSAGE, reqMsg=text, properties={"receiveUserId": str(receiver_id)}, clientMsgId=client_msg_id)
    receipt = await client.next()
    assert receipt.cmd == SEND_RECEIPT and receipt.code == 9000
    return receipt.msgId


async def nothing_more(client: RawClient, user_id: int) -> None:
    """Past a cursor flush, the next frame is the pong of a ping sent now: no receipt came."""
    await asyncio.sleep(FLUSH_WAIT)
    frame = await client.ping(user_id)
    assert frame.cmd == PING, frame


async def status(client: RawClient) -> Response:
    frame = await client.next(timeout=5)
    assert frame.cmd == MESSAGE_STATUS, frame
    return frame


async def test_delivered_after_the_ack_and_not_before_then_read_in_band(stack: Running) -> None:
    alice_id, alice, _ = await logged_in(stack, "alice")
    bob_id, bob, _ = await logged_in(stack, "bob")
    msg_ids = [await send(alice, bob_id, f"m{k}", k) for k in (1, 2, 3)]
    pushes = [await bob.next() for _ in msg_ids]
    assert [p.seq for p in pushes] == [1, 2, 3]
    await nothing_more(alice, alice_id)  # pushed to bob, not acked: not delivered

    bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=2)
    delivered = await status(alice)
    assert delivered.status == DELIVERED and delivered.responseId == bob_id
    assert list(delivered.msgIds) == msg_ids[:2]  # the acked range, in one frame
    assert delivered.properties["receiveUserId"] == str(alice_id)  # as on every frame to a client
    bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=3)
    assert list((await status(alice)).msgIds) == msg_ids[2:]

    bob.send(requestId=bob_id, cmd=MARK_READ, ackSeq=3)
    read = await status(alice)
    assert (read.status, read.responseId, list(read.msgIds)) == (READ, bob_id, msg_ids)
    bob.send(requestId=bob_id, cmd=MARK_READ, ackSeq=3)  # read already: reported once
    bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=3)
    await nothing_more(alice, alice_id)


async def test_read_through_the_route(stack: Running) -> None:
    alice_id, alice, _ = await logged_in(stack, "alice")
    bob_id, bob, bob_token = await logged_in(stack, "bob")
    first, second = await send(alice, bob_id, "one", 1), await send(alice, bob_id, "two", 2)
    headers = {"Authorization": f"Bearer {bob_token}"} if bob_token else {}
    async with httpx.AsyncClient(base_url=route_url(stack), headers=headers) as http:
        answer = (await http.post("/read", json={"userId": bob_id, "seq": 1})).json()
        assert answer["code"] == "9000"
        assert list((await status(alice)).msgIds) == [first]
        # past the inbox's latest: up to the latest
        assert (await http.post("/read", json={"userId": bob_id, "seq": 99})).json()["code"] == "9000"
        read = await status(alice)
        assert (read.status, list(read.msgIds)) == (READ, [second])
        assert (await http.post("/read", json={"userId": bob_id, "seq": 0})).json()["code"] == "3000"
        if bob_token:  # another user's token may not mark bob's inbox read
            refused = await http.post("/read", json={"userId": alice_id, "seq": 1})
            assert (refused.status_code, refused.json()["code"]) == (403, "4003")
    await nothing_more(alice, alice_id)


async def test_no_receipts_without_the_opt_in_and_cim_clients_unaffected(stack: Running) -> None:
    carol_id, carol, _ = await logged_in(stack, "carol", receipts=False)  # CIM's login exactly
    bob_id, bob, _ = await logged_in(stack, "bob")
    cim_id, cim, _ = await logged_in(stack, "cim", receipts=False)
    await send(carol, bob_id, "from carol", 1)
    cim.send(cmd=MESSAGE, reqMsg="from cim", properties={"receiveUserId": str(bob_id)})  # CIM's: no clientMsgId
    assert [(await bob.next()).resMsg for _ in range(2)] == ["from carol", "from cim"]
    bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=2)
    bob.send(requestId=bob_id, cmd=MARK_READ, ackSeq=2)
    await nothing_more(carol, carol_id)
    await nothing_more(cim, cim_id)

    # a receiver that never acks (CIM's) is sent pushes, but nothing is DELIVERED
    await send(bob, cim_id, "to cim", 7)
    assert (await cim.next()).resMsg == "to cim"
    await nothing_more(bob, bob_id)


async def test_a_sender_offline_when_it_happens_gets_nothing_later(stack: Running) -> None:
    alice_id = await register_user(stack, "alice")
    bob_id, bob, _ = await logged_in(stack, "bob")
    answer = await route_login(stack, alice_id, "alice")
    alice = await RawClient.connect(answer.server.port)
    alice.send_raw(ClientConnection(alice_id, "alice").login(token=answer.token or "", wants_receipts=True))
    await send(alice, bob_id, "hi", 1)
    alice.close()
    assert stack.node is not None
    sessions = stack.node.sessions.by_user
    await eventually(lambda: alice_id not in sessions)
    assert (await bob.next()).resMsg == "hi"
    bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=1)
    await asyncio.sleep(FLUSH_WAIT)  # dropped, not stored: nothing waits for alice
    _, alice, _ = await logged_in(stack, "alice")
    await nothing_more(alice, alice_id)


async def test_sdk_receipts_private_and_per_receiver_of_a_group(stack: Running) -> None:
    url = route_url(stack)
    ids = {name: await register(url, name, PASSWORD) for name in ("alice", "bob", "carol")}
    statuses: list[tuple[int, int, str]] = []
    clients: dict[str, Client] = {}

    def reader(name: str) -> Client:
        def read_it(message: Message) -> None:
            clients[name].mark_read(message.seq)
        return Client(url, ids[name], name, password=PASSWORD, on_message=read_it)

    clients["bob"], clients["carol"] = reader("bob"), reader("carol")
    alice = Client(url, ids["alice"], "alice", password=PASSWORD, on_message_status=lambda *status: statuses.append(status))
    for client in (alice, *clients.values()):
        await client.connect()
    try:
        private = await alice.send_private(ids["bob"], "hi bob")
        await eventually(lambda: len(statuses) == 2)
        assert statuses == [(private.msg_id, ids["bob"], "DELIVERED"), (private.msg_id, ids["bob"], "READ")]

        statuses.clear()
        team = await alice.groups.create("team", [ids["bob"], ids["carol"]])  # a notice each: no receipt for it
        sent = await alice.send_group("hi team", group_id=team)
        await eventually(lambda: len(statuses) == 4)
        assert sorted(statuses) == sorted((sent.msg_id, ids[name], status)
                                          for name in ("bob", "carol") for status in ("DELIVERED", "READ"))
    finally:
        for client in (alice, *clients.values()):
            await client.close()


@pytest.fixture
async def stack() -> AsyncIterator[Running]:
    """The embedded stack with DELIVERED receipts on (--delivered-receipts)."""
    running = await start(stack_config(delivered_receipts=True), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


@pytest.mark.cluster(env={"CIM_DELIVERED_RECEIPTS": "on"})  # the cluster's processes read it
async def test_receipts_cross_nodes_on_redis(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    alice_id = await register(cluster.url, "alice", PASSWORD)
    bob_id = await register(cluster.url, "bob", PASSWORD)
    statuses: list[tuple[int, int, str]] = []
    alice = Client(cluster.url, alice_id, "alice", password=PASSWORD, on_message_status=lambda *status: statuses.append(status))
    await alice.connect()
    # The route balances by loop: bob logs in until he is on the other node.
    bob, bob_port = await connect(cluster, bob_id, "bob")
    while bob_port == server_port(alice):
        bob.close()
        await asyncio.sleep(0.3)
        bob, bob_port = await connect(cluster, bob_id, "bob")
    try:
        first = await alice.send_private(bob_id, "one")
        second = await alice.send_private(bob_id, "two")
        assert [(await bob.next(timeout=10)).seq for _ in range(2)] == [1, 2]
        await asyncio.sleep(FLUSH_WAIT)
        assert statuses == []  # not acked yet
        bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=2)
        await eventually(lambda: len(statuses) == 2)
        bob.send(requestId=bob_id, cmd=MARK_READ, ackSeq=1)  # in-band, on bob's node
        await eventually(lambda: len(statuses) == 3)
        headers = {"Authorization": f"Bearer {bob.token}"} if bob.token else {}
        async with httpx.AsyncClient(base_url=cluster.url, headers=headers) as http:  # the route, no node
            assert (await http.post("/read", json={"userId": bob_id, "seq": 2})).json()["code"] == "9000"
        await eventually(lambda: len(statuses) == 4)
        assert statuses == [(first.msg_id, bob_id, "DELIVERED"), (second.msg_id, bob_id, "DELIVERED"),
                            (first.msg_id, bob_id, "READ"), (second.msg_id, bob_id, "READ")]
    finally:
        bob.close()
        await alice.close()


async def test_delivered_receipts_are_off_unless_switched_on_and_read_needs_no_switch() -> None:
    running = await start(stack_config(), {"server", "route"}, MemoryHub())  # --delivered-receipts off
    try:
        alice_id, alice, _ = await logged_in(running, "alice")
        bob_id, bob, _ = await logged_in(running, "bob")
        msg_id = await send(alice, bob_id, "hello", 1)
        assert (await bob.next()).seq == 1
        bob.send(requestId=bob_id, cmd=DELIVERY_ACK, ackSeq=1)
        await nothing_more(alice, alice_id)  # acked, but no DELIVERED: switched off
        bob.send(requestId=bob_id, cmd=MARK_READ, ackSeq=1)
        read = await status(alice)
        assert (read.status, list(read.msgIds)) == (READ, [msg_id])
    finally:
        await running.stop()
