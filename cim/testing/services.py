"""Real Redis and ZooKeeper servers on free loopback ports, and cim itself as child
processes, for the tests and the benchmarks.

Nothing is mocked: a missing ``redis-server`` or ZooKeeper, or one that exits or
never answers, raises ``ServiceError`` with the install command or the server's
log in the message. A test that needs a service fails without it, never skips.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import redis
from kazoo.client import KazooClient

INSTALL_HINT = "install it: apt-get install -y redis-server zookeeper (see README, 'Run the tests')"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A service could not be started: not installed, exited, or never ready."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on 127.0.0.1 right now (``--workers``
    servers take an HTTP port each, from a base). Drawn from below the kernel's ephemeral
    range: there an outgoing connection can take the port between this check and the bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        base = random.randrange(10_000, low - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise ServiceError(f"no {count} consecutive free ports below {low}")


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check()`` until it returns something true, and return that.

    Any exception from ``check`` means "not ready yet" (a refused connection, say),
    except ``ServiceError``: the service is gone and waiting longer cannot help.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ServiceError:
            raise
        except Exception as err:
            last = err
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout} s (last error: {last!r})")


class ServiceProcess:
    """A server as a child process, its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        """What the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, check: Callable[[], object], timeout: float) -> None:
        """Poll ``check`` until it is true; fail at once if the process exits, with its log."""

        def ready() -> object:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return check()

        try:
            wait_until(ready, timeout, self.name)
        except TimeoutError as err:
            raise ServiceError(f"{err}; its log:\n{self.log()}") from err

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` (SIGKILL after ``timeout`` s) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ServiceError(f"{program} not found; {INSTALL_HINT}")
    return path


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server with its data in ``workdir``; yields its URL.

    Append-only file on, fsynced every second: the persistence a deployment runs
    with, so what the tests and benchmarks see includes its cost.
    """
    port = free_port()
    server = ServiceProcess(
        "redis-server",
        [_require("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
        workdir / "redis.log",
    )
    try:

        def ping() -> bool:
            with redis.Redis(port=port) as client:
                return bool(client.ping())

        server.wait_ready(ping, 15)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@contextlib.contextmanager
def zookeeper_server(workdir: Path) -> Iterator[str]:
    """A standalone ZooKeeper with its data in ``workdir``; yields its connect string."""
    java = _require("java")
    if not ZOOKEEPER_JAR.exists():
        raise ServiceError(f"ZooKeeper ({ZOOKEEPER_JAR}) not found; {INSTALL_HINT}")
    port = free_port()
    data = workdir / "zk-data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "zoo.cfg"
    # Short ticks and a 1 s minimum session timeout, so session-expiry tests run in seconds.
    cfg.write_text(
        f"tickTime=500\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n"
    )
    server = ServiceProcess(
        "zookeeper",
        [java, "-Xmx256m", f"-Dzookeeper.log.dir={workdir}", "-cp", f"/etc/zookeeper/conf:{ZOOKEEPER_JAR}",
         "org.apache.zookeeper.server.ZooKeeperServerMain", str(cfg)],
        workdir / "zookeeper.log",
    )
    hosts = f"127.0.0.1:{port}"
    try:

        def connects() -> bool:
            client = KazooClient(hosts=hosts)
            try:
                client.start(timeout=2)
                return True
            finally:
                client.stop()
                client.close()

        server.wait_ready(connects, 30)
        yield hosts
    finally:
        server.stop()


class CimProcess(ServiceProcess):
    """``python -m cim ROLE ...`` as a child process, its log in ``workdir``."""

    def __init__(self, workdir: Path, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__(name, [sys.executable, "-m", "cim", *args], workdir / f"{name}.log", {**os.environ, **(env or {})})

    def wait_http(self, port: int, path: str = "/health", timeout: float = 20) -> None:
        """Wait until ``GET path`` on the process's HTTP ``port`` answers 200."""
        self.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200, timeout)
