"""The chaos test's checker: what senders were told against what receivers got.

Pure functions over what the chaos workers recorded (``ChaosResult``) and the faults
the cluster suffered (``Fault``); no I/O, so tests feed it records of their own.

For every message with an accepted receipt (9000, or 7000: stored for an offline
receiver) the intended receivers must each have got it exactly once, and every
receiver must have got each sender's messages in the order they were sent:

* private: the receiver, always (online or not, the message is in its inbox);
* group ("everyone online"): every other user of the run who was online when the
  server stored it. Which users those were is the server's view at that moment; the
  checker cannot see it, so it counts a missing group message as **lost** only for
  receivers connected throughout ``[send - margin, receipt + margin]`` (a connection
  on a node that was SIGSTOPped meanwhile counts as down from the SIGSTOP on: the node
  could not answer for it). A receiver outside that window is **excused**, not lost.
  Duplicates and reordering count for every receiver.

A receiver counts a second copy as **duplicated** and a message from a sender whose
counter is below one it already got from that sender as **reordered** (any kind: a
sender's private and group messages are one sequence). The SDK's own promise is checked
too: the seqs it hands the app rise by exactly one (``seq_gaps``, ``seq_repeats``).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any, TypedDict

from loadtest.cluster import Fault
from loadtest.fleet import GROUP, PRIVATE, key_counter, key_sender, latency_summary

PENDING = "pending"  # no answer by the end of the run
ACCEPTED = ("9000", "7000")
EXAMPLES = 20  # of each problem, in the report
AFFECTED_WITHIN = 5.0  # seconds after a kill in which a connection that drops counts as the kill's


class ChaosResult(TypedDict):
    """What a chaos worker hands back (plain containers: see ``FleetWorker.main``)."""

    send_seconds: float
    # (message key, kind, receiver (0 for group), sent at, answered at (0: never), outcome:
    # the receipt's code, the exception's name, or PENDING)
    sends: list[list[Any]]
    received: dict[int, tuple[array[int], array[float]]]  # receiver -> first copies' keys and times, app order
    anomalies: Counter[str]  # duplicated, reordered, reordered_within_kind, seq_gaps, seq_repeats, seq_zero, foreign
    examples: list[dict[str, Any]]  # duplicated / reordered ones, as found
    timeline: dict[int, list[tuple[float, float, int, int]]]  # user -> (up at, down at or inf, port, http port)
    cuts: list[tuple[int, float, list[int]]]  # (wave, at, users cut)
    behind: dict[int, tuple[int, int]]  # user -> (last seq got, inbox latest), when the final sync gave up
    latencies_ms: array[float]
    reconnects: int
    gave_up: Counter[str]  # why clients stopped (reconnects refused, given up) -> how many
    disconnected: list[int]  # users not connected when the worker finished
    nudged: int  # connections cut in the final sync to make a stuck client sync


class Online:
    """When each user was connected, as the workers saw it: ``raw``, and for the loss
    check cut short where the connection's node was SIGSTOPped."""

    def __init__(self, timelines: dict[int, list[tuple[float, float, int, int]]], faults: list[Fault]) -> None:
        stops = [(f.port, f.at) for f in faults if f.kind == "stop-node"]
        self.raw = {user: sorted(spans) for user, spans in timelines.items()}
        self.usable: dict[int, list[tuple[float, float, int, int]]] = {}
        for user, spans in self.raw.items():
            usable = []
            for up, down, port, http_port in spans:
                for stop_port, stop_at in stops:
                    if stop_port == port and up < stop_at < down:
                        down = stop_at
                usable.append((up, down, port, http_port))
            self.usable[user] = usable
        self.ups = {user: [span[0] for span in spans] for user, spans in self.raw.items()}

    def _index(self, user: int, at: float) -> int:
        return bisect.bisect_right(self.ups.get(user, []), at) - 1

    def throughout(self, user: int, start: float, end: float) -> bool:
        """Connected, and not on a stopped node, over all of [start, end]."""
        i = self._index(user, start)
        return i >= 0 and self.usable[user][i][1] >= end

    def span_at(self, user: int, at: float) -> tuple[float, float, int, int] | None:
        """The connection ``user`` had at ``at``, if any."""
        i = self._index(user, at)
        return self.raw[user][i] if i >= 0 and self.raw[user][i][1] > at else None

    def next_up(self, user: int, after: float) -> float | None:
        ups = self.ups.get(user, [])
        i = bisect.bisect_right(ups, after)
        return ups[i] if i < len(ups) else None


