"""A cim cluster started on this machine for the chaos test, and the faults it can suffer.

Real Redis with its append-only file on and a real ZooKeeper (``cim.testing.services``),
``cim-server`` nodes (any of them with ``--workers N``; with ``ws``, each with a WebSocket
port, ``--ws-port``, shared by its workers as the TCP port is) and a route, each a child
process with its log in the work directory. Every port is fixed for the cluster's life
and drawn from below the kernel's ephemeral range, so a node or Redis restarted after
a crash gets its port back (in the ephemeral range an outgoing connection, one of the
many reconnecting clients', could take it meanwhile). Redis keeps its ephemeral port:
``redis_server`` picks it; a restart is short and checks that it got the port.

Each fault method does one fault, waits out its length with the given ``sleep`` (the
caller keeps watching its load generators meanwhile) and returns a ``Fault``: what was
hit, when, and until when.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import redis

from bench.system import NO_PER_ADDRESS_LIMITS
from cim.testing.services import (
    CimProcess,
    ServiceError,
    ServiceProcess,
    free_ports_in_a_row,
    redis_server,
    wait_until,
    zookeeper_server,
)

PREFIX = "chaos"  # Redis key prefix and ZooKeeper root of the cluster
# What a restarted Redis must have as before: where it listens and what it keeps on
# disk. Read from the running server (CONFIG GET), not from its command line: Redis
# overwrites that with its process title.
REDIS_KEPT = ("port", "bind", "dir", "save", "appendonly", "appendfsync", "appenddirname", "appendfilename",
              "dbfilename")
START_TIMEOUT = 60.0  # seconds a node has to answer on its HTTP ports, generous for a loaded 2-core machine

Sleep = Callable[[float], None]


@dataclass
class Fault:
    """One fault as it happened: ``at`` when it began, ``until`` when it was over (the
    node answering again, Redis back, SIGCONT sent), wall-clock seconds."""

    kind: str
    target: str
    at: float
    until: float
    port: int = 0  # the node's client port (node and worker faults)
    http_port: int = 0  # the killed worker's HTTP port
    wave: int = 0  # the cut wave (rst)
    details: dict[str, Any] = field(default_factory=dict)


def signal_quietly(process: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(sig)


class Node:
    """One cim-server host on fixed ports: a process, or a supervisor and its ``--workers``;
    ``ws_port`` 0: no WebSocket endpoint."""

    def __init__(self, workdir: Path, name: str, port: int, http_base: int, workers: int, args: list[str],
                 env: dict[str, str], ws_port: int = 0) -> None:
        self.workdir = workdir
        self.name = name
        self.port = port
        self.ws_port = ws_port
        self.http_ports = [http_base + i for i in range(workers)]
        self.argv = ["server", "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_base),
                     "--workers", str(workers), *(["--ws-port", str(ws_port)] if ws_port else []), *args]
        self.env = env
        self.starts = 0
        self.process = self.start()

    def start(self) -> CimProcess:
        """Start the node (a log file per start) and wait until every worker answers."""
        self.starts += 1
        self.process = CimProcess(self.workdir, f"{self.name}-{self.starts}", self.argv, self.env)
        for http_port in self.http_ports:
            self.process.wait_http(http_port, timeout=START_TIMEOUT)
        return self.process

    def tree(self) -> list[psutil.Process]:
        """The node's processes, the supervisor (or only process) first."""
        root = psutil.Process(self.process.proc.pid)
        return [root, *root.children(recursive=True)]

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as a crashed host loses them (the
        supervisor first: it would restart a worker; its workers would get SIGTERM from
        it dying and drain, not crash)."""
        for process in self.tree():
            signal_quietly(process, signal.SIGKILL)
        self.process.proc.wait()

    def stats(self, http_port: int) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"http://127.0.0.1:{http_port}/stats", timeout=2).json()
        return answer

    def stop(self) -> int:
        """SIGTERM: the node drains; its exit code."""
        return self.process.stop()


class Cluster:
    """Route, nodes, Redis and ZooKeeper; the faults."""

    def __init__(self, workdir: Path, redis_url: str, zk_hosts: str, workers: list[int], heartbeat: float,
                 zk_session_timeout: float, log_level: str, ws: bool = False) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.redis_restarts: list[ServiceProcess] = []
        backend = ["--redis", redis_url, "--zk", zk_hosts, "--zk-root", f"/{PREFIX}", "--key-prefix", PREFIX,
                   "--zk-session-timeout", str(zk_session_timeout), "--log-level", log_level]
        self.env = {**NO_PER_ADDRESS_LIMITS, "CIM_SECRET": secrets.token_urlsafe(32)}  # one secret for all
        ports = itertools.count(free_ports_in_a_row(1 + len(workers) * (2 if ws else 1) + sum(workers)))
        self.route_port = next(ports)
        self.route = CimProcess(workdir, "route", ["route", "--host", "127.0.0.1", "--port", str(self.route_port),
                                                   *backend], self.env)
        self.nodes: list[Node] = []
        try:
            self.route.wait_http(self.route_port, timeout=START_TIMEOUT)
            for i, count in enumerate(workers):
                port, ws_port, http_base = next(ports), next(ports) if ws else 0, next(ports)
                for _ in range(count - 1):
                    next(ports)
                self.nodes.append(Node(workdir, f"node{i}", port, http_base, count,
                                       [*backend, "--heartbeat-interval", str(heartbeat)], self.env, ws_port))
            self.servers_expected = sum(workers)
            wait_until(self.whole, START_TIMEOUT, "the route listing every node")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.route_port}"

    def whole(self) -> bool:
        """The route lists every node (worker) of the cluster."""
        servers = httpx.get(f"{self.url}/health", timeout=2).json()["servers"]
        return len(servers) == self.servers_expected

    def seconds_until_whole(self, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` until the route lists every node again; None if not within ``timeout``."""
        try:
            wait_until(self.whole, timeout, "the route listing every node", interval=0.2)
        except TimeoutError:
            return None
        return round(time.time() - since, 2)

    def describe(self) -> dict[str, Any]:
        return {"route": self.url, "redis": self.redis_url, "workdir": str(self.workdir),
                "nodes": [{"name": n.name, "port": n.port, "ws_port": n.ws_port, "http_ports": n.http_ports}
                          for n in self.nodes]}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.route.stop()
        for server in self.redis_restarts:
            server.stop()

    # -- faults -------------------------------------------------------------------

    def kill_node(self, node: Node, down: float, sleep: Sleep) -> Fault:
        """SIGKILL the node, keep it down ``down`` s, start it again on the same ports."""
        at = time.time()
        node.kill()
        sleep(down)
        node.start()
        until = time.time()
        return Fault("kill-node", node.name, at, until, port=node.port,
                     details={"relisted_s": self.seconds_until_whole(at, 60)})

    def kill_worker(self, node: Node, http_port: int) -> Fault:
        """SIGKILL one worker of a ``--workers`` node; its supervisor starts another."""
        pid = int(node.stats(http_port)["pid"])
        at = time.time()
        psutil.Process(pid).kill()

        def replaced() -> bool:
            return int(node.stats(http_port)["pid"]) != pid

        wait_until(replaced, START_TIMEOUT, f"a new worker on {http_port}", interval=0.1)
        return Fault("kill-worker", f"{node.name} worker :{http_port}", at, time.time(), port=node.port,
                     http_port=http_port, details={"pid": pid, "relisted_s": self.seconds_until_whole(at, 60)})

    def stop_node(self, node: Node, seconds: float, sleep: Sleep) -> Fault:
        """SIGSTOP every process of the node for ``seconds``, then SIGCONT."""
        processes = node.tree()
        at = time.time()
        for process in processes:
            signal_quietly(process, signal.SIGSTOP)
        try:
            sleep(seconds)
        finally:
            for process in processes:
                signal_quietly(process, signal.SIGCONT)
        until = time.time()
        return Fault("stop-node", node.name, at, until, port=node.port,
                     details={"relisted_s": self.seconds_until_whole(at, 60)})

    def restart_redis(self, down: float, sleep: Sleep) -> Fault:
        """SHUTDOWN Redis (it writes out its append-only file and exits), keep it down
        ``down`` s, start it again on the same port and directory."""
        with redis.Redis.from_url(self.redis_url) as client:
            kept = {name: str(value) for name, value in client.config_get(*REDIS_KEPT).items()}
            at = time.time()
            client.shutdown()
        port = int(urlparse(self.redis_url).port or 6379)
        wait_until(lambda: not port_open(port), 30, "Redis to exit")
        sleep(down)
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is no longer on PATH")
        argv = [binary, *(part for name, value in sorted(kept.items()) for part in (f"--{name}", value))]
        server = ServiceProcess("redis-server", argv, Path(kept["dir"]) / f"redis-{len(self.redis_restarts) + 2}.log")
        self.redis_restarts.append(server)

        def ping() -> bool:
            with redis.Redis(port=port) as client:
                return bool(client.ping())

        server.wait_ready(ping, 30)
        return Fault("redis", f"redis :{port}", at, time.time(), details={"relisted_s": self.seconds_until_whole(at, 60)})


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def cluster(workdir: Path, workers: list[int], heartbeat: float, zk_session_timeout: float,
            log_level: str = "warning", ws: bool = False) -> Iterator[Cluster]:
    """Redis, ZooKeeper, a route and one node per entry of ``workers`` (its worker count), with ``ws``
    a WebSocket port each."""
    for sub in ("redis", "zookeeper"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    with redis_server(workdir / "redis") as redis_url, zookeeper_server(workdir / "zookeeper") as zk_hosts:
        running = Cluster(workdir, redis_url, zk_hosts, workers, heartbeat, zk_session_timeout, log_level, ws)
        try:
            yield running
        finally:
            running.stop()
