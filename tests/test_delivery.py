"""Acknowledged delivery through a real server: inbox seqs, receipts, SYNC, acks,
dedup, retention, /fetchOfflineMsgs, a push lost to an RST (embedded stack), and
``cim up --data-dir`` SIGKILLed and started again."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.client import RouteClient, register
from cim.proto import DELIVERY_ACK, LOGIN_ANSWER, MESSAGE, SEND_RECEIPT, SYNC, Response
from cim.run import Running, start
from cim.status import Status
from cim.testing.services import CimProcess, free_port
from tests.conftest import PASSWORD, RawClient, eventually, new_secret, online, route_login, route_url, stack_config


def private(client: RawClient, receiver: int, text: str, client_msg_id: int = 0) -> None:
    client.send(cmd=MESSAGE, reqMsg=text, properties={"receiveUserId": str(receiver)}, clientMsgId=client_msg_id)


async def pushes(client: RawClient, count: int) -> list[Response]:
    got = [await client.next() for _ in range(count)]
    assert all(r.cmd == MESSAGE for r in got), got
    return got


def sync(client: RawClient, after: int) -> None:
    client.send(cmd=SYNC, ackSeq=after)


async def until_sync_done(client: RawClient) -> tuple[list[Response], Response]:
    """The pushes a SYNC brought, and its answer."""
    got = []
    while (frame := await client.next()).cmd != SYNC:
        got.append(frame)
    return got, frame


async def reconnect(running: Running, user_id: int, name: str) -> RawClient:
    answer = await route_login(running, user_id, name)
    client = await RawClient.connect(answer.server.port)
    client.login(user_id, name, answer.token)
    assert (await client.ping(user_id)).resMsg == "pong"
    return client


async def cursor_reaches(running: Running, user_id: int, seq: int) -> None:
    """Wait for the user's default device cursor to be ``seq`` in the store (written once a second)."""
    inbox = running.node.backends.inbox  # type: ignore[union-attr]
    for _ in range(50):
        if await inbox.cursor(user_id, "") == seq:
            break
        await asyncio.sleep(0.1)
    assert await inbox.cursor(user_id, "") == seq


