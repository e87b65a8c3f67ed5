"""fanout: group messages to G online receivers (everyone, or a named group of them); deliveries/s and latency, swept over G."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import system
from bench.loadgen import Plan, source_ips
from bench.report import percentiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--receivers", default="100,1000,5000,15000", help="comma-separated G values to sweep")
    parser.add_argument("--window", type=int, default=4, help="group messages in flight")
    parser.add_argument("--payload", type=int, default=64, help="message text bytes")
    parser.add_argument("--plot", metavar="PATH.png", help="draw deliveries/s and the ratio against G")
    parser.add_argument("--to", choices=["everyone", "named"], default="everyone",
                        help="the sender writes to CIM's everyone-group, or to a named group of the G receivers")
    system.add_protocol_argument(parser)
    system.add_common_arguments(parser, duration=10.0)


def plans(target: system.Target, receivers: int, args: argparse.Namespace) -> list[Plan]:
    users = system.accounts(target, receivers + 1, f"fan{receivers}")
    sender, others = users[0], users[1:]
    # The relay forwards every message to every other connection: a named group is cim's only.
    group_id = system.named_group(target, sender, others) if args.to == "named" and target.route_url else ""
    shares = system.split(others, args.processes)
    out = []
    for index, share in enumerate(shares):
        plan_users = [sender, *share] if index == 0 else share  # process 0: sender first, its last user is the probe
        out.append(Plan("fanout", target.host, target.port, plan_users, source_ips(args.source_ips), args.duration,
                        window=args.window, payload=args.payload, index=index, protocol=args.protocol,
                        fanout_sender=sender[0] if index == 0 else None, group_id=group_id,
                        tokens=system.login_tokens(target, plan_users),
                        sample_every=max(1, receivers // 200)))
    return out


def figures(run: system.Run) -> dict[str, float]:
    p50_us, p99_us = percentiles(run.latencies_us, (0.50, 0.99))
    return {
        "deliveries_per_s": run.total("delivered") / run.duration,
        "messages_per_s": run.total("sent") / run.duration,
        "p50_ms": p50_us / 1000,
        "p99_ms": p99_us / 1000,
        "server_cpu_pct": run.cpu_seconds / run.duration * 100,
        "generator_cpu_pct": run.generator_cpu_pct,
        "acks_per_s": run.total("acks") / run.duration,
    }


def plot(path: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [r["point"]["G"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(g, [r["cim"]["deliveries_per_s"] for r in rows], "o-", label="cim")
    left.plot(g, [r["ceiling"]["deliveries_per_s"] for r in rows], "s--", label="ceiling relay")
    left.set(xscale="log", xlabel="receivers G", ylabel="deliveries/s", title="fanout throughput")
    left.legend()
    right.plot(g, [r["ratio"]["deliveries"] for r in rows], "o-")
    right.axhline(0.8, color="grey", linestyle=":")
    right.set(xscale="log", xlabel="receivers G", ylabel="cim / ceiling", title="ratio", ylim=(0, 1.2))
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main(args: argparse.Namespace) -> None:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    sweep = [int(g) for g in args.receivers.split(",")]
    rows = []
    notes: list[str] = []
    # Room for a named group of the largest G and its sender.
    settings = {"CIM_GROUP_MAX_MEMBERS": str(max(sweep) + 1)} if args.to == "named" else None
    with (system.cim_target(workdir, auth=args.auth, limits=args.limits, settings=settings) as cim,
          system.ceiling_target(workdir, "fanout") as ceiling):
        for receivers in sweep:
            runs: dict[str, list[system.Run]] = {"cim": [], "ceiling": []}
            for _ in range(args.repeat):
                for target in (cim, ceiling):
                    runs[target.name].append(system.measure(target, plans(target, receivers, args), print))
            rows.append({"point": {"G": receivers}, "cim": system.median_figures([figures(r) for r in runs["cim"]]),
                         "ceiling": system.median_figures([figures(r) for r in runs["ceiling"]])})
            notes += [f"G={receivers}: {n}" for n in system.generator_note(runs)]
    params = {k: getattr(args, k) for k in ("receivers", "to", "window", "payload", "protocol", "duration", "repeat",
                                            "processes", "auth", "limits")}
    system.report("fanout", params, rows, args.json, {"deliveries": "deliveries_per_s"}, notes)
    if args.plot:
        plot(args.plot, rows)
