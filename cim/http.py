"""uvicorn embedded in cim's own event loop (the route, the server's health port).

cim owns SIGTERM/SIGINT (it drains clients before exiting), so uvicorn must not
install its own handlers. And cim drives uvicorn's public ``startup`` /
``shutdown`` itself instead of ``serve()``, with no timer at all: ``serve()``'s
main loop wakes ten times a second, and even one wake-up a second to refresh the
Date header costs every idle worker process measurable CPU (~0.25 ms/s each on
the development VM). The Date header is written per response instead
(``DateHeader``), from a value cached for the second.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from email.utils import formatdate

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class DateHeader:
    """ASGI middleware: the Date header every HTTP/1.1 origin server sends (RFC 9110 §6.6.1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._second = 0
        self._value = b""

    def _date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True).encode()
        return self._value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"date", self._date())]}
            await send(message)

        await self.app(scope, receive, send_dated)


@dataclass
class HttpService:
    """A running uvicorn server on its own socket, and the port it listens on."""

    server: uvicorn.Server
    sock: socket.socket
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.server.shutdown(sockets=[self.sock])


async def start_http(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> HttpService:
    """Serve ``app`` in the running loop (port 0 picks a free port)."""
    sock = socket.create_server((host, port), backlog=2048)  # the kernel caps it at somaxconn
    config = uvicorn.Config(DateHeader(app), log_level=log_level, access_log=False, lifespan="off", date_header=False)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return HttpService(server, sock, sock.getsockname()[1])
