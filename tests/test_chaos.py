"""The chaos test: its checker on records made up here, a worker's own accounting, and
the CI run: ~100 SDK users with 2 devices each (a quarter of the clients over WebSocket) on
2 nodes (one with --workers 2), real Redis and ZooKeeper, private, group and named-group
messages, one node SIGKILLed and restarted and one RST wave, and nothing lost, duplicated
or reordered."""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cim.client import Message
from loadtest.chaos import COUNTERS, SETTINGS, TAG, ChaosWorker, build_parser, check_options, draw_groups
from loadtest.checker import PENDING, Cast, ChaosResult, check
from loadtest.cluster import Fault
from loadtest.fleet import GROUP, NAMED, PRIVATE, Device, Shared, message_key, spawn_context

REPO = Path(__file__).resolve().parent.parent
START = 1000.0  # when the made-up runs start sending
ANN, BEN, CAT, DAN = 1, 2, 3, 4
EVERYONE = [ANN, BEN, CAT, DAN]
TEAM = "g1"  # a named group: ANN, BEN, CAT (not DAN)
GROUPS = {TEAM: [ANN, BEN, CAT]}
NODE, OTHER_NODE = 9000, 9001
Span = tuple[float, float, int, int]


def result(sends: list[list[Any]], received: dict[Device, list[tuple[int, float]]], timeline: dict[Device, list[Span]],
           **anomalies: int) -> ChaosResult:
    return ChaosResult(
        send_seconds=60.0, sends=sends,
        received={device: (array("Q", [k for k, _ in got]), array("d", [t for _, t in got]))
                  for device, got in received.items()},
        anomalies=Counter(anomalies), examples=[], timeline=timeline, transports=dict.fromkeys(timeline, "tcp"), cuts=[],
        behind={}, latencies_ms=array("f", [1.0]), reconnects=0, gave_up=Counter(), nudged=0, disconnected=[], stalls=[],
    )


def send(sender: int, counter: int, kind: str, to: int | str, at: float, outcome: str = "9000", device: str = "") -> list[Any]:
    return [message_key(sender, counter), kind, to, START + at, START + at + 0.01, outcome, device]


def always(port: int = NODE) -> list[Span]:
    return [(START - 10, math.inf, port, 8000)]


def test_checker_counts_every_accepted_message_for_its_receivers() -> None:
    sends = [
        send(ANN, 1, PRIVATE, BEN, 1.0),  # got
        send(ANN, 2, PRIVATE, CAT, 2.0),  # never got: lost
        send(ANN, 3, GROUP, 0, 3.0),  # BEN got it, CAT (connected throughout) did not: lost; DAN got it
        send(ANN, 4, GROUP, 0, 20.0),  # CAT was reconnecting: excused; BEN and DAN got it
        send(ANN, 5, PRIVATE, BEN, 30.0, "7100"),  # refused: nothing expected, and it arrived nowhere
        send(ANN, 6, PRIVATE, CAT, 31.0, PENDING),  # never answered: nothing expected, yet it arrived
        send(BEN, 1, PRIVATE, CAT, 32.0),  # delivered to ANN: wrong address, and lost for CAT
        send(BEN, 2, NAMED, TEAM, 33.0),  # ANN got it; CAT was reconnecting, yet it is in her inbox: lost; DAN: wrong
    ]
    own = {sender: [(message_key(sender, n), START + 40) for n in numbers]  # the senders' copies, all there
           for sender, numbers in ((ANN, (1, 2, 3, 4)), (BEN, (1, 2)))}
    received = {
        (ANN, ""): [(message_key(BEN, 1), START + 33), (message_key(BEN, 2), START + 33.1), *own[ANN]],
        (BEN, ""): [(message_key(ANN, 1), START + 1.1), (message_key(ANN, 3), START + 3.1),
                    (message_key(ANN, 4), START + 20.1), *own[BEN]],
        (CAT, ""): [(message_key(ANN, 6), START + 31.1)],
        (DAN, ""): [(message_key(ANN, 3), START + 3.1), (message_key(ANN, 4), START + 20.1),
                    (message_key(BEN, 2), START + 33.1)],
    }
    timeline = {(ANN, ""): always(), (BEN, ""): always(OTHER_NODE), (DAN, ""): always(),
                (CAT, ""): [(START - 10, START + 19, NODE, 8000), (START + 21.5, START + 32.9, OTHER_NODE, 8001),
                            (START + 34, math.inf, NODE, 8000)]}
    report = check([result(sends, received, timeline, duplicated=2, reordered=1, reordered_within_kind=1)], [],
                   Cast(EVERYONE, GROUPS, ("",)), margin=2.0, start=START)
    assert report["receipts"] == {"9000": 6, "7100": 1, PENDING: 1}
    assert (report["accepted"], report["pending"]) == (6, 1)
    assert (report["lost"], report["lost_private"], report["lost_group"], report["lost_named"]) == (4, 2, 1, 1)
    assert (report["excused"], report["delivered"]) == (1, 6 + 6)
    assert (report["wrong_address"], report["delivered_without_accepted_receipt"]) == (2, 1)
    assert (report["duplicated"], report["reordered"]) == (2, 1)
    assert [e["message"] for e in report["lost_examples"]] == [f"{ANN}#2", f"{ANN}#3", f"{BEN}#1", f"{BEN}#2"]
    assert not report["passed"]


