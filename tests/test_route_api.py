"""The route's JSON API: CIM's paths, fields and codes; every error code reached.

These check CIM's behaviour exactly (no passwords, no tokens), so their stacks run
under ``--auth none`` whatever the suite's mode (the SDK's reconnect test aside);
tests/test_auth.py covers what token auth changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from cim.backends.memory import MemoryHub
from cim.client import Client, Message
from cim.config import Config
from cim.run import Running, start
from cim.server_info import ServerInfo
from cim.testing.services import free_port
from tests.conftest import PASSWORD, RawClient, eventually, register_user, route_login, route_url, stack_config


def legacy_config() -> Config:
    """A stack config under ``--auth none``: CIM's API as it is."""
    return stack_config(auth="none")


@pytest.fixture
async def legacy() -> AsyncIterator[Running]:
    """route + cim-server in this process, under ``--auth none``."""
    running = await start(legacy_config(), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


@pytest.fixture
async def http(legacy: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=route_url(legacy)) as client:
        yield client


async def call(http: httpx.AsyncClient, path: str, body: Any = None, raw: bytes | None = None) -> dict[str, Any]:
    if raw is not None:
        response = await http.post(path, content=raw, headers={"content-type": "application/json"})
    else:
        response = await http.post(path, json=body)
    assert response.status_code == 200, response.text  # business errors are HTTP 200, as in CIM
    # Written per response (no timer keeps it fresh): within a second or two of now.
    assert abs(parsedate_to_datetime(response.headers["date"]).timestamp() - time.time()) < 2
    payload: dict[str, Any] = response.json()
    assert set(payload) == {"code", "message", "reqNo", "dataBody"}
    assert isinstance(payload["code"], str)
    return payload


async def test_register_is_idempotent_and_ids_are_numbers(http: httpx.AsyncClient) -> None:
    first = await call(http, "/registerAccount", {"reqNo": "r1", "timeStamp": 1700000000, "userName": "alice"})
    assert first["code"] == "9000" and first["reqNo"] == "r1"
    assert isinstance(first["dataBody"]["userId"], int)
    again = await call(http, "/registerAccount", {"userName": "alice"})
    assert again["dataBody"] == first["dataBody"]
    other = await call(http, "/registerAccount", {"userName": "bob"})
    assert other["dataBody"]["userId"] != first["dataBody"]["userId"]


async def test_login_answers_server_as_numbers(http: httpx.AsyncClient, legacy: Running) -> None:
    alice = (await call(http, "/registerAccount", {"userName": "alice"}))["dataBody"]["userId"]
    login = await call(http, "/login", {"userId": alice, "userName": "alice"})
    assert login["code"] == "9000"
    assert legacy.node is not None
    assert login["dataBody"] == {"ip": "127.0.0.1", "cimServerPort": legacy.node.port, "httpPort": legacy.node.info.http_port}


async def test_9100_is_checked_before_5000(http: httpx.AsyncClient) -> None:
    alice = (await call(http, "/registerAccount", {"userName": "alice"}))["dataBody"]["userId"]
    assert (await call(http, "/login", {"userId": alice, "userName": "alice"}))["code"] == "9000"
    assert (await call(http, "/login", {"userId": alice, "userName": "alice"}))["code"] == "5000"
    # Logged in already AND the name is wrong: the mismatch wins.
    assert (await call(http, "/login", {"userId": alice, "userName": "mallory"}))["code"] == "9100"
    assert (await call(http, "/login", {"userId": 999999, "userName": "ghost"}))["code"] == "9100"


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/registerAccount", {}, "userName"),
        ("/registerAccount", {"userName": ""}, "userName"),
        ("/login", {"userId": "abc", "userName": "x"}, "userId"),
        ("/login", {"userId": 1}, "userName"),
        ("/login", {"userId": -5, "userName": "x"}, "userId"),
        ("/p2pRoute", {"userId": 1, "receiveUserId": 2}, "msg"),
        ("/p2pRoute", {"userId": 1, "receiveUserId": [2], "msg": "m"}, "receiveUserId"),
        ("/groupRoute", {"userId": None, "msg": "m"}, "userId"),
        ("/offLine", {"userId": {"a": 1}}, "userId"),
        ("/fetchOfflineMsgs", {}, "receiveUserId"),
    ],
)
async def test_bad_fields_are_3000_naming_the_field(http: httpx.AsyncClient, path: str, body: Any, field: str) -> None:
    answer = await call(http, path, body)
    assert answer["code"] == "3000" and field in answer["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,2]", b"\xff\xfe", b'"text"'])
