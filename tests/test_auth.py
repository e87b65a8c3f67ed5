"""Who is who, as attacks: each test is something a stranger could do before passwords
and tokens, and must no longer be able to.

The stacks here pick their auth mode themselves (token with an admin key, or none),
so both modes are checked whatever ``CIM_AUTH`` the suite runs under.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher

from cim.auth import AuthError, Tokens
from cim.backends.memory import MemoryHub
from cim.cli import cim_main
from cim.config import Config
from cim.proto import BaseCommand
from cim.protocols.client import ClientConnection
from cim.run import Running, start
from cim.status import Status
from cim.testing.services import CimProcess, free_port
from tests.conftest import PASSWORD, RawClient, eventually, online, register_user, route_url, stack_config

ADMIN_KEY = secrets.token_urlsafe(32)
HOUR = 3600


@pytest.fixture
async def secured() -> AsyncIterator[Running]:
    """route + cim-server with token auth and an admin key."""
    running = await start(stack_config(auth="token", admin_key=ADMIN_KEY), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


@pytest.fixture
async def open_stack() -> AsyncIterator[Running]:
    """route + cim-server under ``--auth none``: CIM's behaviour."""
    running = await start(stack_config(auth="none"), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


def secret_of(running: Running) -> str:
    assert running.node is not None and running.node.config.secret is not None
    return running.node.config.secret


def own_backend_token(running: Running, claims: dict[str, Any], secret: str | None = None) -> str:
    """A token as a deployment's own backend (or an attacker, with another secret) mints it."""
    return jwt.encode(claims, secret or secret_of(running), "HS256")


async def post(
    running: Running, path: str, body: dict[str, Any], bearer: str | None = None, method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, envelope) of one route call; every answer, refusals included, is CIM's envelope."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with httpx.AsyncClient(base_url=route_url(running)) as http:
        response = await http.request(method, path, json=body if method == "POST" else None, headers=headers)
    payload: dict[str, Any] = response.json()
    assert set(payload) == {"code", "message", "reqNo", "dataBody"} and isinstance(payload["code"], str)
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    return response.status_code, payload


async def login_token(running: Running, user_id: int, name: str) -> str:
    status, answer = await post(running, "/login", {"userId": user_id, "userName": name, "password": PASSWORD})
    assert (status, answer["code"]) == (200, "9000"), answer
    token: str = answer["dataBody"]["token"]
    return token


# -- TCP logins ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forge, reason",
    [
        (lambda r, alice, bob: "", "no token"),
        (lambda r, alice, bob: "not.a.token", "malformed"),
        (lambda r, alice, bob: own_backend_token(r, {"sub": str(alice), "exp": int(time.time()) - HOUR}), "expired"),
        (lambda r, alice, bob: Tokens(secret_of(r), HOUR).mint(bob), "is for user"),
        (lambda r, alice, bob: own_backend_token(r, {"sub": str(alice), "exp": int(time.time()) + HOUR},
                                                 secrets.token_urlsafe(32)), "another secret"),
        (lambda r, alice, bob: jwt.encode({"sub": str(alice), "exp": int(time.time()) + HOUR}, "", "none"), "alg"),
        (lambda r, alice, bob: own_backend_token(r, {"sub": str(alice)}), "'exp'"),
    ],
    ids=["none", "malformed", "expired", "another-user", "another-secret", "unsigned", "no-expiry"],
)
async def test_a_tcp_login_without_the_users_token_is_refused_with_4001_and_closed(
    secured: Running, forge: Callable[[Running, int, int], str], reason: str
) -> None:
    assert secured.node is not None
    alice = await register_user(secured, "alice")
    bob = await register_user(secured, "bob")
    raw = await RawClient.connect(secured.node.port)
    raw.login(alice, "alice", forge(secured, alice, bob))
    raw.send_ping(alice)  # before the change: answered with a pong
    [error] = await raw.closed()
    assert (error.cmd, error.code) == (BaseCommand.ERROR, Status.UNAUTHORIZED.code)
    assert error.resMsg.startswith("login refused: ") and reason in error.resMsg, error.resMsg
    assert alice not in secured.node.sessions.by_user
    assert await secured.backends.presence.servers(alice) == []  # nothing claimed: alice can still log in
    assert secured.node.metrics["logins_unauthorized"] == 1


