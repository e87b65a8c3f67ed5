"""Presence (issue 11, item 3): debounced online/offline events to the connections that subscribed
(SUBSCRIBE_PRESENCE), the states now on subscribing and on the route's ``/presence``; the debouncer
sans-I/O, the SDK on the embedded stack and across two Redis nodes (a SIGKILLed node's users go
offline), and CIM's client, which never subscribes, never getting a PRESENCE frame."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.client import Client, ClientError, register
from cim.presence import MAX_WATCHED, Debouncer
from cim.proto import MESSAGE, PING, PRESENCE, SUBSCRIBE_PRESENCE
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
from tests.test_sdk_delivery import ConsoleProcess

DEBOUNCE = 1.0  # --presence-debounce-seconds of the stacks here


# -- the debouncer, sans-I/O ---------------------------------------------------


def test_online_at_once_offline_only_after_the_window() -> None:
    debouncer = Debouncer(debounce=5)
    assert debouncer.came(7, "a") == [(7, True)]
    debouncer.went(7, "a", now=100)
    assert debouncer.due(104.9) == []
    assert debouncer.known_online(7)  # not reported offline yet
    assert debouncer.due(105) == [(7, False)]
    assert not debouncer.known_online(7)
    assert debouncer.due(200) == []  # once


def test_a_reconnect_within_the_window_is_no_event_on_any_node() -> None:
    debouncer = Debouncer(debounce=5)
    debouncer.came(7, "a")
    debouncer.went(7, "a", now=100)
    assert debouncer.came(7, "b") == []  # back, on another node
    assert debouncer.due(110) == []
    debouncer.went(7, "b", now=120)
    assert debouncer.due(125) == [(7, False)]
    assert debouncer.came(7, "a") == [(7, True)]  # after the window: a new coming


def test_online_while_any_node_holds_a_device() -> None:
    debouncer = Debouncer(debounce=0)
    assert debouncer.came(7, "a") == [(7, True)]
    assert debouncer.came(7, "b") == []
    debouncer.went(7, "a", now=1)
    assert debouncer.due(2) == []  # still on b
    debouncer.went(7, "b", now=3)
    assert debouncer.due(3) == [(7, False)]


def test_leaving_unheard_of_is_reported_offline() -> None:
    """A node that started after the user came (or the route clearing a dead node) still reports them gone."""
    debouncer = Debouncer(debounce=2)
    debouncer.went(7, "a", now=10)
    debouncer.went(7, "a", now=11)  # twice (the node, then the route's clear): one event, at the first window
    assert debouncer.due(12) == [(7, False)]


# -- on the embedded stack -----------------------------------------------------


@pytest.fixture
async def stack() -> AsyncIterator[Running]:
    running = await start(stack_config(presence_debounce_seconds=DEBOUNCE), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


def watcher(url: str, user_id: int, name: str, events: list[tuple[int, bool]]) -> Client:
    client = Client(url, user_id, name, password=PASSWORD)
    client.on_presence = lambda user_id, online: events.append((user_id, online))
    return client


@contextlib.asynccontextmanager
async def alice_watching_bob(stack: Running) -> AsyncIterator[tuple[Client, Client, list[tuple[int, bool]]]]:
    """alice connected, her presence events going to the list; bob's client made, not connected; both closed after."""
    url = route_url(stack)
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    events: list[tuple[int, bool]] = []
    alice = watcher(url, alice_id, "alice", events)
    await alice.connect()
    bob = Client(url, bob_id, "bob", password=PASSWORD)
    try:
        yield alice, bob, events
    finally:
        await bob.close()
        await alice.close()


async def test_sdk_subscribe_then_online_and_debounced_offline(stack: Running) -> None:
    async with alice_watching_bob(stack) as (alice, bob, events):
        alice_id, bob_id = alice.user_id, bob.user_id
        assert await alice.subscribe_presence([bob_id, alice_id]) == {bob_id: False, alice_id: True}
        await bob.connect()
        await eventually(lambda: events == [(bob_id, True)])
        await bob.close()
        await eventually(lambda: events == [(bob_id, True), (bob_id, False)])
        alice.unsubscribe_presence([bob_id])
        await asyncio.sleep(0.2)  # the unsubscription is in before bob comes back
        async with Client(route_url(stack), bob_id, "bob", password=PASSWORD):  # bob back, a new client
            await asyncio.sleep(DEBOUNCE)
        assert events == [(bob_id, True), (bob_id, False)]  # not watched any more


