"""Bench smoke: every scenario runs for seconds and writes well-formed JSON. Not a speed test."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out), *(["--workdir", str(tmp_path)] if args[0] != "codec" else [])],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["scenario"] == args[0]
    assert {"cores", "python", "uvloop", "codec"} <= set(result["machine"])
    return result


def test_codec(tmp_path: Path) -> None:
    result = bench(tmp_path, "codec", "--frames", "2000", "--repeat", "1")
    built = importlib.util.find_spec("cim._frame") is not None
    assert set(result["implementations"]) == ({"python", "cython"} if built else {"python"})
    if built:
        assert result["ratio"]["decode_frames_per_s"] > 0


def test_p2p(tmp_path: Path) -> None:
    result = bench(tmp_path, "p2p", "--pairs", "4", "--window", "2", "--duration", "1")
    for side in ("cim", "ceiling"):
        assert result[side]["msgs_per_s"] > 0 and result[side]["errors"] == 0
        assert result[side]["p99_ms"] >= result[side]["p50_ms"] > 0
    assert result["ratio"]["msgs_per_s"] > 0
    assert result["params"]["pairs"] == 4


def test_fanout_sweep_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "fanout.png"
    result = bench(tmp_path, "fanout", "--receivers", "5,20", "--duration", "1", "--plot", str(plot))
    assert [row["G"] for row in result["cim"]] == [5, 20]
    assert all(row["deliveries_per_s"] > 0 for row in result["cim"] + result["ceiling"])
    assert [set(row) for row in result["ratio"]] == [{"G", "deliveries"}] * 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("connections", [60])
def test_idle(tmp_path: Path, connections: int) -> None:
    result = bench(tmp_path, "idle", "--connections", str(connections), "--heartbeat", "1", "--duration", "2")
    for side in ("cim", "ceiling"):
        assert result[side]["connections"] == connections
        assert result[side]["pings_per_s"] > 0
    assert set(result["ratio"]) == {"heartbeat_cpu", "memory_per_conn"}
