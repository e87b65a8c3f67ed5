"""Real Redis and ZooKeeper servers and cim processes on free loopback ports (tests and bench).

Nothing is mocked: a missing ``redis-server`` or ZooKeeper is a test failure with
the install command in the message, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

INSTALL_HINT = "install it: apt-get install -y redis-server zookeeper (see README, 'Run the tests')"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # the thing is not up yet
            last = err
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout} s (last error: {last!r})")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, f"redis-server not found; {INSTALL_HINT}"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        import redis

        wait_until(lambda: redis.Redis(port=port).ping(), 15, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@contextlib.contextmanager
def zookeeper_server(workdir: Path) -> Iterator[str]:
    java = shutil.which("java")
    assert java and ZOOKEEPER_JAR.exists(), f"ZooKeeper ({ZOOKEEPER_JAR}) or java not found; {INSTALL_HINT}"
    port = free_port()
    data = workdir / "zk-data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "zoo.cfg"
    cfg.write_text(
        f"tickTime=500\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n"
    )
    log = open(workdir / "zookeeper.log", "wb")
    proc = subprocess.Popen(
        [java, "-Xmx256m", f"-Dzookeeper.log.dir={workdir}", "-cp", f"/etc/zookeeper/conf:{ZOOKEEPER_JAR}",
         "org.apache.zookeeper.server.ZooKeeperServerMain", str(cfg)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    hosts = f"127.0.0.1:{port}"
    try:
        from kazoo.client import KazooClient

        def ready() -> bool:
            client = KazooClient(hosts=hosts)
            try:
                client.start(timeout=2)
                return True
            finally:
                client.stop()
                client.close()

        wait_until(ready, 30, "zookeeper")
        yield hosts
    finally:
        _stop(proc)
        log.close()


class CimProcess:
    """``python -m cim ROLE ...`` as a child process, logs in ``workdir``."""

    def __init__(self, workdir: Path, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cim", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait_http(self, port: int, path: str = "/health", timeout: float = 20) -> None:
        def ok() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200

        wait_until(ok, timeout, self.name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        _stop(self.proc, sig)
        self._log.close()
        return self.proc.returncode
