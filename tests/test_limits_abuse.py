"""The abuse limits on real sockets (route + cim-server in this process, embedded backends):
messages and bytes a second per connection, repeated hits closing it, connections and
logins per IP address, route requests per IP. Every limited client is told why, and
nobody else notices. Other clients come from another loopback address, 127.0.0.2.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.cli import _config, build_parser
from cim.config import Config
from cim.proto import BaseCommand, Response
from cim.protocols.client import ClientConnection
from cim.ratelimit import BURST_SECONDS
from cim.run import Running, start
from cim.status import Status
from tests.conftest import PASSWORD, RawClient, eventually, online, route_url, stack_config

OTHER_IP = "127.0.0.2"


@asynccontextmanager
async def running_stack(**limits: Any) -> AsyncIterator[Running]:
    running = await start(stack_config(**limits), {"server", "route"}, MemoryHub())
    try:
        yield running
    finally:
        await running.stop()


async def connect_from(running: Running, ip: str) -> RawClient:
    assert running.node is not None
    return RawClient(*await asyncio.open_connection("127.0.0.1", running.node.port, local_addr=(ip, 0)))


async def until_pong(client: RawClient) -> AsyncIterator[Response]:
    """What the client receives before the next pong."""
    while (frame := await client.next()).cmd != BaseCommand.PING:
        yield frame


def messages(sender: int, receiver: int, numbers: range, text: Callable[[int], str] = lambda n: f"m{n}") -> bytes:
    """Plain chat messages in one buffer: the n-th has clientMsgId n."""
    conn = ClientConnection(sender, "")
    return b"".join(conn.message(text(n), receiver, client_msg_id=n) for n in numbers)


def burst_answered(receipts: list[Response], config: Config, sender_id: int) -> list[int]:
    """The clientMsgIds accepted of a burst of sends numbered from 1, after checking its receipts (over
    TCP or WebSocket alike): one per send, in order, the first BURST_SECONDS worth accepted, every
    refusal 4029 with the standard text, no msgId and the sender's receiveUserId."""
    assert [(r.cmd, r.clientMsgId) for r in receipts] == [(BaseCommand.SEND_RECEIPT, n) for n in range(1, len(receipts) + 1)]
    accepted = [r.clientMsgId for r in receipts if r.code == Status.SUCCESS.code]
    refused = [r for r in receipts if r.code != Status.SUCCESS.code]
    burst = BURST_SECONDS * config.max_messages_per_second
    assert accepted[:burst] == list(range(1, burst + 1)) and refused
    assert {(r.code, r.resMsg, r.msgId, r.properties["receiveUserId"]) for r in refused} == {
        (Status.RATE_LIMITED.code, Status.RATE_LIMITED.message, 0, str(sender_id))
    }
    return accepted


async def test_a_burst_gets_through_the_rest_is_refused_and_the_connection_goes_on() -> None:
    async with running_stack() as running:  # the defaults: 200 messages/s, bursts of 400
        node = running.node
        assert node is not None
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        a.send_raw(messages(alice, bob, range(1, 2001)))
        accepted = burst_answered([await a.next() for _ in range(2000)], node.config, alice)
        pushes = [await b.next() for _ in accepted]
        assert [p.resMsg for p in pushes] == [f"m{n}" for n in accepted]  # the refused ones went nowhere
        assert (await a.ping(alice)).resMsg == "pong"  # still connected: everything before it was handled
        assert (await b.ping(bob)).resMsg == "pong"  # and bob got nothing more
        assert node.metrics[f"receipts_{Status.RATE_LIMITED.code}"] == 2000 - len(accepted)
        assert node.metrics["limit_hits_messages"] >= 1
        assert node.metrics["abuse_closes"] == 0


