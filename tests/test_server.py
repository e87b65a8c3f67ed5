"""cim-server on real 127.0.0.1 sockets (route + server in this process, embedded backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from cim.backends import Stored
from cim.backends.memory import MemoryHub
from cim.client import RouteClient
from cim.client.sdk import RETRYABLE
from cim.messages import Sender
from cim.proto import BaseCommand, Delivery
from cim.protocols.client import ClientConnection
from cim.protocols.tcp import TcpPeer
from cim.run import Running, start
from cim.status import Status
from cim.testing.services import redis_server
from cim.wire import push_bodies
from tests.conftest import (
    PASSWORD,
    RawClient,
    eventually,
    mint_token,
    online,
    register_user,
    route_url,
    stack_config,
)


async def test_login_ping_pong_and_cleanup_on_close(stack: Running) -> None:
    alice, client = await online(stack, "alice")
    pong = await client.ping(alice)
    assert (pong.cmd, pong.resMsg) == (BaseCommand.PING, "pong")
    async with RouteClient(route_url(stack)) as route:
        assert await route.online_users() == [(alice, "alice")]
        client.close()
        for _ in range(100):  # the cleanup runs after the close: poll the route
            if not await route.online_users():
                break
            await asyncio.sleep(0.02)
        assert await route.online_users() == []
        assert stack.node is not None and stack.node.metrics["logouts"] == 1  # cleaned up exactly once
        await route.login(alice, "alice", PASSWORD)  # ...and the user can log in again at once (else ClientError)


async def test_in_band_private_group_and_receipts(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    carol = await register_user(stack, "carol")  # registered, never online
    a.send(reqMsg="hi bob", cmd=BaseCommand.MESSAGE, clientMsgId=1, properties={"receiveUserId": str(bob)})
    push = await b.next()
    assert (push.cmd, push.resMsg, push.responseId) == (BaseCommand.MESSAGE, "hi bob", alice)
    assert dict(push.properties) == {"sendUserId": str(alice), "sendUserName": "alice", "receiveUserId": str(bob)}
    assert push.msgId > 0 and push.timestamp > 0
    receipt = await a.next()
    assert (receipt.cmd, receipt.clientMsgId, receipt.code) == (BaseCommand.SEND_RECEIPT, 1, 9000)
    assert receipt.msgId == push.msgId and receipt.properties["receiveUserId"] == str(alice)

    b.send(reqMsg="hello all", cmd=BaseCommand.MESSAGE, clientMsgId=2)
    group = await a.next()
    assert group.resMsg == "hello all" and group.properties["receiveUserId"] == str(alice)
    assert (await b.next()).code == 9000  # the sender gets a receipt, not its own message

    a.send(reqMsg="later", cmd=BaseCommand.MESSAGE, clientMsgId=3, properties={"receiveUserId": str(carol)})
    stored = await a.next()
    assert (stored.clientMsgId, stored.code) == (3, Status.OFF_LINE.code)
    a.send(reqMsg="x", cmd=BaseCommand.MESSAGE, clientMsgId=4, properties={"receiveUserId": "987654"})
    unknown = await a.next()
    assert unknown.code == Status.VALIDATION_FAIL.code and "987654 is not a registered user" in unknown.resMsg


async def test_a_message_to_an_unknown_named_group_is_refused_never_broadcast(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    a.send(reqMsg="to the team", cmd=BaseCommand.MESSAGE, clientMsgId=5, groupId="team")
    receipt = await a.next()
    assert (receipt.cmd, receipt.clientMsgId, receipt.code) == (BaseCommand.SEND_RECEIPT, 5, Status.VALIDATION_FAIL.code)
    assert "groupId 'team'" in receipt.resMsg and receipt.properties["receiveUserId"] == str(alice)
    a.send(reqMsg="to everyone", cmd=BaseCommand.MESSAGE, clientMsgId=6)
    assert (await b.next()).resMsg == "to everyone"  # the refused one never reached bob


async def test_order_is_kept_within_a_conversation(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    for i in range(300):
        a.send(reqMsg=f"m{i}", cmd=BaseCommand.MESSAGE, clientMsgId=i + 1, properties={"receiveUserId": str(bob)})
    got = [(await b.next()).resMsg for _ in range(300)]
    assert got == [f"m{i}" for i in range(300)]


async def test_duplicate_tcp_login_is_refused_and_the_first_goes_on(stack: Running) -> None:
    assert stack.node is not None
    alice, first = await online(stack, "alice")
    second = await RawClient.connect(stack.node.port)
    second.login(alice, "alice", first.token)
    [error] = await second.closed()
    assert (error.cmd, error.code, error.properties["receiveUserId"]) == (BaseCommand.ERROR, 5000, str(alice))
    assert (await first.ping(alice)).resMsg == "pong"


async def test_tcp_login_with_wrong_name_or_unknown_user(stack: Running) -> None:
    assert stack.node is not None
    alice = await register_user(stack, "alice")
    wrong = await RawClient.connect(stack.node.port)
    wrong.login(alice, "mallory", mint_token(stack, alice))
    assert [(e.code, e.cmd) for e in await wrong.closed()] == [(9100, BaseCommand.ERROR)]
    unknown = await RawClient.connect(stack.node.port)
    unknown.login(424242, "ghost", mint_token(stack, 424242))
    [error] = await unknown.closed()
    assert error.code == 3000 and "424242 is not a registered user" in error.resMsg


async def test_bad_frames_close_only_that_connection(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    assert stack.node is not None
    port = stack.node.port
    for garbage in (b"\x80\x80\x80\x80\x80\x01", b"\x80\x80\x80\x80\x04"):  # 6-byte varint, 1 GiB prefix
        bad = await RawClient.connect(port)
        bad.send_raw(garbage)
        [error] = await bad.closed()
        assert error.cmd == BaseCommand.ERROR and "bad frame" in error.resMsg
    # A logged-in user sending an oversized frame loses only their own connection.
    b.send_raw(b"\xff\xff\x7f")
    [error] = await b.closed()
    assert error.properties["receiveUserId"] == str(bob)
    # Garbage protobuf in a valid frame: an error, and the connection goes on.
    a.send_raw(b"\x03\xff\xff\xff")
    error = await a.next()
    assert error.cmd == BaseCommand.ERROR and "not a protobuf" in error.resMsg
    assert (await a.ping(alice)).resMsg == "pong"


async def test_login_timeout_and_heartbeat_timeout() -> None:
    running = await start(stack_config(login_timeout=0.3, heartbeat_interval=0.2), {"server", "route"}, MemoryHub())
    try:
        assert running.node is not None
        silent = await RawClient.connect(running.node.port)
        [error] = await silent.closed()
        assert "login timeout" in error.resMsg
        assert error.code in RETRYABLE  # a late login is tried again: the SDK gives up on 3000

        alice, idle = await online(running, "alice")
        bob, lively = await online(running, "bob")

        async def keep_pinging() -> None:
            while True:
                lively.send_ping(bob)
                await asyncio.sleep(0.1)

        pinger = asyncio.create_task(keep_pinging())
        closing = await idle.closed()
        assert closing[-1].cmd == BaseCommand.OFFLINE and "heartbeat timeout" in closing[-1].resMsg
        assert closing[-1].code == Status.FAIL.code
        await asyncio.sleep(0.3)
        async with RouteClient(route_url(running)) as route:
            users = await route.online_users()
        assert users == [(bob, "bob")]  # the idle one is cleaned up, the pinging one stays
        pinger.cancel()
    finally:
        await running.stop()


async def test_graceful_stop_tells_clients() -> None:
    running = await start(stack_config(), {"server", "route"}, MemoryHub())
    alice, a = await online(running, "alice")
    stopping = asyncio.create_task(running.stop())
    frames = await a.closed()
    await stopping
    assert frames[-1].cmd == BaseCommand.OFFLINE and "shutting down" in frames[-1].resMsg
    assert frames[-1].code == Status.FAIL.code  # 4000: the client may reconnect elsewhere


async def test_health_and_stats(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    a.send(reqMsg="hi", cmd=BaseCommand.MESSAGE, properties={"receiveUserId": str(bob)})
    await b.next()
    assert stack.node is not None and stack.node_http is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.node_http.port}") as http:
        assert (await http.get("/health")).json() == {"status": "ok", "node": stack.node.node_id}
        stats = (await http.get("/stats")).json()
    assert (stats["sessions"], stats["logins"], stats["messages_in"], stats["messages_out"]) == (2, 2, 1, 1)


async def test_racing_tcp_logins_for_one_user_admit_exactly_one(stack: Running) -> None:
    assert stack.node is not None
    alice = await register_user(stack, "alice")
    clients = [await RawClient.connect(stack.node.port) for _ in range(5)]
    token = mint_token(stack, alice)
    for client in clients:
        client.login(alice, "alice", token)
        client.send_ping(alice)
    answers = [await client.next() for client in clients]
    assert sorted(a.cmd for a in answers) == [BaseCommand.PING] + [BaseCommand.ERROR] * 4
    assert all(a.code == 5000 for a in answers if a.cmd == BaseCommand.ERROR)


async def test_full_node_refuses_new_connections_cleanly() -> None:
    running = await start(stack_config(max_connections=2), {"server", "route"}, MemoryHub())
    try:
        node = running.node
        assert node is not None
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        extra = await RawClient.connect(node.port)
        [error] = await extra.closed()
        assert (error.cmd, error.code) == (BaseCommand.ERROR, 4000) and "server full" in error.resMsg
        assert node.metrics["refused_full"] == 1
        assert (await a.ping(alice)).resMsg == "pong"  # the others are untouched
        b.close()
        await eventually(lambda: len(node.sessions) == 1, 2)
        _, c = await online(running, "carol")  # room again
    finally:
        await running.stop()


async def test_slow_consumer_is_cut_off_and_others_go_on() -> None:
    # The sender floods on purpose (16 MB as fast as it can): the per-connection limits,
    # which would stop it long before bob's buffer fills, are off here.
    config = stack_config(write_buffer_high=16 * 1024, slow_consumer_timeout=0.3, max_messages_per_second=0,
                          max_bytes_per_second=0)
    running = await start(config, {"server", "route"}, MemoryHub())
    try:
        node = running.node
        assert node is not None
        alice, a = await online(running, "alice")
        bob, slow = await online(running, "bob")  # bob never reads from here on
        carol, c = await online(running, "carol")
        text = "x" * 4000
        for i in range(4000):
            # No clientMsgId: alice, who reads nothing either, gets no receipts and no copies of her own (cim.delivery).
            a.send(reqMsg=text, cmd=BaseCommand.MESSAGE, properties={"receiveUserId": str(bob)})
            if i % 100 == 0:
                await a.writer.drain()
                await asyncio.sleep(0)
                if node.metrics["slow_consumer_cuts"]:
                    break
        await eventually(lambda: node.metrics["slow_consumer_cuts"], 4)
        assert node.metrics["slow_consumer_cuts"] == 1
        await eventually(lambda: bob not in node.sessions.by_user, 2)
        assert bob not in node.sessions.by_user
        a.send(reqMsg="still here?", cmd=BaseCommand.MESSAGE, properties={"receiveUserId": str(carol)})
        assert (await c.next()).resMsg == "still here?"
    finally:
        await running.stop()


async def test_a_slow_consumer_of_group_messages_is_cut_off_too() -> None:
    """Group messages are written at once (``Peer.write_now``); over the write buffer's mark
    they queue instead, and the flush that writes them, or the slow-consumer timer, cuts bob."""
    config = stack_config(write_buffer_high=16 * 1024, slow_consumer_timeout=0.3, max_messages_per_second=0,
                          max_bytes_per_second=0)
    running = await start(config, {"server", "route"}, MemoryHub())
    try:
        node = running.node
        assert node is not None
        alice, a = await online(running, "alice")
        bob, slow = await online(running, "bob")  # bob never reads from here on
        text = "x" * 4000
        for i in range(4000):
            a.send(reqMsg=text, cmd=BaseCommand.MESSAGE)  # to everyone online: bob
            if i % 100 == 0:
                await a.writer.drain()
                await asyncio.sleep(0)
                if node.metrics["slow_consumer_cuts"]:
                    break
        await eventually(lambda: node.metrics["slow_consumer_cuts"], 4)
        assert node.metrics["slow_consumer_cuts"] == 1
        await eventually(lambda: bob not in node.sessions.by_user, 2)
        carol, c = await online(running, "carol")
        a.send(reqMsg="still here?", cmd=BaseCommand.MESSAGE)
        assert (await c.next()).resMsg == "still here?"
    finally:
        await running.stop()


class RecordingTransport:
    """What a TcpPeer uses of its transport, each write kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None: ...


