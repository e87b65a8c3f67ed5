"""The test services: real servers, configured as stated, and loud when they cannot start."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import redis

from cim.testing.services import ServiceError, ServiceProcess, free_ports_in_a_row, redis_server, zookeeper_server


def test_redis_keeps_an_append_only_file_fsynced_every_second(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.info("persistence")["aof_enabled"] == 1


def test_a_process_that_exits_fails_the_wait_at_once_with_its_log(tmp_path: Path) -> None:
    server = ServiceProcess("doomed", [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
                            tmp_path / "doomed.log")
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"doomed exited with 3:\nbad config"):
        server.wait_ready(lambda: False, timeout=60)
    assert time.monotonic() - started < 30  # not the whole timeout
    assert server.stop() == 3


def test_a_process_that_never_gets_ready_fails_with_its_log(tmp_path: Path) -> None:
    server = ServiceProcess("sleeper", [sys.executable, "-c", "print('starting', flush=True); import time; time.sleep(60)"],
                            tmp_path / "sleeper.log")
    try:
        with pytest.raises(ServiceError, match=r"sleeper not ready after 1 s.*its log:\nstarting"):
            server.wait_ready(lambda: False, timeout=1)
    finally:
        server.stop()


@pytest.mark.parametrize("starter", [redis_server, zookeeper_server], ids=["redis", "zookeeper"])
def test_a_missing_server_is_an_error_with_the_install_command(
    starter: Callable[[Path], AbstractContextManager[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither redis-server nor java on it
    with pytest.raises(ServiceError, match="apt-get install -y redis-server zookeeper"), starter(tmp_path):
        pass


def test_free_ports_in_a_row_are_free_and_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    base = free_ports_in_a_row(3)
    assert base > 0 and base + 3 <= low
    held = []
    for port in range(base, base + 3):  # each of them binds
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", port))
    for sock in held:
        sock.close()