async def test_a_message_cannot_be_forged_as_carol(secured: Running) -> None:
    assert secured.node is not None
    alice, a = await online(secured, "alice")
    bob, b = await online(secured, "bob")
    carol = await register_user(secured, "carol")
    forger = await RawClient.connect(secured.node.port)
    forger.login(carol, "carol")  # no token: carol never logged in anywhere
    forger.send(reqMsg="carol says: send me your password", cmd=BaseCommand.MESSAGE, clientMsgId=1,
                properties={"receiveUserId": str(bob)})
    forger.send(reqMsg="carol to everyone", cmd=BaseCommand.MESSAGE, clientMsgId=2)
    [error] = await forger.closed()
    assert error.code == Status.UNAUTHORIZED.code  # no receipt: the messages were never sent
    a.send(reqMsg="the real one", cmd=BaseCommand.MESSAGE, clientMsgId=3, properties={"receiveUserId": str(bob)})
    push = await b.next()
    assert (push.resMsg, push.responseId) == ("the real one", alice)  # nothing from "carol" came first
    assert (await b.ping(bob)).resMsg == "pong" and not b.inbox


async def test_a_token_minted_by_the_users_own_backend_is_accepted(secured: Running) -> None:
    """Centrifugo's model: a backend holding the secret logs its users in, no route password."""
    assert secured.node is not None
    alice = await register_user(secured, "alice")
    bob, b = await online(secured, "bob")
    token = own_backend_token(secured, {"sub": str(alice), "exp": int(time.time()) + HOUR})
    raw = await RawClient.connect(secured.node.port)
    raw.login(alice, "alice", token)
    assert (await raw.ping(alice)).resMsg == "pong"
    status, answer = await post(secured, "/p2pRoute", {"userId": alice, "receiveUserId": bob, "msg": "via route"}, token)
    assert (status, answer["code"]) == (200, "9000")
    assert (await b.next()).resMsg == "via route"


# -- the route's calls for a user -------------------------------------------------------


async def test_route_calls_for_another_user_are_403_and_without_a_token_401(secured: Running) -> None:
    alice = await register_user(secured, "alice")
    bob = await register_user(secured, "bob")
    alice_token = await login_token(secured, alice, "alice")
    as_bob: list[tuple[str, dict[str, Any]]] = [
        ("/p2pRoute", {"userId": bob, "receiveUserId": alice, "msg": "bob owes alice"}),
        ("/groupRoute", {"userId": bob, "msg": "bob says hi to all"}),
        ("/fetchOfflineMsgs", {"receiveUserId": bob}),
        ("/offLine", {"userId": bob}),
    ]
    for path, body in as_bob:
        status, answer = await post(secured, path, body, alice_token)
        assert (status, answer["code"]) == (403, "4003"), (path, answer)
        assert f"user {alice} cannot act for user {bob}" in answer["message"]
        for bearer in (None, "garbage", ADMIN_KEY[:-1]):
            status, answer = await post(secured, path, body, bearer)
            assert (status, answer["code"]) == (401, "4001"), (path, bearer, answer)
    assert await secured.backends.inbox.latest([alice]) == [0]  # the forged private message was not stored
    # alice's own calls go through.
    status, answer = await post(secured, "/p2pRoute", {"userId": alice, "receiveUserId": bob, "msg": "hi"}, alice_token)
    assert (status, answer["code"]) == (200, "7000")  # bob is offline: stored for him


