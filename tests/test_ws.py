"""The WebSocket endpoint (issue 12, item 1): one binary message is one protobuf frame, served by
the same connection state machine as TCP; the route's ``wsUrl``; the SDK over WebSocket; ``cim up``
and ``--workers`` opening it. Real sockets on 127.0.0.1 (embedded stacks, Redis and ZooKeeper)."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from cim.backends.memory import MemoryHub
from cim.client import Client, Message, register
from cim.frame import encode_frames
from cim.proto import ERROR, LOGIN_ANSWER, LOGIN_REQUEST, MESSAGE, OFFLINE, PING, SEND_RECEIPT, Request, Response
from cim.protocols.ws import ws_messages
from cim.run import Running, start
from cim.status import Status
from cim.testing.services import CimProcess, free_port, free_ports_in_a_row
from cim.wire_fields import RECEIVE_USER_ID
from tests.conftest import (
    PASSWORD,
    RawClient,
    auth_mode,
    eventually,
    new_secret,
    online,
    register_user,
    route_login,
    route_url,
    stack_config,
)
from tests.test_limits_abuse import OTHER_IP, burst_answered, connect_from, running_stack


@pytest.fixture
async def ws_stack() -> AsyncIterator[Running]:
    running = await start(stack_config(ws_port=free_port()), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


@pytest.fixture
async def idle_ws_stack() -> AsyncIterator[Running]:
    """A stack whose server cuts a connection silent for 3 × 0.5 s."""
    running = await start(stack_config(ws_port=free_port(), heartbeat_interval=0.5), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


class WsRaw:
    """A WebSocket test client: protobuf Requests out, raw Responses in, one binary message each."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str) -> WsRaw:
        return cls(await connect(url, max_size=None, ping_interval=None))

    async def send(self, properties: dict[str, str] | None = None, **fields: Any) -> None:
        request = Request(**fields)
        request.properties.update(properties or {})
        await self.ws.send(request.SerializeToString())

    async def next(self, timeout: float = 5.0) -> Response:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(message, bytes), "the server sends binary messages only"
        return Response.FromString(message)

    async def login(self, user_id: int, name: str, token: str) -> Response:
        await self.send(cmd=LOGIN_REQUEST, requestId=user_id, reqMsg=name, token=token)
        return await self.next()

    async def ping(self, user_id: int) -> Response:
        await self.send(cmd=PING, requestId=user_id, reqMsg="ping")
        return await self.next()

    async def closed(self, timeout: float = 10.0) -> tuple[list[Response], int | None, str | None]:
        """Read until the server closes: what came before, the close code and reason."""
        frames = []
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(await self.next(timeout))
        return frames, self.ws.close_code, self.ws.close_reason


async def ws_online(running: Running, name: str) -> tuple[int, WsRaw, str]:
    """Register ``name`` and log in over WebSocket at the route's ``wsUrl``; (user id, client, token)."""
    user_id = await register_user(running, name)
    answer = await route_login(running, user_id, name)
    assert answer.server.ws_url is not None
    client = await WsRaw.open(answer.server.ws_url)
    login = await client.login(user_id, name, answer.token)
    assert (login.cmd, login.code) == (LOGIN_ANSWER, 9000)
    return user_id, client, answer.token


def sdk(running: Running, user_id: int, name: str, inbox: list[Message], transport: str = "tcp", **options: Any) -> Client:
    return Client(route_url(running), user_id, name, password=PASSWORD, on_message=inbox.append, transport=transport,
                  backoff_base=0.05, backoff_max=0.2, **options)


# -- the glue, sans-I/O ------------------------------------------------------------------------


def test_framed_output_becomes_one_binary_message_per_frame() -> None:
    payloads = [Response(cmd=PING, resMsg="pong").SerializeToString(), b"", b"x" * 70_000]
    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN, max_size=None)
    client.receive_data(ws_messages(encode_frames(payloads)))
    frames = [f for f in client.events_received() if isinstance(f, Frame)]
    assert [(f.opcode, f.fin, bytes(f.data)) for f in frames] == [(Opcode.BINARY, True, p) for p in payloads]


