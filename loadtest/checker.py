"""The chaos test's checker: what senders were told against what receivers got.

Pure functions over what the chaos workers recorded (``ChaosResult``), the faults the
cluster suffered (``Fault``) and the run's cast (``Cast``: users, named groups, devices);
no I/O, so tests feed it records of their own. A receiver is a device, (user, device id):
each of a user's devices has a client of its own, and each must get every message of the
user's inbox.

For every message with an accepted receipt (9000, or 7000: stored for an offline
receiver) every device of every intended receiver must have got it exactly once, and
every device must have got each sender's messages in the order they were sent:

* private: the receiver, always (online or not, the message is in its inbox);
* named group: every member but the sender, always (the message goes to every member's
  inbox, online or not);
* group ("everyone online"): every other user of the run who was online when the server
  stored it. Which users those were is the server's view at that moment; the checker
  cannot see it, so it counts a missing group message as **lost** only for a user with a
  device connected throughout ``[send - margin, receipt + margin]`` (a connection on a
  node that was SIGSTOPped meanwhile counts as down from the SIGSTOP on: the node could not
  answer for it), or one that a device of the user got (then it is in the user's inbox).
  The other users' devices are **excused**, not lost;
* the sender's copy: every device of the sender, the sending one too, always (an SDK send has
  clientMsgIds, so the server keeps the copy in the sender's inbox: ``cim.delivery``); and each
  device must tell its own sends from its other devices' ones (``copy_wrong``).

A device counts a second copy as **duplicated** and a message from a sender's device whose
counter is below one it already got from that device as **reordered** (any kind: what one
device sends is one sequence; two devices of a user are two connections, ordered apart).
The SDK's own promise is checked too: the seqs it hands the app rise by exactly one
(``seq_gaps``, ``seq_repeats``).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter, defaultdict
from typing import Any, NamedTuple, TypedDict

from loadtest.cluster import Fault
from loadtest.fleet import GROUP, NAMED, PRIVATE, Device, key_counter, key_sender, latency_summary

PENDING = "pending"  # no answer by the end of the run
ACCEPTED = ("9000", "7000")
EXAMPLES = 20  # of each problem, in the report
AFFECTED_WITHIN = 5.0  # seconds after a kill in which a connection that drops counts as the kill's

Span = tuple[float, float, int, int]  # a connection: up at, down at (inf: still up), server port, http port


class Send(NamedTuple):
    """One send as its worker recorded it (a list while the send is in flight: see ``ChaosResult``)."""

    key: int
    kind: str
    to: int | str  # the receiver (private), the named group's id, or 0 (everyone)
    sent_at: float
    answered_at: float  # 0: never
    outcome: str  # the receipt's code, the exception's name, or PENDING
    device: str  # the sender's device it went from


class ChaosResult(TypedDict):
    """What a chaos worker hands back (plain containers: see ``FleetWorker.main``)."""

    send_seconds: float
    sends: list[list[Any]]  # a ``Send``'s fields each
    received: dict[Device, tuple[array[int], array[float]]]  # first copies' keys and times, in app order
    anomalies: Counter[str]  # duplicated, reordered, reordered_within_kind, seq_gaps, seq_repeats, seq_zero, foreign, ...
    examples: list[dict[str, Any]]  # duplicated / reordered ones, as found
    timeline: dict[Device, list[Span]]
    transports: dict[Device, str]  # "tcp" or "ws"
    cuts: list[tuple[int, float, list[Device]]]  # (wave, at, devices cut)
    behind: dict[Device, tuple[int, int]]  # (last seq got, inbox latest), when the final sync gave up
    latencies_ms: array[float]
    reconnects: int
    gave_up: Counter[str]  # why clients stopped (reconnects refused, given up) -> how many
    disconnected: list[Device]  # devices not connected when the worker finished
    stalls: list[tuple[float, float]]  # (began at, seconds): the worker's loop stood still (``FleetWorker.stalls``)
    nudged: int  # connections cut in the final sync to make a stuck client sync


class Cast(NamedTuple):
    """Who took part: the users, the named groups, each user's devices."""

    everyone: list[int]
    groups: dict[str, list[int]]  # named group id -> members (the owner among them)
    devices: tuple[str, ...]  # every user's device ids


