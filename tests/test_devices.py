"""Several devices per user (issue 11, item 2): ``deviceId`` on the route's /login and in the
login frame, each device with its own inbox cursor, ``--max-devices`` and ``--device-policy``
(multi, replace, refuse); CIM's client (no deviceId) keeps its one login per user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.client import Client, register
from cim.client.route import ClientError, RouteClient
from cim.client.sdk import Message
from cim.proto import ERROR, OFFLINE
from cim.protocols.client import ClientConnection
from cim.run import Running, start
from tests.conftest import (
    PASSWORD,
    Cluster,
    RawClient,
    eventually,
    mint_token,
    register_user,
    route_url,
    server_port,
    stack_config,
)

FLUSH_WAIT = 1.5  # past the node's cursor flush (once a second): a device's ack is in the store


async def running_stack(**config: Any) -> Running:
    return await start(stack_config(**config), {"server", "route"}, MemoryHub())


@pytest.fixture
async def stack() -> AsyncIterator[Running]:
    running = await running_stack()
    yield running
    await running.stop()


class Device:
    """One SDK client of a user on a named device (at the route ``url``), keeping what it was pushed."""

    def __init__(self, url: str, user_id: int, name: str, device_id: str) -> None:
        self.texts: list[str] = []
        self.statuses: list[str] = []
        self.url, self.user_id, self.name, self.device_id = url, user_id, name, device_id
        self.client = self.new_client()

    def new_client(self) -> Client:
        """A client of this device (a fresh one after ``close``: the device comes back)."""
        return Client(self.url, self.user_id, self.name, password=PASSWORD, device_id=self.device_id,
                      on_message=self._pushed, on_status=self.statuses.append, reconnect_attempts=2)

    def _pushed(self, message: Message) -> None:
        self.texts.append(message.text)


async def sender(running: Running) -> Client:
    alice = Client(route_url(running), await register(route_url(running), "alice", PASSWORD), "alice", password=PASSWORD)
    await alice.connect()
    return alice


async def test_every_device_gets_the_message_and_keeps_its_own_cursor(stack: Running) -> None:
    bob_id = await register_user(stack, "bob")
    alice = await sender(stack)
    phone, laptop = Device(route_url(stack), bob_id, "bob", "phone"), Device(route_url(stack), bob_id, "bob", "laptop")
    await phone.client.connect()
    await laptop.client.connect()
    await alice.send_private(bob_id, "m1")
    await eventually(lambda: phone.texts == ["m1"] and laptop.texts == ["m1"])

    await laptop.client.close()
    await alice.send_private(bob_id, "m2")
    await alice.send_private(bob_id, "m3")
    await eventually(lambda: phone.texts == ["m1", "m2", "m3"])
    await asyncio.sleep(FLUSH_WAIT)  # the phone's acks are stored: they must not move the laptop's cursor

    laptop_again = Device(route_url(stack), bob_id, "bob", "laptop")
    await laptop_again.client.connect()
    await eventually(lambda: laptop_again.texts[-2:] == ["m2", "m3"])
    assert "m1" not in laptop_again.texts  # acked by the laptop before it left
    tablet = Device(route_url(stack), bob_id, "bob", "tablet")  # never logged in before: the whole inbox
    await tablet.client.connect()
    await eventually(lambda: tablet.texts == ["m1", "m2", "m3"])
    for client in (alice, phone.client, laptop_again.client, tablet.client):
        await client.close()


async def test_past_max_devices_a_further_device_is_refused() -> None:
    running = await running_stack(max_devices=2)
    try:
        bob_id = await register_user(running, "bob")
        devices = [Device(route_url(running), bob_id, "bob", name) for name in ("phone", "laptop", "tablet")]
        for device in devices[:2]:
            await device.client.connect()
        with pytest.raises(ClientError) as refused:
            await devices[2].client.connect()
        assert refused.value.code == 5000
        assert "--max-devices 2" in refused.value.message
        await devices[2].client.close()
        await devices[0].client.close()  # a device logs out: room for another, once its node saw it leave
        fourth = Device(route_url(running), bob_id, "bob", "desktop")
        await connect_when_there_is_room(fourth)
        for device in (devices[1], fourth):
            await device.client.close()
    finally:
        await running.stop()


async def connect_when_there_is_room(device: Device, attempts: int = 50) -> None:
    """Connect, again while refused for the device limit (a device that left frees its record as its node sees it go)."""
    for _ in range(attempts - 1):
        try:
            await device.client.connect()
            return
        except ClientError as err:
            assert err.code == 5000, err
        await device.client.close()  # its route connection: a refused client holds no session
        await asyncio.sleep(0.1)
        device.client = device.new_client()
    await device.client.connect()


async def test_replace_ends_the_older_device_for_good() -> None:
    running = await running_stack(device_policy="replace")
    try:
        bob_id = await register_user(running, "bob")
        phone, laptop = Device(route_url(running), bob_id, "bob", "phone"), Device(route_url(running), bob_id, "bob", "laptop")
        await phone.client.connect()
        await laptop.client.connect()
        await asyncio.wait_for(phone.client.done, 10)  # OFFLINE 9000: no reconnect
        assert any("logged in on another device" in status for status in phone.statuses), phone.statuses
        assert phone.client.reconnects == 0 and laptop.client.connected
        for client in (phone.client, laptop.client):  # the ended one too: its route connection
            await client.close()
    finally:
        await running.stop()


async def test_replace_sends_offline_9000_to_the_raw_connection() -> None:
    running = await running_stack(device_policy="replace")
    try:
        bob_id = await register_user(running, "bob")
        older = await raw_login(running, bob_id, "bob", "phone")
        newer = await raw_login(running, bob_id, "bob", "laptop")
        frames = await older.closed()
        assert [(f.cmd, f.code, f.resMsg) for f in frames] == [(OFFLINE, 9000, "logged in on another device")]
        assert frames[0].properties["receiveUserId"] == str(bob_id)
        assert (await newer.ping(bob_id)).resMsg == "pong"
        for client in (older, newer):
            client.close()
    finally:
        await running.stop()


async def test_refuse_keeps_one_login_per_user() -> None:
    running = await running_stack(device_policy="refuse")
    try:
        bob_id = await register_user(running, "bob")
        phone, laptop = Device(route_url(running), bob_id, "bob", "phone"), Device(route_url(running), bob_id, "bob", "laptop")
        await phone.client.connect()
        with pytest.raises(ClientError) as refused:
            await laptop.client.connect()
        assert refused.value.code == 5000
        assert phone.client.connected
        for client in (laptop.client, phone.client):
            await client.close()
    finally:
        await running.stop()


async def raw_login(running: Running, user_id: int, name: str, device_id: str = "") -> RawClient:
    """A route login and a login frame as CIM's client sends them (plus ``device_id``), answered."""
    async with RouteClient(route_url(running)) as route:
        answer = await route.login(user_id, name, PASSWORD, device_id)
    client = await RawClient.connect(answer.server.port)
    client.send_raw(ClientConnection(user_id, name).login(token=answer.token, device_id=device_id))
    assert (await client.ping(user_id)).resMsg == "pong"
    return client