def test_the_sdk_refuses_an_unknown_transport(stack: Running) -> None:
    with pytest.raises(ValueError, match="transport must be one of tcp, ws, not 'udp'"):
        Client(route_url(stack), 1, "alice", transport="udp")


# -- the endpoint -------------------------------------------------------------------------------


async def test_login_answers_carry_the_ws_url_only_for_a_server_with_a_ws_port(ws_stack: Running, stack: Running) -> None:
    for running, expected in ((ws_stack, f"ws://127.0.0.1:{ws_stack.node and ws_stack.node.config.ws_port}/ws"),
                              (stack, None)):
        user_id = await register_user(running, "alice")
        body = {"userId": user_id, "userName": "alice", **({"password": PASSWORD} if auth_mode() == "token" else {})}
        async with httpx.AsyncClient() as http:
            data = (await http.post(route_url(running) + "/login", json=body)).json()["dataBody"]
        assert data.get("wsUrl") == expected
        assert {"ip", "cimServerPort", "httpPort"} <= set(data)  # CIM's fields, as they were


async def test_ws_login_cim_ping_and_websocket_ping(ws_stack: Running) -> None:
    user_id, client, _ = await ws_online(ws_stack, "alice")
    pong = await client.ping(user_id)
    assert (pong.cmd, pong.resMsg) == (PING, "pong")
    await asyncio.wait_for(await client.ws.ping(b"are you there"), 5)  # answered by websockets itself
    assert (await client.ping(user_id)).resMsg == "pong"
    await client.ws.close()


async def test_private_chat_between_ws_and_tcp_sdk_users_both_ways(ws_stack: Running) -> None:
    alice_id, bob_id = await register_user(ws_stack, "alice"), await register_user(ws_stack, "bob")
    alice_got: list[Message] = []
    bob_got: list[Message] = []
    async with sdk(ws_stack, alice_id, "alice", alice_got, transport="ws") as alice, \
            sdk(ws_stack, bob_id, "bob", bob_got) as bob:
        assert (await alice.send_private(bob_id, "hi bob, from a websocket")).code == 9000
        assert (await bob.send_private(alice_id, "hi alice, from tcp")).code == 9000
        await eventually(lambda: len(alice_got) == 2 and len(bob_got) == 2)  # each with their own copy first
    assert [(m.sender_id, m.text, m.outgoing) for m in bob_got] == [
        (bob_id, "hi alice, from tcp", True), (alice_id, "hi bob, from a websocket", False)] or [
        (m.sender_id, m.text, m.outgoing) for m in bob_got] == [
        (alice_id, "hi bob, from a websocket", False), (bob_id, "hi alice, from tcp", True)]
    assert [(m.sender_id, m.text) for m in alice_got if not m.outgoing] == [(bob_id, "hi alice, from tcp")]
    assert [(m.text, m.from_this_device) for m in alice_got if m.outgoing] == [("hi bob, from a websocket", True)]


async def test_group_chat_reaches_ws_and_tcp_sdk_users_in_order(ws_stack: Running) -> None:
    """A group message is pushed at once to each receiver (``Peer.push(at_once=True)``): over
    WebSocket, as binary messages like every other frame."""
    alice_id, bob_id, carol_id = [await register_user(ws_stack, name) for name in ("alice", "bob", "carol")]
    alice_got: list[Message] = []
    carol_got: list[Message] = []
    async with sdk(ws_stack, alice_id, "alice", alice_got, transport="ws"), \
            sdk(ws_stack, carol_id, "carol", carol_got, transport="ws"), sdk(ws_stack, bob_id, "bob", []) as bob:
        for k in range(20):
            assert (await bob.send_group(f"g{k}")).code == 9000
        await eventually(lambda: len(alice_got) == 20 and len(carol_got) == 20)
    for got in (alice_got, carol_got):
        assert [(m.sender_id, m.text) for m in got] == [(bob_id, f"g{k}") for k in range(20)]