class Online:
    """When each device was connected, as the workers saw it: ``raw``, and for the loss
    check cut where the connection's node was SIGSTOPped: a connection up before the stop
    counts as down from the stop on (the node may have lost it meanwhile); one made during
    the stop (the kernel completes the handshake of a stopped process's listening socket,
    the login waits) counts only from the node's resume."""

    def __init__(self, timelines: dict[Device, list[Span]], faults: list[Fault]) -> None:
        stops = [(f.port, f.at, f.until) for f in faults if f.kind == "stop-node"]
        self.raw = {device: sorted(spans) for device, spans in timelines.items()}
        self.usable: dict[Device, list[Span]] = {}
        for device, spans in self.raw.items():
            usable = []
            for up, down, port, http_port in spans:
                for stop_port, stop_at, resumed_at in stops:
                    if stop_port == port and up < stop_at < down:
                        down = stop_at
                    elif stop_port == port and stop_at <= up < resumed_at:
                        up = resumed_at
                usable.append((up, down, port, http_port))
            self.usable[device] = usable
        self.ups = {device: [span[0] for span in spans] for device, spans in self.raw.items()}

    def _index(self, device: Device, at: float) -> int:
        return bisect.bisect_right(self.ups.get(device, []), at) - 1

    def throughout(self, device: Device, start: float, end: float) -> bool:
        """Connected, and not on a stopped node, over all of [start, end]."""
        i = self._index(device, start)
        return i >= 0 and self.usable[device][i][0] <= start and self.usable[device][i][1] >= end

    def span_at(self, device: Device, at: float) -> Span | None:
        """The connection ``device`` had at ``at``, if any."""
        i = self._index(device, at)
        return self.raw[device][i] if i >= 0 and self.raw[device][i][1] > at else None

    def next_up(self, device: Device, after: float) -> float | None:
        ups = self.ups.get(device, [])
        i = bisect.bisect_right(ups, after)
        return ups[i] if i < len(ups) else None


class Ledger:
    """Every worker's records joined: sends by key, first copies by device."""

    def __init__(self, results: list[ChaosResult]) -> None:
        self.sends: dict[int, Send] = {}
        self.received: dict[Device, tuple[array[int], array[float]]] = {}
        self.anomalies: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.timeline: dict[Device, list[Span]] = {}
        self.transports: dict[Device, str] = {}
        self.cuts: dict[int, list[Device]] = defaultdict(list)
        for r in results:
            self.sends.update((record[0], Send(*record)) for record in r["sends"])
            self.received.update(r["received"])
            self.anomalies.update(r["anomalies"])
            self.examples += r["examples"]
            self.timeline.update(r["timeline"])
            self.transports.update(r["transports"])
            for wave, _, devices in r["cuts"]:
                self.cuts[wave] += devices
        self.got = {device: set(keys) for device, (keys, _) in self.received.items()}


def describe_key(key: int) -> str:
    return f"{key_sender(key)}#{key_counter(key)}"


class Expectation:
    """Which devices must have got a message, and which are excused: see the module."""

    def __init__(self, ledger: Ledger, online: Online, cast: Cast, margin: float) -> None:
        self.ledger, self.online, self.cast, self.margin = ledger, online, cast, margin

    def devices(self, user: int) -> list[Device]:
        return [(user, device_id) for device_id in self.cast.devices]

    def receivers(self, send: Send) -> tuple[list[Device], int]:
        """The devices that must have ``send`` (by kind: ``kind`` of the returned pairs) and how many are excused."""
        sender = key_sender(send.key)
        if send.kind == PRIVATE:
            users = [int(send.to)]
        elif send.kind == NAMED:
            users = [u for u in self.cast.groups.get(str(send.to), []) if u != sender]
        else:
            users = [u for u in self.cast.everyone if u != sender]
        must: list[Device] = self.devices(sender) if sender not in users else []  # the sender's copy
        excused = 0
        for user in users:
            devices = self.devices(user)
            if send.kind != GROUP or self.in_inbox(send, devices):
                must += devices
            else:
                excused += len(devices)
        return must, excused

    def in_inbox(self, send: Send, devices: list[Device]) -> bool:
        """A group message is in the user's inbox for sure: a device got it, or one was online throughout."""
        return any(send.key in self.ledger.got.get(device, ()) for device in devices) or any(
            self.online.throughout(device, send.sent_at - self.margin, send.answered_at + self.margin)
            for device in devices)

    def addressed(self, send: Send, device: Device) -> bool:
        """Whether ``device`` may get ``send`` at all."""
        user, sender = device[0], key_sender(send.key)
        if user == sender:  # the sender's copy
            return True
        if send.kind == PRIVATE:
            return user == send.to
        if send.kind == NAMED:
            return user in self.cast.groups.get(str(send.to), ())
        return True


