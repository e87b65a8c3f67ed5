"""uvicorn embedded in cim's own event loop (the route, the server's health port).

cim owns SIGTERM/SIGINT (it drains clients before exiting), so uvicorn must not
install its own handlers; it is stopped through ``should_exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class HttpService:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def start_http(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> HttpService:
    """Serve ``app`` in the running loop (port 0 picks a free port)."""
    sock = socket.create_server((host, port))
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http-{port}")
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.01)
    return HttpService(server, task, sock.getsockname()[1])