async def test_a_flood_does_not_touch_another_users_conversation() -> None:
    async with running_stack(max_messages_per_second=50) as running:
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        carol, c = await online(running, "carol")
        dave, d = await online(running, "dave")
        for round_ in range(10):  # alice floods bob, carol writes to dave in between, within her burst of 100
            a.send_raw(messages(alice, bob, range(round_ * 200 + 1, round_ * 200 + 201)))
            c.send_raw(messages(carol, dave, range(round_ * 8 + 1, round_ * 8 + 9), lambda n: f"c{n}"))
            await asyncio.gather(a.writer.drain(), c.writer.drain())
        assert [(await d.next()).resMsg for _ in range(80)] == [f"c{n}" for n in range(1, 81)]
        carol_receipts = [await c.next() for _ in range(80)]
        assert [(r.clientMsgId, r.code) for r in carol_receipts] == [(n, Status.SUCCESS.code) for n in range(1, 81)]
        alice_receipts = [await a.next() for _ in range(2000)]
        assert Status.RATE_LIMITED.code in {r.code for r in alice_receipts}


async def test_repeated_hits_close_the_connection_with_a_4029_error() -> None:
    async with running_stack(max_messages_per_second=10, abuse_limit=5) as running:
        node = running.node
        assert node is not None
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        for hit in range(4):  # each write is one run over the rate (a burst holds 20): a hit
            a.send_raw(messages(alice, bob, range(hit * 30 + 1, hit * 30 + 31)))
            receipts = [await a.next() for _ in range(30)]
            assert Status.RATE_LIMITED.code in {r.code for r in receipts}
        assert (await a.ping(alice)).resMsg == "pong"  # four hits: still connected
        # The fifth closes it. (Nothing more is sent: data the server has not read when
        # it closes would make its kernel answer with a reset, not the error frame.)
        a.send_raw(messages(alice, bob, range(121, 151)))
        frames = await a.closed()
        error = frames[-1]
        assert (error.cmd, error.code) == (BaseCommand.ERROR, Status.RATE_LIMITED.code)
        assert "5 times within 10 s: closing" in error.resMsg
        assert all(f.cmd == BaseCommand.SEND_RECEIPT for f in frames[:-1])
        assert node.metrics["abuse_closes"] == 1
        await eventually(lambda: alice not in node.sessions.by_user, 2)
        b.send_ping(bob)
        pushes = [frame async for frame in until_pong(b)]  # what got through from alice, then the pong
        assert pushes and {p.cmd for p in pushes} == {BaseCommand.MESSAGE}


async def test_over_the_bytes_rate_reading_pauses_and_nothing_is_lost() -> None:
    async with running_stack(max_bytes_per_second=40_000) as running:
        node = running.node
        assert node is not None
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        a.send_raw(messages(alice, bob, range(1, 31), lambda n: f"{n:04d}" + "x" * 3996))  # 120 kB: over the 80 kB burst
        receipts: list[Response] = []
        errors: list[Response] = []
        while len(receipts) < 30:
            frame = await a.next()
            (errors if frame.cmd == BaseCommand.ERROR else receipts).append(frame)
        assert errors and {e.code for e in errors} == {Status.RATE_LIMITED.code}
        assert all("over 40000 bytes/s; reading paused for" in e.resMsg for e in errors)
        assert [(r.clientMsgId, r.code) for r in receipts] == [(n, Status.SUCCESS.code) for n in range(1, 31)]
        assert [(await b.next()).resMsg[:4] for _ in range(30)] == [f"{n:04d}" for n in range(1, 31)]
        assert node.metrics["limit_hits_bytes"] >= 1
        assert (await a.ping(alice)).resMsg == "pong"  # reading resumed


async def test_connections_past_the_per_ip_limit_are_refused_and_others_go_on() -> None:
    async with running_stack(max_connections_per_ip=3) as running:
        node = running.node
        assert node is not None
        held = [await connect_from(running, OTHER_IP) for _ in range(3)]
        extra = await connect_from(running, OTHER_IP)
        [error] = await extra.closed()
        assert (error.cmd, error.code) == (BaseCommand.ERROR, Status.RATE_LIMITED.code)
        assert f"too many connections from {OTHER_IP}: 3 at most" in error.resMsg
        assert node.metrics["limit_hits_connections"] == 1
        alice, a = await online(running, "alice")  # from 127.0.0.1: unaffected
        assert (await a.ping(alice)).resMsg == "pong"
        held[0].close()
        await eventually(lambda: node.sessions.connections == 3, 2)  # two held, and alice
        again = await connect_from(running, OTHER_IP)  # room again
        again.send_ping(0)  # not a login: refused for that, not for the limit
        [refusal] = await again.closed()
        assert refusal.code == Status.VALIDATION_FAIL.code