def test_checker_wants_every_device_and_the_senders_copy_on_each() -> None:
    devices = ("a", "b")
    sends = [
        send(ANN, 1, PRIVATE, BEN, 1.0, device="a"),  # BEN/a got it, BEN/b did not; the copy: ANN/b, not ANN/a; DAN/a: wrong
        send(ANN, 2, NAMED, TEAM, 2.0, device="b"),  # every device of BEN and CAT and ANN got it
        send(BEN, 1, GROUP, 0, 3.0, device="a"),  # DAN was away on both devices: excused; CAT/a got it, so CAT/b must
    ]
    everywhere = [(message_key(ANN, 2), START + 2.1)]
    received: dict[Device, list[tuple[int, float]]] = {
        (ANN, "a"): everywhere,
        (ANN, "b"): [(message_key(ANN, 1), START + 1.1), *everywhere, (message_key(BEN, 1), START + 3.1)],
        (BEN, "a"): [(message_key(ANN, 1), START + 1.1), *everywhere, (message_key(BEN, 1), START + 3.1)],
        (BEN, "b"): [*everywhere, (message_key(BEN, 1), START + 3.1)],
        (CAT, "a"): [*everywhere, (message_key(BEN, 1), START + 3.1)],
        (CAT, "b"): everywhere,
        (DAN, "a"): [(message_key(ANN, 1), START + 1.1)], (DAN, "b"): [],
    }
    away = [(START - 10, START + 2.5, NODE, 8000), (START + 6, math.inf, NODE, 8000)]
    timeline = {device: always() for device in received} | {(DAN, "a"): away, (DAN, "b"): away,
                                                              (ANN, "a"): away, (CAT, "a"): away, (CAT, "b"): away}
    report = check([result(sends, received, timeline)], [], Cast(EVERYONE, GROUPS, devices), margin=2.0, start=START)
    # ANN#1: BEN/b and the copy at ANN/a; BEN#1: CAT/b (CAT/a has it), ANN/a (ANN/b was up throughout).
    assert (report["lost_private"], report["lost_named"], report["lost_group"]) == (2, 0, 2)
    assert report["excused"] == 2  # DAN's two devices, for BEN#1
    assert report["wrong_address"] == 1  # ANN#1 at DAN/a
    assert report["delivered"] == (1 + 1) + (4 + 2) + (2 + 2)  # receivers + the senders' copies
    missing = {e["message"]: sorted(e["missing"]) for e in report["lost_examples"]}
    assert missing == {f"{ANN}#1": ["1/a (tcp)", "2/b (tcp)"], f"{BEN}#1": ["1/a (tcp)", "3/b (tcp)"]}


