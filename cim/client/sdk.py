"""The asyncio client SDK: what the console client and any other UI are built on.

    async with Client("http://127.0.0.1:8083", user_id, "alice", password=password, on_message=print) as client:
        await client.send_group("hello all")
        await client.send_private(1002, "hello bob")

``connect`` logs in through the route (with the password; the answer carries a
token), opens the TCP connection to the server the route picked and sends the
login frame with the token. The route calls made for the user send the token as
their bearer; one refused as unauthorized (4001: the token expired) logs in again
for a new token and is made once more. A PING goes out whenever nothing was
written for a heartbeat interval; a connection silent for 3 intervals counts as
lost. A lost connection is re-established (route login again, jittered
exponential backoff, capped) up to ``reconnect_attempts`` times.

The frames and what the server's frames mean are ``cim.protocols.client``'s
(``ClientConnection``); the route calls are ``cim.client.route``'s. This module
moves bytes and keeps the session up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from cim.client.route import ClientError, RouteClient, RouteSession, ServerAddress, register
from cim.protocols.client import (
    ClientConnection,
    ClientEvent,
    Offline,
    Pong,
    ProtocolError,
    Pushed,
    Receipt,
    ServerError,
)
from cim.status import Status

__all__ = ["Client", "ClientError", "Message", "Receipt", "ServerAddress", "register"]

log = logging.getLogger("cim.client")

# What ``on_message`` gets: a pushed message (the SDK's name for it).
Message = Pushed

# Codes a reconnect waits out rather than gives up on: the old session may not be
# cleared yet (5000), no server is up yet (7100), or many clients behind one address
# reconnect at once and the route's per-address login limit holds some back (4029).
RETRYABLE = {Status.REPEAT_LOGIN.code, Status.SERVER_NOT_AVAILABLE.code, Status.RATE_LIMITED.code}

MessageCallback = Callable[[Message], Any]
StatusCallback = Callable[[str], Any]

T = TypeVar("T")


def settle(future: asyncio.Future[T] | None, result: T, error: BaseException | None = None) -> None:
    """Resolve ``future`` with ``error`` if given, else ``result``; nothing if it has been resolved (or is None)."""
    if future is None or future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Client:
    """One user's session with cim, kept up: route login, the TCP connection to the
    server the route picked, heartbeats and reconnects.

    ``password`` logs the user in through the route (a route under ``--auth none``
    ignores it); the route calls for the user are a ``RouteSession``'s (the token kept).

    Sends return the server's ``Receipt``; pushed messages go to ``on_message`` and
    connection events (as text) to ``on_status``. ``done`` resolves when the client
    stops: closed, ended by the server, refused, or out of reconnect attempts. Pass a
    shared ``route`` to serve many users from one process; it is not closed here.
    """

    def __init__(
        self,
        route_url: str,
        user_id: int,
        user_name: str,
        *,
        password: str = "",
        on_message: MessageCallback | None = None,
        on_status: StatusCallback | None = None,
        heartbeat_interval: float = 30.0,
        reconnect_attempts: int = 10,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        fetch_offline: bool = True,
        send_timeout: float = 10.0,
        route: RouteClient | None = None,
    ) -> None:
        self.user_id = user_id
        self.user_name = user_name
        self.on_message = on_message
        self.on_status = on_status
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_attempts = reconnect_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.fetch_offline = fetch_offline
        self.send_timeout = send_timeout
        self.server: ServerAddress | None = None
        self.connected = False
        self.reconnects = 0
        self._owns_route = route is None
        self.route = route or RouteClient(route_url)
        self.session = RouteSession(self.route, user_id, user_name, password)
        self._connection = ClientConnection(user_id, user_name)  # a fresh one per TCP connection
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._receipts: dict[int, asyncio.Future[Receipt]] = {}
        self._login_answer: asyncio.Future[None] | None = None
        self._msg_ids = itertools.count(1)
        self._last_write = 0.0
        self._last_read = 0.0
        self._closing = False
        self._ended_by_server = False  # an OFFLINE frame with 9000: do not reconnect
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _status(self, text: str) -> None:
        log.info("%s", text)
        if self.on_status is not None:
            self.on_status(text)

    # -- connection ------------------------------------------------------------

    async def connect(self) -> None:
        """Route login, TCP connect, login frame; raises ClientError if refused."""
        self.server = await self.session.login()
        reader, self._writer = await asyncio.open_connection(self.server.host, self.server.port)
        connection = self._connection = ClientConnection(self.user_id, self.user_name)
        self._ended_by_server = False
        # The server answers a ping in order with what came before it, so the pong
        # after the login frame says the login was accepted (a refusal is an error frame).
        self._login_answer = asyncio.get_running_loop().create_future()
        self._write(connection.login(token=self.session.token) + connection.ping())
        self._last_read = time.monotonic()
        self.connected = True
        self._tasks = [
            asyncio.create_task(self._read_loop(reader, connection), name="cim-client-read"),
            asyncio.create_task(self._heartbeat(), name="cim-client-heartbeat"),
        ]
        try:
            await asyncio.wait_for(asyncio.shield(self._login_answer), self.send_timeout)
        except BaseException:
            self._closing = True
            self._teardown()
            self._closing = False
            raise
        self._status(f"connected to {self.server.host}:{self.server.port} as {self.user_name}({self.user_id})")
        if self.fetch_offline:
            await self.session.fetch_offline()

    def _write(self, frames: bytes) -> None:
        assert self._writer is not None
        self._writer.write(frames)
        self._last_write = time.monotonic()

    async def _read_loop(self, reader: asyncio.StreamReader, connection: ClientConnection) -> None:
        try:
            while not connection.closed and (data := await reader.read(65536)):
                self._last_read = time.monotonic()
                for event in connection.receive_data(data):
                    self._on_event(event)
        except ConnectionError as err:
            self._status(f"connection error: {err}")
        finally:
            settle(self._login_answer, None, ConnectionError("the server closed the connection during login"))
            if not self._closing:
                asyncio.get_running_loop().call_soon(self._connection_lost)

    def _on_event(self, event: ClientEvent) -> None:
        match event:
            case Pushed():
                if self.on_message is not None:
                    self.on_message(event)
            case Receipt():
                settle(self._receipts.pop(event.client_msg_id, None), event)
            case Pong():
                settle(self._login_answer, None)
            case ServerError(code=code, message=message):
                self._status(f"server error {code}: {message}")
                settle(self._login_answer, None, ClientError(code, message))
            case Offline():
                self._status(f"server closed the session: {event.reason}")
                self._ended_by_server = not event.reconnect
            case ProtocolError():
                self._status(f"connection error: {event.reason}")

    async def _heartbeat(self) -> None:
        """Sleep until the next ping is due (nothing written for an interval) or the
        server counts as gone (nothing read for 3 intervals): no periodic wake-ups."""
        interval = self.heartbeat_interval
        while True:
            now = time.monotonic()
            if now - self._last_read > 3 * interval:
                self._status("no answer from the server for 3 heartbeat intervals")
                assert self._writer is not None
                self._writer.close()
                return
            if now - self._last_write >= interval:
                self._write(self._connection.ping())
            next_ping = self._last_write + interval
            deadline = self._last_read + 3 * interval
            await asyncio.sleep(max(0.0, min(next_ping, deadline) - time.monotonic()) + 0.001)

    def _teardown(self) -> None:
        """Drop the current connection and fail what waited on it."""
        self.connected = False
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._writer is not None:
            self._writer.close()
        for future in self._receipts.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost before the server answered"))
        self._receipts.clear()

    def _connection_lost(self) -> None:
        if self._closing or not self.connected:
            return
        self._teardown()
        if self._ended_by_server:
            settle(self.done, None)
            return
        self._status("connection lost; reconnecting")
        self._tasks = [asyncio.create_task(self._reconnect(), name="cim-client-reconnect")]

    async def _reconnect(self) -> None:
        for attempt in range(self.reconnect_attempts):
            delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.5)
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except ClientError as err:
                if err.code not in RETRYABLE:
                    settle(self.done, None, err)
                    return
                self._status(f"reconnect attempt {attempt + 1} refused ({err}); retrying")
            except (OSError, httpx.HTTPError) as err:
                self._status(f"reconnect attempt {attempt + 1} failed ({err!r}); retrying")
            else:
                self.reconnects += 1
                return
        settle(self.done, None, ConnectionError(f"gave up after {self.reconnect_attempts} reconnect attempts"))

    async def close(self) -> None:
        """Quit cleanly: log out through the route and close the connection."""
        self._closing = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        # Only a session this client holds is logged out: a client whose login was
        # refused must not log out the user's real session.
        if self._writer is not None and self.connected:
            with contextlib.suppress(ConnectionError):
                self._write(self._connection.offline())
                await self._writer.drain()
            with contextlib.suppress(httpx.HTTPError, ClientError):
                await self.session.log_out()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self.connected = False
        if self._owns_route:
            await self.route.aclose()
        settle(self.done, None)

    # -- API -------------------------------------------------------------------

    async def _send(self, text: str, receiver_id: int | None) -> Receipt:
        if not self.connected:
            raise ConnectionError("not connected")
        client_msg_id = next(self._msg_ids)
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._receipts[client_msg_id] = future
        self._write(self._connection.message(text, receiver_id, client_msg_id))
        receipt = await asyncio.wait_for(future, self.send_timeout)
        if not receipt.accepted:
            raise ClientError(receipt.code, receipt.message)
        return receipt

    async def send_private(self, receiver_id: int, text: str) -> Receipt:
        """Send to one user; the receipt says 7000 when they are offline (stored for them)."""
        return await self._send(text, receiver_id)

    async def send_group(self, text: str) -> Receipt:
        """Send to every online user."""
        return await self._send(text, None)

    async def online_users(self) -> list[tuple[int, str]]:
        return await self.route.online_users()