async def test_offline_of_another_user_needs_the_admin_key(secured: Running) -> None:
    alice = await register_user(secured, "alice")
    alice_token = await login_token(secured, alice, "alice")
    bob, b = await online(secured, "bob")
    status, answer = await post(secured, "/offLine", {"userId": bob}, alice_token)
    assert (status, answer["code"]) == (403, "4003")
    assert (await b.ping(bob)).resMsg == "pong"  # bob's session goes on
    status, answer = await post(secured, "/offLine", {"userId": bob}, ADMIN_KEY)
    assert (status, answer["code"]) == (200, "9000")
    [offline] = await b.closed()
    assert (offline.cmd, offline.code) == (BaseCommand.OFFLINE, Status.SUCCESS.code)
    # The operator may end sessions, not speak for users.
    status, answer = await post(secured, "/p2pRoute", {"userId": bob, "receiveUserId": alice, "msg": "x"}, ADMIN_KEY)
    assert (status, answer["code"]) == (403, "4003")


async def test_servers_is_an_operator_call(secured: Running) -> None:
    assert secured.node is not None
    alice = await register_user(secured, "alice")
    alice_token = await login_token(secured, alice, "alice")
    assert (await post(secured, "/servers", {}, method="GET"))[0] == 401
    assert (await post(secured, "/servers", {}, secrets.token_urlsafe(32), method="GET"))[0] == 401
    status, answer = await post(secured, "/servers", {}, alice_token, method="GET")
    assert (status, answer["code"]) == (403, "4003")
    status, answer = await post(secured, "/servers", {}, ADMIN_KEY, method="GET")
    assert (status, answer["code"]) == (200, "9000")
    info = secured.node.info
    assert answer["dataBody"] == [{"ip": info.host, "cimServerPort": info.tcp_port, "httpPort": info.http_port}]


# -- passwords --------------------------------------------------------------------------


async def test_a_wrong_password_is_9100_and_never_locks_the_user_out(secured: Running) -> None:
    alice = await register_user(secured, "alice")
    for _ in range(50):
        status, answer = await post(secured, "/login", {"userId": alice, "userName": "alice", "password": "guess"})
        assert (status, answer["code"], answer["dataBody"]) == (200, "9100", None)
    assert await secured.backends.presence.servers(alice) == []  # no claim was made
    token = await login_token(secured, alice, "alice")
    assert Tokens(secret_of(secured), HOUR).verify(token) == alice


async def test_the_login_answer_carries_a_token_for_the_tcp_login(secured: Running) -> None:
    assert secured.node is not None
    alice = await register_user(secured, "alice")
    status, answer = await post(secured, "/login", {"userId": alice, "userName": "alice", "password": PASSWORD})
    info = secured.node.info
    assert set(answer["dataBody"]) == {"ip", "cimServerPort", "httpPort", "token"}
    assert (answer["dataBody"]["cimServerPort"], answer["dataBody"]["httpPort"]) == (info.tcp_port, info.http_port)
    claims = jwt.decode(answer["dataBody"]["token"], secret_of(secured), algorithms=["HS256"])
    assert claims["sub"] == str(alice) and claims["exp"] - claims["iat"] == secured.node.config.token_ttl
    raw = await RawClient.connect(info.tcp_port)
    raw.login(alice, "alice", answer["dataBody"]["token"])
    assert (await raw.ping(alice)).resMsg == "pong"


async def test_registering_a_taken_name_without_its_password_reveals_no_id(secured: Running) -> None:
    alice = await register_user(secured, "alice")
    status, answer = await post(secured, "/registerAccount", {"userName": "alice", "password": "guess"})
    assert (status, answer["code"], answer["dataBody"]) == (200, "3000", None)
    assert answer["message"] == "userName is taken" and str(alice) not in answer["message"]
    status, answer = await post(secured, "/registerAccount", {"userName": "alice", "password": PASSWORD})
    assert answer["dataBody"] == {"userId": alice, "userName": "alice"}  # its owner looks it up


@pytest.mark.parametrize("path, body", [("/registerAccount", {"userName": "dave"}), ("/login", {"userId": 1, "userName": "x"})])
async def test_token_auth_needs_a_password(secured: Running, path: str, body: dict[str, Any]) -> None:
    status, answer = await post(secured, path, body)
    assert (status, answer["code"]) == (200, "3000") and "password" in answer["message"]


