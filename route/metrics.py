"""The route's figures for Prometheus: requests by path, HTTP status and CIM code, their
durations, and login outcomes, measured by one ASGI middleware around the whole app
(so answers from other middleware, a 429 say, are counted too)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import prometheus_client
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cim.metrics import LATENCY_BUCKETS, new_registry

CODE_HEADER = "cim-code"  # every envelope answer's code, also as a header (route.app.answer)
_CODE_HEADER_RAW = CODE_HEADER.encode()  # as ASGI carries header names: lower case bytes
OTHER_PATH = "other"  # any path the route does not serve: a scanner's do not each make a series


class RouteMetrics:
    """The route's registry and series."""

    def __init__(self) -> None:
        self.registry = new_registry()
        self.requests = prometheus_client.Counter(
            "cim_route_requests", "HTTP requests by path, HTTP status and CIM code ('' for an answer outside the envelope).",
            ["path", "status", "code"], registry=self.registry,
        )
        self.durations = prometheus_client.Histogram(
            "cim_route_request_duration_seconds", "From a request's arrival to the end of its answer.",
            ["path"], registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.logins = prometheus_client.Counter(
            "cim_route_logins", "Route logins by outcome (CIM code: 9000, 9100 wrong password or name, 5000, 7100, 4029...).",
            ["code"], registry=self.registry,
        )


class MeasuredRequests:
    """ASGI middleware feeding ``RouteMetrics``: one count and one duration per request."""

    def __init__(self, app: ASGIApp, metrics: RouteMetrics, paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"] if scope["path"] in self.paths else OTHER_PATH
        status, code = 500, ""  # what Starlette answers if the app raises

        async def send_measured(message: Message) -> None:
            nonlocal status, code
            if message["type"] == "http.response.start":
                status = message["status"]
                code = next((v.decode() for k, v in message.get("headers", ()) if k == _CODE_HEADER_RAW), "")
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            self.metrics.durations.labels(path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(path, str(status), code).inc()
            if path == "/login" and code:
                self.metrics.logins.labels(code).inc()
