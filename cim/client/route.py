"""The route's HTTP API from the client side: one place that knows its paths, bodies and answers.

    async with RouteClient("http://127.0.0.1:8083") as route:
        user_id = await route.register("alice")
        server = await route.login(user_id, "alice")

Every answer is CIM's envelope ``{code, message, reqNo, dataBody}``; ``read_answer``
checks it (also for callers that send with another HTTP client, such as locust's
session) and a code the call does not accept raises ``ClientError``.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from cim.status import Status

SUCCESS = Status.SUCCESS.code
OFF_LINE = Status.OFF_LINE.code
KEEPALIVE_EXPIRY = 4.0  # seconds an idle pooled connection is kept


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


def req_no() -> str:
    """A request number for the calls CIM's client numbers (register, login): echoed back."""
    return str(time.time_ns())


class RouteClient:
    """The route's calls over one pooled httpx client; each returns the answer's
    dataBody, typed, or raises ``ClientError`` with CIM's code.

    One RouteClient may serve many users (load generators, bots): building an httpx
    client costs ~15 ms and ~1 MB. ``max_connections`` bounds the calls in flight;
    that many connections stay open for reuse.
    """

    def __init__(self, route_url: str, *, timeout: float = 10.0, max_connections: int = 100) -> None:
        self.url = route_url
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

    async def call(self, path: str, body: dict[str, Any] | None = None, accept: Collection[int] = (SUCCESS,)) -> RouteAnswer:
        """POST ``body`` to ``path``. Business errors come back with HTTP 200; any other
        status raises httpx.HTTPStatusError."""
        response = await self._http.post(path, json=body or {})
        response.raise_for_status()
        return read_answer(response.json(), accept)

    async def register(self, user_name: str) -> int:
        """Create (or look up: a taken name returns its id) the account; returns its user id."""
        body = {"reqNo": req_no(), "timeStamp": int(time.time()), "userName": user_name}
        return int((await self.call("/registerAccount", body)).data["userId"])

    async def login(self, user_id: int, user_name: str) -> ServerAddress:
        """Claim a cim-server for the user: 9100 id/name mismatch, 5000 already logged in, 7100 no server."""
        data = (await self.call("/login", {"reqNo": req_no(), "userId": user_id, "userName": user_name})).data
        return ServerAddress(data["ip"], int(data["cimServerPort"]), int(data["httpPort"]))

    async def p2p(self, user_id: int, receiver_id: int, text: str) -> bool:
        """A private message through the route; True when the receiver is offline and it was stored (7000)."""
        body = {"userId": user_id, "receiveUserId": receiver_id, "msg": text}
        return (await self.call("/p2pRoute", body, accept=(SUCCESS, OFF_LINE))).code == OFF_LINE

    async def group(self, user_id: int, text: str) -> None:
        """A message to every online user but the sender."""
        await self.call("/groupRoute", {"userId": user_id, "msg": text})

    async def online_users(self) -> list[tuple[int, str]]:
        """``[(user_id, user_name), ...]``"""
        return [(int(u["userId"]), u["userName"]) for u in (await self.call("/onlineUser")).data]

    async def offline(self, user_id: int) -> None:
        """Log the user out; the route also closes their connection."""
        await self.call("/offLine", {"userId": user_id})

    async def fetch_offline(self, receiver_id: int) -> int:
        """Have the messages stored for an online user pushed to them, in order; returns how many."""
        return int((await self.call("/fetchOfflineMsgs", {"receiveUserId": receiver_id})).data["count"])


async def register(route_url: str, user_name: str) -> int:
    """Create (or look up) the account for ``user_name``; returns its user id."""
    async with RouteClient(route_url) as route:
        return await route.register(user_name)
