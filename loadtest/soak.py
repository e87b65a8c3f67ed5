"""Soak: many SDK clients chat at a steady rate for a long time, and every message is accounted for.

    python -m loadtest.soak --route http://127.0.0.1:8083 --users 1000 --rate 200 --duration 300 --json soak.json

Users are registered through the route, then logged in and connected with the SDK
(``cim.client.Client``: under token auth, with a password, and the login's token for
the TCP login) by ``--processes`` worker processes, so each process stays well
under the open-files limit. Every worker sends its share of ``--rate`` messages
per second from random senders among its users: private to a random other user of
the run or, for ``--group-ratio`` of them, group. A text carries its kind, sender,
per-sender sequence number and send time (``soak:p:1002::17:<ns>``: "" is the device), so receivers
count deliveries and duplicates, check order per (sender, receiver) and measure
send -> receive latency. After the send phase the run waits up to ``--drain``
seconds for stragglers, logs every user out and reports.

Expected deliveries are the messages whose receipt was 9000 or 7000: one for a
private message, every other user of the run for a group message. Every user stays
online for the whole run, so a message stored offline (7000) that never arrives
counts as lost. The exit status is 0 when nothing was lost, duplicated, misaddressed
or out of order and no send failed; 1 otherwise; 2 when the run could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from array import array
from collections import Counter
from typing import Any, TypedDict

import httpx
import uvloop

from cim.client import Client, ClientError, Message
from loadtest.fleet import (
    PRIVATE,
    Device,
    FleetWorker,
    Monitor,
    Phase,
    RunError,
    Shared,
    check_load_options,
    format_text,
    latency_summary,
    message_key,
    parse_text,
    register_users,
    spawn_context,
    start_workers,
    write_report,
)

TAG = "soak"
# Totals every worker adds to in batches; the parent prints them as progress and
# ends the drain as soon as "received" has caught up with "expected".
COUNTERS = ("connected", "sent", "ok", "failed", "expected", "received", "senders_done")


class WorkerResult(TypedDict):
    """What a worker hands back (plain containers, see ``FleetWorker.main``)."""

    send_seconds: float  # from the start to the last send
    sent_private: int
    sent_group: int
    stored_offline: int
    failures: Counter[str]
    ok_private: dict[int, int]  # message key -> intended receiver
    ok_group: list[int]  # message keys
    private_got: list[tuple[int, int]]  # (message key, receiver), once per receiver
    group_got: Counter[int]  # message key -> receivers of this worker that got it
    own_got: list[int]  # message keys of the senders' own copies (cim.delivery), once each
    duplicates: int
    out_of_order: int
    wrong_address: int
    foreign: int
    latencies_ms: array[float]
    reconnects: int
    disconnected: int


# -- the worker process -------------------------------------------------------


class SoakWorker(FleetWorker):
    def __init__(self, users: list[tuple[int, str]], everyone: list[int], options: argparse.Namespace, shared: Shared) -> None:
        super().__init__(users, everyone, options, shared)
        self.members = set(everyone)
        self.seen: dict[int, set[int]] = {user_id: set() for user_id, _ in users}
        self.last_seq: dict[tuple[str, int, int], int] = {}
        self.result = WorkerResult(
            send_seconds=0.0, sent_private=0, sent_group=0, stored_offline=0, failures=Counter(), ok_private={}, ok_group=[],
            private_got=[], group_got=Counter(), own_got=[], duplicates=0, out_of_order=0, wrong_address=0, foreign=0,
            latencies_ms=array("f"), reconnects=0, disconnected=0,
        )

    def client_options(self, device: Device) -> dict[str, Any]:
        return {
            "heartbeat_interval": self.options.heartbeat_interval,
            "reconnect_attempts": self.options.reconnect_attempts,
        }

    async def main(self) -> WorkerResult:
        if await self.wait_phase(Phase.SENDING, Phase.ABORTING) is Phase.SENDING:
            self.result["send_seconds"], in_flight = await self.send_phase()
            await asyncio.gather(*in_flight)
            self.bump("senders_done")
            await self.wait_phase(Phase.STOPPING, Phase.ABORTING)
        return self.result

    def before_close(self) -> None:
        self.result["reconnects"] = sum(c.reconnects for c in self.clients.values())
        self.result["disconnected"] = sum(not c.connected for c in self.clients.values())

    async def send_one(self, client: Client, kind: str) -> None:
        sender = client.user_id
        # The sequence number and time are taken right before the SDK writes the
        # frame (it writes before its first await), so seq order is wire order.
        seq = next(self.counters[sender])
        key = message_key(sender, seq)
        text = format_text(TAG, kind, (sender, client.delivery.device_id), seq)
        self.bump("sent")
        receiver = 0
        try:
            if kind == PRIVATE:
                self.result["sent_private"] += 1
                receiver = self.pick_receiver(sender)
                receipt = await client.send_private(receiver, text)
            else:
                self.result["sent_group"] += 1
                receipt = await client.send_group(text)
        except (ClientError, ConnectionError, TimeoutError) as err:
            self.result["failures"][f"{type(err).__name__}: {err}"] += 1
            self.bump("failed")
            return
        self.bump("ok")
        if receipt.stored_offline:
            self.result["stored_offline"] += 1
        if kind == PRIVATE:
            self.result["ok_private"][key] = receiver
            self.bump("expected")
        else:
            self.result["ok_group"].append(key)
            self.bump("expected", len(self.everyone) - 1)

    def on_message(self, device: Device, message: Message) -> None:
        now_ns = time.time_ns()
        receiver = device[0]  # one device per user
        parsed = parse_text(TAG, message.text)
        if parsed is None or parsed.sender not in self.members:
            self.result["foreign"] += 1  # not from this run
            return
        kind, sender, _, seq, sent_ns = parsed
        # A copy of one's own comes to the one device that sent it, and says so.
        if message.sender_id != sender or (sender == receiver and not message.from_this_device):
            self.result["wrong_address"] += 1
            return
        key = message_key(sender, seq)
        seen = self.seen[receiver]
        if key in seen:
            self.result["duplicates"] += 1
            return
        seen.add(key)
        if sender == receiver:
            self.result["own_got"].append(key)
            return
        self.bump("received")
        self.result["latencies_ms"].append((now_ns - sent_ns) / 1e6)
        if kind == PRIVATE:
            self.result["private_got"].append((key, receiver))
        else:
            self.result["group_got"][key] += 1
        # Private and group messages take different paths through the cluster, so
        # order is only promised within a kind.
        pair = (kind, sender, receiver)
        if seq < self.last_seq.get(pair, 0):
            self.result["out_of_order"] += 1
        else:
            self.last_seq[pair] = seq


# -- the parent -----------------------------------------------------------------


def describe(t: dict[str, int], users: int) -> str:
    return (f"connected {t['connected']}/{users}  sent {t['sent']}  ok {t['ok']}  failed {t['failed']}  "
            f"delivered {t['received']}/{t['expected']}")


def aggregate(results: list[WorkerResult], users: int) -> dict[str, Any]:
    """Join what senders were told (receipts) with what receivers got, across workers."""
    ok_private: dict[int, int] = {}
    ok_group: set[int] = set()
    group_got: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    own_got: set[int] = set()
    for r in results:
        own_got.update(r["own_got"])
        ok_private.update(r["ok_private"])
        ok_group.update(r["ok_group"])
        group_got.update(r["group_got"])
        failures.update(r["failures"])
        latencies.extend(r["latencies_ms"])
    delivered = wrong_address = after_failure = 0
    for r in results:
        wrong_address += r["wrong_address"]
        for key, receiver in r["private_got"]:
            intended = ok_private.get(key)
            if intended is None:
                after_failure += 1  # its send failed or timed out, yet it arrived
            elif intended != receiver:
                wrong_address += 1
            else:
                delivered += 1
    for key, count in group_got.items():
        if key in ok_group:
            delivered += count
        else:
            after_failure += count
    expected = len(ok_private) + len(ok_group) * (users - 1)
    sent = sum(r["sent_private"] + r["sent_group"] for r in results)
    return {
        "sent": sent,
        "sent_private": sum(r["sent_private"] for r in results),
        "sent_group": sum(r["sent_group"] for r in results),
        "receipts_ok": len(ok_private) + len(ok_group),
        "stored_offline": sum(r["stored_offline"] for r in results),
        "failed_sends": sum(failures.values()),
        "failure_reasons": dict(failures.most_common(10)),
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "own_copies_lost": len((set(ok_private) | ok_group) - own_got),  # an accepted send's copy at its sender
        "duplicates": sum(r["duplicates"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "wrong_address": wrong_address,
        "delivered_after_failed_send": after_failure,
        "foreign_ignored": sum(r["foreign"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
        "disconnected_at_end": sum(r["disconnected"] for r in results),
        "latency_ms": {"count": len(latencies), **latency_summary(latencies)},
    }


def passed(report: dict[str, Any]) -> bool:
    return report["sent"] > 0 and not any(
        report[k] for k in ("lost", "own_copies_lost", "duplicates", "out_of_order", "wrong_address", "failed_sends")
    )


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Register, connect, send, drain, stop; returns the report. Raises RunError."""
    users = uvloop.run(register_users(options.route, options.users, options.concurrency, TAG))
    print(f"registered {len(users)} users", flush=True)
    ctx = spawn_context()
    shared = Shared.create(ctx, COUNTERS)
    results, processes = start_workers(ctx, SoakWorker, users, options, shared)
    monitor = Monitor(shared, results, processes, lambda t: describe(t, len(users)), options.progress)
    final = Phase.ABORTING
    try:
        if not monitor.wait("connecting", lambda t: t["connected"] >= len(users), options.connect_timeout):
            raise RunError(f"only {shared.totals()['connected']} of {len(users)} users connected "
                           f"after {options.connect_timeout} s")
        connected_after = time.monotonic() - monitor.started
        shared.start_at.value = time.time() + 0.2  # every worker starts on the same tick
        shared.phase.value = Phase.SENDING
        # A send waits at most the SDK's send timeout (10 s) for its receipt.
        if not monitor.wait("sending", lambda t: t["senders_done"] >= len(processes), options.duration + 30):
            raise RunError("the workers did not finish sending in time")
        drain_started = time.monotonic()
        monitor.wait("draining", lambda t: t["received"] >= t["expected"], options.drain)
        drain_seconds = time.monotonic() - drain_started
        final = Phase.STOPPING
    finally:
        shared.phase.value = final
        worker_results: list[WorkerResult] = monitor.collect(timeout=120)
    report = aggregate(worker_results, len(users))
    send_seconds = max(r["send_seconds"] for r in worker_results)
    return {
        "params": {k: getattr(options, k) for k in ("route", "users", "rate", "duration", "group_ratio", "processes")},
        "connect_seconds": round(connected_after, 2),
        "send_seconds": round(send_seconds, 2),
        "send_rate": round(report["sent"] / send_seconds, 1),
        "drain_seconds": round(drain_seconds, 2),
        **report,
        "passed": passed(report),
    }