async def test_a_login_with_the_users_token_needs_no_password_and_keeps_the_token(secured: Running) -> None:
    assert secured.node is not None
    alice, bob = await register_user(secured, "alice"), await register_user(secured, "bob")
    token = await login_token(secured, alice, "alice")
    # The password changes: a login that hashed one would be 9100 now; the token's does not look.
    await secured.backends.accounts.set_password_hash(alice, PasswordHasher().hash("changed"))
    body = {"userId": alice, "userName": "alice", "deviceId": "phone"}
    status, answer = await post(secured, "/login", body, bearer=token)
    assert (status, answer["code"]) == (200, "9000"), answer
    assert answer["dataBody"]["token"] == token  # handed back, not renewed: its expiry stands
    assert answer["dataBody"]["cimServerPort"] == secured.node.port
    status, answer = await post(secured, "/login", {**body, "password": "guess"}, bearer=token)
    assert answer["code"] == "9000"  # beside a bearer, a password is not looked at (nor hashed, nor counted)
    raw = await RawClient.connect(secured.node.port)
    raw.send_raw(ClientConnection(alice, "alice").login(token=token, device_id="phone"))
    assert (await raw.ping(alice)).resMsg == "pong"

    refusals = {
        "another user's token": (Tokens(secret_of(secured), HOUR).mint(bob), 403, "4003"),
        "the admin key": (ADMIN_KEY, 403, "4003"),
        "an expired token": (own_backend_token(secured, {"sub": str(alice), "exp": int(time.time()) - HOUR}), 401, "4001"),
        "another secret's": (Tokens(secrets.token_urlsafe(32), HOUR).mint(alice), 401, "4001"),
        "a malformed one": ("not.a.token", 401, "4001"),
    }
    for why, (bearer, http_status, code) in refusals.items():
        status, answer = await post(secured, "/login", {**body, "deviceId": "tablet"}, bearer=bearer)
        assert (status, answer["code"], answer["dataBody"]) == (http_status, code, None), why
    status, answer = await post(secured, "/login", {"userId": alice, "userName": "not alice"}, bearer=token)
    assert answer["code"] == "9100"  # the token proves the id; the name must still be the id's
    assert set(await secured.backends.presence.devices(alice)) == {"phone"}  # the refused logins claimed nothing


async def test_token_logins_are_not_counted_as_password_guesses() -> None:
    running = await start(stack_config(auth="token", max_logins_per_minute=3), {"server", "route"}, MemoryHub())
    try:
        alice = await register_user(running, "alice")  # a password checked: 1 of 3
        token = await login_token(running, alice, "alice")  # 2 of 3
        for device in "abcd":
            status, answer = await post(running, "/login", {"userId": alice, "userName": "alice", "deviceId": device},
                                        bearer=token)
            assert (status, answer["code"]) == (200, "9000"), answer
        status, answer = await post(running, "/login", {"userId": alice, "userName": "alice", "password": "guess"})
        assert answer["code"] == "9100"  # 3 of 3
        status, answer = await post(running, "/login", {"userId": alice, "userName": "alice", "password": PASSWORD})
        assert (status, answer["code"]) == (429, "4029")
    finally:
        await running.stop()


async def test_an_old_hash_is_upgraded_at_login_and_a_broken_one_opens_nothing(secured: Running) -> None:
    accounts = secured.backends.accounts
    alice = await register_user(secured, "alice")
    await accounts.set_password_hash(alice, PasswordHasher(time_cost=1, memory_cost=8 * 1024).hash(PASSWORD))
    await login_token(secured, alice, "alice")
    upgraded = await accounts.password_hash(alice)
    assert upgraded is not None and "m=19456,t=2,p=1" in upgraded
    bob = await register_user(secured, "bob")
    await accounts.set_password_hash(bob, "not an argon2 hash")
    status, answer = await post(secured, "/login", {"userId": bob, "userName": "bob", "password": PASSWORD})
    assert (status, answer["code"]) == (200, "9100")