async def test_bad_json_is_3000(http: httpx.AsyncClient, raw: bytes) -> None:
    answer = await call(http, "/login", raw=raw)
    assert answer["code"] == "3000" and ("JSON" in answer["message"] or "body" in answer["message"])
    # ...and the route goes on serving.
    assert (await call(http, "/registerAccount", {"userName": "after"}))["code"] == "9000"


async def test_unknown_paths_and_methods_answer_in_the_envelope(http: httpx.AsyncClient) -> None:
    missing = await http.post("/noSuchPath", json={})
    assert missing.status_code == 404
    assert missing.json() == {"code": "3000", "message": "no such path /noSuchPath", "reqNo": None, "dataBody": None}
    wrong = await http.get("/login")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "3000" and wrong.json()["message"] == "method GET not allowed on /login"


async def test_p2p_offline_stores_7000_then_fetch_delivers_in_order_once(http: httpx.AsyncClient, legacy: Running) -> None:
    alice = (await call(http, "/registerAccount", {"userName": "alice"}))["dataBody"]["userId"]
    bob = (await call(http, "/registerAccount", {"userName": "bob"}))["dataBody"]["userId"]
    for i in range(5):
        answer = await call(http, "/p2pRoute", {"userId": alice, "receiveUserId": bob, "msg": f"m{i}"})
        assert answer["code"] == "7000"
    assert (await call(http, "/fetchOfflineMsgs", {"receiveUserId": bob}))["code"] == "7000"  # not online: kept

    # CIM's client: logs in, never syncs, asks the route for what came while it was away.
    login = await call(http, "/login", {"userId": bob, "userName": "bob"})
    client = await RawClient.connect(login["dataBody"]["cimServerPort"])
    client.login(bob, "bob")
    assert (await client.ping(bob)).resMsg == "pong"
    assert (await call(http, "/fetchOfflineMsgs", {"receiveUserId": bob}))["dataBody"] == {"count": 5}
    got = [await client.next() for _ in range(5)]
    assert [m.resMsg for m in got] == [f"m{i}" for i in range(5)]
    assert {(m.responseId, m.properties["sendUserName"], m.properties["receiveUserId"]) for m in got} == {
        (alice, "alice", str(bob))}
    assert (await call(http, "/fetchOfflineMsgs", {"receiveUserId": bob}))["dataBody"] == {"count": 0}
    answer = await call(http, "/p2pRoute", {"userId": alice, "receiveUserId": bob, "msg": "live"})
    assert answer["code"] == "9000"
    assert (await client.next()).resMsg == "live"  # nothing delivered twice before it
    client.close()


async def test_p2p_and_group_unknown_users_are_3000(http: httpx.AsyncClient) -> None:
    alice = (await call(http, "/registerAccount", {"userName": "alice"}))["dataBody"]["userId"]
    answer = await call(http, "/p2pRoute", {"userId": alice, "receiveUserId": 5555, "msg": "x"})
    assert answer["code"] == "3000" and "5555" in answer["message"]
    answer = await call(http, "/groupRoute", {"userId": 6666, "msg": "x"})
    assert answer["code"] == "3000" and "6666" in answer["message"]


async def test_group_route_offline_and_online_user(http: httpx.AsyncClient, legacy: Running) -> None:
    route = route_url(legacy)
    ids = {n: (await call(http, "/registerAccount", {"userName": n}))["dataBody"]["userId"] for n in ("a", "b", "c")}
    inbox: dict[str, list[str]] = {n: [] for n in ids}

    def collect(name: str) -> Callable[[Message], None]:
        return lambda m: inbox[name].append(m.text)

    clients = {}
    for name, user_id in ids.items():
        clients[name] = Client(route, user_id, name, on_message=collect(name))
        await clients[name].connect()
    users = (await call(http, "/onlineUser"))["dataBody"]
    assert sorted(users, key=lambda u: u["userId"]) == [{"userId": i, "userName": n} for n, i in ids.items()]
    assert (await http.get("/onlineUser")).json()["dataBody"] == users

    assert (await call(http, "/groupRoute", {"userId": ids["a"], "msg": "hello"}))["code"] == "9000"
    await eventually(lambda: inbox["b"] and inbox["c"], 2)
    assert inbox == {"a": [], "b": ["hello"], "c": ["hello"]}

    # /offLine logs c out and closes c's connection; c's SDK does not reconnect.
    assert (await call(http, "/offLine", {"userId": ids["c"]}))["code"] == "9000"
    await asyncio.wait_for(clients["c"].done, 5)
    users = (await call(http, "/onlineUser"))["dataBody"]
    assert {u["userName"] for u in users} == {"a", "b"}
    for client in clients.values():
        await client.close()


