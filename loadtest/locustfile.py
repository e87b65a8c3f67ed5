"""Locust users for cim: the route's HTTP API and the TCP protocol.

    pip install locust      # a load-test tool, not a dependency of cim
    locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 60s --host http://127.0.0.1:8083
    locust -f loadtest/locustfile.py --headless -u 100 -r 50 -t 60s --host http://127.0.0.1:8083 TcpChatUser

``--host`` is the route. ``RouteUser`` registers, logs in through the route, reads
/onlineUser and sends private (/p2pRoute) and group (/groupRoute) messages through
it, and logs out (/offLine) when it stops. A CIM business error comes back as HTTP
200 with a JSON code other than 9000, so every answer's code is checked.

``TcpChatUser`` registers and logs in through the route, then speaks the wire
protocol on a plain socket (cooperative under locust's gevent): the login frame
and a PING, whose pong confirms the login, then private messages to other
TcpChatUsers of this locust process. It reports as request type ``tcp``:
``login`` (login frame to pong), ``receipt`` (send to SEND_RECEIPT; a code other
than 9000/7000 fails), ``deliver`` (send to receive, from the send time in the
text: sender and receiver share this machine's clock), ``send`` and
``connection`` (only failures).
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

from cim.frame import FrameDecoder, FrameError, encode_frame
from cim.proto import BaseCommand, Request, Response
from cim.status import Status

SUCCESS = Status.SUCCESS.code_str
OFF_LINE = Status.OFF_LINE.code_str
RECEIPT_OK = (Status.SUCCESS.code, Status.OFF_LINE.code)
HEARTBEAT_INTERVAL = 30.0  # seconds without a write before a PING (the server's default interval)
LOGIN_TIMEOUT = 10.0

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


def route_post(client: HttpSession, path: str, body: dict[str, Any], accept: tuple[str, ...] = (SUCCESS,)) -> Any:
    """POST to the route, recorded by locust; a CIM code outside ``accept`` is a failure.

    Returns ``dataBody``, or None when the call failed (locust has recorded why).
    """
    with client.post(path, json=body, catch_response=True) as response:
        if response.status_code != 200:
            return None  # locust has marked the HTTP or connection error failed
        try:
            payload = response.json()
        except ValueError:
            response.failure("the answer is not JSON")
            return None
        if payload.get("code") not in accept:
            response.failure(f"{payload.get('code')}: {payload.get('message')}")
            return None
        return payload.get("dataBody")


def register(client: HttpSession, prefix: str) -> tuple[int, str] | None:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    data = route_post(client, "/registerAccount", {"reqNo": uuid.uuid4().hex, "timeStamp": int(time.time()), "userName": name})
    return None if data is None else (int(data["userId"]), name)


class RouteUser(HttpUser):
    wait_time = between(0.5, 1.5)
    user_id = 0  # until registered

    def on_start(self) -> None:
        account = register(self.client, "locust-http")
        if account is None:
            raise StopUser()
        self.user_id, name = account
        self.sent = itertools.count(1)
        # The route login claims a server for a client that never connects here:
        # the claim lapses by itself (route --login-claim-ttl).
        route_post(self.client, "/login", {"userId": self.user_id, "userName": name})

    def on_stop(self) -> None:
        if self.user_id:
            route_post(self.client, "/offLine", {"userId": self.user_id})

    @task(3)
    def private(self) -> None:
        users = route_post(self.client, "/onlineUser", {})
        others = [int(u["userId"]) for u in users or () if int(u["userId"]) != self.user_id]
        if others:
            body = {"userId": self.user_id, "receiveUserId": random.choice(others), "msg": stamp(self.user_id, next(self.sent))}
            route_post(self.client, "/p2pRoute", body, accept=(SUCCESS, OFF_LINE))  # 7000: stored for them

    @task(1)
    def group(self) -> None:
        route_post(self.client, "/groupRoute", {"userId": self.user_id, "msg": stamp(self.user_id, next(self.sent))})


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
        # The heartbeat and the tasks write from different greenlets: one whole frame at a time.
        self.write_lock = Semaphore()
        self.last_write = 0.0
        self.msg_ids = itertools.count(1)
        self.sent_at: dict[int, float] = {}  # clientMsgId -> perf_counter() at send
        self.login_answer: AsyncResult = AsyncResult()
        self.offline_reason = ""
        self.stopping = False
        self.greenlets: list[gevent.Greenlet] = []

    def fire(self, name: str, started: float, length: int = 0, exception: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type="tcp", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=exception, context=self.context(),
        )

    def on_start(self) -> None:
        account = register(self.route, "locust-tcp")
        if account is None:
            raise StopUser()
        self.user_id, name = account
        server = route_post(self.route, "/login", {"userId": self.user_id, "userName": name})
        if server is None:
            raise StopUser()
        started = time.perf_counter()
        try:
            self.sock = socket.create_connection((server["ip"], int(server["cimServerPort"])), timeout=LOGIN_TIMEOUT)
            self.sock.settimeout(None)
            self.greenlets.append(gevent.spawn(self.read_loop, self.sock))
            # The login frame carries no cmd (LOGIN_REQUEST is 0). The server answers a
            # PING in order, so the pong says the login before it was accepted.
            self.write(Request(requestId=self.user_id, reqMsg=name))
            self.write(Request(requestId=self.user_id, reqMsg="ping", cmd=BaseCommand.PING))
            self.login_answer.get(timeout=LOGIN_TIMEOUT)
        except (OSError, FrameError, CimFailure, gevent.Timeout) as err:
            self.fire("login", started, exception=err)
            raise StopUser() from err
        self.fire("login", started)
        ONLINE.add(self.user_id)
        self.greenlets.append(gevent.spawn(self.heartbeat))

    def on_stop(self) -> None:
        self.stopping = True
        ONLINE.discard(self.user_id)
        if self.user_id:
            route_post(self.route, "/offLine", {"userId": self.user_id})
        gevent.killall(self.greenlets)
        if self.sock is not None:
            self.sock.close()

    def write(self, request: Request) -> None:
        assert self.sock is not None
        with self.write_lock:
            self.sock.sendall(encode_frame(request.SerializeToString()))
            self.last_write = time.monotonic()

    @task
    def send_private(self) -> None:
        others = [u for u in ONLINE if u != self.user_id]
        if not others:
            return
        msg_id = next(self.msg_ids)
        request = Request(requestId=self.user_id, reqMsg=stamp(self.user_id, msg_id), cmd=BaseCommand.MESSAGE, clientMsgId=msg_id)
        request.properties["receiveUserId"] = str(random.choice(others))
        started = self.sent_at[msg_id] = time.perf_counter()
        try:
            self.write(request)
        except OSError as err:
            del self.sent_at[msg_id]
            self.fire("send", started, exception=err)

    def heartbeat(self) -> None:
        while True:
            gevent.sleep(max(0.0, self.last_write + HEARTBEAT_INTERVAL - time.monotonic()))
            if time.monotonic() - self.last_write >= HEARTBEAT_INTERVAL:
                try:
                    self.write(Request(requestId=self.user_id, reqMsg="ping", cmd=BaseCommand.PING))
                except OSError:
                    return  # the read loop reports the broken connection

    def read_loop(self, sock: socket.socket) -> None:
        decoder = FrameDecoder()
        error: Exception
        try:
            while data := sock.recv(65536):
                for frame in decoder.feed(data):
                    self.on_frame(Response.FromString(frame), len(frame))
            error = ConnectionError(f"the server closed the connection {self.offline_reason}".strip())
        except (OSError, FrameError) as err:
            error = err
        if not self.login_answer.ready():
            self.login_answer.set_exception(error)
        elif not self.stopping:
            self.fire("connection", time.perf_counter(), exception=error)

    def on_frame(self, response: Response, length: int) -> None:
        cmd = response.cmd
        if cmd == BaseCommand.PING:
            if not self.login_answer.ready():
                self.login_answer.set(None)
        elif cmd == BaseCommand.MESSAGE:
            sent_ns = stamped_ns(response.resMsg)
            if sent_ns is not None:
                self.environment.events.request.fire(
                    request_type="tcp", name="deliver", response_time=(time.time_ns() - sent_ns) / 1e6,
                    response_length=length, exception=None, context=self.context(),
                )
        elif cmd == BaseCommand.SEND_RECEIPT:
            started = self.sent_at.pop(response.clientMsgId, None)
            if started is not None:
                failure = None if response.code in RECEIPT_OK else CimFailure(f"{response.code}: {response.resMsg}")
                self.fire("receipt", started, length, failure)
        elif cmd == BaseCommand.ERROR:
            error = CimFailure(f"{response.code}: {response.resMsg}")
            if not self.login_answer.ready():
                self.login_answer.set_exception(error)
            else:
                self.fire("error", time.perf_counter(), length, error)
        elif cmd == BaseCommand.OFFLINE:
            self.offline_reason = f"(OFFLINE {response.code}: {response.resMsg})"
