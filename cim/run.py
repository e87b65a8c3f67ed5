"""Running the roles in one event loop: ``server``, ``route``, or both (``cim up``)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cim.backends.base import Backends
from cim.backends.memory import MemoryHub
from cim.backends.registry import open_backends
from cim.config import Config
from cim.frame import IMPLEMENTATION
from cim.http import HttpService, start_http
from cim.metrics import metrics_route
from cim.server.node import Node
from route.app import create_app
from route.service import RouteService

log = logging.getLogger("cim")


def node_http_app(node: Node) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "node": node.node_id})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(node.snapshot())  # this process's own figures, also under --workers

    metrics = metrics_route(node.prometheus.registry, before_scrape=node.prometheus.sync)
    return Starlette(routes=[Route("/health", health), Route("/stats", stats), metrics])


class Running:
    """What ``start`` brought up, for ``stop`` and for tests (bound ports)."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.node: Node | None = None
        self.node_http: HttpService | None = None
        self.route: RouteService | None = None
        self.route_http: HttpService | None = None

    async def stop(self) -> None:
        # Clients first (they are told and their state is cleared), then HTTP, then backends.
        if self.node is not None:
            await self.node.stop()
        for http in (self.route_http, self.node_http):
            if http is not None:
                await http.stop()
        if self.route is not None:
            await self.route.stop()
        try:
            await asyncio.wait_for(self.backends.close(), 5)
        except Exception as err:  # unreachable Redis or ZooKeeper must not hang the exit
            log.warning("closing backends failed: %r", err)


async def start(config: Config, roles: set[str], hub: MemoryHub | None = None) -> Running:
    running = Running(await open_backends(config, hub))
    try:
        if "server" in roles:
            running.node = Node(config, running.backends)
            await running.node.start()
            running.node_http = await start_http(node_http_app(running.node), config.host, config.http_port)
        if "route" in roles:
            running.route = RouteService(config, running.backends)
            await running.route.start()
            running.route_http = await start_http(create_app(running.route), config.route_host, config.route_port)
    except BaseException:
        await running.stop()
        raise
    return running


async def serve(config: Config, roles: set[str], announce: Callable[[Config], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(config, roles)
    log.info("frame codec: %s", IMPLEMENTATION)
    if config.auth == "none":
        log.warning(
            "--auth none: no password or token is checked; anyone who reaches this %s can log in as any user, "
            "send as them and end their sessions (CIM's behaviour: for its Java client on a trusted network only)",
            " and ".join(sorted(roles)),
        )
    if announce is not None:
        announce(config)
    await stop.wait()
    log.info("shutting down")
    await running.stop()


def run(config: Config, roles: set[str], announce: Callable[[Config], None] | None = None) -> None:
    import uvloop

    config.configure_logging()
    uvloop.run(serve(config, roles, announce))