class Ledger:
    """Every worker's records joined: sends by key, first copies by receiver."""

    def __init__(self, results: list[ChaosResult]) -> None:
        self.sends: dict[int, list[Any]] = {}
        self.received: dict[int, tuple[array[int], array[float]]] = {}
        self.got: dict[int, set[int]] = {}
        self.anomalies: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.timeline: dict[int, list[tuple[float, float, int, int]]] = {}
        self.cuts: dict[int, list[int]] = defaultdict(list)
        for r in results:
            self.sends.update((send[0], send) for send in r["sends"])
            self.received.update(r["received"])
            self.anomalies.update(r["anomalies"])
            self.examples += r["examples"]
            self.timeline.update(r["timeline"])
            for wave, _, users in r["cuts"]:
                self.cuts[wave] += users
        self.got = {receiver: set(keys) for receiver, (keys, _) in self.received.items()}


def describe_key(key: int) -> str:
    return f"{key_sender(key)}#{key_counter(key)}"


def deliveries(ledger: Ledger, online: Online, everyone: list[int], margin: float, start: float) -> dict[str, Any]:
    """Lost / excused / wrong address / delivered without an accepted receipt."""
    lost_private = lost_group = excused = delivered = 0
    lost: list[dict[str, Any]] = []
    for key, (_, kind, receiver, sent_at, answered_at, outcome) in ledger.sends.items():
        if outcome not in ACCEPTED:
            continue
        sender = key_sender(key)
        receivers = [receiver] if kind == PRIVATE else [u for u in everyone if u != sender]
        missing = []
        for user in receivers:
            if key in ledger.got.get(user, ()):
                delivered += 1
            elif kind == PRIVATE or online.throughout(user, sent_at - margin, answered_at + margin):
                missing.append(user)
            else:
                excused += 1
        if kind == PRIVATE:
            lost_private += len(missing)
        else:
            lost_group += len(missing)
        if missing and len(lost) < EXAMPLES:
            lost.append({"message": describe_key(key), "kind": kind, "outcome": outcome,
                         "sent_s": round(sent_at - start, 3), "answered_s": round(answered_at - start, 3),
                         "missing": missing[:10], "missing_count": len(missing)})
    wrong_address = unconfirmed = unknown = 0
    for receiver, got in ledger.got.items():
        for key in got:
            send = ledger.sends.get(key)
            if send is None:
                unknown += 1
            elif (send[1] == PRIVATE and send[2] != receiver) or (send[1] == GROUP and key_sender(key) == receiver):
                wrong_address += 1
            elif send[5] not in ACCEPTED:
                unconfirmed += 1
    return {"delivered": delivered, "lost": lost_private + lost_group, "lost_private": lost_private,
            "lost_group": lost_group, "excused": excused, "wrong_address": wrong_address,
            "delivered_without_accepted_receipt": unconfirmed, "unknown_messages": unknown, "lost_examples": lost}


def affected(fault: Fault, ledger: Ledger, online: Online, everyone: Iterable[int]) -> list[int]:
    """The users a fault hit: on the node (the worker's users being those it cut off), the cut ones, or all."""
    if fault.kind == "rst":
        return sorted(ledger.cuts.get(fault.wave, []))
    if fault.kind == "redis":
        return sorted(everyone)
    hit = []
    for user in everyone:
        span = online.span_at(user, fault.at)
        if span is None or span[2] != fault.port:
            continue
        if fault.kind != "kill-worker" or span[1] <= fault.at + AFFECTED_WITHIN:
            hit.append(user)
    return hit


