"""Automatic pipelining of the Redis store (``cim.backends.redis_batch``) on real Redis (AOF on).

What the batcher promises its callers: the commands of one event-loop turn are one write;
each caller gets its own reply or its own error; commands run in the order they were
issued; a lost connection fails what was in flight, and later calls reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cim.backends.memory import MemoryHub
from cim.backends.redis import RedisBus, RedisInbox, RedisPresence, RedisStore, connect
from cim.backends.redis_batch import Batcher, Script, Subscriber
from cim.config import Config
from cim.testing.services import ServiceProcess, free_port
from tests.conftest import eventually

BUSY = Script("""
local t = redis.call('TIME')
repeat
  local n = redis.call('TIME')
until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > tonumber(ARGV[1])
return 1
""")  # keeps Redis busy for ARGV[1] microseconds: a command still in flight when Redis goes


def key() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def batcher(redis_url: str) -> AsyncIterator[Batcher]:
    client = connect(redis_url)
    b = Batcher(client)
    await b.call("PING")  # connected: the writes counted below are the tests' own
    yield b
    await b.close()
    await client.aclose(close_connection_pool=True)


@contextlib.contextmanager
def redis_on(workdir: Path, port: int) -> Iterator[ServiceProcess]:
    """A redis-server on ``port`` with its data (AOF) in ``workdir``: started again on the
    same port and directory, it is the same Redis after a restart."""
    server = ServiceProcess("redis-server", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec"], workdir / f"redis-{port}.log")
    try:
        server.wait_ready(lambda: redis.Redis(port=port).ping(), 15)
        yield server
    finally:
        server.stop(signal.SIGKILL)


async def test_the_commands_of_one_turn_are_one_pipeline_answered_in_order(batcher: Batcher) -> None:
    k = key()
    before = batcher.writes
    replies = await asyncio.gather(*(batcher.call("INCR", k) for _ in range(500)))
    assert replies == list(range(1, 501))  # run in the order issued, each caller its own reply
    assert batcher.writes == before + 1


async def test_many_senders_share_each_round_trip(redis_url: str) -> None:
    """As ``Messenger.send_private`` does: append, route, publish, from 100 senders at once."""
    config = Config(store=redis_url, key_prefix=key())
    store = await RedisStore.open(redis_url, config, MemoryHub())
    try:
        await store.inbox.append(1, 2, [b"warm"], 1, [0])  # the script loaded: no NOSCRIPT round below
        assert isinstance(store.inbox, RedisInbox) and isinstance(store.presence, RedisPresence)
        assert isinstance(store.bus, RedisBus)
        batcher = store.inbox._b
        assert store.presence._b is batcher and store.bus._b is batcher  # one pipeline for the four parts
        await store.presence.reserve_login(1000, "node-a", 60)

        async def send(sender: int) -> int:
            stored = await store.inbox.append(1000 + sender % 10, sender, [b"hi %d" % sender], sender * 10, [sender])
            assert await store.presence.servers(1000) == ["node-a"]
            await store.bus.publish("node-a", b"doorbell")
            return stored.first_seq

        before = batcher.writes
        seqs = await asyncio.gather(*(send(s) for s in range(100, 200)))
        # Three round trips for 300 commands (a few more if replies came in several reads).
        assert batcher.writes - before <= 6
        assert sorted(seqs) == sorted(list(range(1, 11)) * 10)  # each receiver's seqs 1..10, once each
        for receiver in range(1000, 1010):
            assert len((await store.inbox.read(receiver, 0, 100)).entries) == 10
    finally:
        await store.close()


async def test_an_error_reaches_only_its_caller(batcher: Batcher) -> None:
    text, counter = key(), key()
    await batcher.call("SET", text, "not a hash")
    first = batcher.call("INCR", counter)
    wrong = batcher.call("HGET", text, "field")
    failing = batcher.script(Script("return redis.error_reply('nope')"), [], [])
    third = batcher.call("INCR", counter)
    assert await first == 1
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await wrong
    with pytest.raises(ResponseError, match="nope"):
        await failing
    assert await third == 2
    with pytest.raises(TypeError):
        batcher.call("SET", counter, None)  # refused at the call: nothing queued
    assert await batcher.call("GET", counter) == b"2"


async def test_each_caller_keeps_its_order(batcher: Batcher) -> None:
    k = key()

    async def awaiting(tag: bytes) -> None:
        for i in range(50):
            await batcher.call("RPUSH", k, b"%s%d" % (tag, i))

    async def not_awaiting(tag: bytes) -> None:
        pushed = [batcher.call("RPUSH", k, b"%s%d" % (tag, i)) for i in range(50)]
        for future in pushed:
            await future
            await asyncio.sleep(0)

    await asyncio.gather(awaiting(b"a"), not_awaiting(b"b"), awaiting(b"c"))
    items = await batcher.call("LRANGE", k, 0, -1)
    for tag in (b"a", b"b", b"c"):
        assert [i for i in items if i.startswith(tag)] == [b"%s%d" % (tag, i) for i in range(50)]


async def test_a_cancelled_caller_leaves_the_others_their_replies(batcher: Batcher) -> None:
    k = key()
    first, second = batcher.call("INCR", k), batcher.call("INCR", k)
    first.cancel()  # its command still runs: it was issued
    assert await second == 2


async def test_a_script_redis_lacks_is_sent_whole(batcher: Batcher) -> None:
    script = Script(f"return '{key()}'")  # a script this Redis has never seen
    assert await batcher.call("SCRIPT", "EXISTS", script.sha) == [0]
    assert await batcher.script(script, [], []) == script.text[8:-1].encode()
    assert await batcher.call("SCRIPT", "EXISTS", script.sha) == [1]  # EVAL cached it: EVALSHA from now on
    other = Script(f"return KEYS[1] .. ARGV[1] .. '{key()}'")
    replies = await batcher.scripts(other, [([b"k%d" % i], [b"a%d" % i]) for i in range(20)])
    assert all(r.startswith(b"k%da%d" % (i, i)) for i, r in enumerate(replies))


async def test_a_redis_restart_fails_the_calls_in_flight_and_later_calls_succeed(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    client = connect(url)
    batcher = Batcher(client)
    got: list[bytes] = []
    subscriber = Subscriber(connect(url), ["doorbells"], got.append)
    try:
        with redis_on(tmp_path, port) as server:
            await subscriber.start()
            assert await batcher.call("INCR", "n") == 1
            assert await batcher.script(BUSY, [], [1]) == 1  # loaded: EVALSHA runs it at once below
            busy = asyncio.ensure_future(batcher.script(BUSY, [], [2_000_000]))  # Redis is inside it when killed
            await asyncio.sleep(0)  # issued
            behind = batcher.call("INCR", "n")  # written behind it: never answered
            await asyncio.sleep(0.3)
            os.kill(server.proc.pid, signal.SIGKILL)
            for in_flight in (busy, behind):
                with pytest.raises(RedisConnectionError):
                    await in_flight
            server.proc.wait()
            with pytest.raises(RedisConnectionError):  # Redis away: a call fails, it does not hang
                await asyncio.wait_for(batcher.call("PING"), 10)
        await asyncio.sleep(1.1)  # let the everysec fsync of the first Redis be long past
        with redis_on(tmp_path, port):
            assert int(await batcher.call("INCR", "n")) >= 2  # reconnected on demand
            assert await batcher.script(BUSY, [], [1000]) == 1  # the new Redis lacks the script: EVAL
            await eventually(lambda: subscriber.subscriptions == 2, 10)  # subscribed again
            await batcher.call("PUBLISH", "doorbells", b"ring")
            await eventually(lambda: got == [b"ring"], 5)
    finally:
        await subscriber.close()
        await batcher.close()
        await client.aclose(close_connection_pool=True)


async def test_a_redis_that_stops_answering_times_out(tmp_path: Path) -> None:
    port = free_port()
    client = connect(f"redis://127.0.0.1:{port}/0?socket_timeout=0.5")
    batcher = Batcher(client)
    try:
        with redis_on(tmp_path, port) as server:
            assert await batcher.call("PING") == b"PONG"
            server.proc.send_signal(signal.SIGSTOP)
            try:
                started = asyncio.get_running_loop().time()
                with pytest.raises(RedisTimeoutError):
                    await batcher.call("PING")
                assert asyncio.get_running_loop().time() - started < 3
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert await batcher.call("PING") == b"PONG"  # a new connection
    finally:
        await batcher.close()
        await client.aclose(close_connection_pool=True)


def test_a_stalled_loop_is_no_timeout(redis_url: str) -> None:
    """A node that did not run for a while (SIGSTOP, a long GC) finds its replies waiting:
    they are read, not failed as late. On uvloop, as the servers run: its timers run
    before its reads."""

    async def scenario() -> None:
        client = connect(f"{redis_url}?socket_timeout=0.5")
        batcher = Batcher(client)
        try:
            assert await batcher.script(BUSY, [], [1]) == 1  # loaded
            loop = asyncio.get_running_loop()
            # A callback of another connection, ready in the poll right after the command
            # is written, stalls the loop past the timeout: the reply comes meanwhile (Redis
            # takes 50 ms, so not before that poll), and libuv runs the due timers before
            # it polls again.
            stall, poke = socket.socketpair()

            def stalling() -> None:
                stall.recv(1)
                time.sleep(1.0)

            loop.add_reader(stall, stalling)
            try:
                busy = asyncio.ensure_future(batcher.script(BUSY, [], [50_000]))
                await asyncio.sleep(0)  # the EVALSHA is issued; it is written in the next turn
                loop.call_soon(poke.send, b"x")  # right after that write, in the same turn
                assert await busy == 1
            finally:
                loop.remove_reader(stall)
                stall.close()
                poke.close()
        finally:
            await batcher.close()
            await client.aclose(close_connection_pool=True)

    uvloop.run(scenario())


async def test_close_fails_what_waits_and_refuses_more(redis_url: str) -> None:
    client = connect(redis_url)
    batcher = Batcher(client)
    await batcher.call("PING")
    busy = asyncio.ensure_future(batcher.script(BUSY, [], [200_000]))
    await asyncio.sleep(0.05)
    await batcher.close()
    with pytest.raises(RedisConnectionError):
        await busy
    with pytest.raises(RedisConnectionError):
        batcher.call("PING")
    await client.aclose(close_connection_pool=True)


def test_the_store_on_uvloop(redis_url: str) -> None:
    """The servers run uvloop: its transports must take over redis-py's connections too."""

    async def scenario() -> None:
        store = await RedisStore.open(redis_url, Config(store=redis_url, key_prefix=key()), MemoryHub())
        try:
            got: list[bytes] = []
            await store.bus.subscribe("n1", got.append)
            stored = await asyncio.gather(*(store.inbox.append(7, s, [b"m"], s, [s]) for s in range(1, 51)))
            assert sorted(s.first_seq for s in stored) == list(range(1, 51))
            await store.bus.publish("n1", b"ring")
            await eventually(lambda: got == [b"ring"], 5)
            assert (await store.inbox.read(7, 0, 100)).latest == 50
        finally:
            await store.close()

    uvloop.run(scenario())