def print_report(report: dict[str, Any]) -> None:
    latency = report["latency_ms"]
    print(
        f"sent {report['sent']} (private {report['sent_private']}, group {report['sent_group']}) "
        f"in {report['send_seconds']} s = {report['send_rate']}/s; receipts ok {report['receipts_ok']} "
        f"(stored offline {report['stored_offline']}), failed {report['failed_sends']}\n"
        f"delivered {report['delivered']}/{report['expected']}: lost {report['lost']} (own copies "
        f"{report['own_copies_lost']}), duplicates "
        f"{report['duplicates']}, out of order {report['out_of_order']}, wrong address {report['wrong_address']}\n"
        f"latency ms p50 {latency['p50']} p99 {latency['p99']} max {latency['max']} ({latency['count']} deliveries); "
        f"reconnects {report['reconnects']}\n"
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        flush=True,
    )
    for reason, count in report["failure_reasons"].items():
        print(f"  send failure x{count}: {reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--route", default=os.environ.get("CIM_ROUTE", "http://127.0.0.1:8083"), help="route URL [env CIM_ROUTE]")
    parser.add_argument("--users", type=int, default=1000, help="users, all online for the whole run")
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second, all workers together")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of sending")
    parser.add_argument("--group-ratio", type=float, default=0.0,
                        help="fraction of messages sent to the group (each reaches every other user)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes the users are spread over")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for stragglers after sending")
    parser.add_argument("--concurrency", type=int, default=50, help="registrations/logins/logouts in flight per process")
    parser.add_argument("--connect-timeout", type=float, default=300.0, help="seconds for every user to connect")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, help="SDK heartbeat interval, seconds")
    parser.add_argument("--reconnect-attempts", type=int, default=3, help="SDK reconnect attempts after a lost connection")
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    check_load_options(parser, options)
    try:
        report = run(options)
    except (RunError, ClientError, httpx.HTTPError) as err:
        print(f"soak aborted: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak interrupted", file=sys.stderr)
        return 2
    print_report(report)
    write_report(options.json, report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