async def test_a_cim_login_without_device_twice_is_5000_as_before(stack: Running) -> None:
    bob_id = await register_user(stack, "bob")
    first = await raw_login(stack, bob_id, "bob")
    async with RouteClient(route_url(stack)) as route:
        with pytest.raises(ClientError) as refused:
            await route.login(bob_id, "bob", PASSWORD)
    assert refused.value.code == 5000
    # A second connection that skips the route (its token still good) is refused by the server.
    second = await RawClient.connect(first.writer.get_extra_info("peername")[1])
    second.send_raw(ClientConnection(bob_id, "bob").login(token=mint_token(stack, bob_id)))
    frames = await second.closed()
    assert [(f.cmd, f.code) for f in frames] == [(ERROR, 5000)]
    second.close()
    assert (await first.ping(bob_id)).resMsg == "pong"
    first.close()


@pytest.mark.parametrize("device_id", ["x" * 65, "tab\tlet"])
async def test_a_login_frame_with_a_bad_device_id_is_refused_3000(stack: Running, device_id: str) -> None:
    """The server checks what the route checks: a login frame that skipped the route's check."""
    bob_id = await register_user(stack, "bob")
    first = await raw_login(stack, bob_id, "bob", "phone")
    second = await RawClient.connect(first.writer.get_extra_info("peername")[1])
    second.send_raw(ClientConnection(bob_id, "bob").login(token=mint_token(stack, bob_id), device_id=device_id))
    frames = await second.closed()
    assert [(f.cmd, f.code) for f in frames] == [(ERROR, 3000)] and "deviceId" in frames[0].resMsg
    assert frames[0].properties["receiveUserId"] == str(bob_id)
    second.close()
    assert (await first.ping(bob_id)).resMsg == "pong"
    first.close()


