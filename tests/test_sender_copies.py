"""The sender's copy (issue 11, item 2: "what a user sends from one device shows on the others"):
a send with clientMsgIds is kept in the sender's inbox too (cim.delivery), so each of the sender's
devices gets it in seq order with everything else, history has both sides, and a device tells its
own sends from its other devices' ones; a send without (CIM's client) keeps CIM's behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cim.backends.memory import MemoryHub
from cim.client import Client, register
from cim.client.sdk import Message
from cim.proto import MESSAGE, SEND_RECEIPT, SYNC
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


@pytest.fixture
async def stack() -> AsyncIterator[Running]:
    running = await start(stack_config(), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


def device(url: str, user_id: int, name: str, device_id: str, got: list[Message]) -> Client:
    return Client(url, user_id, name, password=PASSWORD, device_id=device_id, on_message=got.append)


def shown(got: list[Message]) -> list[tuple[str, bool, int, str, bool]]:
    """What a device was handed: (text, outgoing, toUserId, groupId, from this device)."""
    return [(m.text, m.outgoing, m.to_user_id, m.group_id, m.from_this_device) for m in got if not m.notice]


async def test_every_device_of_the_sender_gets_what_one_of_them_sent(stack: Running) -> None:
    url = route_url(stack)
    alice_id, bob_id, carol_id = [await register_user(stack, name) for name in ("alice", "bob", "carol")]
    phone_got: list[Message] = []
    laptop_got: list[Message] = []
    bob_got: list[Message] = []
    async with (device(url, alice_id, "alice", "phone", phone_got) as phone,
                device(url, alice_id, "alice", "laptop", laptop_got) as laptop,
                device(url, bob_id, "bob", "", bob_got) as bob):
        group_id = await laptop.groups.create("team", [bob_id, carol_id])
        assert (await phone.send_private(bob_id, "to bob")).code == 9000  # bob here: the node's hot path
        assert (await phone.send_private(carol_id, "to carol")).code == 7000  # carol away: stored, and copied
        assert (await laptop.send_group("to the team", group_id=group_id)).code == 9000
        assert (await laptop.send_group("to everyone")).code == 9000
        everything = [("to bob", True, bob_id, "", True), ("to carol", True, carol_id, "", True),
                      ("to the team", True, 0, group_id, False), ("to everyone", True, 0, "", False)]
        await eventually(lambda: len(shown(phone_got)) == 4 and len(shown(laptop_got)) == 4)
        assert shown(phone_got) == everything
        assert shown(laptop_got) == [(text, out, to, group, not mine) for text, out, to, group, mine in everything]
        await eventually(lambda: len(shown(bob_got)) == 3)
        assert shown(bob_got) == [("to bob", False, bob_id, "", False), ("to the team", False, 0, group_id, False),
                                  ("to everyone", False, 0, "", False)]
        seqs = [m.seq for m in phone_got]
        assert seqs == list(range(1, len(seqs) + 1))  # one inbox, gap-free: the notice, then the four

        # History has both sides of a conversation, from the user's own inbox.
        await bob.send_private(alice_id, "hi alice")
        await eventually(lambda: len(phone_got) == 6)
        page = await phone.history(peer_id=bob_id)
        assert [(m.text, m.sender_id) for m in page.messages] == [("to bob", alice_id), ("hi alice", bob_id)]


async def test_a_resend_makes_no_second_copy_and_a_cim_send_none(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    answer = await route_login(stack, alice_id, "alice")
    alice = await RawClient.connect(answer.server.port, keep_own_copies=True)
    alice.login(alice_id, "alice", answer.token)
    for _ in range(2):  # the same clientMsgId twice: a resend after a lost receipt
        alice.send(cmd=MESSAGE, reqMsg="once", clientMsgId=7, properties={"receiveUserId": str(bob_id)})
    frames = [await alice.next() for _ in range(3)]
    [copy] = [f for f in frames if f.cmd == MESSAGE]
    receipts = [f for f in frames if f.cmd == SEND_RECEIPT]
    assert [(r.code, r.msgId) for r in receipts] == [(7000, copy.msgId)] * 2  # bob is away: stored
    assert (copy.resMsg, copy.toUserId, copy.clientMsgId, copy.seq) == ("once", bob_id, 7, 1)
    assert copy.properties["sendUserId"] == copy.properties["receiveUserId"] == str(alice_id)

    alice.send(cmd=MESSAGE, reqMsg="as CIM sends", properties={"receiveUserId": str(bob_id)})  # no clientMsgId
    alice.send_ping(alice_id)
    assert (await alice.next()).resMsg == "pong"  # no receipt, no copy
    alice.send(cmd=SYNC, ackSeq=0)
    synced = []
    while (frame := await alice.next()).cmd != SYNC:
        synced.append(frame)
    assert [(f.resMsg, f.seq) for f in synced] == [("once", 1)]  # her inbox: the one copy, nothing else


async def test_the_sending_connection_gets_its_copies_as_its_receipts(stack: Running) -> None:
    """No copy is pushed back to the connection that sent it: its receipts carry the copies'
    seqs and timestamp instead (one frame a message). Its other device gets the pushes, and
    the inbox has the copies with the seqs the receipts named."""
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    alice_answer, bob_answer = await route_login(stack, alice_id, "alice"), await route_login(stack, bob_id, "bob")
    phone = await RawClient.connect(alice_answer.server.port, keep_own_copies=True)
    phone.login(alice_id, "alice", alice_answer.token)
    tablet = await RawClient.connect(alice_answer.server.port, keep_own_copies=True)
    tablet.send_raw(ClientConnection(alice_id, "alice").login(token=alice_answer.token, device_id="tablet"))
    bob = await RawClient.connect(bob_answer.server.port)
    bob.login(bob_id, "bob", bob_answer.token)
    for client, user_id in ((phone, alice_id), (tablet, alice_id), (bob, bob_id)):
        client.send_ping(user_id)
        assert (await client.next()).resMsg == "pong"  # logged in
    phone.send_raw(b"".join(ClientConnection(alice_id, "alice").message(f"m{k}", bob_id, client_msg_id=70 + k)
                            for k in range(3)))  # one write: one run
    receipts = [await phone.next() for _ in range(3)]
    phone.send_ping(alice_id)
    assert (await phone.next()).resMsg == "pong"  # and nothing else came: no copy pushed
    assert [(r.cmd, r.code, r.clientMsgId, r.seq) for r in receipts] == [(SEND_RECEIPT, 9000, 70 + k, 1 + k)
                                                                          for k in range(3)]
    assert receipts[0].timestamp > 0 and len({r.timestamp for r in receipts}) == 1
    pushed = [await tablet.next() for _ in range(3)]
    assert [(p.cmd, p.resMsg, p.msgId, p.seq, p.timestamp, p.clientMsgId, p.toUserId) for p in pushed] == [
        (MESSAGE, f"m{k}", r.msgId, r.seq, r.timestamp, r.clientMsgId, bob_id) for k, r in enumerate(receipts)]
    assert [(p.resMsg, p.msgId, p.seq) for p in [await bob.next() for _ in range(3)]] == [
        (f"m{k}", r.msgId, 1 + k) for k, r in enumerate(receipts)]
    phone.send(cmd=SYNC, ackSeq=0)  # the phone's inbox holds what its receipts named
    synced = [await phone.next() for _ in range(3)]
    assert [(p.resMsg, p.msgId, p.seq, p.timestamp) for p in synced] == [(f"m{k}", r.msgId, r.seq, r.timestamp)
                                                                         for k, r in enumerate(receipts)]


# The nodes' inbox check (the net under lost doorbells) too slow to be what delivers.
@pytest.mark.cluster(server_args=("--inbox-check-interval", "600"))
async def test_copies_and_receivers_devices_on_the_other_node_get_it_at_once(cluster: Cluster) -> None:
    """The sender and the receiver both have a device on each node: each of the four gets it live,
    rung through the bus (the nodes' inbox check is off for the test: it would find it later)."""
    await eventually(lambda: len(cluster.route_servers()) == 2)
    url = cluster.url
    alice_id, bob_id = await register(url, "alice", PASSWORD), await register(url, "bob", PASSWORD)
    got: dict[str, list[Message]] = {name: [] for name in ("alice/a", "alice/b", "bob/a", "bob/b")}
    clients = {name: device(url, alice_id if name.startswith("alice") else bob_id, name.split("/")[0],
                            name.split("/")[1], got[name]) for name in got}
    for client in clients.values():  # the route's loop balancer alternates: a, b, a, b over the two nodes
        await client.connect()
    try:
        assert server_port(clients["alice/a"]) == server_port(clients["bob/a"]) != server_port(clients["alice/b"])
        assert server_port(clients["bob/b"]) == server_port(clients["alice/b"])
        for k in range(3):
            assert (await clients["alice/a"].send_private(bob_id, f"m{k}")).code == 9000
        texts = [f"m{k}" for k in range(3)]
        await eventually(lambda: all([m.text for m in g] == texts for g in got.values()))
        assert [m.from_this_device for m in got["alice/a"]] == [True] * 3
        assert [m.from_this_device for m in got["alice/b"]] == [False] * 3
    finally:
        for client in clients.values():
            await client.close()
