"""The asyncio client SDK: what the console client and any other UI are built on.

    async with Client("http://127.0.0.1:8083", user_id, "alice", on_message=print) as client:
        await client.send_group("hello all")
        await client.send_private(1002, "hello bob")

``connect`` logs in through the route, opens the TCP connection to the server the
route picked and sends the login frame. A PING goes out whenever nothing was
written for a heartbeat interval; a connection silent for 3 intervals counts as
lost. A lost connection is re-established (route login again, jittered
exponential backoff, capped) up to ``reconnect_attempts`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from cim.frame import FrameDecoder, FrameError, encode_frame
from cim.proto import BaseCommand, Request, Response
from cim.status import Status

log = logging.getLogger("cim.client")

# Codes a reconnect waits out rather than gives up on: the old session may not be
# cleared yet (5000), or no server is up yet (7100).
RETRYABLE = {Status.REPEAT_LOGIN.code, Status.SERVER_NOT_AVAILABLE.code}


class ClientError(Exception):
    """The route or the server refused: ``code`` is CIM's status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Message:
    sender_id: int
    sender_name: str
    receiver_id: int
    text: str
    msg_id: int
    timestamp_ms: int


@dataclass(frozen=True)
class Receipt:
    """The server's answer to one send: 9000 delivered/accepted, 7000 stored for an offline receiver."""

    code: int
    message: str
    msg_id: int

    @property
    def stored_offline(self) -> bool:
        return self.code == Status.OFF_LINE.code


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    http_port: int


MessageCallback = Callable[[Message], Any]
StatusCallback = Callable[[str], Any]


