"""The route's HTTP API from the client side: one place that knows its paths, bodies and answers.

    async with RouteClient("http://127.0.0.1:8083") as route:
        user_id = await route.register("alice", password)
        answer = await route.login(user_id, "alice", password)   # answer.server, answer.token
        await route.p2p(user_id, 1002, "hi", token=answer.token)

Every answer is CIM's envelope ``{code, message, reqNo, dataBody}``; ``read_answer``
checks it (also for callers that send with another HTTP client, such as locust's
session) and a code the call does not accept raises ``ClientError``. The route's
401/403/429 answers carry the envelope too: they raise ``ClientError`` with its code
(4001, 4003, 4029) like any other refusal.

The calls that act for a user take its ``token`` (``LoginAnswer.token``) and send it
as ``Authorization: Bearer``; an empty token sends no header (under ``--auth none``
a login hands out no token, ``LoginAnswer.token`` is "", and nothing is checked).
An operator's admin key goes in the same place (``offline`` of another user).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import httpx

from cim.status import Status

SUCCESS = Status.SUCCESS.code
OFF_LINE = Status.OFF_LINE.code
UNAUTHORIZED = Status.UNAUTHORIZED.code
KEEPALIVE_EXPIRY = 4.0  # seconds an idle pooled connection is kept

T = TypeVar("T")


class ClientError(Exception):
    """The route or the server refused: ``code`` is CIM's status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ServerAddress:
    """The cim-server the route picked for a login."""

    host: str
    port: int
    http_port: int
    ws_url: str | None = None  # its WebSocket endpoint, when it has one


@dataclass(frozen=True)
class LoginAnswer:
    """A route login: the server to connect to, and the token for its TCP login and
    the route calls acting for the user ("" from a route under ``--auth none``)."""

    server: ServerAddress
    token: str


@dataclass(frozen=True)
class LoggedInDevice:
    """One of a user's devices as ``/devices`` lists it: its id ("" is CIM's client), the server holding
    its connection (``server_id``, ``host:tcp_port:http_port``) and since when (ms since the epoch)."""

    device_id: str
    server_id: str
    server: ServerAddress
    since_ms: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> LoggedInDevice:
        server = ServerAddress(str(data["ip"]), int(data["cimServerPort"]), int(data["httpPort"]))
        return cls(str(data["deviceId"]), str(data["serverId"]), server, int(data["since"]))


class RouteAnswer(NamedTuple):
    """A route answer whose code the call accepted."""

    code: int
    data: Any  # the envelope's dataBody


def read_answer(payload: Any, accept: Collection[int] = (SUCCESS,)) -> RouteAnswer:
    """The code and dataBody of a decoded route answer; ClientError for a code outside
    ``accept``, ValueError for something that is not a route answer at all."""
    if not isinstance(payload, dict) or "code" not in payload:
        raise ValueError(f"not a route answer: {payload!r:.200}")
    code = int(payload["code"])  # a string on the wire, as CIM sends it
    if code not in accept:
        raise ClientError(code, payload.get("message") or "")
    return RouteAnswer(code, payload.get("dataBody"))


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``; none for an empty one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def req_no() -> str:
    """A request number for the calls CIM's client numbers (register, login): echoed back."""
    return str(time.time_ns())


def _delay_field(delay_seconds: int) -> dict[str, int]:
    """``delaySeconds`` when there is a delay: a body without it is exactly CIM's."""
    return {"delaySeconds": delay_seconds} if delay_seconds else {}


