"""p2p: pairs of clients sending private messages through the server, several in flight per sender.

A closed loop: each sender starts with ``--window`` messages in flight and sends the next
one whenever its receiver got one, so the rate is what the target delivers. On a target
of several nodes, pair k's sender is on node k mod N and its receiver on the next node:
every message crosses nodes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import system
from bench.loadgen import Plan, source_ips
from bench.report import percentiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=100, help="sender/receiver pairs")
    parser.add_argument("--window", type=int, default=8, help="messages in flight per sender")
    parser.add_argument("--payload", type=int, default=64, help="message text bytes")
    system.add_protocol_argument(parser)
    system.add_common_arguments(parser, duration=10.0)


def plans(target: system.Target, args: argparse.Namespace) -> list[Plan]:
    users = system.accounts(target, 2 * args.pairs, "p2p")
    pairs = [(users[2 * k], users[2 * k + 1]) for k in range(args.pairs)]
    nodes = target.node_ports
    ports: dict[int, int] = {}
    for k, (sender, receiver) in enumerate(pairs):
        ports[sender[0]], ports[receiver[0]] = nodes[k % len(nodes)], nodes[(k + 1) % len(nodes)]
    out = []
    for index, share in enumerate(system.split(pairs, args.processes)):
        flat = [u for pair in share for u in pair]
        out.append(Plan("p2p", target.host, target.port, flat, source_ips(args.source_ips), args.duration,
                        window=args.window, payload=args.payload, index=index, protocol=args.protocol,
                        ports={u: ports[u] for u, _ in flat},
                        partner_of={s[0]: r[0] for s, r in share}, tokens=system.login_tokens(target, flat)))
    return out


def figures(run: system.Run) -> dict[str, float]:
    delivered = run.total("delivered")
    p50_us, p99_us = percentiles(run.latencies_us, (0.50, 0.99))
    receipt_p50_us, receipt_p99_us = percentiles(run.receipt_latencies_us, (0.50, 0.99))
    return {
        "msgs_per_s": delivered / run.duration,
        "p50_ms": p50_us / 1000,
        "p99_ms": p99_us / 1000,
        "receipt_p50_ms": receipt_p50_us / 1000,  # sdk on cim: send to receipt; else no receipts
        "receipt_p99_ms": receipt_p99_us / 1000,
        "server_cpu_s_per_million": run.cpu_seconds / max(1, delivered) * 1e6,
        "generator_cpu_pct": run.generator_cpu_pct,
        "receipts_per_s": run.total("receipts") / run.duration,  # cim with sdk clients: one per message; else none
        "acks_per_s": run.total("acks") / run.duration,
        "errors": float(run.total("errors")),
    }


def main(args: argparse.Namespace) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-p2p-"))
    runs: dict[str, list[system.Run]] = {"cim": [], "ceiling": []}
    with (system.cim_target(workdir, auth=args.auth, limits=args.limits) as cim,
          system.ceiling_target(workdir, "p2p") as ceiling):
        for _ in range(args.repeat):
            for target in (cim, ceiling):
                runs[target.name].append(system.measure(target, plans(target, args), print))
    row = {"point": {}, "cim": system.median_figures([figures(r) for r in runs["cim"]]),
           "ceiling": system.median_figures([figures(r) for r in runs["ceiling"]])}
    params = {k: getattr(args, k)
              for k in ("pairs", "window", "payload", "protocol", "duration", "repeat", "processes", "auth", "limits")}
    system.report("p2p", params, [row], args.json, {"msgs_per_s": "msgs_per_s"}, system.generator_note(runs))