async def test_a_ws_sdk_client_reconnects_and_syncs_what_came_meanwhile_once_in_order(ws_stack: Running) -> None:
    alice_id, bob_id = await register_user(ws_stack, "alice"), await register_user(ws_stack, "bob")
    got: list[Message] = []
    async with sdk(ws_stack, alice_id, "alice", got, transport="ws") as alice, sdk(ws_stack, bob_id, "bob", []) as bob:
        assert ws_stack.node is not None
        for k in range(30):
            await bob.send_private(alice_id, f"m{k}")
            if k == 10:  # drop alice's socket from the server's end, mid-stream
                [peer] = ws_stack.node.sessions.by_user[alice_id].peers
                peer.abort("test: cut")
        await eventually(lambda: len(got) == 30)
        assert alice.reconnects >= 1
    assert [m.text for m in got] == [f"m{k}" for k in range(30)]


async def test_a_text_message_gets_an_error_and_the_connection_goes_on(ws_stack: Running) -> None:
    user_id, client, _ = await ws_online(ws_stack, "alice")
    await client.ws.send("a text message")
    error = await client.next()
    assert (error.cmd, error.code, error.resMsg) == (ERROR, 3000, "text message: send each Request as a binary message; ignored")
    assert error.properties["receiveUserId"] == str(user_id)
    assert (await client.ping(user_id)).resMsg == "pong"


async def test_a_text_message_before_the_login_is_refused_and_closed(ws_stack: Running) -> None:
    assert ws_stack.node is not None
    client = await WsRaw.open(f"ws://127.0.0.1:{ws_stack.node.config.ws_port}/ws")
    await client.ws.send("hello?")
    frames, code, reason = await client.closed()
    assert [(f.cmd, f.code) for f in frames] == [(ERROR, 3000)]
    assert (code, reason) == (1008, "text message: send each Request as a binary message")


async def test_garbage_protobuf_gets_an_error_and_nothing_else_is_lost(ws_stack: Running) -> None:
    alice_id, alice, _ = await ws_online(ws_stack, "alice")
    bob_id, bob = await register_user(ws_stack, "bob"), None
    answer = await route_login(ws_stack, bob_id, "bob")
    bob = await RawClient.connect(answer.server.port)
    bob.login(bob_id, "bob", answer.token)
    assert (await bob.ping(bob_id)).resMsg == "pong"
    to_bob = {"receiveUserId": str(bob_id)}
    await alice.send(to_bob, cmd=MESSAGE, requestId=alice_id, reqMsg="before", clientMsgId=1)
    await alice.ws.send(b"\xff\xff\xff not protobuf")
    await alice.send(to_bob, cmd=MESSAGE, requestId=alice_id, reqMsg="after", clientMsgId=2)
    answers = [await alice.next() for _ in range(3)]
    # As over TCP, a frame's error is queued when it is read, possibly before an earlier message's receipt.
    # The receipts stand for her copies (cim.delivery) on this connection: they carry the copies' seqs.
    assert sorted((a.cmd, a.code, a.clientMsgId, a.seq) for a in answers) == [
        (SEND_RECEIPT, 9000, 1, 1), (SEND_RECEIPT, 9000, 2, 2), (ERROR, 3000, 0, 0)]
    assert [a.resMsg for a in answers if a.cmd == ERROR] == ["malformed frame: not a protobuf Request; ignored"]
    assert [(await bob.next()).resMsg for _ in range(2)] == ["before", "after"]


