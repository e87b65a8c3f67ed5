"""The load tools against a real ``cim up``: a short soak accounts for every message,
a short headless locust run drives both user classes without a failure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cim.testing.services import CimProcess, free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    route_port = free_port()
    proc = CimProcess(tmp_path_factory.mktemp("up"), "up", [
        "up", "--host", "127.0.0.1", "--port", str(free_port()), "--http-port", str(free_port()),
        "--route-port", str(route_port), "--log-level", "warning",
    ])
    proc.wait_http(route_port)
    yield f"http://127.0.0.1:{route_port}"
    assert proc.stop() == 0, proc.log()


def test_soak_accounts_for_every_message(up: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.soak", "--route", up, "--users", "20", "--rate", "50", "--duration", "3",
         "--group-ratio", "0.2", "--progress", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["sent_private"] > 0 and report["sent_group"] > 0, report
    assert report["receipts_ok"] == report["sent"] and report["failed_sends"] == 0, report
    # Group messages reach the 19 others, so there are more deliveries than sends.
    assert report["delivered"] == report["expected"] > report["sent"], report
    assert (report["lost"], report["duplicates"], report["out_of_order"], report["wrong_address"]) == (0, 0, 0, 0), report
    assert report["latency_ms"]["p99"] is not None and report["passed"], report


def test_locust_route_and_tcp_users(up: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("locust") is None:
        pytest.fail("locust is not installed: pip install locust (it is in the 'test' extra)")
    stats_file = tmp_path / "stats"  # locust appends .json
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-u", "6", "-r", "6", "-t", "4s",
         "--host", up, "--only-summary", "--json-file", str(stats_file)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    stats = {(e["method"], e["name"]): e for e in json.loads(stats_file.with_suffix(".json").read_text())}
    ran = {key: e["num_requests"] for key, e in stats.items()}
    # RouteUser's route calls, TcpChatUser's protocol exchanges, and a delivery to a TCP user.
    for key in [("POST", "/onlineUser"), ("POST", "/p2pRoute"), ("POST", "/groupRoute"), ("POST", "/offLine"),
                ("tcp", "login"), ("tcp", "receipt"), ("tcp", "deliver")]:
        assert ran.get(key, 0) > 0, f"{key} never ran: {ran}\n{run.stdout}{run.stderr}"
    assert {key: e["num_failures"] for key, e in stats.items() if e["num_failures"]} == {}, run.stdout + run.stderr
