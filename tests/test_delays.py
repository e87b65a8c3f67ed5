"""Delayed messages (CIM's ``:delay``): the schedule on every backend (memory, real Redis, SQLite
with a data dir), in-band and route sends answered at once and delivered at their time through the
normal path, the limit, and the schedule surviving a SIGKILL of ``cim up --data-dir`` and of the
cim-servers on Redis. Times are checked one way only: nothing arrives before it is due."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cim.backends.base import CLAIM_MS, Delays, Store
from cim.backends.memory import MemoryHub
from cim.backends.registry import STORES
from cim.client import Client, ClientError, Message, RouteClient, register
from cim.config import Config
from cim.delivery import DelayedMessage
from cim.destinations import ToUser
from cim.messages import Sender
from cim.proto import MESSAGE, SEND_RECEIPT, Request
from cim.run import Running, start
from cim.status import Status
from tests.conftest import PASSWORD, Cluster, RawClient, eventually, new_secret, online, register_user, route_url, stack_config
from tests.test_delivery import start_up
from tests.test_embedded_cli import Console, cim_up

INVALID = Status.VALIDATION_FAIL.code


# -- the store -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def open_delays(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Opens the param's store and returns its Delays; every call opens another store on the
    same data (the same Redis prefix, the same data dir: a second node), except ``memory``,
    which lives in one process and hands out the same store."""
    if request.param == "redis":
        config = Config(store=request.getfixturevalue("redis_url"), key_prefix=f"t{uuid.uuid4().hex[:8]}")
    elif request.param == "sqlite":
        config = Config(data_dir=str(tmp_path))
    else:
        config = Config()
    hub = MemoryHub()
    stores: list[Store] = []

    async def open_() -> Delays:
        stores.append(await STORES.open(config.store, config, hub))
        assert type(stores[-1].delays).__module__ == f"cim.backends.{request.param}"
        return stores[-1].delays

    yield open_
    for store in stores:
        await store.close()


async def test_entries_come_due_in_order_never_before_and_once_per_claim(open_delays: Callable[[], Any]) -> None:
    delays: Delays = await open_delays()
    late = await delays.add(3000, b"late")
    first = await delays.add(1000, b"first")
    second = await delays.add(2000, b"second")
    tie = await delays.add(2000, b"tie")
    assert len({late, first, second, tie}) == 4
    assert await delays.take_due(999, 10) == []
    assert await delays.take_due(2000, 2) == [(first, b"first"), (second, b"second")]  # earliest first, the limit
    assert await delays.take_due(2000, 10) == [(tie, b"tie")]  # the others are claimed
    assert await delays.take_due(2500, 10) == []
    assert await delays.take_due(3000, 10) == [(late, b"late")]
    await delays.done([first, late])
    # A claim not followed by done (its node died) lapses: the entry comes due again.
    assert await delays.take_due(2000 + CLAIM_MS - 1, 10) == []
    assert await delays.take_due(2000 + CLAIM_MS, 10) == [(second, b"second"), (tie, b"tie")]
    await delays.done([second, tie])
    assert await delays.take_due(10**13, 10) == []
    await delays.done([])


async def test_concurrent_takers_take_each_entry_once(open_delays: Callable[[], Any]) -> None:
    one: Delays = await open_delays()
    other: Delays = await open_delays()
    added = [await one.add(1000 + k % 7, b"%d" % k) for k in range(60)]
    takes = await asyncio.gather(*(taker.take_due(5000, 7) for _ in range(10) for taker in (one, other)))
    taken = [entry_id for take in takes for entry_id, _ in take]
    assert sorted(taken) == sorted(added)  # 20 takes of up to 7: every entry, none twice


async def test_a_restart_keeps_the_schedule(tmp_path: Path) -> None:
    config = Config(data_dir=str(tmp_path))
    store = await STORES.open("memory://", config, MemoryHub())
    entry = await store.delays.add(1000, b"kept")
    await store.close()
    store = await STORES.open("memory://", config, MemoryHub())
    try:
        assert await store.delays.take_due(1000, 10) == [(entry, b"kept")]
        assert await store.delays.add(1000, b"next") > entry
    finally:
        await store.close()


