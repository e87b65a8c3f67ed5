"""uvicorn embedded in cim's own event loop (the route, the server's health port).

cim owns SIGTERM/SIGINT (it drains clients before exiting), so uvicorn must not
install its own handlers. And cim drives uvicorn's public ``startup`` /
``on_tick`` / ``shutdown`` itself instead of ``serve()``: ``serve()``'s main loop
wakes ten times a second, which on an idle node of 100k connections is a
measurable share of its CPU (every worker process pays it). One tick a second
keeps the Date header current.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

TICK_SECONDS = 1.0


@dataclass
class HttpService:
    server: uvicorn.Server
    sock: socket.socket
    ticker: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.ticker
        self.server.should_exit = True
        await self.server.shutdown(sockets=[self.sock])


async def _tick(server: uvicorn.Server) -> None:
    while True:
        await server.on_tick(0)  # counter 0: refresh the Date header
        await asyncio.sleep(TICK_SECONDS)


async def start_http(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> HttpService:
    """Serve ``app`` in the running loop (port 0 picks a free port)."""
    sock = socket.create_server((host, port), backlog=2048)  # the kernel caps it at somaxconn
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return HttpService(server, sock, asyncio.create_task(_tick(server), name=f"http-tick-{port}"), sock.getsockname()[1])