async def test_an_oversized_message_gets_an_error_then_close_1009(ws_stack: Running) -> None:
    alice_id, alice, _ = await ws_online(ws_stack, "alice")
    await alice.ws.send(b"\x00" * (64 * 1024 + 1))  # one byte over --max-frame-size
    frames, code, reason = await alice.closed()
    assert [(f.cmd, f.code) for f in frames] == [(ERROR, 3000)]
    assert frames[-1].resMsg == "bad WebSocket message: frame with 65537 bytes exceeds limit of 65536 bytes"
    assert (code, reason) == (1009, "frame with 65537 bytes exceeds limit of 65536 bytes")


async def test_another_path_is_an_http_404(ws_stack: Running) -> None:
    assert ws_stack.node is not None
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{ws_stack.node.config.ws_port}/chat")
    assert refused.value.response.status_code == 404
    assert refused.value.response.body == b"no WebSocket endpoint at /chat: it is /ws\n"


@pytest.mark.skipif(auth_mode() == "none", reason="under --auth none no token is checked")
async def test_a_bad_token_is_refused_with_an_error_and_close_1008(ws_stack: Running) -> None:
    user_id = await register_user(ws_stack, "alice")
    answer = await route_login(ws_stack, user_id, "alice")
    assert answer.server.ws_url is not None
    client = await WsRaw.open(answer.server.ws_url)
    await client.send(cmd=LOGIN_REQUEST, requestId=user_id, reqMsg="alice", token="not a token")
    frames, code, _ = await client.closed()
    assert [(f.cmd, f.code) for f in frames] == [(ERROR, 4001)]
    assert code == 1008


async def test_a_silent_ws_connection_is_cut_and_either_ping_keeps_one_open(idle_ws_stack: Running) -> None:
    _, silent, _ = await ws_online(idle_ws_stack, "silent")
    cim_id, cim_pinger, _ = await ws_online(idle_ws_stack, "cim")
    ws_id, ws_pinger, _ = await ws_online(idle_ws_stack, "ws")

    async def keep_pinging() -> None:
        while True:
            await cim_pinger.ping(cim_id)
            await ws_pinger.ws.ping()
            await asyncio.sleep(0.2)

    pinging = asyncio.create_task(keep_pinging())
    try:
        frames, code, _ = await silent.closed()
        assert [(f.cmd, f.code, f.resMsg) for f in frames] == [(OFFLINE, 4000, "heartbeat timeout: nothing received for 1.5 s")]
        assert code == 1001  # going away: may reconnect
        await asyncio.sleep(2.0)  # past the limit again, for the two who ping
        assert not pinging.done()
    finally:
        pinging.cancel()
    assert idle_ws_stack.node is not None
    assert set(idle_ws_stack.node.sessions.by_user) == {cim_id, ws_id}