async def test_a_tcp_peer_writes_at_once_only_while_open_with_nothing_queued_and_under_its_mark(stack: Running) -> None:
    """``Peer.write_now`` (what at-once pushes call, the lane too) is the transport's write only
    while no frame waits for the end-of-turn flush (it would be overtaken), the write buffer is
    under its mark (the flush checks for a slow consumer) and the connection is open."""
    assert stack.node is not None
    transport = RecordingTransport()
    peer = TcpPeer(stack.node)
    peer.connection_made(transport)  # type: ignore[arg-type]  # what a peer uses of a transport

    def write_now() -> Callable[[bytes], None] | None:
        return peer.write_now

    assert write_now() == transport.write
    peer.push(b"a", at_once=True)
    peer.push(b"b")  # not at once: waits for the turn's end, and nothing may overtake it
    assert write_now() is None
    peer.push(b"c", at_once=True)
    assert transport.written == [b"a"]
    await asyncio.sleep(0)
    assert transport.written == [b"a", b"bc"] and write_now() == transport.write
    peer.pause_writing()
    assert write_now() is None
    peer.push(b"d", at_once=True)
    await asyncio.sleep(0)
    assert transport.written[-1] == b"d" and write_now() is None  # flushed, still over the mark
    peer.resume_writing()
    assert write_now() == transport.write
    peer.abort("test: cut")
    assert write_now() is None and transport.aborted
    peer.connection_lost(None)


