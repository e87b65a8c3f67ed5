"""Shared fixtures: the codec twins and, for system tests, real services.

``CIM_AUTH`` picks the auth mode of the whole suite: ``token`` (the default) or
``none`` (``CIM_AUTH=none python -m pytest``); subprocesses inherit it. Test
accounts always have a password, which a stack under ``none`` ignores.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from cim.auth import Tokens
from cim.backends.memory import MemoryHub
from cim.client import LoginAnswer, RouteClient, register
from cim.config import Config
from cim.frame import FrameDecoder, encode_frame
from cim.proto import LOGIN_ANSWER, Request, Response
from cim.protocols.client import ClientConnection
from cim.run import Running, start
from cim.testing.services import free_port, redis_server, zookeeper_server


def _import_twin(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        if not name.endswith("_py") and os.environ.get("CIM_NO_EXTENSIONS"):
            pytest.skip("built without the extensions (CIM_NO_EXTENSIONS set)")
        raise


@pytest.fixture(scope="session", params=["cim._frame_py", "cim._frame"], ids=["python", "cython"])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """Each frame codec implementation in turn: one suite, both twins."""
    return _import_twin(request.param)


@pytest.fixture(scope="session", params=["cim._wire_py", "cim._wire"], ids=["python", "cython"])
def wire(request: pytest.FixtureRequest) -> ModuleType:
    """Each message wire implementation in turn: one suite, both twins."""
    return _import_twin(request.param)


@pytest.fixture(scope="session", params=["cim._ratelimit_py", "cim._ratelimit"], ids=["python", "cython"])
def ratelimit(request: pytest.FixtureRequest) -> ModuleType:
    """Each token bucket implementation in turn: one suite, both twins."""
    return _import_twin(request.param)


# -- real services and in-process stacks --------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def zk_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with zookeeper_server(tmp_path_factory.mktemp("zookeeper")) as hosts:
        yield hosts


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true (polling), then assert it: for effects that
    arrive asynchronously (deliveries, cleanups, registry changes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert check()


PASSWORD = "correct horse battery staple"  # every test account's


def auth_mode() -> str:
    """The suite's auth mode, from ``CIM_AUTH``."""
    return os.environ.get("CIM_AUTH", "token")


def new_secret() -> str:
    """A token secret of its own for one test's stack or cluster."""
    return secrets.token_urlsafe(32)


def stack_config(**overrides: Any) -> Config:
    """A config on free loopback ports, in the suite's auth mode with a secret of its
    own; ``overrides`` are further Config fields (``secret=`` to share one)."""
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": free_port(), "http_port": free_port(), "route_host": "127.0.0.1", "route_port": free_port(),
        "key_prefix": f"t{uuid.uuid4().hex[:8]}", "zk_root": f"/t{uuid.uuid4().hex[:8]}", "log_level": "warning",
        "auth": auth_mode(), "secret": new_secret(),
    }
    base.update(overrides)
    return Config(**base)


@pytest.fixture
async def stack() -> AsyncIterator[Running]:
    """route + cim-server in this process on embedded backends, real sockets."""
    running = await start(stack_config(), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


def route_url(running: Running) -> str:
    assert running.route_http is not None
    return f"http://127.0.0.1:{running.route_http.port}"


def mint_token(running: Running, user_id: int) -> str:
    """A token for ``user_id`` signed with the stack's secret, as a deployment's own
    backend would mint it without the route; "" from a stack under ``--auth none``."""
    assert running.node is not None, "a stack with a cim-server, whose config has the secret"
    tokens = Tokens.from_config(running.node.config)
    return "" if tokens is None else tokens.mint(user_id)


async def register_user(running: Running, name: str) -> int:
    """Register ``name`` (with the test password) through the stack's route; its user id."""
    return await register(route_url(running), name, PASSWORD)


async def route_login(running: Running, user_id: int, name: str) -> LoginAnswer:
    async with RouteClient(route_url(running)) as route:
        return await route.login(user_id, name, PASSWORD)


async def online(running: Running, name: str) -> tuple[int, RawClient]:
    """Register, route-login and connect a raw client with the login's token; returns
    (user id, client) once logged in."""
    user_id = await register_user(running, name)
    answer = await route_login(running, user_id, name)
    client = await RawClient.connect(answer.server.port)
    client.login(user_id, name, answer.token)
    assert (await client.ping(user_id)).resMsg == "pong"  # answered after the login was handled
    return user_id, client


class RawClient:
    """A client for testing the server: raw ``Response`` objects out, so tests check
    every field; login and ping frames as the SDK sends them, anything else built
    field by field with ``send``. ``token`` is the one it logged in with. The login's
    answer (LOGIN_ANSWER) is set aside as ``login_answer``, not returned by ``next``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.inbox: list[Response] = []
        self.token = ""
        self.login_answer: Response | None = None

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, properties: dict[str, str] | None = None, **fields: Any) -> None:
        request = Request(**fields)
        request.properties.update(properties or {})
        self.writer.write(encode_frame(request.SerializeToString()))

    def login(self, user_id: int, user_name: str, token: str = "") -> None:
        self.token = token
        self.send_raw(ClientConnection(user_id, user_name).login(token=token))

    def send_ping(self, user_id: int) -> None:
        self.send_raw(ClientConnection(user_id, user_name="").ping())  # a ping names only the user id

    async def next(self, timeout: float = 5.0) -> Response:
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed by the server")
            self._received(data)
        return self.inbox.pop(0)

    def _received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            response = Response.FromString(frame)
            if response.cmd == LOGIN_ANSWER and self.login_answer is None:
                self.login_answer = response
            else:
                self.inbox.append(response)

    async def closed(self, timeout: float = 5.0) -> list[Response]:
        """Read until the server closes; returns what came before."""
        frames = list(self.inbox)
        self.inbox.clear()
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return frames
            self._received(data)
            frames += self.inbox
            self.inbox.clear()

    async def ping(self, user_id: int) -> Response:
        self.send_ping(user_id)
        return await self.next()

    def close(self) -> None:
        self.writer.close()