async def route_call(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST to the route; returns ``dataBody`` on 9000, raises ClientError otherwise."""
    response = await http.post(path, json=body or {})
    response.raise_for_status()
    payload = response.json()
    code = int(payload["code"])
    if code != Status.SUCCESS.code:
        raise ClientError(code, payload.get("message") or "")
    return payload.get("dataBody")


async def register(route_url: str, user_name: str) -> int:
    """Create (or look up) the account for ``user_name``; returns its user id."""
    async with httpx.AsyncClient(base_url=route_url, timeout=10) as http:
        body = {"reqNo": str(time.time_ns()), "timeStamp": int(time.time()), "userName": user_name}
        data = await route_call(http, "/registerAccount", body)
    return int(data["userId"])


class Client:
    def __init__(
        self,
        route_url: str,
        user_id: int,
        user_name: str,
        *,
        on_message: MessageCallback | None = None,
        on_status: StatusCallback | None = None,
        heartbeat_interval: float = 30.0,
        reconnect_attempts: int = 10,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        fetch_offline: bool = True,
        send_timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.route_url = route_url
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
        # One route client may serve many Clients (load generators, bots): building an
        # httpx client is costly (~15 ms, ~1 MB). A shared one is not closed here.
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(base_url=route_url, timeout=10)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._receipts: dict[int, asyncio.Future[Receipt]] = {}
        self._login_answer: asyncio.Future[None] | None = None
        self._msg_ids = itertools.count(1)
        self._last_write = 0.0
        self._last_read = 0.0
        self._closing = False
        self._ended_by_server = False  # an OFFLINE frame with 9000: do not reconnect
        # Resolves when the client is finished: closed, refused, or out of reconnect attempts.
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
        data = await route_call(
            self._http, "/login", {"reqNo": str(time.time_ns()), "userId": self.user_id, "userName": self.user_name}
        )
        self.server = ServerAddress(data["ip"], int(data["cimServerPort"]), int(data["httpPort"]))
        self._reader, self._writer = await asyncio.open_connection(self.server.host, self.server.port)
        self._ended_by_server = False
        # The server answers a ping in order with what came before it, so the pong
        # after the login frame says the login was accepted (a refusal is an error frame).
        self._login_answer = asyncio.get_running_loop().create_future()
        self._write(Request(requestId=self.user_id, reqMsg=self.user_name, cmd=BaseCommand.LOGIN_REQUEST))
        self._write(Request(requestId=self.user_id, reqMsg="ping", cmd=BaseCommand.PING))
        self._last_read = time.monotonic()
        self.connected = True
        self._tasks = [
            asyncio.create_task(self._read_loop(self._reader), name="cim-client-read"),
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
            await route_call(self._http, "/fetchOfflineMsgs", {"receiveUserId": self.user_id})

    def _write(self, request: Request) -> None:
        assert self._writer is not None
        self._writer.write(encode_frame(request.SerializeToString()))
        self._last_write = time.monotonic()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                self._last_read = time.monotonic()
                for frame in decoder.feed(data):
                    self._on_frame(Response.FromString(frame))
        except (ConnectionError, FrameError) as err:
            self._status(f"connection error: {err}")
        finally:
            login = self._login_answer
            if login is not None and not login.done():
                login.set_exception(ConnectionError("the server closed the connection during login"))
            if not self._closing:
                asyncio.get_running_loop().call_soon(self._connection_lost)

    def _on_frame(self, response: Response) -> None:
        cmd = response.cmd
        login = self._login_answer
        if cmd == BaseCommand.PING:
            if login is not None and not login.done():
                login.set_result(None)
        elif cmd == BaseCommand.MESSAGE:
            message = Message(
                sender_id=int(response.properties.get("sendUserId") or response.responseId),
                sender_name=response.properties.get("sendUserName", ""),
                receiver_id=int(response.properties.get("receiveUserId") or 0),
                text=response.resMsg,
                msg_id=response.msgId,
                timestamp_ms=response.timestamp,
            )
            if self.on_message is not None:
                self.on_message(message)
        elif cmd == BaseCommand.SEND_RECEIPT:
            future = self._receipts.pop(response.clientMsgId, None)
            if future is not None and not future.done():
                future.set_result(Receipt(response.code, response.resMsg, response.msgId))
        elif cmd == BaseCommand.ERROR:
            self._status(f"server error {response.code}: {response.resMsg}")
            if login is not None and not login.done():
                login.set_exception(ClientError(response.code, response.resMsg))
        elif cmd == BaseCommand.OFFLINE:
            self._status(f"server closed the session: {response.resMsg}")
            self._ended_by_server = response.code == Status.SUCCESS.code

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
                self._write(Request(requestId=self.user_id, reqMsg="ping", cmd=BaseCommand.PING))
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
            self._finish(None)
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
                    self._finish(err)
                    return
                self._status(f"reconnect attempt {attempt + 1} refused ({err}); retrying")
            except (OSError, httpx.HTTPError) as err:
                self._status(f"reconnect attempt {attempt + 1} failed ({err!r}); retrying")
            else:
                self.reconnects += 1
                return
        self._finish(ConnectionError(f"gave up after {self.reconnect_attempts} reconnect attempts"))

    def _finish(self, error: BaseException | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

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
                self._write(Request(requestId=self.user_id, reqMsg="bye", cmd=BaseCommand.OFFLINE))
                await self._writer.drain()
            with contextlib.suppress(httpx.HTTPError, ClientError):
                await route_call(self._http, "/offLine", {"userId": self.user_id})
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self.connected = False
        if self._owns_http:
            await self._http.aclose()
        self._finish(None)

    # -- API -------------------------------------------------------------------

    async def _send(self, text: str, receiver_id: int | None) -> Receipt:
        if not self.connected:
            raise ConnectionError("not connected")
        client_msg_id = next(self._msg_ids)
        request = Request(requestId=self.user_id, reqMsg=text, cmd=BaseCommand.MESSAGE, clientMsgId=client_msg_id)
        if receiver_id is not None:
            request.properties["receiveUserId"] = str(receiver_id)
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._receipts[client_msg_id] = future
        self._write(request)
        receipt = await asyncio.wait_for(future, self.send_timeout)
        if receipt.code not in (Status.SUCCESS.code, Status.OFF_LINE.code):
            raise ClientError(receipt.code, receipt.message)
        return receipt

    async def send_private(self, receiver_id: int, text: str) -> Receipt:
        """Send to one user; the receipt says 7000 when they are offline (stored for them)."""
        return await self._send(text, receiver_id)

    async def send_group(self, text: str) -> Receipt:
        """Send to every online user."""
        return await self._send(text, None)

    async def online_users(self) -> list[tuple[int, str]]:
        users = await route_call(self._http, "/onlineUser")
        return [(int(u["userId"]), u["userName"]) for u in users]