async def test_the_sdk_watches_again_after_a_reconnect(stack: Running) -> None:
    """The server forgets a connection's watches with it: the SDK subscribes again on its next connection,
    where the states now come as events, and later changes too."""
    async with alice_watching_bob(stack) as (alice, bob, events):
        bob_id = bob.user_id
        assert await alice.subscribe_presence([bob_id]) == {bob_id: False}
        assert stack.node is not None
        [peer] = stack.node.sessions.by_user[alice.user_id].peers
        peer.abort("test: cut")  # alice's connection, and with it her watch on the server
        await eventually(lambda: alice.reconnects == 1 and alice.connected)
        await eventually(lambda: events == [(bob_id, False)])  # the answer on the new connection
        await bob.connect()
        await eventually(lambda: events == [(bob_id, False), (bob_id, True)])


async def test_a_reconnect_within_the_window_yields_no_events(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    events: list[tuple[int, bool]] = []
    alice = watcher(route_url(stack), alice_id, "alice", events)
    await alice.connect()
    bob_answer = await route_login(stack, bob_id, "bob")
    bob = await RawClient.connect(bob_answer.server.port)
    bob.login(bob_id, "bob", bob_answer.token or "")
    assert (await bob.ping(bob_id)).cmd == PING
    try:
        assert await alice.subscribe_presence([bob_id]) == {bob_id: True}
        bob.close()
        await asyncio.sleep(DEBOUNCE / 4)
        bob_answer = await route_login(stack, bob_id, "bob")
        bob = await RawClient.connect(bob_answer.server.port)
        bob.login(bob_id, "bob", bob_answer.token or "")
        assert (await bob.ping(bob_id)).cmd == PING
        await asyncio.sleep(DEBOUNCE * 2)  # past the window of the first going
        assert events == []
        bob.close()
        await eventually(lambda: events == [(bob_id, False)])
    finally:
        bob.close()
        await alice.close()


async def test_a_cim_client_never_gets_a_presence_frame(stack: Running) -> None:
    """A login exactly as CIM's client sends it, that never subscribes, while a user comes and goes."""
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    answer = await route_login(stack, alice_id, "alice")
    alice = await RawClient.connect(answer.server.port)
    alice.login(alice_id, "alice", answer.token or "")
    assert (await alice.ping(alice_id)).cmd == PING
    bob = Client(route_url(stack), bob_id, "bob", password=PASSWORD)
    await bob.connect()
    await bob.send_private(alice_id, "hi")  # a contact, for all that
    await bob.close()
    await asyncio.sleep(DEBOUNCE * 1.5)
    assert (await alice.next()).cmd == MESSAGE
    frame = await alice.ping(alice_id)
    assert frame.cmd == PING, frame  # nothing in between: no PRESENCE
    alice.close()


async def test_raw_subscription_answer_carries_the_receiver_and_the_request_id(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    answer = await route_login(stack, alice_id, "alice")
    alice = await RawClient.connect(answer.server.port)
    alice.login(alice_id, "alice", answer.token or "")
    alice.send(requestId=alice_id, cmd=SUBSCRIBE_PRESENCE, clientMsgId=42, presenceUserIds=[bob_id])
    frame = await alice.next()
    assert (frame.cmd, frame.clientMsgId, frame.code) == (PRESENCE, 42, 9000)
    assert (list(frame.presenceUserIds), list(frame.presenceOnline)) == ([bob_id], [False])
    assert frame.properties["receiveUserId"] == str(alice_id)
    bob = Client(route_url(stack), bob_id, "bob", password=PASSWORD)
    await bob.connect()
    event = await alice.next()
    assert (event.cmd, event.clientMsgId, list(event.presenceUserIds), list(event.presenceOnline)) == (
        PRESENCE, 0, [bob_id], [True])
    assert event.properties["receiveUserId"] == str(alice_id)
    await bob.close()
    alice.close()


async def test_bad_input_gets_a_clear_error(stack: Running) -> None:
    url = route_url(stack)
    alice_id = await register_user(stack, "alice")
    alice = Client(url, alice_id, "alice", password=PASSWORD)
    await alice.connect()
    try:
        with pytest.raises(ClientError, match="not registered users: \\[987654\\]") as unknown:
            await alice.subscribe_presence([alice_id, 987654])
        assert unknown.value.code == 3000
        with pytest.raises(ClientError, match=f"watches {MAX_WATCHED} users at most") as too_many:
            await alice.subscribe_presence(list(range(1, MAX_WATCHED + 2)))
        assert too_many.value.code == 3000
        assert await alice.subscribe_presence([alice_id]) == {alice_id: True}  # the connection goes on
    finally:
        await alice.close()
    token = (await route_login(stack, alice_id, "alice")).token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        ok = (await http.post("/presence", json={"userId": alice_id, "userIds": [alice_id]})).json()
        assert (ok["code"], ok["dataBody"]) == ("9000", [{"userId": alice_id, "online": False}])  # a route login only
        bad = (await http.post("/presence", json={"userId": alice_id, "userIds": [987654]})).json()
        assert bad["code"] == "3000" and "987654" in bad["message"]
        empty = (await http.post("/presence", json={"userId": alice_id, "userIds": []})).json()
        assert empty["code"] == "3000"


async def test_the_console_prints_its_contacts_coming_and_going(stack: Running) -> None:
    """A private message makes a contact; their goings and comings print (stdin/stdout of ``cim client``)."""
    url = route_url(stack)
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    bob = Client(url, bob_id, "bob", password=PASSWORD)
    await bob.connect()
    console = await ConsoleProcess.start(url, alice_id, "alice")
    try:
        await console.expect("type :all for commands")
        console.type(f"{bob_id};;hi bob")
        await asyncio.sleep(0.5)  # the subscription after the receipt
        await bob.close()
        await console.expect(f"user {bob_id} is offline")
        bob = Client(url, bob_id, "bob", password=PASSWORD)
        await bob.connect()
        await console.expect(f"user {bob_id} is online")
        assert not [line for line in console.lines if f"user {alice_id} is" in line]  # oneself is no contact
        await console.quit()
    finally:
        await bob.close()
        if console.process.returncode is None:
            console.process.kill()
            await console.process.wait()


async def test_the_console_watches_the_members_of_its_named_groups_not_the_everyone_group(stack: Running) -> None:
    """A named group's sender, and the members of a group the console made, become contacts; a sender
    to everyone does not (stdin/stdout of ``cim client``)."""
    url = route_url(stack)
    alice_id = await register_user(stack, "alice")
    bob_id, carol_id, dave_id = [await register_user(stack, name) for name in ("bob", "carol", "dave")]
    bob, carol, dave = (Client(url, user_id, name, password=PASSWORD)
                        for user_id, name in ((bob_id, "bob"), (carol_id, "carol"), (dave_id, "dave")))
    console = await ConsoleProcess.start(url, alice_id, "alice")
    try:
        for client in (bob, carol, dave):
            await client.connect()
        await console.expect("type :all for commands")
        team = await carol.groups.create("team", [alice_id])
        await carol.send_group("hi team", group_id=team)
        await dave.send_group("hi everyone")
        await console.expect("hi everyone")  # after "hi team": one sender's, in order
        await asyncio.sleep(0.5)  # the subscription after the push
        await carol.close()
        await console.expect(f"user {carol_id} is offline")
        console.type(f":g create duo {bob_id}")
        await console.expect("created duo")
        await asyncio.sleep(0.5)
        await dave.close()  # not watched: no line
        await bob.close()
        await console.expect(f"user {bob_id} is offline")
        assert not [line for line in console.lines if f"user {dave_id} is" in line]
        await console.quit()
    finally:
        for client in (bob, carol, dave):
            await client.close()
        if console.process.returncode is None:
            console.process.kill()
            await console.process.wait()


# -- across two nodes on Redis --------------------------------------------------




@pytest.mark.cluster(server_args=("--presence-debounce-seconds", str(DEBOUNCE)))
async def test_cross_node_events_and_offline_after_the_watched_users_node_is_killed(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    alice_id = await register(cluster.url, "alice", PASSWORD)
    bob_id = await register(cluster.url, "bob", PASSWORD)
    events: list[tuple[int, bool]] = []
    alice = watcher(cluster.url, alice_id, "alice", events)
    await alice.connect()
    try:
        assert await alice.subscribe_presence([bob_id]) == {bob_id: False}
        # The route balances by loop: bob logs in until he is on the other node.
        bob, bob_port = await connect(cluster, bob_id, "bob")
        while bob_port == server_port(alice):
            bob.close()
            await asyncio.sleep(0.3)
            bob, bob_port = await connect(cluster, bob_id, "bob")
        await eventually(lambda: (bob_id, True) in events)
        assert events[-1] == (bob_id, True)
        bob_node = next(proc for proc, port in cluster.servers if port == bob_port)
        bob_node.proc.send_signal(signal.SIGKILL)  # no goodbye: the route clears it after the ZK session
        await eventually(lambda: events[-1] == (bob_id, False), timeout=20)
        bob.close()
    finally:
        await alice.close()
