"""A user's devices through the route (issue 11, items 2 and 7): ``/devices`` lists the logged-in devices,
``/devices/end`` logs one out and ends its connection wherever it is (OFFLINE 9000: for good, no reconnect)
while the user's other devices stay; the SDK's ``devices``/``end_device`` and the console's ``:devices``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.client import ClientError, RouteClient
from cim.client.route import bearer
from cim.proto import OFFLINE
from cim.run import Running, start
from cim.server_info import ServerInfo
from tests.conftest import (
    Cluster,
    auth_mode,
    eventually,
    mint_token,
    register_user,
    route_url,
    server_port,
    stack_config,
)
from tests.test_console_commands import output
from tests.test_devices import Device, alice_and_bobs_two_nodes, raw_login
from tests.test_sdk_delivery import ConsoleProcess

ENDED = "ended from another device"
ADMIN_KEY = secrets.token_urlsafe(32)


@pytest.fixture
async def stack() -> AsyncIterator[Running]:
    """The embedded stack with an admin key (operators may list and end anyone's devices)."""
    running = await start(stack_config(admin_key=ADMIN_KEY), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


async def post(url: str, path: str, body: Any, token: str = "") -> tuple[int, dict[str, Any]]:
    """The HTTP status and the JSON answer of a route call (``body`` bytes: sent as they are)."""
    async with httpx.AsyncClient(base_url=url) as http:
        if isinstance(body, bytes):
            response = await http.post(path, content=body, headers=bearer(token))
        else:
            response = await http.post(path, json=body, headers=bearer(token))
    return response.status_code, response.json()


async def test_two_devices_on_two_nodes_are_listed_and_one_ended_stays_ended(cluster: Cluster) -> None:
    alice, bob_id, phone, laptop = await alice_and_bobs_two_nodes(cluster)

    listed = await phone.client.devices()
    assert [d.device_id for d in listed] == ["laptop", "phone"]
    by_id = {d.device_id: d for d in listed}
    assert by_id["phone"].server.port == server_port(phone.client) and by_id["laptop"].server.port == server_port(laptop.client)
    for device in listed:
        assert ServerInfo.parse(device.server_id) == ServerInfo(device.server.host, device.server.port, device.server.http_port)
    status, answer = await post(cluster.url, "/devices", {"userId": bob_id}, phone.client.session.token)
    assert status == 200 and answer["code"] == "9000", answer
    for entry in answer["dataBody"]["devices"]:  # ports and times are JSON numbers, ids strings
        assert set(entry) == {"deviceId", "serverId", "ip", "cimServerPort", "httpPort", "since"}
        assert all(isinstance(entry[field], int) for field in ("cimServerPort", "httpPort", "since")), entry

    await phone.client.end_device("laptop")  # the route kicks it through the bus, on the other node
    await asyncio.wait_for(laptop.client.done, 10)  # OFFLINE 9000: no reconnect
    assert any(ENDED in status for status in laptop.statuses), laptop.statuses
    assert laptop.client.reconnects == 0 and not laptop.client.connected
    assert [d.device_id for d in await phone.client.devices()] == ["phone"]
    await alice.send_private(bob_id, "still here")
    await eventually(lambda: phone.texts == ["still here"])
    assert laptop.texts == [] and phone.client.connected and phone.client.reconnects == 0
    for client in (alice, phone.client, laptop.client):
        await client.close()


async def test_ending_a_device_sends_it_offline_9000_and_the_others_go_on(stack: Running) -> None:
    bob_id = await register_user(stack, "bob")
    cim_client = await raw_login(stack, bob_id, "bob")  # CIM's client: device ""
    phone = await raw_login(stack, bob_id, "bob", "phone")
    laptop = await raw_login(stack, bob_id, "bob", "laptop")
    token = mint_token(stack, bob_id)
    _, answer = await post(route_url(stack), "/devices", {"userId": bob_id}, token)
    assert [d["deviceId"] for d in answer["dataBody"]["devices"]] == ["", "laptop", "phone"]

    status, answer = await post(route_url(stack), "/devices/end", {"userId": bob_id, "deviceId": "laptop"}, token)
    assert (status, answer["code"], answer["dataBody"]) == (200, "9000", None), answer
    frames = await laptop.closed()
    assert [(f.cmd, f.code, f.resMsg) for f in frames] == [(OFFLINE, 9000, ENDED)]
    assert frames[0].properties["receiveUserId"] == str(bob_id)
    status, answer = await post(route_url(stack), "/devices/end", {"userId": bob_id, "deviceId": ""}, token)
    assert answer["code"] == "9000", answer
    assert [(f.cmd, f.code) for f in await cim_client.closed()] == [(OFFLINE, 9000)]

    assert (await phone.ping(bob_id)).resMsg == "pong"
    _, answer = await post(route_url(stack), "/devices", {"userId": bob_id}, token)
    assert [d["deviceId"] for d in answer["dataBody"]["devices"]] == ["phone"]
    for client in (cim_client, phone, laptop):
        client.close()


@pytest.mark.parametrize(("body", "problem"), [
    ({"userId": 0}, "userId"),
    ({"userId": "bob"}, "userId"),
    ({}, "userId"),
])
async def test_a_bad_devices_body_is_3000_naming_the_field(stack: Running, body: dict[str, Any], problem: str) -> None:
    status, answer = await post(route_url(stack), "/devices", body, ADMIN_KEY)
    assert status == 200 and answer["code"] == "3000" and problem in answer["message"], answer


@pytest.mark.parametrize(("fields", "problem"), [
    ({"deviceId": "x" * 65}, "deviceId"),
    ({"deviceId": "tab\tlet"}, "deviceId"),
    ({}, "deviceId"),  # "" names CIM's client: the field is never left out
    ({"deviceId": 7}, "deviceId"),
    ({"deviceId": "tablet"}, "has no device 'tablet' logged in"),
])
async def test_a_bad_or_unknown_device_is_3000_and_ends_nothing(stack: Running, fields: dict[str, Any], problem: str) -> None:
    bob_id = await register_user(stack, "bob")
    phone = await raw_login(stack, bob_id, "bob", "phone")
    status, answer = await post(route_url(stack), "/devices/end", {"userId": bob_id, **fields}, mint_token(stack, bob_id))
    assert status == 200 and answer["code"] == "3000" and problem in answer["message"], answer
    assert (await phone.ping(bob_id)).resMsg == "pong"
    phone.close()


async def test_an_unknown_user_is_3000(stack: Running) -> None:
    for path, body in (("/devices", {"userId": 999_999}), ("/devices/end", {"userId": 999_999, "deviceId": "phone"})):
        status, answer = await post(route_url(stack), path, body, mint_token(stack, 999_999))
        assert status == 200 and answer["code"] == "3000" and "999999 is not a registered user" in answer["message"], answer


@pytest.mark.parametrize("path", ["/devices", "/devices/end"])
@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_bad_json_is_3000(stack: Running, path: str, raw: bytes) -> None:
    status, answer = await post(route_url(stack), path, raw, ADMIN_KEY)
    assert status == 200 and answer["code"] == "3000" and "body" in answer["message"], answer


async def test_only_the_users_own_token_or_the_admin_key_may_list_or_end(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    phone = await raw_login(stack, bob_id, "bob", "phone")
    url, alice_token = route_url(stack), mint_token(stack, alice_id)
    if auth_mode() == "none":  # CIM's API: no credential asked, a call without one is served
        _, answer = await post(url, "/devices", {"userId": bob_id})
        assert [d["deviceId"] for d in answer["dataBody"]["devices"]] == ["phone"], answer
        phone.close()
        pytest.skip("under --auth none the route checks no token: anyone may list or end anyone's devices")
    for path, body in (("/devices", {"userId": bob_id}), ("/devices/end", {"userId": bob_id, "deviceId": "phone"})):
        status, answer = await post(url, path, body, alice_token)
        assert (status, answer["code"]) == (403, "4003"), answer
        status, answer = await post(url, path, body)
        assert (status, answer["code"]) == (401, "4001"), answer
    assert (await phone.ping(bob_id)).resMsg == "pong"  # nothing was ended
    async with RouteClient(url) as route:  # the SDK's call says so too
        with pytest.raises(ClientError) as refused:
            await route.devices(bob_id, token=alice_token)
    assert refused.value.code == 4003
    _, answer = await post(url, "/devices", {"userId": bob_id}, ADMIN_KEY)
    assert [d["deviceId"] for d in answer["dataBody"]["devices"]] == ["phone"]
    _, answer = await post(url, "/devices/end", {"userId": bob_id, "deviceId": "phone"}, ADMIN_KEY)
    assert answer["code"] == "9000", answer
    assert [(f.cmd, f.code) for f in await phone.closed()] == [(OFFLINE, 9000)]
    phone.close()


async def test_the_console_lists_its_devices_and_ends_one(stack: Running) -> None:
    alice_id = await register_user(stack, "alice")
    console = await ConsoleProcess.start(route_url(stack), alice_id, "alice", "--device-id", "laptop")
    try:
        await console.expect("type :all for commands")
        phone = Device(route_url(stack), alice_id, "alice", "phone")
        await phone.client.connect()
        assert stack.node is not None
        server = stack.node.node_id
        listed = await output(console, ":devices")
        assert listed[0] == "2 devices:" and len(listed) == 3, listed
        assert listed[1].startswith(f"  laptop  on {server} since ") and listed[1].endswith("  (this device)"), listed
        assert listed[2].startswith(f"  phone  on {server} since ") and "this device" not in listed[2], listed

        assert await output(console, ":devices end phone") == ["ended device phone"]
        await asyncio.wait_for(phone.client.done, 10)
        assert any(ENDED in status for status in phone.statuses) and phone.client.reconnects == 0
        assert (await output(console, ":devices"))[0] == "1 devices:"
        assert await output(console, ":devices end phone") == [
            f":devices failed: 3000: deviceId: user {alice_id} has no device 'phone' logged in (/devices lists them)"]
        usage = 'usage: :devices, or :devices end ID ("" for a device without an id)'
        for wrong in (":devices end", ":devices phone", ":devices end a b"):
            assert await output(console, wrong) == [usage], wrong
        console.type(":info")
        await console.expect(f"user alice({alice_id}) on ")
        await console.quit()
        await phone.client.close()
    finally:
        if console.process.returncode is None:
            console.process.kill()
            await console.process.wait()


async def test_the_console_of_cims_device_shows_it_as_empty_quotes(stack: Running) -> None:
    alice_id = await register_user(stack, "alice")
    console = await ConsoleProcess.start(route_url(stack), alice_id, "alice")
    try:
        await console.expect("type :all for commands")
        listed = await output(console, ":devices")
        assert listed[0] == "1 devices:" and listed[1].startswith('  ""  on ') and listed[1].endswith("(this device)"), listed
        console.type(':devices end ""')  # its own device: the server ends this console for good
        await console.expect(ENDED)
        await asyncio.wait_for(console.process.wait(), 10)
    finally:
        if console.process.returncode is None:
            console.process.kill()
            await console.process.wait()