def test_a_token_whose_sub_is_not_a_user_id_is_refused() -> None:
    secret = secrets.token_urlsafe(32)
    tokens = Tokens(secret, HOUR)
    assert tokens.verify(tokens.mint(7)) == 7
    # Arabic-Indic digits are decimal to str.isdecimal and int(); 5000 digits are more than int() parses.
    for subject in ("alice", "-3", "0", "\u0661\u0662", str(2**63), "9" * 5000):
        with pytest.raises(AuthError, match="is not a user id"):
            tokens.verify(jwt.encode({"sub": subject, "exp": int(time.time()) + HOUR}, secret, "HS256"))


# -- the secret, and --auth none --------------------------------------------------------


def test_standalone_roles_refuse_token_auth_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIM_SECRET", raising=False)
    for role in ("server", "route"):
        with pytest.raises(SystemExit, match="needs --secret"):
            cim_main([role, "--auth", "token"])
        with pytest.raises(SystemExit, match="at least 32 bytes"):
            cim_main([role, "--auth", "token", "--secret", "short"])
    with pytest.raises(ValueError, match="admin key must be at least 32 bytes"):
        Config(admin_key="admin")


def test_cim_up_makes_a_secret_and_auth_none_warns(tmp_path: Path) -> None:
    for auth, said in (("token", "random secret made for this run"), ("none", "--auth none: no password or token is checked")):
        route_port = free_port()
        proc = CimProcess(
            tmp_path, f"up-{auth}",
            ["up", "--auth", auth, "--host", "127.0.0.1", "--port", str(free_port()), "--http-port", str(free_port()),
             "--route-port", str(route_port)],
        )
        proc.wait_http(route_port)
        assert proc.stop() == 0
        assert said in proc.log(), proc.log()


async def test_auth_none_keeps_cims_behaviour(open_stack: Running) -> None:
    node = open_stack.node
    assert node is not None
    status, answer = await post(open_stack, "/registerAccount", {"userName": "alice"})
    alice = answer["dataBody"]["userId"]
    assert (await post(open_stack, "/registerAccount", {"userName": "alice", "password": "anything"}))[1]["dataBody"] == {
        "userId": alice, "userName": "alice"
    }
    status, answer = await post(open_stack, "/login", {"userId": alice, "userName": "alice"})
    info = node.info
    assert answer["dataBody"] == {"ip": info.host, "cimServerPort": info.tcp_port, "httpPort": info.http_port}  # no token
    raw = await RawClient.connect(info.tcp_port)
    raw.login(alice, "alice")  # no token
    assert (await raw.ping(alice)).resMsg == "pong"
    bob, b = await online(open_stack, "bob")
    status, answer = await post(open_stack, "/p2pRoute", {"userId": alice, "receiveUserId": bob, "msg": "no bearer"})
    assert (status, answer["code"]) == (200, "9000")
    assert (await b.next()).resMsg == "no bearer"
    assert (await post(open_stack, "/offLine", {"userId": bob}))[1]["code"] == "9000"
    await eventually(lambda: bob not in node.sessions.by_user)


async def test_openapi_declares_the_bearer_and_the_passwords(secured: Running, open_stack: Running) -> None:
    async with httpx.AsyncClient(base_url=route_url(secured)) as http:
        spec = (await http.get("/openapi.json")).json()
    bearer = spec["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, method in (("/p2pRoute", "post"), ("/groupRoute", "post"), ("/offLine", "post"),
                         ("/fetchOfflineMsgs", "post"), ("/servers", "get")):
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"bearer": []}] and {"401", "403"} <= set(operation["responses"])
    for path, security in (("/registerAccount", None), ("/login", [{}, {"bearer": []}])):  # login: or a token
        operation = spec["paths"][path]["post"]
        assert operation.get("security") == security
        properties = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert "password" in properties and "authorization" not in properties  # the header's, not the body's
    async with httpx.AsyncClient(base_url=route_url(open_stack)) as http:
        spec = (await http.get("/openapi.json")).json()
    assert "components" not in spec and all("security" not in op for ops in spec["paths"].values() for op in ops.values())
