"""redis-p2p: reliable p2p on cim-server nodes sharing Redis, next to redis-benchmark's XADD on that Redis.

cim on its Redis backend as deployed: a route and ``--nodes`` cim-servers on a real
Redis (append-only file, fsynced every second) and ZooKeeper. The p2p scenario's pairs
run with their sender and receiver on different nodes, every message stored in the
receiver's inbox (a Redis stream) before its receipt. In the same run, on the same
Redis, ``redis-benchmark -P 16 ... XADD`` (pipelined) says how fast that Redis appends
to a stream when nothing else happens; the ratio of the two is cim's figure.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import redis

from bench import p2p, system
from bench.report import machine, print_table, write_json

STREAM = "bench-stream"  # redis-benchmark's key: not one of cim's (they all start with the key prefix)
PIPELINE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p2p.add_arguments(parser)
    parser.add_argument("--nodes", type=int, default=2, help="cim-server nodes (pairs cross from one to the next)")
    parser.add_argument("--xadd-requests", type=int, default=200_000, help="XADDs per redis-benchmark run")


def redis_target(cim: system.Target) -> system.Target:
    """The redis-server ``cim`` runs on, as a target whose CPU can be watched."""
    if cim.store_url is None:
        raise RuntimeError("the cim target runs on no Redis")
    port = urlparse(cim.store_url).port or 6379
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "redis-server":
            continue
        with contextlib.suppress(psutil.Error):
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in process.net_connections("tcp")):
                return system.Target("redis", "127.0.0.1", port, None, [process.pid])
    raise RuntimeError(f"no redis-server listening on port {port}")


def xadd_per_s(port: int, requests: int) -> float:
    """``redis-benchmark``'s pipelined XADD rate on the Redis at ``port`` (the stream is deleted after)."""
    program = shutil.which("redis-benchmark")
    if program is None:
        raise RuntimeError("redis-benchmark not found (it comes with redis-server: apt-get install redis-tools)")
    done = subprocess.run([program, "-p", str(port), "-P", str(PIPELINE), "-n", str(requests), "-q",
                           "XADD", STREAM, "*", "f", "v"], capture_output=True, text=True, check=True, timeout=300)
    rates = re.findall(r"([\d.]+) requests per second", done.stdout)
    if not rates:
        raise RuntimeError(f"no rate in redis-benchmark's output: {done.stdout!r} {done.stderr!r}")
    with redis.Redis(port=port) as client:
        client.delete(STREAM)
    return float(rates[-1])


def main(args: argparse.Namespace) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-redis-p2p-"))
    cim_figures: list[dict[str, float]] = []
    xadds: list[float] = []
    with system.cim_target(workdir, auth=args.auth, limits=args.limits, nodes=args.nodes, on_redis=True) as cim:
        store = redis_target(cim)
        for _ in range(args.repeat):
            run = system.measure(cim, p2p.plans(cim, args), print, also=[store])
            cim_figures.append({**p2p.figures(run), "redis_cpu_pct": run.also_cpu_seconds["redis"] / run.duration * 100})
            print("redis-benchmark: XADD, pipelined")
            xadds.append(xadd_per_s(store.port, args.xadd_requests))
    figures = system.median_figures(cim_figures)
    xadd = statistics.median(xadds)
    result: dict[str, Any] = {"scenario": "redis-p2p", "machine": machine()}
    result["params"] = {k: getattr(args, k) for k in ("pairs", "window", "payload", "protocol", "nodes", "xadd_requests",
                                                      "duration", "repeat", "processes", "auth", "limits")}
    result["params"]["pipeline"] = PIPELINE
    result["cim"] = figures
    result["redis"] = {"xadd_per_s": xadd}
    result["ratio"] = {"msgs_per_xadd": figures["msgs_per_s"] / xadd if xadd else 0.0}
    result["notes"] = notes = ["Redis: appendonly yes, appendfsync everysec"]
    table: list[list[Any]] = [[f"cim {key}", value] for key, value in figures.items()]
    table += [["redis-benchmark XADD/s", xadd], ["ratio cim msgs/s / XADD/s", f"{result['ratio']['msgs_per_xadd']:.2f}x"]]
    print_table(f"redis-p2p: cim on {args.nodes} nodes over Redis vs redis-benchmark XADD (-P {PIPELINE}), same Redis, "
                "same run", ["figure", "value"], table)
    for note in notes:
        print(f"note: {note}")
    write_json(args.json, result)