def recovery(fault: Fault, ledger: Ledger, online: Online, everyone: list[int], start: float) -> dict[str, Any]:
    """When the fault's users had their first accepted receipt and their first delivery of a
    message sent after it began, and when every one of them that lost its connection had one again."""
    users = affected(fault, ledger, online, everyone)
    hit = set(users)
    first_receipt = min((s[4] for key, s in ledger.sends.items()
                         if key_sender(key) in hit and s[3] >= fault.at and s[5] in ACCEPTED), default=math.inf)
    first_delivery = math.inf
    for user in users:
        keys, times = ledger.received.get(user, (array("Q"), array("d")))
        i = bisect.bisect_right(times, fault.at)  # times rise: app order is arrival order
        for key, at in zip(keys[i:], times[i:], strict=True):
            send = ledger.sends.get(key)
            if send is not None and send[3] >= fault.at:
                first_delivery = min(first_delivery, at)
                break
    dropped = [user for user in users if (span := online.span_at(user, fault.at)) is not None
               and span[1] <= fault.until + AFFECTED_WITHIN]
    back = [up for user in dropped if (up := online.next_up(user, fault.at)) is not None]

    def since(at: float) -> float | None:
        return None if math.isinf(at) else round(at - fault.at, 2)

    return {
        "kind": fault.kind, "target": fault.target, "at_s": round(fault.at - start, 2),
        "lasted_s": round(fault.until - fault.at, 2), "affected": len(users), "dropped": len(dropped),
        "first_receipt_s": since(first_receipt), "first_delivery_s": since(first_delivery),
        "all_reconnected_s": since(max(back, default=math.inf)), "never_reconnected": len(dropped) - len(back),
        **fault.details,
    }


def check(results: list[ChaosResult], faults: list[Fault], everyone: list[int], margin: float,
          start: float) -> dict[str, Any]:
    """The report's accounting; ``start`` is when sending began (times in the report are relative to it)."""
    ledger = Ledger(results)
    online = Online(ledger.timeline, faults)
    outcomes = Counter(send[5] for send in ledger.sends.values())
    kinds = Counter(send[1] for send in ledger.sends.values())
    latencies = [v for r in results for v in r["latencies_ms"]]
    accepted = sum(outcomes[code] for code in ACCEPTED)
    gave_up: Counter[str] = Counter()
    for r in results:
        gave_up.update(r["gave_up"])
    report: dict[str, Any] = {
        "sent": len(ledger.sends), "sent_private": kinds[PRIVATE], "sent_group": kinds[GROUP],
        "receipts": dict(outcomes.most_common()), "accepted": accepted, "pending": outcomes[PENDING],
        **deliveries(ledger, online, everyone, margin, start),
        "duplicated": ledger.anomalies["duplicated"], "reordered": ledger.anomalies["reordered"],
        "reordered_within_kind": ledger.anomalies["reordered_within_kind"],
        "seq_gaps": ledger.anomalies["seq_gaps"], "seq_repeats": ledger.anomalies["seq_repeats"],
        "seq_zero": ledger.anomalies["seq_zero"], "foreign_ignored": ledger.anomalies["foreign"],
        "behind_at_end": {str(u): v for r in results for u, v in r["behind"].items()},
        "reconnects": sum(r["reconnects"] for r in results), "gave_up": dict(gave_up),
        "disconnected_at_end": sorted(u for r in results for u in r["disconnected"]),
        "nudged": sum(r["nudged"] for r in results),
        "latency_ms": {"count": len(latencies), **latency_summary(latencies)},
        "faults": [recovery(f, ledger, online, everyone, start) for f in faults],
        "examples": ledger.examples[:EXAMPLES],
    }
    report["passed"] = passed(report)
    return report


def passed(report: dict[str, Any]) -> bool:
    return report["accepted"] > 0 and not any(
        report[k] for k in ("lost", "duplicated", "reordered", "wrong_address", "unknown_messages")
    )