class RouteClient:
    """The route's calls over one pooled httpx client; each returns the answer's
    dataBody, typed, or raises ``ClientError`` with CIM's code.

    One RouteClient may serve many users (load generators, bots): building an httpx
    client costs ~15 ms and ~1 MB. ``max_connections`` bounds the calls in flight;
    that many connections stay open for reuse. The calls beyond it wait here, not in
    httpx's pool: httpcore 1.0 walks its whole queue against every connection each time a
    call starts or ends, so 1,400 calls queued there (a node's users all reconnecting)
    held the event loop for 19 s in one go, and a pool of 100 connections cost 4 ms of CPU
    a call against 1 ms for 10 (``tests/test_route_client.py``; one route process
    answers no faster for more).
    """

    def __init__(self, route_url: str, *, timeout: float = 10.0, max_connections: int = 10) -> None:
        self.url = route_url
        self._in_flight = asyncio.Semaphore(max_connections)
        # A pooled connection is dropped before the route's keep-alive (uvicorn: 5 s) runs
        # out, so it is never reused just as the route closes it (RemoteProtocolError).
        limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY)
        self._http = httpx.AsyncClient(base_url=route_url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> RouteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self, path: str, body: dict[str, Any] | None = None, accept: Collection[int] = (SUCCESS,), token: str = ""
    ) -> RouteAnswer:
        """POST ``body`` to ``path``, with ``token`` as the bearer. Business errors come
        back with HTTP 200, refused credentials and rate limits with 401/403/429 and the
        envelope (``ClientError`` either way); any other status raises httpx.HTTPStatusError."""
        async with self._in_flight:
            response = await self._http.post(path, json=body or {}, headers=bearer(token))
        if not response.is_success:
            # A refusal answered with an HTTP error status still carries CIM's envelope
            # and code: raise that, rather than a bare HTTP status error.
            with contextlib.suppress(ValueError):
                read_answer(response.json(), accept=())
            response.raise_for_status()
        return read_answer(response.json(), accept)

    async def register(self, user_name: str, password: str) -> int:
        """Create the account; returns its user id. A taken name returns its id only with
        its password (else 3000 "userName is taken"). ``--auth none`` ignores the password."""
        body = {"reqNo": req_no(), "timeStamp": int(time.time()), "userName": user_name, **_password_field(password)}
        return int((await self.call("/registerAccount", body)).data["userId"])

    async def login(self, user_id: int, user_name: str, password: str, device_id: str = "", *,
                    token: str = "") -> LoginAnswer:
        """Claim a cim-server for the user's device (``device_id``; "": CIM's one login per user): 9100 wrong
        password or id/name mismatch, 5000 already logged in (or past the device limit), 7100 no server, 4029 too
        many logins from this address. With ``token`` (the user's, from an earlier login) and no password the
        token proves the user (4001 once it expired) and comes back as the answer's."""
        body = {"reqNo": req_no(), "userId": user_id, "userName": user_name, **_password_field(password),
                **({"deviceId": device_id} if device_id else {})}  # none for "": CIM's body exactly
        data = (await self.call("/login", body, token=token)).data
        server = ServerAddress(data["ip"], int(data["cimServerPort"]), int(data["httpPort"]), data.get("wsUrl"))
        return LoginAnswer(server, data.get("token") or "")

    async def renew_token(self, user_id: int, user_name: str, password: str) -> str:
        """A new token, with no login claim (so also while the user is connected): 9100 as ``login``."""
        body = {"reqNo": req_no(), "userId": user_id, "userName": user_name, **_password_field(password)}
        return str((await self.call("/token", body)).data["token"])

    async def p2p(self, user_id: int, receiver_id: int, text: str, *, token: str = "", delay_seconds: int = 0) -> bool:
        """A private message through the route; True when the receiver is offline and it was stored (7000).
        ``delay_seconds`` (not 0): delivered that much later (the answer, 9000, says it is scheduled)."""
        body = {"userId": user_id, "receiveUserId": receiver_id, "msg": text, **_delay_field(delay_seconds)}
        return (await self.call("/p2pRoute", body, accept=(SUCCESS, OFF_LINE), token=token)).code == OFF_LINE

    async def group(self, user_id: int, text: str, *, token: str = "", delay_seconds: int = 0) -> None:
        """A message to every online user but the sender (``delay_seconds`` as for ``p2p``: online then)."""
        await self.call("/groupRoute", {"userId": user_id, "msg": text, **_delay_field(delay_seconds)}, token=token)

    async def online_users(self) -> list[tuple[int, str]]:
        """``[(user_id, user_name), ...]``"""
        return [(int(u["userId"]), u["userName"]) for u in (await self.call("/onlineUser")).data]

    async def log_out(self, user_id: int, *, token: str = "") -> None:
        """Log the user out; the route also closes their connection. ``token`` is the
        user's own, or the operator's admin key to end anyone's session."""
        await self.call("/offLine", {"userId": user_id}, token=token)

    async def fetch_offline(self, receiver_id: int, *, token: str = "") -> int:
        """Have the messages stored for an online user pushed to them, in order; returns how many."""
        body = {"receiveUserId": receiver_id}
        return int((await self.call("/fetchOfflineMsgs", body, token=token)).data["count"])

    async def devices(self, user_id: int, *, token: str = "") -> list[LoggedInDevice]:
        """The user's logged-in devices, by id; ``token`` the user's own or the admin key."""
        return [LoggedInDevice.of(d) for d in (await self.call("/devices", {"userId": user_id}, token=token)).data["devices"]]

    async def end_device(self, user_id: int, device_id: str, *, token: str = "") -> None:
        """Log out one device of the user and end its connection (it gets OFFLINE 9000 and does not reconnect);
        3000 for a device not logged in. ``token`` as for ``devices``."""
        await self.call("/devices/end", {"userId": user_id, "deviceId": device_id}, token=token)


@dataclass(frozen=True)
class GroupSummary:
    """A named group as ``/group/list`` and ``/group/members`` describe it."""

    group_id: str
    name: str
    owner_id: int
    member_count: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> GroupSummary:
        return cls(str(data["groupId"]), str(data["name"]), int(data["ownerId"]), int(data["memberCount"]))


