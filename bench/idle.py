"""idle: C connections logged in and heartbeating at interval H; memory and heartbeat CPU."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from bench import system
from bench.loadgen import Plan, source_ips

PER_PROCESS = 15_000  # connections per generator or server process, under a 20,000 open-files limit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=float, default=60.0, help="seconds between pings per connection")
    parser.add_argument("--workers", type=int, default=0, help="server processes (default: enough for the open-files limit)")
    system.add_common_arguments(parser, duration=60.0)


def figures(run: system.Run, connections: int) -> dict[str, float]:
    held = run.total("connected")
    return {
        "connections": float(held),
        "rss_per_conn_bytes": (run.rss_connected - run.rss_before) / max(1, held),
        "server_rss_mb": run.rss_connected / 2**20,
        "server_cpu_pct": run.cpu_seconds / run.duration * 100,
        "pings_per_s": run.total("sent") / run.duration,
        "connect_s": max(s["connect_seconds"] for s in run.stats),
        "generator_cpu_pct": run.generator_cpu_pct,
    }


def plans(target: system.Target, args: argparse.Namespace) -> list[Plan]:
    users = system.accounts(target, args.connections, "idle")
    return [Plan("idle", target.host, target.port, share, source_ips(args.source_ips), args.duration,
                 heartbeat=args.heartbeat, tokens=system.login_tokens(target, share), index=i)
            for i, share in enumerate(system.split(users, args.processes))]


def main(args: argparse.Namespace) -> None:
    workers = args.workers or max(1, math.ceil(args.connections / PER_PROCESS))
    args.processes = max(args.processes, math.ceil(args.connections / PER_PROCESS))
    args.source_ips = max(args.source_ips, math.ceil(args.connections / 20_000) + 1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-idle-"))
    runs: dict[str, list[system.Run]] = {"cim": [], "ceiling": []}
    for _ in range(args.repeat):
        # One target at a time: 100k connections each are enough for one machine.
        with system.cim_target(workdir, workers=workers, heartbeat=args.heartbeat, auth=args.auth, limits=args.limits) as cim:
            runs["cim"].append(system.measure(cim, plans(cim, args), print))
        with system.ceiling_target(workdir, "fanout", workers=workers) as ceiling:
            runs["ceiling"].append(system.measure(ceiling, plans(ceiling, args), print))
    row = {"point": {}, "cim": system.median_figures([figures(r, args.connections) for r in runs["cim"]]),
           "ceiling": system.median_figures([figures(r, args.connections) for r in runs["ceiling"]])}
    params = {k: getattr(args, k)
              for k in ("connections", "heartbeat", "duration", "repeat", "processes", "source_ips", "auth", "limits")}
    params["workers"] = workers
    system.report("idle", params, [row], args.json,
           {"heartbeat_cpu": "server_cpu_pct", "memory_per_conn": "rss_per_conn_bytes"}, system.generator_note(runs))