@pytest.fixture
async def small_inbox() -> AsyncIterator[Running]:
    running = await start(stack_config(inbox_max_messages=5), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


async def test_login_answer_says_latest_seq_and_heartbeat(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    answer = alice.login_answer
    assert answer is not None and answer.cmd == LOGIN_ANSWER
    assert (answer.seq, answer.code, answer.properties["receiveUserId"]) == (0, 9000, str(alice_id))
    assert answer.heartbeatSeconds == 30


async def test_pushes_carry_seq_and_receipts_come_only_when_asked(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    private(alice, bob_id, "one", client_msg_id=11)
    private(alice, bob_id, "two")  # CIM's client: no clientMsgId, so no 9000 receipt
    private(alice, bob_id, "three", client_msg_id=13)
    got = await pushes(bob, 3)
    assert [(r.resMsg, r.seq) for r in got] == [("one", 1), ("two", 2), ("three", 3)]
    assert all(r.msgId and r.properties["receiveUserId"] == str(bob_id) for r in got)
    receipts = [await alice.next(), await alice.next()]
    assert [(r.cmd, r.code, r.clientMsgId) for r in receipts] == [(SEND_RECEIPT, 9000, 11), (SEND_RECEIPT, 9000, 13)]
    assert [r.msgId for r in receipts] == [got[0].msgId, got[2].msgId]
    private(alice, 999_999, "nobody")  # a failure is reported even without a clientMsgId
    failure = await alice.next()
    assert (failure.cmd, failure.code) == (SEND_RECEIPT, Status.VALIDATION_FAIL.code)


async def test_a_resend_gets_the_first_receipt_and_is_not_delivered_again(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    private(alice, bob_id, "hello", client_msg_id=7)
    first = await alice.next()
    private(alice, bob_id, "hello", client_msg_id=7)
    again = await alice.next()
    assert (again.code, again.clientMsgId, again.msgId) == (9000, 7, first.msgId)
    private(alice, bob_id, "next", client_msg_id=8)
    await alice.next()
    assert [(r.resMsg, r.seq) for r in await pushes(bob, 2)] == [("hello", 1), ("next", 2)]


async def test_sync_after_reconnect_sends_what_was_missed_then_live(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    private(alice, bob_id, "m1", client_msg_id=1)
    await pushes(bob, 1)
    bob.close()
    await eventually(lambda: bob_id not in stack.node.sessions.by_user)  # type: ignore[union-attr]
    for k in range(2, 6):
        private(alice, bob_id, f"m{k}", client_msg_id=k)
    assert {(await alice.next()).code for _ in range(5)} == {9000, 7000}
    bob = await reconnect(stack, bob_id, "bob")
    assert bob.login_answer is not None and bob.login_answer.seq == 5
    private(alice, bob_id, "live", client_msg_id=6)  # live before the SYNC is read: it comes again in order
    await alice.next()
    sync(bob, 1)
    caught, done = await until_sync_done(bob)
    assert [r.seq for r in caught] in ([2, 3, 4, 5, 6], [6, 2, 3, 4, 5, 6])
    assert [r.resMsg for r in caught[-5:]] == ["m2", "m3", "m4", "m5", "live"]
    assert done.code == 9000 and not done.truncated and done.seq == 6
    private(alice, bob_id, "after", client_msg_id=7)
    assert [(r.resMsg, r.seq) for r in await pushes(bob, 1)] == [("after", 7)]  # then live, no gap


async def test_acks_become_the_device_cursor(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    for k in range(3):
        private(alice, bob_id, f"m{k}")
    await pushes(bob, 3)
    bob.send(cmd=DELIVERY_ACK, ackSeq=2)
    bob.send(cmd=DELIVERY_ACK, ackSeq=1)  # cumulative: an older ack moves nothing back
    assert (await bob.ping(bob_id)).resMsg == "pong"  # the acks were handled
    await cursor_reaches(stack, bob_id, 2)


async def test_a_push_lost_to_an_rst_arrives_on_sync(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    sock = bob.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bob.writer.transport.abort()  # RST: whatever the server writes now is gone
    private(alice, bob_id, "into the void", client_msg_id=1)
    receipt = await alice.next()
    assert receipt.code in (9000, 7000)  # stored either way
    bob = await reconnect(stack, bob_id, "bob")
    sync(bob, 0)
    caught, _ = await until_sync_done(bob)
    assert [(r.resMsg, r.seq, r.msgId) for r in caught] == [("into the void", 1, receipt.msgId)]


async def test_sync_beyond_retention_says_truncated(small_inbox: Running) -> None:
    alice_id, alice = await online(small_inbox, "alice")
    bob_id, bob = await online(small_inbox, "bob")
    bob.close()
    await eventually(lambda: bob_id not in small_inbox.node.sessions.by_user)  # type: ignore[union-attr]
    for k in range(1, 9):
        private(alice, bob_id, f"m{k}", client_msg_id=k)
    for _ in range(8):
        assert (await alice.next()).code == 7000
    bob = await reconnect(small_inbox, bob_id, "bob")
    sync(bob, 0)
    caught, done = await until_sync_done(bob)
    assert [r.seq for r in caught] == [4, 5, 6, 7, 8]
    assert done.truncated and done.seq == 8


async def test_cim_clients_fetch_offline_messages_once(stack: Running) -> None:
    """A client that never syncs (CIM's) gets live pushes, and what came while it was away by /fetchOfflineMsgs."""
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    private(alice, bob_id, "live")
    await pushes(bob, 1)
    bob.close()
    await cursor_reaches(stack, bob_id, 1)  # what it was written is what it has: kept when it left
    private(alice, bob_id, "away 1", client_msg_id=1)
    private(alice, bob_id, "away 2", client_msg_id=2)
    assert [(await alice.next()).code for _ in range(2)] == [7000, 7000]  # stored for later
    bob = await reconnect(stack, bob_id, "bob")
    bearer = {"Authorization": f"Bearer {bob.token}"} if bob.token else {}
    async with httpx.AsyncClient(base_url=route_url(stack), headers=bearer) as http:
        first = (await http.post("/fetchOfflineMsgs", json={"receiveUserId": bob_id})).json()
        assert [r.resMsg for r in await pushes(bob, 2)] == ["away 1", "away 2"]
        second = (await http.post("/fetchOfflineMsgs", json={"receiveUserId": bob_id})).json()
    assert first["code"] == "9000" and second["code"] == "9000"
    private(alice, bob_id, "after")
    assert [r.resMsg for r in await pushes(bob, 1)] == ["after"]  # nothing replayed twice before it


def start_up(workdir: Path, data_dir: Path, secret: str) -> tuple[CimProcess, str]:
    """``cim up --data-dir`` as a process of its own; (it, the route URL)."""
    route_port = free_port()
    proc = CimProcess(workdir, "up", ["up", "--host", "127.0.0.1", "--port", str(free_port()), "--http-port",
                                      str(free_port()), "--route-port", str(route_port), "--data-dir", str(data_dir)],
                      {"CIM_SECRET": secret})
    proc.wait_http(route_port)
    return proc, f"http://127.0.0.1:{route_port}"


async def connect_raw(url: str, user_id: int, name: str) -> RawClient:
    async with RouteClient(url) as route:
        answer = await route.login(user_id, name, PASSWORD)
    client = await RawClient.connect(answer.server.port)
    client.login(user_id, name, answer.token)
    assert (await client.ping(user_id)).resMsg == "pong"
    return client


async def test_data_dir_keeps_what_was_acknowledged_through_a_sigkill(tmp_path: Path) -> None:
    data_dir, secret = tmp_path / "data", new_secret()
    proc, url = start_up(tmp_path, data_dir, secret)
    try:
        alice_id = await register(url, "alice", PASSWORD)
        bob_id = await register(url, "bob", PASSWORD)
        alice = await connect_raw(url, alice_id, "alice")
        private(alice, bob_id, "kept on disk", client_msg_id=41)
        receipt = await alice.next()
        assert (receipt.code, receipt.clientMsgId) == (7000, 41)  # bob is away: stored
    finally:
        proc.stop(signal.SIGKILL)  # no goodbye: whatever was acknowledged is on disk
    proc, url = start_up(tmp_path, data_dir, secret)
    try:
        bob = await connect_raw(url, bob_id, "bob")  # the account and its password survived
        sync(bob, 0)
        caught, _ = await until_sync_done(bob)
        assert [(r.resMsg, r.seq, r.msgId) for r in caught] == [("kept on disk", 1, receipt.msgId)]
        alice = await connect_raw(url, alice_id, "alice")
        private(alice, bob_id, "kept on disk", client_msg_id=41)  # the SDK's resend after the crash
        again = await alice.next()
        assert (again.code, again.msgId) == (9000, receipt.msgId)  # the dedup record survived too
        private(alice, bob_id, "new", client_msg_id=42)
        assert [(r.resMsg, r.seq) for r in await pushes(bob, 1)] == [("new", 2)]
    finally:
        assert proc.stop() == 0, proc.log()
