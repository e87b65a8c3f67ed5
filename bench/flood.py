"""flood: latency of well-behaved pairs while one connection floods the server, and without it.

Both phases run on one cim target in one invocation: ``--pairs`` senders each send
``--rate`` private messages a second (under the per-connection limit) and their
receivers measure send-to-delivery latency; in the flooded phase one more connection
writes messages as fast as the server reads them, in batches of ``FLOOD_BATCH``. The
target has cim's per-connection limits (``--max-messages-per-second``,
``--max-bytes-per-second``; 0 turns one off, to see the flood unchecked) and no abuse
limit, so the flood lasts the whole phase instead of being closed. The result is each
phase's p50/p99 and their ratio (flooded / quiet): close to 1 means the flood went
unnoticed by the others.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import system
from bench.loadgen import FLOOD_BATCH, Plan, source_ips
from bench.report import machine, percentiles, print_table, write_json
from cim.config import AUTH_MODES, Config

PHASES = ("quiet", "flooded")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    parser.add_argument("--pairs", type=int, default=20, help="well-behaved sender/receiver pairs")
    parser.add_argument("--rate", type=float, default=20.0, help="messages a second per well-behaved sender")
    parser.add_argument("--payload", type=int, default=64, help="message text bytes")
    parser.add_argument("--max-messages-per-second", type=int, default=defaults.max_messages_per_second,
                        help="the target's per-connection message limit (0: off)")
    parser.add_argument("--max-bytes-per-second", type=int, default=defaults.max_bytes_per_second,
                        help="the target's per-connection byte limit (0: off)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured phase")
    parser.add_argument("--repeat", type=int, default=1, help="quiet and flooded phases, in turn; medians are reported")
    parser.add_argument("--source-ips", type=int, default=4, help="loopback source addresses (127.0.0.2...)")
    parser.add_argument("--workdir", type=Path, default=None, help="where logs go (default: a temp dir)")
    parser.add_argument("--auth", choices=AUTH_MODES, default="token", help="cim's auth mode")


def plans(target: system.Target, args: argparse.Namespace, tag: str, flood: bool) -> list[Plan]:
    """The pairs (process 0) and, when ``flood``, the flooder and its receiver (process 1)."""
    users = system.accounts(target, 2 * args.pairs + 2, tag)
    pairs, (flooder, sink) = users[: 2 * args.pairs], users[2 * args.pairs :]
    ips = source_ips(args.source_ips)
    out = [Plan("p2p", target.host, target.port, pairs, ips, args.duration, payload=args.payload, rate=args.rate,
                partner_of={pairs[k][0]: pairs[k + 1][0] for k in range(0, len(pairs), 2)},
                tokens=system.login_tokens(target, pairs))]
    if flood:
        out.append(Plan("flood", target.host, target.port, [flooder, sink], ips, args.duration, payload=args.payload,
                        partner_of={flooder[0]: sink[0]}, tokens=system.login_tokens(target, [flooder, sink]), index=1))
    return out


def figures(run: system.Run) -> dict[str, float]:
    pairs = run.stats[0]
    flood: dict[str, Any] = run.stats[1] if len(run.stats) > 1 else {"sent": 0, "delivered": 0, "receipts": 0, "cpu_seconds": 0}
    p50_us, p99_us = percentiles(pairs["latencies_us"], (0.50, 0.99))
    return {
        "p50_ms": p50_us / 1000,
        "p99_ms": p99_us / 1000,
        "pair_msgs_per_s": pairs["delivered"] / run.duration,
        "pair_errors": float(pairs["errors"]),
        "flood_offered_per_s": flood["sent"] / run.duration,
        "flood_delivered_per_s": flood["delivered"] / run.duration,
        "flood_answers_per_s": flood["receipts"] / run.duration,  # receipts (4029 for the refused) and error frames
        "flooder_cpu_pct": flood["cpu_seconds"] / run.duration * 100,
        "server_cpu_pct": run.cpu_seconds / run.duration * 100,
    }


def main(args: argparse.Namespace) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-flood-"))
    settings = {
        "CIM_MAX_MESSAGES_PER_SECOND": str(args.max_messages_per_second),
        "CIM_MAX_BYTES_PER_SECOND": str(args.max_bytes_per_second),
        "CIM_ABUSE_LIMIT": "0",  # the flood goes on for the whole phase
    }
    runs: dict[str, list[system.Run]] = {phase: [] for phase in PHASES}
    with system.cim_target(workdir, auth=args.auth, settings=settings) as cim:
        for repeat in range(args.repeat):
            for phase in PHASES:
                phase_plans = plans(cim, args, f"flood-{phase}-{repeat}", flood=phase == "flooded")
                runs[phase].append(system.measure(cim, phase_plans, print))
    result: dict[str, Any] = {"scenario": "flood", "machine": machine()}
    result["params"] = {k: getattr(args, k) for k in (
        "pairs", "rate", "payload", "max_messages_per_second", "max_bytes_per_second", "duration", "repeat", "auth")}
    result["params"]["flood_batch"] = FLOOD_BATCH
    for phase in PHASES:
        result[phase] = system.median_figures([figures(r) for r in runs[phase]])
    quiet, flooded = result["quiet"], result["flooded"]
    result["ratio"] = {key: flooded[key] / quiet[key] if quiet[key] else 0.0 for key in ("p50_ms", "p99_ms")}
    notes = []
    if not args.max_messages_per_second:
        notes.append("--max-messages-per-second 0: the flood was delivered unchecked")
    if flooded["pair_errors"] or quiet["pair_errors"]:
        notes.append("well-behaved connections saw errors: see the target's log in the workdir")
    result["notes"] = notes
    table: list[list[Any]] = [[key, quiet[key], flooded[key]] for key in quiet]
    table += [[f"ratio {key}", f"{value:.2f}x", ""] for key, value in result["ratio"].items()]
    print_table("flood: well-behaved pairs, quiet vs while one connection floods, same target",
                ["figure", "quiet", "flooded"], table)
    for note in notes:
        print(f"note: {note}")
    write_json(args.json, result)
