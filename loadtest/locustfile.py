"""Locust users for cim: the route's HTTP API and the TCP protocol.

    pip install locust      # a load-test tool, not a dependency of cim
    locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 60s --host http://127.0.0.1:8083
    locust -f loadtest/locustfile.py --headless -u 100 -r 50 -t 60s --host http://127.0.0.1:8083 TcpChatUser

``--host`` is the route. ``RouteUser`` registers, logs in through the route, reads
/onlineUser and sends private (/p2pRoute) and group (/groupRoute) messages through
it, and logs out (/offLine) when it stops. A CIM business error comes back as HTTP
200 with a JSON code other than 9000, so every answer's code is checked. Users
register with a password; under token auth the calls acting for a user carry the
token its login returned, and so does the TCP login.

``TcpChatUser`` registers and logs in through the route, then speaks the wire
protocol on a plain socket (cooperative under locust's gevent) through the SDK's
sans-I/O ``ClientConnection``: the login frame and a PING, whose pong confirms the
login, then private messages to other TcpChatUsers of this locust process. It
reports as request type ``tcp``: ``login`` (login frame to pong), ``receipt``
(send to SEND_RECEIPT; a code other than 9000/7000 fails), ``deliver`` (send to
receive, from the send time in the text: sender and receiver share this machine's
clock), ``send`` and ``connection`` (only failures).
"""

from __future__ import annotations

import itertools
import random
import socket
import time
import uuid
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from locust import HttpUser, User, between, task
from locust.clients import HttpSession
from locust.env import Environment
from locust.exception import StopUser

from cim.client.route import OFF_LINE, SUCCESS, ClientError, bearer, read_answer
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

HEARTBEAT_INTERVAL = 30.0  # seconds without a write before a PING (the server's default interval)
LOGIN_TIMEOUT = 10.0
PASSWORD = "locust-password"  # every account's: fresh accounts on a cluster under test

# TcpChatUsers of this locust process that are logged in: whom to send to. (With
# distributed locust each worker process has its own.)
ONLINE: set[int] = set()


class CimFailure(Exception):
    """The server or the route answered with a CIM code that is not success."""


def stamp(sender: int, n: int) -> str:
    """A message text carrying its send time, so a receiver can time the delivery."""
    return f"locust:{time.time_ns()}:{sender}:{n}"


def stamped_ns(text: str) -> int | None:
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != "locust" or not parts[1].isdigit():
        return None
    return int(parts[1])


def route_post(
    client: HttpSession, path: str, body: dict[str, Any], accept: tuple[int, ...] = (SUCCESS,), token: str = ""
) -> Any:
    """POST to the route through locust's session (its stats come from it), with
    ``token`` as the bearer, the answer checked as the SDK's RouteClient checks it: a
    CIM code outside ``accept`` is a failure.

    Returns ``dataBody``, or None when the call failed (locust has recorded why).
    """
    with client.post(path, json=body, headers=bearer(token), catch_response=True) as response:
        ok = response.status_code == 200
        try:
            # A refusal with an HTTP error status (401, 403, 429) carries CIM's envelope:
            # it fails with its code, never as a success.
            return read_answer(response.json(), accept if ok else ()).data
        except ClientError as err:
            response.failure(str(err))
        except ValueError as err:  # not JSON, or not a route answer
            if ok:  # else locust has marked the HTTP or connection error failed
                response.failure(str(err))
        return None


def register(client: HttpSession, prefix: str) -> tuple[int, str] | None:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    body = {"reqNo": uuid.uuid4().hex, "timeStamp": int(time.time()), "userName": name, "password": PASSWORD}
    data = route_post(client, "/registerAccount", body)
    return None if data is None else (int(data["userId"]), name)


def login(client: HttpSession, user_id: int, user_name: str) -> tuple[dict[str, Any], str] | None:
    """The route's login answer (the server it picked) and the token in it ("" under ``--auth none``)."""
    data = route_post(client, "/login", {"userId": user_id, "userName": user_name, "password": PASSWORD})
    return None if data is None else (data, data.get("token") or "")


class RouteUser(HttpUser):
    wait_time = between(0.5, 1.5)
    user_id = 0  # until registered
    token = ""  # until logged in (and under --auth none)

    def on_start(self) -> None:
        account = register(self.client, "locust-http")
        if account is None:
            raise StopUser()
        self.user_id, name = account
        self.sent = itertools.count(1)
        # The route login claims a server for a client that never connects here:
        # the claim lapses by itself (route --login-claim-ttl). Its token is what counts.
        answer = login(self.client, self.user_id, name)
        if answer is None:
            raise StopUser()
        _, self.token = answer
        # One group message at once, then the weighted mix: a short run (the test's 4 s, a few
        # tasks per user) exercises both sends, however the task draws fall.
        self.group()

    def on_stop(self) -> None:
        if self.user_id:
            route_post(self.client, "/offLine", {"userId": self.user_id}, token=self.token)

    @task(3)
    def private(self) -> None:
        users = route_post(self.client, "/onlineUser", {})
        others = [int(u["userId"]) for u in users or () if int(u["userId"]) != self.user_id]
        if others:
            body = {"userId": self.user_id, "receiveUserId": random.choice(others), "msg": stamp(self.user_id, next(self.sent))}
            route_post(self.client, "/p2pRoute", body, accept=(SUCCESS, OFF_LINE), token=self.token)  # 7000: stored

    @task(1)
    def group(self) -> None:
        body = {"userId": self.user_id, "msg": stamp(self.user_id, next(self.sent))}
        route_post(self.client, "/groupRoute", body, token=self.token)