async def test_a_kick_through_the_route_ends_the_ws_session_with_offline_and_close_1000(ws_stack: Running) -> None:
    user_id, client, token = await ws_online(ws_stack, "alice")
    async with httpx.AsyncClient() as http:
        answer = await http.post(route_url(ws_stack) + "/offLine", json={"userId": user_id},
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    assert answer.json()["code"] == "9000"
    frames, code, _ = await client.closed()
    assert [(f.cmd, f.code) for f in frames] == [(OFFLINE, 9000)]
    assert code == 1000
    assert ws_stack.node is not None
    await eventually(lambda: ws_stack.node is not None and ws_stack.node.sessions.connections == 0)


# -- cim up, --workers --------------------------------------------------------------------------


async def test_cim_up_opens_a_websocket_port_and_says_where(tmp_path: Path) -> None:
    route_port = free_port()
    proc = CimProcess(tmp_path, "up", ["up", "--host", "127.0.0.1", "--port", str(free_port()), "--http-port", str(free_port()),
                                       "--route-port", str(route_port)])
    try:
        proc.wait_http(route_port)
        await eventually(lambda: "websocket ws://" in proc.log())
        match = re.search(r"websocket (ws://127\.0\.0\.1:(\d+)/ws)", proc.log())
        assert match is not None and int(match[2]) >= 8090, proc.log()
        url = f"http://127.0.0.1:{route_port}"
        alice_id, bob_id = await register(url, "alice", PASSWORD), await register(url, "bob", PASSWORD)
        got: list[Message] = []
        async with Client(url, alice_id, "alice", password=PASSWORD, transport="ws") as alice, \
                Client(url, bob_id, "bob", password=PASSWORD, on_message=got.append, transport="ws") as bob:
            assert alice.server is not None and alice.server.ws_url == match[1]
            await alice.send_private(bob_id, "over websockets")
            await eventually(lambda: [m.text for m in got] == ["over websockets"])
            assert bob.connected
    finally:
        assert proc.stop() == 0, proc.log()


async def test_workers_share_the_ws_port_registered_in_zookeeper(tmp_path: Path, redis_url: str, zk_hosts: str) -> None:
    workers, users = 2, 16
    prefix = "ws" + tmp_path.name[-6:].replace("-", "")
    backend = ["--redis", redis_url, "--zk", zk_hosts, "--zk-root", f"/{prefix}", "--key-prefix", prefix]
    route_port, port, ws_port, http_base = free_port(), free_port(), free_port(), free_ports_in_a_row(workers)
    env = {"CIM_SECRET": new_secret()}
    route = CimProcess(tmp_path, "route", ["route", "--host", "127.0.0.1", "--port", str(route_port), *backend], env)
    supervisor = CimProcess(tmp_path, "workers", ["server", "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
                                                  "--ws-port", str(ws_port), "--http-port", str(http_base), *backend], env)
    url = f"http://127.0.0.1:{route_port}"
    clients: list[Client] = []
    try:
        route.wait_http(route_port)
        for i in range(workers):
            supervisor.wait_http(http_base + i)
        await eventually(lambda: len(httpx.get(f"{url}/health").json()["servers"]) == workers)
        names = [f"user{i}" for i in range(users)]
        ids = [await register(url, n, PASSWORD) for n in names]
        inbox: list[Message] = []
        clients = [Client(url, i, n, password=PASSWORD, transport="ws", on_message=inbox.append if i == ids[0] else None)
                   for i, n in zip(ids, names, strict=True)]
        for client in clients:
            await client.connect()
            assert client.server is not None and client.server.ws_url == f"ws://127.0.0.1:{ws_port}/ws"  # from the node data

        def sessions() -> list[int]:
            return [httpx.get(f"http://127.0.0.1:{http_base + i}/stats").json().get("sessions", 0) for i in range(workers)]

        await eventually(lambda: sum(sessions()) == users)
        assert all(sessions()), f"the kernel spread {users} connections over the workers: {sessions()}"
        for client in clients[1:]:
            await client.send_private(ids[0], f"from {client.user_name}")  # across workers, over the bus
        await eventually(lambda: len(inbox) == users - 1)
    finally:
        for client in clients:
            await client.close()
        supervisor.stop(signal.SIGTERM)
        route.stop()


# -- the abuse limits, as over TCP (tests/test_limits_abuse.py) ------------------------------------


def chat_requests(sender: int, receiver: int, numbers: range, text: Callable[[int], str] = lambda n: f"m{n}") -> list[bytes]:
    """Plain chat messages, one serialized Request each: the n-th has clientMsgId n."""
    requests = []
    for n in numbers:
        request = Request(cmd=MESSAGE, requestId=sender, reqMsg=text(n), clientMsgId=n)
        request.properties[RECEIVE_USER_ID] = str(receiver)
        requests.append(request.SerializeToString())
    return requests


def send_in_one_write(client: WsRaw, payloads: list[bytes]) -> None:
    """Binary messages in one TCP write, as tests/test_limits_abuse.py sends frames in one
    buffer: the server reads them together, one run over the rate is one hit."""
    protocol = client.ws.protocol
    for payload in payloads:
        protocol.send_binary(payload)
    client.ws.transport.write(b"".join(protocol.data_to_send()))


async def answers_to(client: WsRaw, count: int) -> list[Response]:
    """The next ``count`` frames that are not the sender's own copies (cim.delivery)."""
    answers: list[Response] = []
    while len(answers) < count:
        if (frame := await client.next()).cmd != MESSAGE:
            answers.append(frame)
    return answers


async def ws_connect_from(running: Running, ip: str) -> ClientConnection:
    assert running.node is not None
    return await connect(f"ws://127.0.0.1:{running.node.config.ws_port}/ws", ping_interval=None, local_addr=(ip, 0))


async def test_a_ws_burst_gets_through_the_rest_is_refused_and_a_well_behaved_ws_client_is_unaffected() -> None:
    async with running_stack(ws_port=free_port()) as running:  # the defaults: 200 messages/s, bursts of 400
        node = running.node
        assert node is not None
        alice, a, _ = await ws_online(running, "alice")
        bob, b, _ = await ws_online(running, "bob")
        carol, c, _ = await ws_online(running, "carol")
        dave, d, _ = await ws_online(running, "dave")
        send_in_one_write(a, chat_requests(alice, bob, range(1, 2001)))
        send_in_one_write(c, chat_requests(carol, dave, range(1, 51), lambda n: f"c{n}"))  # within her burst
        accepted = burst_answered(await answers_to(a, 2000), node.config, alice)
        assert [(await b.next()).resMsg for _ in accepted] == [f"m{n}" for n in accepted]  # the refused ones went nowhere
        assert (await a.ping(alice)).resMsg == "pong"  # still connected: everything before it was handled
        assert (await b.ping(bob)).resMsg == "pong"  # and bob got nothing more
        assert [(r.clientMsgId, r.code) for r in await answers_to(c, 50)] == [(n, Status.SUCCESS.code) for n in range(1, 51)]
        assert [(await d.next()).resMsg for _ in range(50)] == [f"c{n}" for n in range(1, 51)]
        assert node.metrics[f"receipts_{Status.RATE_LIMITED.code}"] == 2000 - len(accepted)
        assert node.metrics["abuse_closes"] == 0


async def test_repeated_ws_hits_close_the_connection_with_a_4029_error_then_close_1008() -> None:
    async with running_stack(ws_port=free_port(), max_messages_per_second=10, abuse_limit=5) as running:
        node = running.node
        assert node is not None
        alice, a, _ = await ws_online(running, "alice")
        bob, b, _ = await ws_online(running, "bob")
        for hit in range(4):  # each write is one run over the rate (a burst holds 20): a hit
            send_in_one_write(a, chat_requests(alice, bob, range(hit * 30 + 1, hit * 30 + 31)))
            assert Status.RATE_LIMITED.code in {r.code for r in await answers_to(a, 30)}
        assert (await a.ping(alice)).resMsg == "pong"  # four hits: still connected
        send_in_one_write(a, chat_requests(alice, bob, range(121, 151)))  # the fifth closes it
        frames, code, reason = await a.closed()
        error = frames[-1]
        assert (error.cmd, error.code) == (ERROR, Status.RATE_LIMITED.code)
        assert "5 times within 10 s: closing" in error.resMsg
        assert {f.cmd for f in frames[:-1]} <= {SEND_RECEIPT, MESSAGE}  # receipts and her own copies
        assert code == 1008 and reason is not None and "5 times within 10 s: closing" in reason
        assert node.metrics["abuse_closes"] == 1
        await eventually(lambda: alice not in node.sessions.by_user, 2)
        pushes: list[Response] = []
        await b.send(cmd=PING, requestId=bob, reqMsg="ping")
        while (frame := await b.next()).cmd != PING:  # what got through from alice, then the pong
            pushes.append(frame)
        assert pushes and {p.cmd for p in pushes} == {MESSAGE}


async def test_an_over_long_text_gets_the_tcp_receipt_over_ws_and_the_next_message_arrives() -> None:
    async with running_stack(ws_port=free_port()) as running:
        node = running.node
        assert node is not None
        limit = node.config.max_message_bytes
        bob, b = await online(running, "bob")
        tcp_id, tcp = await online(running, "tcp")
        ws_id, ws, _ = await ws_online(running, "ws")
        too_long = "x" * (limit + 1)
        tcp.send({RECEIVE_USER_ID: str(bob)}, cmd=MESSAGE, requestId=tcp_id, reqMsg=too_long, clientMsgId=1)
        tcp.send({RECEIVE_USER_ID: str(bob)}, cmd=MESSAGE, requestId=tcp_id, reqMsg="tcp after", clientMsgId=2)
        tcp_receipts = [await tcp.next() for _ in range(2)]
        await ws.send({RECEIVE_USER_ID: str(bob)}, cmd=MESSAGE, requestId=ws_id, reqMsg=too_long, clientMsgId=1)
        await ws.send({RECEIVE_USER_ID: str(bob)}, cmd=MESSAGE, requestId=ws_id, reqMsg="ws after", clientMsgId=2)
        ws_receipts = await answers_to(ws, 2)

        def seen(receipts: list[Response]) -> list[tuple[int, int, int, str]]:
            return [(r.cmd, r.clientMsgId, r.code, r.resMsg if r.code != Status.SUCCESS.code else "") for r in receipts]

        assert seen(tcp_receipts) == [(SEND_RECEIPT, 1, Status.VALIDATION_FAIL.code, f"message over {limit} bytes"),
                                      (SEND_RECEIPT, 2, Status.SUCCESS.code, "")]
        assert seen(ws_receipts) == seen(tcp_receipts)
        assert ws_receipts[0].properties["receiveUserId"] == str(ws_id)
        assert [(await b.next()).resMsg for _ in range(2)] == ["tcp after", "ws after"]  # nothing else reached bob
        await ws.send(cmd=PING, requestId=ws_id, reqMsg="ping")
        assert [f.resMsg for f in await answers_to(ws, 1)] == ["pong"]  # after her own copy of "ws after"


async def test_ws_and_tcp_connections_share_the_per_ip_count_and_a_ws_one_past_it_gets_http_429() -> None:
    async with running_stack(ws_port=free_port(), max_connections_per_ip=3) as running:
        node = running.node
        assert node is not None
        held_tcp = [await connect_from(running, OTHER_IP) for _ in range(2)]
        held_ws = await ws_connect_from(running, OTHER_IP)  # the third from OTHER_IP
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect_from(running, OTHER_IP)
        assert refused.value.response.status_code == 429
        assert refused.value.response.body == f"too many connections from {OTHER_IP}: 3 at most\n".encode()
        [error] = await (await connect_from(running, OTHER_IP)).closed()  # a TCP one is refused as well
        assert (error.cmd, error.code) == (ERROR, Status.RATE_LIMITED.code)
        assert f"too many connections from {OTHER_IP}: 3 at most" in error.resMsg
        assert node.metrics["limit_hits_connections"] == 2
        alice, a, _ = await ws_online(running, "alice")  # from 127.0.0.1: unaffected
        assert (await a.ping(alice)).resMsg == "pong"
        await held_ws.close()
        await eventually(lambda: node.sessions.connections == 3, 2)  # two held, and alice
        again = WsRaw(await ws_connect_from(running, OTHER_IP))  # room again
        await again.send(cmd=PING, requestId=0, reqMsg="ping")  # not a login: refused for that, not for the limit
        frames, code, _ = await again.closed()
        assert [f.code for f in frames] == [Status.VALIDATION_FAIL.code] and code == 1008
        for client in held_tcp:
            client.close()