# -- the wire ------------------------------------------------------------------------------


def test_the_wire_fast_path_leaves_a_delayed_message_to_protobuf(wire: ModuleType) -> None:
    plain = Request(cmd=MESSAGE, reqMsg="hi", clientMsgId=5)
    plain.properties["receiveUserId"] = "7"
    delayed = Request(cmd=MESSAGE, reqMsg="hi", clientMsgId=5, delaySeconds=1)
    delayed.properties["receiveUserId"] = "7"
    assert wire.scan_chat_run([plain.SerializeToString()], 0, 4096)[0] == 1
    assert wire.scan_chat_run([delayed.SerializeToString()], 0, 4096)[0] == 0
    assert wire.scan_chat_run([plain.SerializeToString(), delayed.SerializeToString()], 0, 4096)[0] == 1


def delayed(client: RawClient, receiver: int, text: str, client_msg_id: int, delay_seconds: int) -> None:
    client.send({"receiveUserId": str(receiver)}, cmd=MESSAGE, reqMsg=text, clientMsgId=client_msg_id,
                delaySeconds=delay_seconds)


async def test_a_delayed_private_message_is_answered_now_and_arrives_at_its_time(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    sent_at = time.time()
    delayed(alice, bob_id, "later", 41, 1)
    receipt = await alice.next()
    assert (receipt.cmd, receipt.code, receipt.clientMsgId, receipt.properties["receiveUserId"]) == (
        SEND_RECEIPT, 9000, 41, str(alice_id))
    assert receipt.msgId > 0
    alice.send({"receiveUserId": str(bob_id)}, cmd=MESSAGE, reqMsg="now", clientMsgId=42)
    assert (await alice.next()).code == 9000
    now = await bob.next()
    assert now.resMsg == "now" and now.seq == 1  # the delayed one is not in the inbox yet
    push = await bob.next()
    arrived = time.time()
    assert arrived >= sent_at + 1.0 and push.timestamp >= int(sent_at * 1000) + 1000  # not before it was due
    assert (push.cmd, push.resMsg, push.msgId, push.seq, push.responseId) == (MESSAGE, "later", receipt.msgId, 2, alice_id)
    assert (push.properties["sendUserName"], push.properties["receiveUserId"]) == ("alice", str(bob_id))


async def test_a_delayed_message_is_checked_when_sent(stack: Running) -> None:
    _, alice = await online(stack, "alice")
    delayed(alice, 999, "to nobody", 1, 1)
    refused = await alice.next()
    assert (refused.code, refused.clientMsgId) == (INVALID, 1) and "999 is not a registered user" in refused.resMsg
    alice.send(cmd=MESSAGE, reqMsg="to no group", groupId="g404", clientMsgId=2, delaySeconds=1)
    refused = await alice.next()
    assert (refused.code, refused.clientMsgId) == (INVALID, 2) and "no such group" in refused.resMsg


def sdk(running: Running, user_id: int, name: str, inbox: list[Message]) -> Client:
    return Client(route_url(running), user_id, name, password=PASSWORD, on_message=inbox.append)


async def test_delayed_group_messages_reach_everyone_and_a_named_group_at_their_time(stack: Running) -> None:
    names = ["alice", "bob", "carol"]
    ids = {name: await register_user(stack, name) for name in names}
    inbox: dict[str, list[Message]] = {name: [] for name in names}
    clients = {name: sdk(stack, ids[name], name, inbox[name]) for name in names}
    for client in clients.values():
        await client.connect()
    try:
        alice = clients["alice"]
        team = await alice.groups.create("team", [ids["bob"]])
        sent_at = time.time()
        to_all = await alice.send_group("to all, later", delay_seconds=1)
        to_team = await alice.send_group("to the team, later", group_id=team, delay_seconds=2)
        assert to_all.code == to_team.code == 9000 and to_all.msg_id != to_team.msg_id
        await eventually(lambda: len([m for m in inbox["bob"] if not m.notice]) == 2)
        await eventually(lambda: len(inbox["carol"]) == 1)
        arrived = time.time()
        bob = [m for m in inbox["bob"] if not m.notice]
        assert [(m.text, m.msg_id, m.group_id) for m in bob] == [
            ("to all, later", to_all.msg_id, ""), ("to the team, later", to_team.msg_id, team)]
        assert [(m.text, m.msg_id) for m in inbox["carol"]] == [("to all, later", to_all.msg_id)]  # not in the team
        assert bob[0].timestamp_ms >= int(sent_at * 1000) + 1000 and bob[1].timestamp_ms >= int(sent_at * 1000) + 2000
        assert arrived >= sent_at + 2.0
        # The sender's copies, to her devices, at the time they went out (this one's: from_this_device)
        assert [(m.text, m.msg_id, m.outgoing, m.from_this_device) for m in inbox["alice"] if not m.notice] == [
            ("to all, later", to_all.msg_id, True, True), ("to the team, later", to_team.msg_id, True, True)]
    finally:
        for client in clients.values():
            await client.close()


async def test_a_delayed_message_delivered_again_after_a_lapsed_claim_arrives_once(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    assert stack.node is not None
    delays = stack.node.backends.delays
    sender = Sender.of(alice_id, "alice")
    due_ms = int(time.time() * 1000)
    # Each message twice: what a claim that lapsed after the inbox append (its node died before
    # ``done``) hands the next taker. With a clientMsgId, and without one (CIM's client).
    for text, client_msg_id, msg_id in (("with an id", 77, 10**17), ("without", 0, 10**17 + 1)):
        payload = DelayedMessage.of(sender, ToUser(bob_id), text.encode(), client_msg_id, msg_id).encode()
        for _ in range(2):
            await delays.add(due_ms, payload)
    pushes = [await bob.next(), await bob.next()]
    assert [(p.resMsg, p.msgId, p.seq) for p in pushes] == [("with an id", 10**17, 1), ("without", 10**17 + 1, 2)]
    alice.send({"receiveUserId": str(bob_id)}, cmd=MESSAGE, reqMsg="after", clientMsgId=1)
    assert [(p.resMsg, p.seq) for p in [await bob.next()]] == [("after", 3)]  # nothing in between
    assert await delays.take_due(10**13, 10) == []  # the duplicates were done too


@pytest.fixture
async def short_delays() -> AsyncIterator[Running]:
    running = await start(stack_config(max_delay_seconds=5), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


async def test_a_delay_over_the_limit_or_negative_is_refused(short_delays: Running) -> None:
    alice_id, bob_id = await register_user(short_delays, "alice"), await register_user(short_delays, "bob")
    inbox: list[Message] = []
    alice = sdk(short_delays, alice_id, "alice", inbox)
    await alice.connect()
    try:
        with pytest.raises(ClientError) as refused:
            await alice.send_private(bob_id, "too late", delay_seconds=6)
        assert refused.value.code == INVALID
        assert "delaySeconds 6: 1 to 5 (--max-delay-seconds)" in str(refused.value)
        assert (await alice.send_private(bob_id, "in time", delay_seconds=5)).code == 9000
        async with RouteClient(route_url(short_delays)) as route:
            token = alice.session.token
            for delay in (-1, 6):
                with pytest.raises(ClientError) as refused:
                    await route.p2p(alice_id, bob_id, "no", token=token, delay_seconds=delay)
                assert refused.value.code == INVALID and f"delaySeconds {delay}:" in str(refused.value)
                with pytest.raises(ClientError):
                    await route.group(alice_id, "no", token=token, delay_seconds=delay)
        assert short_delays.node is not None  # only the one in time was kept
        assert [b"in time" in payload for _, payload in await short_delays.node.backends.delays.take_due(10**13, 10)] == [True]
    finally:
        await alice.close()


async def test_the_route_takes_delay_seconds(stack: Running) -> None:
    alice_id = await register_user(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    async with RouteClient(route_url(stack)) as route:
        token = (await route.login(alice_id, "alice", PASSWORD)).token
        sent_at = time.time()
        assert not await route.p2p(alice_id, bob_id, "p2p later", token=token, delay_seconds=1)  # 9000: scheduled
        await route.group(alice_id, "group later", token=token, delay_seconds=1)
    pushes = [await bob.next(), await bob.next()]
    assert time.time() >= sent_at + 1.0 and all(p.timestamp >= int(sent_at * 1000) + 1000 for p in pushes)
    assert sorted(p.resMsg for p in pushes) == ["group later", "p2p later"]
    assert sorted(p.seq for p in pushes) == [1, 2]


# -- surviving restarts --------------------------------------------------------------------


async def test_a_delayed_message_survives_a_sigkill_of_cim_up_with_a_data_dir(tmp_path: Path) -> None:
    data_dir, secret = tmp_path / "data", new_secret()
    proc, url = start_up(tmp_path, data_dir, secret)
    try:
        alice_id = await register(url, "alice", PASSWORD)
        bob_id = await register(url, "bob", PASSWORD)
        inbox: list[Message] = []
        alice = Client(url, alice_id, "alice", password=PASSWORD, on_message=inbox.append)
        await alice.connect()
        receipt = await alice.send_private(bob_id, "kept for later", delay_seconds=2)
        assert receipt.code == 9000  # scheduled (bob is away: no 7000, nothing is stored in his inbox yet)
    finally:
        proc.stop(signal.SIGKILL)  # before it is due: only the schedule on disk knows of it
    proc, url = start_up(tmp_path, data_dir, secret)
    try:
        got: list[Message] = []
        bob = Client(url, bob_id, "bob", password=PASSWORD, on_message=got.append)
        await bob.connect()
        try:
            await eventually(lambda: len(got) == 1)
            assert (got[0].text, got[0].msg_id, got[0].sender_id) == ("kept for later", receipt.msg_id, alice_id)
            await asyncio.sleep(0.6)  # a few polls more: delivered once
            assert len(got) == 1
        finally:
            await bob.close()
    finally:
        assert proc.stop() == 0, proc.log()


async def test_a_delayed_message_survives_a_sigkill_of_the_cim_servers_on_redis(
    tmp_path: Path, redis_url: str, zk_hosts: str
) -> None:
    cluster = Cluster(tmp_path, redis_url, zk_hosts)
    try:
        await eventually(lambda: len(cluster.route_servers()) == 2)
        alice_id = await register(cluster.url, "alice", PASSWORD)
        bob_id = await register(cluster.url, "bob", PASSWORD)
        alice = Client(cluster.url, alice_id, "alice", password=PASSWORD, reconnect_attempts=0)
        await alice.connect()
        sent_at = time.time()
        receipt = await alice.send_private(bob_id, "kept in redis", delay_seconds=2)
        assert receipt.code == 9000
        for proc, _ in cluster.servers:
            proc.stop(signal.SIGKILL)  # no node is left to deliver it when it comes due
        await alice.close()
        await asyncio.sleep(max(0.0, sent_at + 2.5 - time.time()))  # due, with nobody polling
        cluster.servers.clear()
        cluster.add_server("server2")
        await eventually(lambda: len(cluster.route_servers()) == 1, timeout=20)
        got: list[Message] = []
        bob = Client(cluster.url, bob_id, "bob", password=PASSWORD, on_message=got.append)
        await bob.connect()
        try:
            await eventually(lambda: len(got) == 1)
            assert (got[0].text, got[0].msg_id) == ("kept in redis", receipt.msg_id)
        finally:
            await bob.close()
    finally:
        cluster.stop()


# -- the console ---------------------------------------------------------------------------


def test_the_console_delay_command(tmp_path: Path) -> None:
    with cim_up(tmp_path) as url:
        console_delay(url)


def console_delay(up: str) -> None:
    alice = Console(up, "--register", "alice")
    alice.expect("type :all for commands")
    bob = Console(up, "--register", "bob")
    bob.expect("type :all for commands")
    alice.type(":all")
    alice.expect(":delay TEXT SECONDS")
    alice.type(":delay no seconds")
    alice.expect("usage: :delay TEXT SECONDS")
    sent_at = time.monotonic()
    alice.type(":delay see you in a second 1")
    alice.expect("scheduled: sent to everyone online in 1 s")
    line = bob.expect("see you in a second")
    assert time.monotonic() >= sent_at + 1.0 and "alice(" in line
    for console in (alice, bob):
        console.type(":q!")
        assert console.wait() == 0