async def test_7100_without_servers_and_unreachable_servers_are_skipped() -> None:
    hub = MemoryHub()
    route_only = await start(legacy_config(), {"route"}, hub)
    try:
        assert route_only.route_http is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{route_only.route_http.port}") as http:
            alice = (await call(http, "/registerAccount", {"userName": "alice"}))["dataBody"]["userId"]
            assert (await call(http, "/login", {"userId": alice, "userName": "alice"}))["code"] == "7100"
            # Registered but not accepting connections: skipped, still 7100.
            await hub.discovery.register(ServerInfo("127.0.0.1", free_port(), free_port()))
            assert (await call(http, "/login", {"userId": alice, "userName": "alice"}))["code"] == "7100"
            # A live server beside two dead ones: every login lands on the live one.
            for _ in range(2):
                await hub.discovery.register(ServerInfo("127.0.0.1", free_port(), free_port()))
            server = await start(legacy_config(), {"server"}, hub)
            try:
                for i in range(6):
                    user_id = (await call(http, "/registerAccount", {"userName": f"u{i}"}))["dataBody"]["userId"]
                    login = await call(http, "/login", {"userId": user_id, "userName": f"u{i}"})
                    assert server.node is not None
                    assert login["dataBody"]["cimServerPort"] == server.node.port
            finally:
                await server.stop()
    finally:
        await route_only.stop()


async def test_openapi_and_docs(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    paths = {"/registerAccount", "/login", "/p2pRoute", "/groupRoute", "/onlineUser", "/offLine", "/fetchOfflineMsgs"}
    assert paths <= set(spec["paths"])
    assert "userName" in spec["paths"]["/login"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "swagger" in (await http.get("/docs")).text.lower()


async def test_client_reconnects_then_gives_up_with_a_clear_error() -> None:
    hub = MemoryHub()
    config = stack_config()
    running = await start(config, {"server", "route"}, hub)
    alice = await register_user(running, "alice")
    statuses: list[str] = []
    client = Client(route_url(running), alice, "alice", password=PASSWORD, on_status=statuses.append, reconnect_attempts=2,
                    backoff_base=0.05, backoff_max=0.1)
    await client.connect()
    await running.stop()  # the server and the route go away for good
    with pytest.raises(ConnectionError, match="gave up after 2 reconnect attempts"):
        await asyncio.wait_for(client.done, 10)
    assert any("reconnect attempt 1 failed" in s for s in statuses)
    assert any("reconnect attempt 2 failed" in s for s in statuses)


async def test_online_user_lists_a_user_only_while_logged_in_over_tcp(stack: Running) -> None:
    """A route /login only claims a login (cim.presence): /onlineUser shows the user once a TCP login
    confirms it, and no longer once that connection closes. In the suite's auth mode (both: tokens change
    the login, not what is online)."""
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    async with httpx.AsyncClient(base_url=route_url(stack)) as http:
        listed: list[list[dict[str, Any]]] = []  # /onlineUser's answers, the latest last

        async def poll() -> None:
            while True:
                listed.append((await call(http, "/onlineUser"))["dataBody"])
                await asyncio.sleep(0.02)

        def now_listed(*users: tuple[int, str]) -> Callable[[], bool]:
            expected = [{"userId": user_id, "userName": name} for user_id, name in sorted(users)]
            return lambda: bool(listed) and listed[-1] == expected

        bob_login = await route_login(stack, bob_id, "bob")
        bob = await RawClient.connect(bob_login.server.port)
        bob.login(bob_id, "bob", bob_login.token)
        assert (await bob.ping(bob_id)).resMsg == "pong"  # bob's login handled: online from here on

        alice_login = await route_login(stack, alice_id, "alice")
        assert (await call(http, "/onlineUser"))["dataBody"] == [{"userId": bob_id, "userName": "bob"}]
        alice = await RawClient.connect(alice_login.server.port)
        assert (await call(http, "/onlineUser"))["dataBody"] == [{"userId": bob_id, "userName": "bob"}]  # connected, no login
        poller = asyncio.create_task(poll())
        try:
            alice.login(alice_id, "alice", alice_login.token)
            await eventually(now_listed((alice_id, "alice"), (bob_id, "bob")), 5)
            alice.close()
            await eventually(now_listed((bob_id, "bob")), 5)
            bob.close()
            await eventually(now_listed(), 5)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
