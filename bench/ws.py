"""ws: cim's WebSocket endpoint next to its TCP port: idle connections held, and p2p msgs/s.

Two parts, each in one invocation:

* **idle**: ``--connections`` users logged in on one cim-server process (``cim up``) and pinging
  every ``--heartbeat`` seconds (CIM PINGs, the same frames either way), once over TCP and once
  over WebSocket: the server's RSS per connection and its CPU on the heartbeats. The generator
  spreads the connections over processes (``PER_PROCESS`` each, under the 20,000 open-files limit).
* **p2p**: the p2p scenario's closed loop (``--pairs``, ``--window``) over TCP, over WebSocket,
  and through the ceiling relay (TCP: it knows no WebSocket), ``--repeat`` times each, alternated in
  one run of one server; medians. Ratios: WebSocket over TCP, and each over the ceiling.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

from bench import idle, p2p, system
from bench.loadgen import Plan
from bench.report import machine, print_table, write_json
from cim.testing.services import free_port

PER_PROCESS = 5_000  # generated connections per generator process
TRANSPORTS = ("tcp", "ws")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=10_000, help="idle: connections held, per transport")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="idle: seconds between pings per connection")
    parser.add_argument("--idle-duration", type=float, default=30.0, help="idle: seconds of the measured phase")
    parser.add_argument("--pairs", type=int, default=100, help="p2p: sender/receiver pairs")
    parser.add_argument("--window", type=int, default=8, help="p2p: messages in flight per sender")
    parser.add_argument("--payload", type=int, default=64, help="p2p: message text bytes")
    parser.add_argument("--part", choices=("both", "idle", "p2p"), default="both")
    system.add_protocol_argument(parser)
    system.add_common_arguments(parser, duration=10.0)


def on_transport(plans: list[Plan], transport: str, ws_port: int) -> list[Plan]:
    """``plans`` as they are (TCP), or every user on the WebSocket port."""
    if transport == "tcp":
        return plans
    for plan in plans:
        plan.transport, plan.port = transport, ws_port
        plan.ports = dict.fromkeys(plan.ports, ws_port)
    return plans


def idle_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    idle_args = argparse.Namespace(**{**vars(args), "duration": args.idle_duration,
                                      "processes": max(args.processes, 2, math.ceil(args.connections / PER_PROCESS))})
    runs: dict[str, list[system.Run]] = {transport: [] for transport in TRANSPORTS}
    for _ in range(args.repeat):
        for transport in TRANSPORTS:
            # A fresh server per run: memory a run's connections freed is not given back to the
            # system, so a second run on the same process would measure nothing new.
            ws_port = free_port()
            with system.cim_target(workdir, heartbeat=args.heartbeat, auth=args.auth, limits=args.limits,
                                   settings={"CIM_WS_PORT": str(ws_port)}) as cim:
                runs[transport].append(system.measure(cim, on_transport(idle.plans(cim, idle_args), transport, ws_port), print))
    return {transport: system.median_figures([idle.figures(r, args.connections) for r in measured])
            for transport, measured in runs.items()}


def p2p_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    runs: dict[str, list[system.Run]] = {"tcp": [], "ws": [], "ceiling": []}
    ws_port = free_port()
    with (system.cim_target(workdir, auth=args.auth, limits=args.limits, settings={"CIM_WS_PORT": str(ws_port)}) as cim,
          system.ceiling_target(workdir, "p2p") as ceiling):
        for _ in range(args.repeat):
            for transport in TRANSPORTS:
                runs[transport].append(system.measure(cim, on_transport(p2p.plans(cim, args), transport, ws_port), print))
            runs["ceiling"].append(system.measure(ceiling, p2p.plans(ceiling, args), print))
    return {name: system.median_figures([p2p.figures(r) for r in measured]) for name, measured in runs.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def main(args: argparse.Namespace) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ws-"))
    result: dict[str, Any] = {"scenario": "ws", "machine": machine(),
                              "params": {k: getattr(args, k) for k in (
                                  "connections", "heartbeat", "idle_duration", "pairs", "window", "payload", "protocol",
                                  "duration", "repeat", "processes", "auth", "limits", "part")}}
    if args.part in ("both", "idle"):
        held = result["idle"] = idle_part(args, workdir)
        held["ratio"] = {"memory_per_conn": _ratio(held["ws"]["rss_per_conn_bytes"], held["tcp"]["rss_per_conn_bytes"]),
                         "heartbeat_cpu": _ratio(held["ws"]["server_cpu_pct"], held["tcp"]["server_cpu_pct"])}
        print_table(f"ws idle: {args.connections:,} connections on one cim-server, ping every {args.heartbeat:g} s",
                    ["figure", "tcp", "ws"], [[k, held["tcp"][k], held["ws"][k]] for k in held["tcp"]]
                    + [[f"ratio ws/tcp {k}", f"{v:.2f}x", ""] for k, v in held["ratio"].items()])
    if args.part in ("both", "p2p"):
        loop = result["p2p"] = p2p_part(args, workdir)
        loop["ratio"] = {"ws_over_tcp": _ratio(loop["ws"]["msgs_per_s"], loop["tcp"]["msgs_per_s"]),
                         "tcp_over_ceiling": _ratio(loop["tcp"]["msgs_per_s"], loop["ceiling"]["msgs_per_s"]),
                         "ws_over_ceiling": _ratio(loop["ws"]["msgs_per_s"], loop["ceiling"]["msgs_per_s"])}
        print_table(f"ws p2p: {args.pairs} pairs, window {args.window}, medians of {args.repeat}, same run",
                    ["figure", "cim tcp", "cim ws", "ceiling"],
                    [[k, loop["tcp"][k], loop["ws"][k], loop["ceiling"][k]] for k in loop["tcp"]]
                    + [[f"ratio msgs_per_s {k}", f"{v:.2f}x", "", ""] for k, v in loop["ratio"].items()])
    write_json(args.json, result)