def test_checker_excuses_receivers_on_a_stopped_node_and_measures_recovery() -> None:
    # ANN's node is SIGSTOPped at 10 s for 8 s; her SDK notices at 13 s and is back on the other node at 14 s.
    # DAN connects to the stopped node at 12 s (the kernel answers for it): he counts only from its resume.
    stop = Fault("stop-node", "node0", START + 10, START + 18, port=NODE)
    sends = [send(BEN, 1, GROUP, 0, 11.0), send(BEN, 2, GROUP, 0, 16.0), send(ANN, 1, PRIVATE, BEN, 15.0)]
    copies = [(message_key(BEN, 1), START + 11.1), (message_key(BEN, 2), START + 16.1)]
    received = {(ANN, ""): [(message_key(BEN, 2), START + 16.1), (message_key(ANN, 1), START + 15.1)],
                (BEN, ""): [(message_key(ANN, 1), START + 15.1), *copies],
                (CAT, ""): [(message_key(BEN, 1), START + 11.1), (message_key(BEN, 2), START + 16.1)]}
    timeline = {(ANN, ""): [(START - 10, START + 13, NODE, 8000), (START + 14, math.inf, OTHER_NODE, 8001)],
                (BEN, ""): always(OTHER_NODE), (CAT, ""): always(OTHER_NODE),
                (DAN, ""): [(START + 12, math.inf, NODE, 8000)]}
    report = check([result(sends, received, timeline)], [stop], Cast(EVERYONE, {}, ("",)), margin=2.0, start=START)
    # BEN#1 missed ANN while her node was stopped: the server may well have counted her offline; BEN#1 and
    # BEN#2 missed DAN, whose login waited for the resume.
    assert (report["lost"], report["excused"], report["delivered"]) == (0, 3, 4 + 3)
    assert report["passed"]
    [fault] = report["faults"]
    assert (fault["kind"], fault["at_s"], fault["lasted_s"]) == ("stop-node", 10.0, 8.0)
    assert (fault["affected"], fault["dropped"]) == (1, 1)
    assert (fault["first_receipt_s"], fault["first_delivery_s"], fault["all_reconnected_s"]) == (5.01, 6.1, 4.0)


def pushed(sender: int, device: str, counter: int, kind: str, seq: int, group_id: str = "",
           from_this_device: bool = False) -> Message:
    return Message(sender_id=sender, sender_name="", receiver_id=BEN, text=f"{TAG}:{kind}:{sender}:{device}:{counter}:0",
                   msg_id=seq, seq=seq, timestamp_ms=0, group_id=group_id, from_this_device=from_this_device)


def test_the_report_names_the_generators_stalls_and_counts_none_against_the_run() -> None:
    sends = [send(ANN, 1, PRIVATE, BEN, 1.0)]
    got = [(message_key(ANN, 1), START + 1.1)]
    received: dict[Device, list[tuple[int, float]]] = {(BEN, ""): got, (ANN, ""): got}  # ANN: the sender's copy
    quiet, stalled = result(sends, received, {d: always() for d in received}), result([], {}, {})
    stalled["stalls"] = [(START + 36.0, 21.0), (START + 100.0, 1.5)]
    report = check([quiet, stalled], [], Cast(EVERYONE, {}, ("",)), margin=2.0, start=START)
    assert report["generator_stalls"] == [{"process": 1, "at_s": 36.0, "seconds": 21.0},
                                          {"process": 1, "at_s": 100.0, "seconds": 1.5}]
    assert report["generator_longest_stall_s"] == 21.0 and report["lost"] == 0 and report["passed"]


def test_a_worker_counts_duplicates_reordering_and_seq_gaps() -> None:
    options = build_parser().parse_args(["--users", "4", "--processes", "1", "--devices", "2"])
    options.groups = GROUPS
    ben = (BEN, "a")
    worker = ChaosWorker([(BEN, "ben")], EVERYONE, options, Shared.create(spawn_context(), COUNTERS, SETTINGS))
    notice = Message(sender_id=ANN, sender_name="ann", receiver_id=BEN, text="ann created the group", msg_id=1, seq=1,
                     timestamp_ms=0, group_id=TEAM, notice=True)
    for message in [notice, pushed(ANN, "a", 1, PRIVATE, 2), pushed(ANN, "a", 3, GROUP, 3), pushed(ANN, "a", 3, GROUP, 3),
                    pushed(ANN, "a", 2, PRIVATE, 6),  # seqs 4 and 5 skipped; sent before ANN#3: reordered, across kinds
                    pushed(ANN, "b", 4, NAMED, 7, TEAM), pushed(ANN, "b", 5, NAMED, 8),  # a second stream; no groupId
                    pushed(CAT, "a", 1, GROUP, 9), pushed(CAT, "a", 1, GROUP, 10),  # a second copy under a new seq
                    pushed(BEN, "a", 1, PRIVATE, 11, from_this_device=True),  # BEN's copies: from this device, right,
                    pushed(BEN, "b", 3, PRIVATE, 12),  # from the other one, right,
                    pushed(BEN, "a", 2, PRIVATE, 13)]:  # from this one, told as the other's: wrong
        worker.on_message(ben, message)
    assert worker.anomalies == Counter(duplicated=2, reordered=1, seq_repeats=1, seq_gaps=2, notice=1, group_id_wrong=1,
                                       copy_wrong=1)
    assert list(worker.received[ben][0]) == [message_key(ANN, n) for n in (1, 3, 2, 4, 5)] + [
        message_key(CAT, 1), message_key(BEN, 1), message_key(BEN, 3), message_key(BEN, 2)]
    assert list(worker.received[(BEN, "b")][0]) == []
    assert [(e["problem"], e["message"]) for e in worker.examples] == [
        ("duplicated", f"{ANN}#3"), ("reordered", f"{ANN}#2"), ("group_id_wrong", f"{ANN}#5"), ("duplicated", f"{CAT}#1"),
        ("copy_wrong", f"{BEN}#2")]


