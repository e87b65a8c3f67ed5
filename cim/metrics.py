"""Prometheus exposition shared by the cim-server and the route: ``GET /metrics``.

Each node and each route has a registry of its own (a test process runs several).
Under ``cim-server --workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode): every worker writes its series to files
there, and any worker's ``/metrics`` serves the sum over all of them, so one
scrape of one worker's port sees the whole host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from prometheus_client import CollectorRegistry, ProcessCollector, make_asgi_app
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. Finer than prometheus_client's default at the low end: a receipt or a
# push takes about a millisecond, and the interesting change is from 1 to 10 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, None outside it."""
    return os.environ.get(MULTIPROCESS_DIR) or None


def new_registry() -> CollectorRegistry:
    """A registry for one node or route, with this process's CPU, memory and open
    files; those are left out in multiprocess mode, where they would be one worker's."""
    registry = CollectorRegistry()
    if multiprocess_dir() is None:
        ProcessCollector(registry=registry)
    return registry


class _MetricsApp:
    """The ASGI app of ``GET /metrics``: prometheus_client's own (text or OpenMetrics,
    as the scraper asks; gzip), after ``before_scrape`` brought the figures up to date."""

    def __init__(self, registry: CollectorRegistry, before_scrape: Callable[[], None] | None) -> None:
        exposed = registry
        directory = multiprocess_dir()
        if directory is not None:
            exposed = CollectorRegistry()
            MultiProcessCollector(exposed, directory)  # type: ignore[no-untyped-call]  # the module has no annotations
        self._app = make_asgi_app(exposed)
        self._before_scrape = before_scrape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._before_scrape is not None:
            self._before_scrape()
        await self._app(scope, receive, send)


def metrics_route(registry: CollectorRegistry, before_scrape: Callable[[], None] | None = None) -> Route:
    """``GET /metrics`` serving ``registry`` (in multiprocess mode: every worker's files)."""
    return Route("/metrics", _MetricsApp(registry, before_scrape), methods=["GET"])


class SharedMetrics:
    """Multiprocess mode for a supervisor's workers: a fresh directory, named to them in
    the environment they inherit (so made before they start), removed at the end."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="cim-metrics-")
        self._previous = os.environ.get(MULTIPROCESS_DIR)
        os.environ[MULTIPROCESS_DIR] = self.directory

    def worker_died(self, pid: int) -> None:
        """A dead worker's gauges leave the sums (its counts stay in them: totals do not drop)."""
        mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # the module has no annotations

    def close(self) -> None:
        if self._previous is None:
            os.environ.pop(MULTIPROCESS_DIR, None)
        else:
            os.environ[MULTIPROCESS_DIR] = self._previous
        shutil.rmtree(self.directory, ignore_errors=True)
