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
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from cim.auth import Tokens
from cim.backends.memory import MemoryHub
from cim.client import Client, LoginAnswer, RouteClient, register
from cim.config import Config
from cim.frame import FrameDecoder, encode_frame
from cim.proto import LOGIN_ANSWER, MESSAGE, Request, Response
from cim.protocols.client import ClientConnection
from cim.run import Running, start
from cim.testing.services import CimProcess, free_port, redis_server, zookeeper_server
from cim.wire_fields import RECEIVE_USER_ID, SEND_USER_ID


def _import_twin(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        if not name.endswith("_py") and os.environ.get("CIM_NO_EXTENSIONS"):
            pytest.skip("built without the extensions (CIM_NO_EXTENSIONS set)")
        raise


def _twins(name: str, module: str, what: str) -> Any:
    """A session fixture ``name`` giving each implementation of ``what`` in turn, the pure-Python
    twin ``<module>_py`` and the compiled ``module``: one suite, both twins."""

    @pytest.fixture(scope="session", params=[f"{module}_py", module], ids=["python", "cython"], name=name)
    def twin(request: pytest.FixtureRequest) -> ModuleType:
        return _import_twin(request.param)

    twin.__doc__ = f"Each {what} implementation in turn: one suite, both twins."
    return twin


codec = _twins("codec", "cim._frame", "frame codec")
wire = _twins("wire", "cim._wire", "message wire")
ratelimit = _twins("ratelimit", "cim._ratelimit", "token bucket")
lane = _twins("lane", "cim._lane", "stored messages' pushes")
ids = _twins("ids", "cim._ids", "message id")
inbox_core = _twins("inbox_core", "cim._inbox", "memory inbox core")
stream_core = _twins("stream_core", "cim._stream", "stream and session fields")


# -- real services and in-process stacks --------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def zk_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with zookeeper_server(tmp_path_factory.mktemp("zookeeper")) as hosts:
        yield hosts


ZK_SESSION_TIMEOUT = 2.0  # the cluster's nodes: a killed one is noticed soon


class Cluster:
    """Two cim-server processes and a route process on real Redis and ZooKeeper (``--balance loop``:
    logins alternate between the nodes), keys and znodes under a prefix of their own."""

    def __init__(self, workdir: Path, redis_url: str, zk_hosts: str, server_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.server_args = list(server_args)
        self.prefix = f"c{workdir.name[-6:].replace('-', '')}"
        self.backend = ["--redis", redis_url, "--zk", zk_hosts, "--zk-root", f"/{self.prefix}",
                        "--key-prefix", self.prefix, "--zk-session-timeout", str(ZK_SESSION_TIMEOUT)]
        self.env = {"CIM_SECRET": new_secret(), **(env or {})}  # the route's tokens are the servers' too
        self.servers: list[tuple[CimProcess, int]] = []
        self.route_port = free_port()
        self.route = CimProcess(workdir, "route", ["route", "--host", "127.0.0.1", "--port", str(self.route_port),
                                                   "--balance", "loop", *self.backend], self.env)
        self.route.wait_http(self.route_port)
        for i in range(2):
            self.add_server(f"server{i}")

    def add_server(self, name: str) -> tuple[CimProcess, int]:
        port, http_port = free_port(), free_port()
        proc = CimProcess(self.workdir, name, ["server", "--host", "127.0.0.1", "--port", str(port),
                                               "--http-port", str(http_port), *self.backend, *self.server_args],
                          self.env)
        proc.wait_http(http_port)
        self.servers.append((proc, port))
        return proc, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.route_port}"

    def route_servers(self) -> list[str]:
        servers: list[str] = httpx.get(f"{self.url}/health").json()["servers"]
        return servers

    def stop(self) -> None:
        for proc, _ in self.servers:
            proc.stop()
        self.route.stop()


def server_port(client: Client) -> int:
    """The TCP port of the cim-server the (connected) client is on."""
    assert client.server is not None
    return client.server.port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster(server_args=(), env=None): how the test's ``cluster`` is started")


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, zk_hosts: str) -> Iterator[Cluster]:
    """A ``Cluster`` for the test; ``@pytest.mark.cluster(server_args=..., env=...)`` gives the nodes'
    flags and the processes' environment."""
    marker = request.node.get_closest_marker("cluster")
    c = Cluster(tmp_path, redis_url, zk_hosts, **(marker.kwargs if marker else {}))
    try:
        yield c
    finally:
        c.stop()


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true (polling), then assert it: for effects that
    arrive asynchronously (deliveries, cleanups, registry changes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert check()


LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, dropping what is unsent


def cut(running: Running, user_id: int) -> None:
    """Reset the user's connection from the server's end (RST): what either side had in
    flight (pushes, messages not read yet, receipts) is gone."""
    assert running.node is not None
    [peer] = running.node.sessions.by_user[user_id].peers
    transport = peer.transport  # type: ignore[attr-defined]  # the TCP peer's
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    transport.abort()


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
    answer (LOGIN_ANSWER) is set aside as ``login_answer``, not returned by ``next``; so are
    the user's own copies of what they sent with a clientMsgId (``own_copies``: a MESSAGE from
    the user to the user, with the clientMsgId: cim.delivery) unless ``keep_own_copies``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep_own_copies: bool = False) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.inbox: list[Response] = []
        self.token = ""
        self.login_answer: Response | None = None
        self.keep_own_copies = keep_own_copies
        self.own_copies: list[Response] = []

    @classmethod
    async def connect(cls, port: int, keep_own_copies: bool = False) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port), keep_own_copies=keep_own_copies)

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
            properties = response.properties
            if response.cmd == LOGIN_ANSWER and self.login_answer is None:
                self.login_answer = response
            elif (response.cmd == MESSAGE and response.clientMsgId and not self.keep_own_copies
                  and properties.get(SEND_USER_ID, "") == properties.get(RECEIVE_USER_ID)):
                self.own_copies.append(response)
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
