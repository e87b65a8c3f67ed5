"""The clients' side of authentication on a real stack: RouteClient hands out and sends
tokens and turns the route's 401/403 into ``ClientError`` codes; the SDK logs in with its
password and uses the token for the TCP login and its route calls (a ``RouteSession``,
which renews a refused token). Each test names its auth mode, so both suite runs cover both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from argon2 import PasswordHasher

from cim.auth import Tokens
from cim.backends.memory import MemoryHub
from cim.client import Client, ClientError, Message, RouteClient, RouteSession
from cim.run import Running, start
from cim.status import Status
from tests.conftest import PASSWORD, cut, eventually, mint_token, new_secret, register_user, route_url, stack_config


@pytest.fixture
async def token_stack() -> AsyncIterator[Running]:
    running = await start(stack_config(auth="token"), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


async def test_route_client_sends_the_token_and_raises_the_routes_refusals(token_stack: Running) -> None:
    alice, bob = await register_user(token_stack, "alice"), await register_user(token_stack, "bob")
    assert token_stack.node is not None
    tokens = Tokens.from_config(token_stack.node.config)
    assert tokens is not None
    async with RouteClient(route_url(token_stack)) as route:
        login = await route.login(alice, "alice", PASSWORD)
        assert login.server.port == token_stack.node.port and tokens.verify(login.token) == alice
        with pytest.raises(ClientError) as unauthorized:  # HTTP 401, raised with CIM's code
            await route.p2p(alice, bob, "no token")
        assert unauthorized.value.code == Status.UNAUTHORIZED.code
        with pytest.raises(ClientError) as forbidden:  # HTTP 403: bob's token cannot send as alice
            await route.p2p(alice, bob, "as someone else", token=mint_token(token_stack, bob))
        assert forbidden.value.code == Status.FORBIDDEN.code
        assert await route.p2p(alice, bob, "hi bob", token=login.token)  # stored: bob is offline
        with pytest.raises(ClientError) as wrong_password:
            await route.login(bob, "bob", "not bob's")
        assert wrong_password.value.code == Status.ACCOUNT_NOT_MATCH.code


async def test_route_client_under_auth_none_is_cims_client() -> None:
    running = await start(stack_config(auth="none"), {"server", "route"}, MemoryHub())
    try:
        async with RouteClient(route_url(running)) as route:
            alice, bob = await route.register("alice", ""), await route.register("bob", "")
            login = await route.login(alice, "alice", "")
            assert login.token == ""
            assert await route.p2p(alice, bob, "no token needed")
    finally:
        await running.stop()


async def test_sdk_logs_in_with_its_password_and_uses_the_token(token_stack: Running) -> None:
    alice, bob = await register_user(token_stack, "alice"), await register_user(token_stack, "bob")
    async with RouteClient(route_url(token_stack)) as route:
        assert await route.p2p(alice, bob, "while you were away", token=mint_token(token_stack, alice))

    impostor = Client(route_url(token_stack), bob, "bob", password="not bob's")
    with pytest.raises(ClientError) as refused:
        await impostor.connect()
    assert refused.value.code == Status.ACCOUNT_NOT_MATCH.code
    await impostor.close()

    got: list[Message] = []
    # The TCP login carries the route login's token; /fetchOfflineMsgs after it, the same token as bearer.
    async with Client(route_url(token_stack), bob, "bob", password=PASSWORD, on_message=got.append) as client:
        assert token_stack.node is not None
        tokens = Tokens.from_config(token_stack.node.config)
        assert tokens is not None and tokens.verify(client.session.token) == bob
        await eventually(lambda: len(got) == 1)
        assert (got[0].sender_id, got[0].text) == (alice, "while you were away")


async def test_route_session_renews_a_refused_token_and_makes_the_call_again(token_stack: Running) -> None:
    alice = await register_user(token_stack, "alice")
    async with RouteClient(route_url(token_stack)) as route:
        session = RouteSession(route, alice, "alice", PASSWORD)
        session.token = Tokens(new_secret(), ttl=60).mint(alice)  # another secret (rotated since): refused, 4001
        await session.log_out()  # refused, a new token got from /token, made again: 9000
        assert token_stack.node is not None
        tokens = Tokens.from_config(token_stack.node.config)
        assert tokens is not None and tokens.verify(session.token) == alice
        assert (await route.login(alice, "alice", PASSWORD)).token  # renewing claimed nothing

        session.token = "not a token"
        await session.fetch_offline()  # renewed while alice is logged in (a login would be 5000)
        assert tokens.verify(session.token) == alice
        with pytest.raises(ClientError) as held:  # /token checks the password as /login does
            await route.renew_token(alice, "alice", "wrong password")
        assert held.value.code == Status.ACCOUNT_NOT_MATCH.code


async def test_the_sdk_reconnects_with_its_token_and_with_the_password_once_it_expired(token_stack: Running) -> None:
    """A reconnect logs in with the token (no password hash on the route): shown by changing the
    password under a connected client. Once its token is refused, the password logs in again."""
    alice = await register_user(token_stack, "alice")
    accounts = token_stack.backends.accounts
    async with Client(route_url(token_stack), alice, "alice", password=PASSWORD, backoff_base=0.05, backoff_max=0.2) as client:
        token = client.session.token
        await accounts.set_password_hash(alice, PasswordHasher().hash("changed elsewhere"))
        cut(token_stack, alice)
        await eventually(lambda: client.reconnects == 1 and client.connected)
        assert client.session.token == token  # the same token: it was not renewed

        await accounts.set_password_hash(alice, PasswordHasher().hash(PASSWORD))
        client.session.token = Tokens(new_secret(), ttl=60).mint(alice)  # refused (4001), as an expired one
        cut(token_stack, alice)
        await eventually(lambda: client.reconnects == 2 and client.connected)
        assert token_stack.node is not None
        tokens = Tokens.from_config(token_stack.node.config)
        assert tokens is not None and tokens.verify(client.session.token) == alice  # a new one, from the password