class TcpChatUser(User):
    wait_time = between(0.5, 1.5)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.route = HttpSession(base_url=self.host, request_event=environment.events.request, user=self)
        # Three route calls in a user's life, the last long after the route (uvicorn,
        # 5 s keep-alive) has closed the idle connection; under gevent urllib3 does not
        # always notice that and reuses it (RemoteDisconnected). One connection per call.
        self.route.headers["Connection"] = "close"
        self.sock: socket.socket | None = None
        self.user_id = 0
        self.token = ""  # the route login's (and "" under --auth none)
        self.connection: ClientConnection  # set by on_start, before any task runs
        # The heartbeat and the tasks write from different greenlets: one whole frame at a time.
        self.write_lock = Semaphore()
        self.last_write = 0.0
        self.msg_ids = itertools.count(1)
        self.sent_at: dict[int, float] = {}  # clientMsgId -> perf_counter() at send
        self.login_answer: AsyncResult[None] = AsyncResult()
        self.offline_reason = ""
        self.stopping = False
        self.greenlets: list[gevent.Greenlet[..., None]] = []

    def fire(self, name: str, started: float, exception: BaseException | None = None) -> None:
        self.report(name, (time.perf_counter() - started) * 1000, exception)

    def report(self, name: str, response_time_ms: float, exception: BaseException | None = None) -> None:
        # Events carry no frame sizes: the TCP exchanges report no response length.
        self.environment.events.request.fire(
            request_type="tcp", name=name, response_time=response_time_ms,
            response_length=0, exception=exception, context=self.context(),
        )

    def on_start(self) -> None:
        account = register(self.route, "locust-tcp")
        if account is None:
            raise StopUser()
        self.user_id, name = account
        answer = login(self.route, self.user_id, name)
        if answer is None:
            raise StopUser()
        server, self.token = answer
        started = time.perf_counter()
        self.connection = ClientConnection(self.user_id, name)
        try:
            self.sock = socket.create_connection((server["ip"], int(server["cimServerPort"])), timeout=LOGIN_TIMEOUT)
            self.sock.settimeout(None)
            self.greenlets.append(gevent.spawn(self.read_loop, self.sock))
            # The server answers a PING in order, so the pong says the login before it was accepted.
            self.write(self.connection.login(token=self.token) + self.connection.ping())
            self.login_answer.get(timeout=LOGIN_TIMEOUT)
        except (OSError, CimFailure, gevent.Timeout) as err:
            self.fire("login", started, exception=err)
            raise StopUser() from err
        self.fire("login", started)
        ONLINE.add(self.user_id)
        self.greenlets.append(gevent.spawn(self.heartbeat))

    def on_stop(self) -> None:
        self.stopping = True
        ONLINE.discard(self.user_id)
        if self.user_id:
            route_post(self.route, "/offLine", {"userId": self.user_id}, token=self.token)
        gevent.killall(self.greenlets)
        if self.sock is not None:
            self.sock.close()

    def write(self, frames: bytes) -> None:
        assert self.sock is not None
        with self.write_lock:
            self.sock.sendall(frames)
            self.last_write = time.monotonic()

    @task
    def send_private(self) -> None:
        others = [u for u in ONLINE if u != self.user_id]
        if not others:
            return
        msg_id = next(self.msg_ids)
        frame = self.connection.message(stamp(self.user_id, msg_id), random.choice(others), msg_id)
        started = self.sent_at[msg_id] = time.perf_counter()
        try:
            self.write(frame)
        except OSError as err:
            del self.sent_at[msg_id]
            self.fire("send", started, exception=err)

    def heartbeat(self) -> None:
        while True:
            gevent.sleep(max(0.0, self.last_write + HEARTBEAT_INTERVAL - time.monotonic()))
            if time.monotonic() - self.last_write >= HEARTBEAT_INTERVAL:
                try:
                    self.write(self.connection.ping())
                except OSError:
                    return  # the read loop reports the broken connection

    def read_loop(self, sock: socket.socket) -> None:
        error: Exception
        try:
            while data := sock.recv(65536):
                for event in self.connection.receive_data(data):
                    self.on_event(event)
            error = ConnectionError(f"the server closed the connection {self.offline_reason}".strip())
        except OSError as err:
            error = err
        if not self.login_answer.ready():
            self.login_answer.set_exception(error)
        elif not self.stopping:
            self.fire("connection", time.perf_counter(), error)

    def on_event(self, event: ClientEvent) -> None:
        match event:
            case Pong():
                if not self.login_answer.ready():
                    self.login_answer.set(None)
            case Pushed():
                sent_ns = stamped_ns(event.text)
                if sent_ns is not None:
                    self.report("deliver", (time.time_ns() - sent_ns) / 1e6)
            case Receipt():
                started = self.sent_at.pop(event.client_msg_id, None)
                if started is not None:
                    self.fire("receipt", started, None if event.accepted else CimFailure(f"{event.code}: {event.message}"))
            case ServerError():
                error = CimFailure(f"{event.code}: {event.message}")
                if not self.login_answer.ready():
                    self.login_answer.set_exception(error)
                else:
                    self.fire("error", time.perf_counter(), error)
            case Offline():
                self.offline_reason = f"(OFFLINE {event.code}: {event.reason})"
            case ProtocolError():
                raise ConnectionError(f"unusable stream: {event.reason}")  # ends the read loop