def deliveries(ledger: Ledger, online: Online, cast: Cast, margin: float, start: float) -> dict[str, Any]:
    """Lost (by kind) / excused / wrong address / delivered without an accepted receipt."""
    expect = Expectation(ledger, online, cast, margin)
    lost_by: Counter[str] = Counter()
    excused = delivered = 0
    lost: list[dict[str, Any]] = []
    for send in ledger.sends.values():
        if send.outcome not in ACCEPTED:
            continue
        must, excused_here = expect.receivers(send)
        excused += excused_here
        missing: list[Device] = []
        for device in must:
            if send.key in ledger.got.get(device, ()):
                delivered += 1
            else:
                missing.append(device)
                lost_by[send.kind] += 1
        if missing and len(lost) < EXAMPLES:
            lost.append({"message": describe_key(send.key), "from_device": send.device, "kind": send.kind,
                         "to": send.to, "outcome": send.outcome, "sent_s": round(send.sent_at - start, 3),
                         "answered_s": round(send.answered_at - start, 3),
                         "missing": [f"{user}/{device_id} ({ledger.transports.get((user, device_id), '?')})"
                                     for user, device_id in missing[:10]],
                         "missing_count": len(missing)})
    wrong_address = unconfirmed = unknown = 0
    for device, got in ledger.got.items():
        for key in got:
            found = ledger.sends.get(key)
            if found is None:
                unknown += 1
            elif not expect.addressed(found, device):
                wrong_address += 1
            elif found.outcome not in ACCEPTED:
                unconfirmed += 1
    return {"delivered": delivered, "lost": sum(lost_by.values()), "lost_private": lost_by[PRIVATE],
            "lost_group": lost_by[GROUP], "lost_named": lost_by[NAMED],
            "excused": excused, "wrong_address": wrong_address, "delivered_without_accepted_receipt": unconfirmed,
            "unknown_messages": unknown, "lost_examples": lost}


def affected(fault: Fault, ledger: Ledger, online: Online) -> list[Device]:
    """The devices a fault hit: on the node (the worker's: those it cut off), the cut ones, or all."""
    if fault.kind == "rst":
        return sorted(ledger.cuts.get(fault.wave, []))
    if fault.kind == "redis":
        return sorted(online.raw)
    hit = []
    for device in online.raw:
        span = online.span_at(device, fault.at)
        if span is None or span[2] != fault.port:
            continue
        if fault.kind != "kill-worker" or span[1] <= fault.at + AFFECTED_WITHIN:
            hit.append(device)
    return sorted(hit)


