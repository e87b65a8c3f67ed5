"""The route's abuse limits: requests a second and logins a minute, per client IP address.

An ASGI middleware in front of every endpoint, so a refused request costs no body
parsing and no backend call. Over a limit the answer is HTTP 429 in CIM's envelope
(code "4029"), with ``Retry-After``. The address is the connection's: behind a proxy
every client shares the proxy's, so give the proxy its own limits or turn these off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cim.config import Config
from cim.ratelimit import KeyedBuckets, per_key_per_minute, per_key_per_second

# The calls that check a password: each costs an argon2 hash, and each is a guess. A
# /login with a bearer token checks the token instead (an HMAC: a reconnect), and is not counted.
PASSWORD_PATHS = frozenset({"/login", "/registerAccount", "/token"})
TOKEN_LOGIN_PATH = "/login"


class RouteLimits:
    """ASGI middleware: requests per IP and second (bursts of twice that), and
    ``/login`` per IP and minute; ``refuse(message)`` makes the 429 answer."""

    def __init__(
        self, app: ASGIApp, config: Config, refuse: Callable[[str], Response],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.refuse = refuse
        self.clock = clock
        per_second, per_minute = config.max_route_requests_per_second, config.max_logins_per_minute
        self.requests = per_key_per_second(per_second)
        self.logins = per_key_per_minute(per_minute)
        self.per_second = per_second
        self.per_minute = per_minute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> Response | None:
        client = scope.get("client")
        ip = client[0] if client else ""
        now = self.clock()
        if self.requests is not None and not self.requests.take(ip, now):
            return self._refusal(f"rate limit exceeded: over {self.per_second} requests/s from {ip}", self.requests, ip)
        if self.logins is not None and _checks_password(scope) and not self.logins.take(ip, now):
            message = f"rate limit exceeded: over {self.per_minute} logins or registrations a minute from {ip}"
            return self._refusal(message, self.logins, ip)
        return None

    def _refusal(self, message: str, buckets: KeyedBuckets, ip: str) -> Response:
        response = self.refuse(message)
        response.headers["Retry-After"] = str(max(1, math.ceil(buckets.wait(ip, self.clock()))))
        return response


def _checks_password(scope: Scope) -> bool:
    path = scope["path"]
    if path == TOKEN_LOGIN_PATH:
        return not any(name == b"authorization" for name, _ in scope["headers"])
    return path in PASSWORD_PATHS