def test_groups_are_drawn_so_that_every_user_is_in_one() -> None:
    everyone = list(range(1, 101))
    groups = draw_groups(everyone, 10, 20, random.Random(1))
    assert [len(set(members)) for members in groups] == [20] * 10
    assert set().union(*groups) == set(everyone)


def test_options() -> None:
    options = build_parser().parse_args(["--faults", "kill-node,rst", "--fault-gap", "5,9"])
    assert (options.faults, options.fault_gap) == (["kill-node", "rst"], (5.0, 9.0))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--faults", "kill-everything"])
    parser = build_parser()
    defaults = parser.parse_args(["--users", "100"])
    check_options(parser, defaults)
    assert (defaults.named_groups, defaults.group_size, defaults.devices) == (10, 20, 2)
    for bad in (["--devices", "9"], ["--ws-share", "1.5"], ["--named-ratio", "0.99"],
                ["--named-groups", "2"]):  # 2 groups of 20 cannot hold 100 users
        with pytest.raises(SystemExit):
            check_options(parser, parser.parse_args(["--users", "100", *bad]))
    assert isinstance(options, argparse.Namespace)


@pytest.mark.timeout(900)
def test_chaos_ci(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.chaos", "--users", "100", "--devices", "2", "--ws-share", "0.25",
         "--duration", "60", "--rate", "20", "--group-ratio", "0.1", "--named-ratio", "0.15", "--processes", "1",
         "--faults", "kill-node,rst", "--rounds", "1",
         "--fault-gap", "10,15", "--quiet-end", "10", "--settle", "60", "--sync-timeout", "120", "--progress", "10",
         "--workdir", str(tmp_path / "cluster"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=840,
    )
    assert out.exists(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    summary = {k: report[k] for k in ("lost", "lost_private", "lost_group", "lost_named", "duplicated",
                                      "reordered", "wrong_address", "group_id_wrong", "pending", "receipts",
                                      "behind_at_end", "lost_examples", "examples")}
    assert sorted(f["kind"] for f in report["faults"]) == ["kill-node", "rst"], report["faults"]
    assert report["sent_private"] > 0 and report["sent_group"] > 0 and report["sent_named"] > 0, summary
    assert report["clients"] == 200 and 0 < report["clients_ws"] < 200 and report["accepted"] > 0, summary
    assert (report["lost"], report["duplicated"], report["reordered"], report["wrong_address"]) == (0, 0, 0, 0), summary
    assert (report["group_id_wrong"], report["copy_wrong"], report["seq_gaps"], report["seq_repeats"]) == (0, 0, 0, 0), summary
    assert report["behind_at_end"] == {}, summary
    assert isinstance(report["generator_stalls"], list), summary  # said, not judged: see the checker
    # Every fault hit someone, and they were sending and receiving again afterwards.
    for fault in report["faults"]:
        assert fault["affected"] > 0 and fault["first_receipt_s"] is not None, fault
        assert fault["first_delivery_s"] is not None and fault["never_reconnected"] == 0, fault
    assert run.returncode == 0 and report["passed"], run.stdout + run.stderr