class GroupCalls:
    """A user's named-group calls (``/group/...``) through their ``RouteSession`` (its token,
    renewed on a 4001); a refusal (3000: not the owner, not a member, no such group or user,
    over the size limit) raises ``ClientError``."""

    def __init__(self, session: RouteSession) -> None:
        self.session = session

    async def _call(self, path: str, **fields: Any) -> Any:
        session = self.session
        body = {"userId": session.user_id, **fields}
        return (await session.as_user(lambda token: session.route.call(f"/group/{path}", body, token=token))).data

    async def create(self, name: str, members: list[int]) -> str:
        """A new group owned by this user, with ``members``; its id."""
        return str((await self._call("create", name=name, members=members))["groupId"])

    async def add_members(self, group_id: str, members: list[int]) -> list[int]:
        """The users added (members already are left out); owner only."""
        return [int(u) for u in (await self._call("addMembers", groupId=group_id, members=members))["added"]]

    async def remove_members(self, group_id: str, members: list[int]) -> list[int]:
        """The users removed; owner only."""
        return [int(u) for u in (await self._call("removeMembers", groupId=group_id, members=members))["removed"]]

    async def leave(self, group_id: str) -> None:
        await self._call("leave", groupId=group_id)

    async def members(self, group_id: str) -> tuple[GroupSummary, list[tuple[int, str]]]:
        """The group and its members as ``[(user_id, user_name), ...]``; members only."""
        data = await self._call("members", groupId=group_id)
        return GroupSummary.of(data), [(int(m["userId"]), m["userName"]) for m in data["members"]]

    async def mine(self) -> list[GroupSummary]:
        """This user's groups."""
        return [GroupSummary.of(g) for g in await self._call("list")]

    async def rename(self, group_id: str, name: str) -> None:
        await self._call("rename", groupId=group_id, name=name)

    async def dissolve(self, group_id: str) -> None:
        await self._call("dissolve", groupId=group_id)


class RouteSession:
    """One user's standing with the route: logs in with the password, keeps the token
    the login hands out (``token``; "" under ``--auth none``) and makes the calls
    acting for the user with it. A call refused as unauthorized (4001: the token
    expired, 24 h by default) logs in again for a new token and is made once more;
    that login's own refusal (5000 while the user's session is held, say) is raised."""

    def __init__(self, route: RouteClient, user_id: int, user_name: str, password: str, device_id: str = "") -> None:
        self.route = route
        self.user_id = user_id
        self.user_name = user_name
        self.device_id = device_id
        self._password = password
        self.token = ""
        self.groups = GroupCalls(self)

    async def login(self) -> ServerAddress:
        """Log in through the route, keeping the token; returns the server it picked. Again
        (a reconnect) with the token while it is valid: the route hashes no password for it."""
        if self.token:
            try:
                answer = await self.route.login(self.user_id, self.user_name, "", self.device_id, token=self.token)
            except ClientError as err:
                if err.code != UNAUTHORIZED:
                    raise
                self.token = ""  # expired: the password logs in
            else:
                return answer.server
        answer = await self.route.login(self.user_id, self.user_name, self._password, self.device_id)
        self.token = answer.token
        return answer.server

    async def fetch_offline(self) -> int:
        return await self.as_user(lambda token: self.route.fetch_offline(self.user_id, token=token))

    async def log_out(self) -> None:
        await self.as_user(lambda token: self.route.log_out(self.user_id, token=token))

    async def leave(self) -> None:
        """Log out as a closing client: the route's /offLine logs out EVERY device of the user, so only
        CIM's one-device login (device "") calls it; a named device's OFFLINE frame frees just its record."""
        if not self.device_id:
            await self.log_out()

    async def as_user(self, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(token)``, and once more with a renewed token if it was refused as unauthorized."""
        try:
            return await call(self.token)
        except ClientError as err:
            if err.code != UNAUTHORIZED:
                raise
        # Not a login: that would claim a server, and is refused (5000) while connected.
        self.token = await self.route.renew_token(self.user_id, self.user_name, self._password)
        return await call(self.token)


class DeviceCalls:
    """``devices`` and ``end_device`` for ``cim.client.sdk.Client`` (a mixin): the user's devices, through its
    ``session`` (its token, renewed on a 4001)."""

    session: RouteSession

    async def devices(self) -> list[LoggedInDevice]:
        """The user's logged-in devices; this client's own is the one with ``session.device_id``."""
        session = self.session
        return await session.as_user(lambda token: session.route.devices(session.user_id, token=token))

    async def end_device(self, device_id: str) -> None:
        """End one of the user's devices, wherever it is connected (this client's own too: it stops)."""
        session = self.session
        await session.as_user(lambda token: session.route.end_device(session.user_id, device_id, token=token))


def _password_field(password: str) -> dict[str, str]:
    """The body's password; none for "": CIM's body exactly, and under token auth the
    route's 3000 naming the missing field rather than an empty password."""
    return {"password": password} if password else {}


async def register(route_url: str, user_name: str, password: str) -> int:
    """Create (or, with its password, look up) the account for ``user_name``; returns its user id."""
    async with RouteClient(route_url) as route:
        return await route.register(user_name, password)
