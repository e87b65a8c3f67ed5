"""Bench smoke: every scenario runs for seconds and writes well-formed JSON. Not a speed test.
The system scenarios run cim in the suite's auth mode (``--auth``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import auth_mode


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    system = args[0] != "codec"
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out),
         *(["--workdir", str(tmp_path), "--auth", auth_mode()] if system else [])],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["scenario"] == args[0]
    if system:
        assert result["params"]["auth"] == auth_mode()
    assert {"cores", "python", "uvloop", "codec"} <= set(result["machine"])
    return result


def test_codec(tmp_path: Path) -> None:
    result = bench(tmp_path, "codec", "--frames", "2000", "--repeat", "1")
    built = importlib.util.find_spec("cim._frame") is not None
    assert set(result["implementations"]) == ({"python", "cython"} if built else {"python"})
    if built:
        assert result["ratio"]["decode_frames_per_s"] > 0


def test_p2p(tmp_path: Path) -> None:
    result = bench(tmp_path, "p2p", "--pairs", "4", "--window", "2", "--duration", "1", "--limits", "on")
    for side in ("cim", "ceiling"):
        assert result[side]["msgs_per_s"] > 0 and result[side]["errors"] == 0
        assert result[side]["p99_ms"] >= result[side]["p50_ms"] > 0
    assert result["ratio"]["msgs_per_s"] > 0
    assert (result["params"]["pairs"], result["params"]["limits"]) == (4, "on")


def test_fanout_sweep_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "fanout.png"
    result = bench(tmp_path, "fanout", "--receivers", "5,20", "--duration", "1", "--plot", str(plot))
    assert [row["G"] for row in result["cim"]] == [5, 20]
    assert all(row["deliveries_per_s"] > 0 for row in result["cim"] + result["ceiling"])
    assert [set(row) for row in result["ratio"]] == [{"G", "deliveries"}] * 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flood(tmp_path: Path) -> None:
    result = bench(tmp_path, "flood", "--pairs", "2", "--rate", "20", "--duration", "1")
    for phase in ("quiet", "flooded"):
        assert result[phase]["pair_msgs_per_s"] > 0 and result[phase]["pair_errors"] == 0
        assert result[phase]["p99_ms"] >= result[phase]["p50_ms"] > 0
    assert result["quiet"]["flood_offered_per_s"] == 0
    flooded = result["flooded"]
    assert flooded["flood_offered_per_s"] > flooded["flood_delivered_per_s"] > 0  # held to its limit, not shut out
    assert set(result["ratio"]) == {"p50_ms", "p99_ms"}


@pytest.mark.parametrize("connections", [60])
def test_idle(tmp_path: Path, connections: int) -> None:
    result = bench(tmp_path, "idle", "--connections", str(connections), "--heartbeat", "1", "--duration", "2")
    for side in ("cim", "ceiling"):
        assert result[side]["connections"] == connections
        assert result[side]["pings_per_s"] > 0
    assert set(result["ratio"]) == {"heartbeat_cpu", "memory_per_conn"}
