"""The chaos test: its checker on records made up here, a worker's own accounting, and
the CI run: ~100 SDK users on 2 nodes (one with --workers 2), real Redis and ZooKeeper,
one node SIGKILLed and restarted and one RST wave, and nothing lost, duplicated or reordered."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cim.client import Message
from loadtest.chaos import COUNTERS, SETTINGS, TAG, ChaosWorker, build_parser
from loadtest.checker import PENDING, ChaosResult, check
from loadtest.cluster import Fault
from loadtest.fleet import GROUP, PRIVATE, Shared, message_key, spawn_context

REPO = Path(__file__).resolve().parent.parent
START = 1000.0  # when the made-up runs start sending
ANN, BEN, CAT = 1, 2, 3
EVERYONE = [ANN, BEN, CAT]
NODE, OTHER_NODE = 9000, 9001


def result(sends: list[list[Any]], received: dict[int, list[tuple[int, float]]],
           timeline: dict[int, list[tuple[float, float, int, int]]], **anomalies: int) -> ChaosResult:
    return ChaosResult(
        send_seconds=60.0, sends=sends,
        received={user: (array("Q", [k for k, _ in got]), array("d", [t for _, t in got])) for user, got in received.items()},
        anomalies=Counter(anomalies), examples=[], timeline=timeline, cuts=[], behind={}, latencies_ms=array("f", [1.0]),
        reconnects=0, gave_up=Counter(), nudged=0, disconnected=[],
    )


def send(sender: int, counter: int, kind: str, receiver: int, at: float, outcome: str = "9000") -> list[Any]:
    return [message_key(sender, counter), kind, receiver, START + at, START + at + 0.01, outcome]


def always(port: int = NODE) -> list[tuple[float, float, int, int]]:
    return [(START - 10, math.inf, port, 8000)]


def test_checker_counts_every_accepted_message_for_its_receivers() -> None:
    sends = [
        send(ANN, 1, PRIVATE, BEN, 1.0),  # got
        send(ANN, 2, PRIVATE, CAT, 2.0),  # never got: lost
        send(ANN, 3, GROUP, 0, 3.0),  # BEN got it, CAT (connected throughout) did not: lost
        send(ANN, 4, GROUP, 0, 20.0),  # CAT was reconnecting: excused; BEN got it
        send(ANN, 5, PRIVATE, BEN, 30.0, "7100"),  # refused: nothing expected, and it arrived nowhere
        send(ANN, 6, PRIVATE, CAT, 31.0, PENDING),  # never answered: nothing expected, yet it arrived
        send(BEN, 1, PRIVATE, CAT, 32.0),  # delivered to ANN: wrong address, and lost for CAT
    ]
    received = {
        ANN: [(message_key(BEN, 1), START + 33)],
        BEN: [(message_key(ANN, 1), START + 1.1), (message_key(ANN, 3), START + 3.1), (message_key(ANN, 4), START + 20.1)],
        CAT: [(message_key(ANN, 6), START + 31.1)],
    }
    timeline = {ANN: always(), BEN: always(OTHER_NODE),
                CAT: [(START - 10, START + 19, NODE, 8000), (START + 21.5, math.inf, OTHER_NODE, 8001)]}
    report = check([result(sends, received, timeline, duplicated=2, reordered=1, reordered_within_kind=1)], [],
                   EVERYONE, margin=2.0, start=START)
    assert report["receipts"] == {"9000": 5, "7100": 1, PENDING: 1}
    assert (report["accepted"], report["pending"]) == (5, 1)
    assert (report["lost"], report["lost_private"], report["lost_group"], report["excused"]) == (3, 2, 1, 1)
    assert report["delivered"] == 3
    assert (report["wrong_address"], report["delivered_without_accepted_receipt"]) == (1, 1)
    assert (report["duplicated"], report["reordered"]) == (2, 1)
    assert [e["message"] for e in report["lost_examples"]] == [f"{ANN}#2", f"{ANN}#3", f"{BEN}#1"]
    assert not report["passed"]


def test_checker_excuses_receivers_on_a_stopped_node_and_measures_recovery() -> None:
    # ANN's node is SIGSTOPped at 10 s for 8 s; her SDK notices at 13 s and is back on the other node at 14 s.
    stop = Fault("stop-node", "node0", START + 10, START + 18, port=NODE)
    sends = [send(BEN, 1, GROUP, 0, 11.0), send(BEN, 2, GROUP, 0, 16.0), send(ANN, 1, PRIVATE, BEN, 15.0)]
    received = {ANN: [(message_key(BEN, 2), START + 16.1)], BEN: [(message_key(ANN, 1), START + 15.1)],
                CAT: [(message_key(BEN, 1), START + 11.1), (message_key(BEN, 2), START + 16.1)]}
    timeline = {ANN: [(START - 10, START + 13, NODE, 8000), (START + 14, math.inf, OTHER_NODE, 8001)],
                BEN: always(OTHER_NODE), CAT: always(OTHER_NODE)}
    report = check([result(sends, received, timeline)], [stop], EVERYONE, margin=2.0, start=START)
    # BEN#1 missed ANN while her node was stopped: the server may well have counted her offline.
    assert (report["lost"], report["excused"], report["delivered"]) == (0, 1, 4)
    assert report["passed"]
    [fault] = report["faults"]
    assert (fault["kind"], fault["at_s"], fault["lasted_s"]) == ("stop-node", 10.0, 8.0)
    assert (fault["affected"], fault["dropped"]) == (1, 1)
    assert (fault["first_receipt_s"], fault["first_delivery_s"], fault["all_reconnected_s"]) == (5.01, 6.1, 4.0)


def pushed(sender: int, counter: int, kind: str, seq: int) -> Message:
    return Message(sender_id=sender, sender_name="", receiver_id=BEN, text=f"{TAG}:{kind}:{sender}:{counter}:0",
                   msg_id=seq, seq=seq, timestamp_ms=0, group_id="")


def test_a_worker_counts_duplicates_reordering_and_seq_gaps() -> None:
    options = build_parser().parse_args(["--users", "3", "--processes", "1"])
    worker = ChaosWorker([(BEN, "ben")], EVERYONE, options, Shared.create(spawn_context(), COUNTERS, SETTINGS))
    for message in [pushed(ANN, 1, PRIVATE, 1), pushed(ANN, 3, GROUP, 2), pushed(ANN, 3, GROUP, 2),  # a seq repeated
                    pushed(ANN, 2, PRIVATE, 5),  # seqs 3 and 4 skipped; sent before ANN#3: reordered, across kinds
                    pushed(CAT, 1, GROUP, 6), pushed(CAT, 1, GROUP, 7)]:  # a second copy under a new seq
        worker.on_message(BEN, message)
    assert worker.anomalies == Counter(duplicated=2, reordered=1, seq_repeats=1, seq_gaps=2)
    assert list(worker.received[BEN][0]) == [message_key(ANN, 1), message_key(ANN, 3), message_key(ANN, 2),
                                             message_key(CAT, 1)]
    assert [(e["problem"], e["message"]) for e in worker.examples] == [
        ("duplicated", f"{ANN}#3"), ("reordered", f"{ANN}#2"), ("duplicated", f"{CAT}#1")]


def test_options() -> None:
    options = build_parser().parse_args(["--faults", "kill-node,rst", "--fault-gap", "5,9"])
    assert (options.faults, options.fault_gap) == (["kill-node", "rst"], (5.0, 9.0))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--faults", "kill-everything"])
    assert isinstance(options, argparse.Namespace)


@pytest.mark.timeout(900)
def test_chaos_ci(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.chaos", "--users", "100", "--duration", "60", "--rate", "20",
         "--group-ratio", "0.1", "--processes", "1", "--faults", "kill-node,rst", "--rounds", "1",
         "--fault-gap", "10,15", "--quiet-end", "10", "--settle", "60", "--sync-timeout", "120", "--progress", "10",
         "--workdir", str(tmp_path / "cluster"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=840,
    )
    assert out.exists(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    summary = {k: report[k] for k in ("lost", "duplicated", "reordered", "wrong_address", "pending", "receipts",
                                      "behind_at_end", "lost_examples", "examples")}
    assert sorted(f["kind"] for f in report["faults"]) == ["kill-node", "rst"], report["faults"]
    assert report["sent_private"] > 0 and report["sent_group"] > 0 and report["accepted"] > 0, summary
    assert (report["lost"], report["duplicated"], report["reordered"], report["wrong_address"]) == (0, 0, 0, 0), summary
    assert report["behind_at_end"] == {}, summary
    # Every fault hit someone, and they were sending and receiving again afterwards.
    for fault in report["faults"]:
        assert fault["affected"] > 0 and fault["first_receipt_s"] is not None, fault
        assert fault["first_delivery_s"] is not None and fault["never_reconnected"] == 0, fault
    assert run.returncode == 0 and report["passed"], run.stdout + run.stderr