async def test_restarted_node_clears_logins_left_under_its_id() -> None:
    # A worker killed and restarted by its supervisor comes back under the same id,
    # possibly before any route noticed it was gone: it must clear what its
    # predecessor recorded, or those users would be locked out.
    hub = MemoryHub()
    config = stack_config()
    first = await start(config, {"server"}, hub)
    assert first.node is not None
    alice, _ = await hub.store.accounts.register("alice", None)
    assert await hub.store.presence.confirm_login(alice, first.node.node_id, "", 5) == {}
    await first.stop()
    assert await hub.store.presence.servers(alice) == [first.node.node_id]
    second = await start(config, {"server"}, hub)
    try:
        assert await hub.store.presence.servers(alice) == []  # alice can log in again
    finally:
        await second.stop()


async def test_backend_failure_is_answered_not_swallowed(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        running = await start(stack_config(redis=url, login_timeout=30), {"server", "route"}, MemoryHub())
        try:
            alice, a = await online(running, "alice")
            carol = await register_user(running, "carol")  # registered, not online: a send to her needs Redis
            dave = await register_user(running, "dave")
            assert running.node is not None
            late = await RawClient.connect(running.node.port)
        except BaseException:
            await running.stop()
            raise
    # Redis is gone now.
    try:
        a.send(reqMsg="to carol", cmd=BaseCommand.MESSAGE, clientMsgId=9, properties={"receiveUserId": str(carol)})
        receipt = await a.next(timeout=40)
        assert (receipt.cmd, receipt.clientMsgId, receipt.code) == (BaseCommand.SEND_RECEIPT, 9, Status.FAIL.code)
        assert "send failed" in receipt.resMsg
        assert (await a.ping(alice)).resMsg == "pong"  # the connection goes on
        late.login(dave, "dave", mint_token(running, dave))
        [refusal] = await late.closed(timeout=40)
        assert (refusal.cmd, refusal.code) == (BaseCommand.ERROR, Status.FAIL.code) and "login failed" in refusal.resMsg
    finally:
        await running.stop()


async def test_group_messages_in_one_read_are_batched_in_order_with_a_receipt_each(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    carol, c = await online(stack, "carol")
    sender = ClientConnection(alice, "alice")
    a.send_raw(b"".join(sender.message(f"g{i}", client_msg_id=i + 1) for i in range(5)))
    for client, user_id in ((b, bob), (c, carol)):
        pushes = [await client.next() for _ in range(5)]
        assert [p.resMsg for p in pushes] == [f"g{i}" for i in range(5)]
        assert {p.properties["receiveUserId"] for p in pushes} == {str(user_id)}
    receipts = [await a.next() for _ in range(5)]
    assert [(r.cmd, r.clientMsgId, r.code) for r in receipts] == [(BaseCommand.SEND_RECEIPT, i + 1, 9000) for i in range(5)]
    assert len({r.msgId for r in receipts}) == 5 and [r.msgId for r in receipts] == sorted(r.msgId for r in receipts)


async def test_a_push_queued_this_loop_turn_is_not_overtaken_by_a_broadcast(stack: Running) -> None:
    # Private pushes wait for the end of the loop turn (one write per connection);
    # a broadcast writes at once, except to a connection with a push waiting.
    alice, _ = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    node = stack.node
    assert node is not None
    private, group = push_bodies(Sender.of(alice, "alice").prefix, [b"private first", b"group second"], 1, 1, [0, 0])
    node.deliveries.deliver_local(bob, Stored(1, [private]))
    node.deliveries.on_delivery(Delivery(messages=[group], receiverIds=[bob], firstSeqs=[2]).SerializeToString())
    assert [(await b.next()).resMsg for _ in range(2)] == ["private first", "group second"]