def recovery(fault: Fault, ledger: Ledger, online: Online, start: float) -> dict[str, Any]:
    """When the fault's devices had their first accepted receipt and their first delivery of a
    message sent after it began, and when every one of them that lost its connection had one again."""
    devices = affected(fault, ledger, online)
    hit = set(devices)
    first_receipt = min((s.answered_at for s in ledger.sends.values()
                         if (key_sender(s.key), s.device) in hit and s.sent_at >= fault.at and s.outcome in ACCEPTED),
                        default=math.inf)
    first_delivery = math.inf
    for device in devices:
        keys, times = ledger.received.get(device, (array("Q"), array("d")))
        i = bisect.bisect_right(times, fault.at)  # times rise: app order is arrival order
        for key, at in zip(keys[i:], times[i:], strict=True):
            send = ledger.sends.get(key)
            if send is not None and send.sent_at >= fault.at:
                first_delivery = min(first_delivery, at)
                break
    dropped = [device for device in devices if (span := online.span_at(device, fault.at)) is not None
               and span[1] <= fault.until + AFFECTED_WITHIN]
    back = [up for device in dropped if (up := online.next_up(device, fault.at)) is not None]

    def since(at: float) -> float | None:
        return None if math.isinf(at) else round(at - fault.at, 2)

    return {
        "kind": fault.kind, "target": fault.target, "at_s": round(fault.at - start, 2),
        "lasted_s": round(fault.until - fault.at, 2), "affected": len(devices),
        "affected_ws": sum(ledger.transports.get(d) == "ws" for d in devices), "dropped": len(dropped),
        "first_receipt_s": since(first_receipt), "first_delivery_s": since(first_delivery),
        "all_reconnected_s": since(max(back, default=math.inf)), "never_reconnected": len(dropped) - len(back),
        **fault.details,
    }


def check(results: list[ChaosResult], faults: list[Fault], cast: Cast, margin: float, start: float) -> dict[str, Any]:
    """The report's accounting; ``start`` is when sending began (times in the report are relative to it)."""
    ledger = Ledger(results)
    online = Online(ledger.timeline, faults)
    outcomes = Counter(send.outcome for send in ledger.sends.values())
    kinds = Counter(send.kind for send in ledger.sends.values())
    latencies = [v for r in results for v in r["latencies_ms"]]
    accepted = sum(outcomes[code] for code in ACCEPTED)
    gave_up: Counter[str] = Counter()
    for r in results:
        gave_up.update(r["gave_up"])
    anomalies = ledger.anomalies
    report: dict[str, Any] = {
        "clients": len(ledger.timeline), "clients_ws": sum(t == "ws" for t in ledger.transports.values()),
        "sent": len(ledger.sends), "sent_private": kinds[PRIVATE], "sent_group": kinds[GROUP],
        "sent_named": kinds[NAMED], "receipts": dict(outcomes.most_common()), "accepted": accepted,
        "pending": outcomes[PENDING], **deliveries(ledger, online, cast, margin, start),
        "duplicated": anomalies["duplicated"], "reordered": anomalies["reordered"],
        "reordered_within_kind": anomalies["reordered_within_kind"], "seq_gaps": anomalies["seq_gaps"],
        "seq_repeats": anomalies["seq_repeats"], "seq_zero": anomalies["seq_zero"],
        "group_id_wrong": anomalies["group_id_wrong"], "copy_wrong": anomalies["copy_wrong"], "notices": anomalies["notice"],
        "foreign_ignored": anomalies["foreign"],
        "behind_at_end": {f"{u}/{d}": v for r in results for (u, d), v in r["behind"].items()},
        "reconnects": sum(r["reconnects"] for r in results), "gave_up": dict(gave_up),
        "disconnected_at_end": sorted(f"{u}/{d}" for r in results for u, d in r["disconnected"]),
        "nudged": sum(r["nudged"] for r in results),
        # Not counted against the run: a stalled generator's clients were silent, not the cluster. A
        # loss that comes with one is the generator's to explain first (2026-12-02's run 4).
        "generator_stalls": [{"process": i, "at_s": round(at - start, 2), "seconds": round(seconds, 2)}
                             for i, r in enumerate(results) for at, seconds in r["stalls"]],
        "latency_ms": {"count": len(latencies), **latency_summary(latencies)},
        "faults": [recovery(f, ledger, online, start) for f in faults],
        "examples": ledger.examples[:EXAMPLES],
    }
    report["generator_longest_stall_s"] = max((stall["seconds"] for stall in report["generator_stalls"]), default=0.0)
    report["passed"] = passed(report)
    return report


def passed(report: dict[str, Any]) -> bool:
    return report["accepted"] > 0 and not any(
        report[k]
        for k in ("lost", "duplicated", "reordered", "wrong_address", "unknown_messages", "group_id_wrong", "copy_wrong")
    )