@pytest.mark.parametrize("device_id", ["", "x" * 65, "tab\tlet"])
async def test_a_bad_device_id_is_3000_naming_the_field(stack: Running, device_id: str) -> None:
    bob_id = await register_user(stack, "bob")
    body = {"userId": bob_id, "userName": "bob", "password": PASSWORD, "deviceId": device_id}
    async with httpx.AsyncClient(base_url=route_url(stack)) as http:
        answer = (await http.post("/login", json=body)).json()
    assert answer["code"] == "3000" and "deviceId" in answer["message"], answer



async def on_another_node(device: Device, other: Client) -> None:
    """Connect ``device`` until the route put it on another node than ``other`` (it balances by loop)."""
    await device.client.connect()
    while server_port(device.client) == server_port(other):
        await device.client.close()
        device.client = device.new_client()
        await device.client.connect()


async def alice_and_bobs_two_nodes(cluster: Cluster) -> tuple[Client, int, Device, Device]:
    """alice connected, and bob's phone and laptop on the cluster's two nodes: (alice, bob's id, phone, laptop)."""
    await eventually(lambda: len(cluster.route_servers()) == 2)
    alice = Client(cluster.url, await register(cluster.url, "alice", PASSWORD), "alice", password=PASSWORD)
    await alice.connect()
    bob_id = await register(cluster.url, "bob", PASSWORD)
    phone, laptop = Device(cluster.url, bob_id, "bob", "phone"), Device(cluster.url, bob_id, "bob", "laptop")
    await phone.client.connect()
    await on_another_node(laptop, phone.client)
    return alice, bob_id, phone, laptop


async def test_devices_on_two_nodes_each_get_it_live_and_keep_their_cursor(cluster: Cluster) -> None:
    alice, bob_id, phone, laptop = await alice_and_bobs_two_nodes(cluster)
    await alice.send_private(bob_id, "m1")
    await eventually(lambda: phone.texts == ["m1"] and laptop.texts == ["m1"])
    await laptop.client.close()
    await alice.send_private(bob_id, "m2")
    await eventually(lambda: phone.texts == ["m1", "m2"])
    await asyncio.sleep(FLUSH_WAIT)  # the phone's ack is stored
    laptop.client = laptop.new_client()
    await laptop.client.connect()
    await eventually(lambda: laptop.texts == ["m1", "m2"])  # m2 on sync, though the phone acked it
    for client in (alice, phone.client, laptop.client):
        await client.close()


@pytest.mark.cluster(server_args=("--device-policy", "replace"))
async def test_replace_ends_a_device_on_the_other_node(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    url = cluster.url
    bob_id = await register(url, "bob", PASSWORD)
    anchor = Client(url, await register(url, "carol", PASSWORD), "carol", password=PASSWORD)
    await anchor.connect()
    phone, laptop = Device(url, bob_id, "bob", "phone"), Device(url, bob_id, "bob", "laptop")
    await on_another_node(phone, anchor)  # phone on one node, laptop on the other
    await laptop.client.connect()  # a second login on the phone's node would end it too: it must be the other
    assert server_port(laptop.client) != server_port(phone.client)  # the loop balancer alternates
    await asyncio.wait_for(phone.client.done, 10)  # the kick came by the bus: OFFLINE 9000, no reconnect
    assert any("logged in on another device" in status for status in phone.statuses), phone.statuses
    assert phone.client.reconnects == 0 and laptop.client.connected
    for client in (anchor, phone.client, laptop.client):
        await client.close()


async def test_a_closed_connection_leaves_the_record_of_its_devices_login_in_progress(stack: Running) -> None:
    """The cleanup of a device's dropped connection runs while the same device logs in again on the node
    (its reconnect): it must not log out the record that login's confirm writes (the full chaos run found
    devices connected and logged in but missing from presence, so everyone-group sends skipped them)."""
    assert stack.node is not None
    node, presence = stack.node, stack.backends.presence
    bob_id = await register_user(stack, "bob")
    assert await presence.confirm_login(bob_id, node.node_id, "phone", 5) == {}
    devices = node.dispatcher.logins.devices
    with node.sessions.logging_in(bob_id, "phone"):  # the reconnect, between its check and its bind
        await devices.left(bob_id, "phone")  # the old connection's cleanup
    assert list(await presence.devices(bob_id)) == ["phone"]
    await devices.left(bob_id, "phone")  # no login of it in progress, no connection of it: logged out
    assert await presence.devices(bob_id) == {}