async def test_tcp_logins_past_the_per_ip_rate_are_refused() -> None:
    async with running_stack(max_logins_per_minute=3) as running:
        node = running.node
        assert node is not None
        errors: list[Response] = []
        for _ in range(4):
            client = await connect_from(running, OTHER_IP)
            client.login(424242, "ghost")  # counted whatever becomes of it
            errors += await client.closed()
        assert [e.cmd for e in errors] == [BaseCommand.ERROR] * 4
        assert Status.RATE_LIMITED.code not in [e.code for e in errors[:3]]  # refused, but for the user they name
        assert errors[3].code == Status.RATE_LIMITED.code
        assert f"over 3 logins a minute from {OTHER_IP}" in errors[3].resMsg
        assert node.metrics["limit_hits_logins"] == 1
        alice, a = await online(running, "alice")  # another address logs in
        assert (await a.ping(alice)).resMsg == "pong"


async def test_route_requests_past_the_per_ip_rate_get_429_in_the_envelope() -> None:
    async with running_stack(max_route_requests_per_second=5, max_logins_per_minute=2) as running:
        url = route_url(running)
        async with httpx.AsyncClient(base_url=url) as http:
            answers = [await http.get("/onlineUser") for _ in range(100)]
            statuses = [r.status_code for r in answers]
            assert statuses[:10] == [200] * 10 and 429 in statuses  # the burst, then the limit
            refused = answers[statuses.index(429)]
            assert refused.json() == {
                "code": "4029", "message": "rate limit exceeded: over 5 requests/s from 127.0.0.1", "reqNo": None,
                "dataBody": None,
            }
            assert int(refused.headers["Retry-After"]) >= 1
        other = httpx.AsyncHTTPTransport(local_address=OTHER_IP)
        async with httpx.AsyncClient(base_url=url, transport=other) as http:
            assert (await http.get("/onlineUser")).status_code == 200  # another address is not limited
            body = {"userId": 1, "userName": "nobody", "password": PASSWORD}
            logins = [await http.post("/login", json=body) for _ in range(3)]
            assert [r.status_code for r in logins[:2]] == [200, 200]  # answered (9100: no such user)
            assert logins[2].status_code == 429 and logins[2].json()["code"] == "4029"
            assert "over 2 logins or registrations a minute" in logins[2].json()["message"]
        third = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        async with httpx.AsyncClient(base_url=url, transport=third) as http:
            # Registering checks a password too (a taken name's): it counts with the logins.
            body = {"userName": "someone", "password": PASSWORD}
            registrations = [await http.post("/registerAccount", json=body) for _ in range(3)]
            assert [r.status_code for r in registrations] == [200, 200, 429]
            assert registrations[2].json()["code"] == "4029"


def test_the_flags_reach_the_config_and_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIM_MAX_LOGINS_PER_MINUTE", "7")
    server = _config(build_parser().parse_args(["server", "--max-messages-per-second", "0", "--abuse-limit", "3"]))
    assert (server.max_messages_per_second, server.abuse_limit, server.max_logins_per_minute) == (0, 3, 7)
    assert server.max_bytes_per_second == Config().max_bytes_per_second
    route = _config(build_parser().parse_args(["route", "--max-route-requests-per-second", "5"]))
    assert (route.max_route_requests_per_second, route.max_logins_per_minute) == (5, 7)
    up = _config(build_parser().parse_args(["up", "--max-connections-per-ip", "2", "--max-logins-per-minute", "9"]))
    assert (up.max_connections_per_ip, up.max_logins_per_minute) == (2, 9)


def test_a_negative_limit_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="max-bytes-per-second must be 0 \\(off\\) or more, not -1"):
        Config(max_bytes_per_second=-1)
