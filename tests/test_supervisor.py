"""``cim-server --workers N`` on real Redis and ZooKeeper: shared port, restart, drain."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx

from cim.client import Client, Message, register
from cim.testing.services import CimProcess, free_port, free_ports_in_a_row, wait_until
from tests.conftest import PASSWORD, eventually, new_secret

WORKERS = 3


def test_workers_need_redis_and_zookeeper(tmp_path: Path) -> None:
    proc = CimProcess(tmp_path, "refused", ["server", "--workers", "2", "--port", str(free_port())],
                      {"CIM_SECRET": new_secret()})  # refused for the backends, not for a missing secret
    assert proc.proc.wait(20) == 1
    assert "--workers > 1 needs --redis and --zk" in proc.log()


async def test_workers_share_the_port_restart_and_drain(tmp_path: Path, redis_url: str, zk_hosts: str) -> None:
    prefix = "w" + tmp_path.name[-6:].replace("-", "")
    backend = ["--redis", redis_url, "--zk", zk_hosts, "--zk-root", f"/{prefix}", "--key-prefix", prefix,
               "--zk-session-timeout", "2"]
    route_port, port, http_base = free_port(), free_port(), free_ports_in_a_row(WORKERS)
    env = {"CIM_SECRET": new_secret()}  # the route's tokens are the workers' too
    route = CimProcess(tmp_path, "route", ["route", "--host", "127.0.0.1", "--port", str(route_port), *backend], env)
    route.wait_http(route_port)
    supervisor = CimProcess(tmp_path, "workers", ["server", "--workers", str(WORKERS), "--host", "127.0.0.1",
                                                  "--port", str(port), "--http-port", str(http_base), *backend], env)
    url = f"http://127.0.0.1:{route_port}"
    try:
        for i in range(WORKERS):
            supervisor.wait_http(http_base + i)

        def servers() -> list[str]:
            listed: list[str] = httpx.get(f"{url}/health").json()["servers"]
            return listed

        await eventually(lambda: len(servers()) == WORKERS)

        names = [f"user{i}" for i in range(9)]
        ids = {n: await register(url, n, PASSWORD) for n in names}
        inbox: dict[str, list[Message]] = {n: [] for n in names}

        def keep(name: str) -> Callable[[Message], None]:
            """Messages from others into the user's inbox list; their copies of their own sends are left out."""
            return lambda message: None if message.outgoing else inbox[name].append(message)

        clients = {n: Client(url, ids[n], n, password=PASSWORD, on_message=keep(n), heartbeat_interval=1.0,
                             backoff_base=0.2, backoff_max=1.0, reconnect_attempts=40) for n in names}
        for c in clients.values():
            await c.connect()

        def worker_sessions() -> dict[int, int]:
            return {i: httpx.get(f"http://127.0.0.1:{http_base + i}/stats").json().get("sessions", 0) for i in range(WORKERS)}

        assert sum(worker_sessions().values()) == len(names)
        await clients["user0"].send_group("hi all")
        await eventually(lambda: all(len(inbox[n]) == 1 for n in names[1:]))
        for n in names[1:]:
            receipt = await clients[n].send_private(ids["user0"], f"from {n}")
            assert receipt.code == 9000
        await eventually(lambda: len(inbox["user0"]) == len(names) - 1)

        # Kill a worker that holds users: the supervisor starts a new one under the
        # same id, and its users log in again and chat.
        victim = next(i for i, n in worker_sessions().items() if n)
        victim_pid: int = httpx.get(f"http://127.0.0.1:{http_base + victim}/stats").json()["pid"]
        os.kill(victim_pid, signal.SIGKILL)

        def replaced() -> bool:
            pid: int = httpx.get(f"http://127.0.0.1:{http_base + victim}/stats", timeout=1).json()["pid"]
            return pid != victim_pid

        await asyncio.to_thread(wait_until, replaced, 30, "replacement worker")
        await eventually(lambda: len(servers()) == WORKERS)
        # ``connected`` turns true when the TCP connection is up, ``reconnects`` once the
        # login answer is in: wait for both, or a check between the two sees 0 reconnects.
        await eventually(lambda: all(c.connected for c in clients.values()) and sum(worker_sessions().values()) == len(names)
                         and sum(c.reconnects for c in clients.values()) >= 1, timeout=30)
        await clients["user1"].send_group("after the restart")
        await eventually(lambda: all(any(m.text == "after the restart" for m in inbox[n]) for n in names if n != "user1"))

        # SIGTERM: every worker drains, unregisters, and the supervisor exits 0.
        for c in clients.values():
            c.reconnect_attempts = 0
        assert supervisor.stop(signal.SIGTERM) == 0, supervisor.log()
        assert servers() == []
        await eventually(lambda: not any(c.connected for c in clients.values()))
        assert httpx.get(f"{url}/onlineUser").json()["dataBody"] == []
        for c in clients.values():
            await c.close()
            # with no attempts left, the lost connection ended the client: it says so
            assert not c.done.done() or isinstance(c.done.exception(), ConnectionError)
    finally:
        supervisor.stop(signal.SIGKILL)
        route.stop()
