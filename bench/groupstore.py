"""groupstore: a named group's messages stored by write diffusion or in one group timeline, in-process.

What README "Named groups" chose between, measured on the memory inbox (``cim.backends.memory``) with
no sockets: a sender's run of ``--run`` messages to a group of G members is

* **diffusion** (what cim does): appended to every member's own inbox (``append_each_now``), each
  member getting its own seq; a member's sync reads its inbox after its cursor;
* **timeline**: appended once to the group's timeline (``append_now`` to one inbox standing for the
  group), with the group's seq; a member's sync reads the timeline after its cursor for that group
  (and, not counted here, its own inbox and every other group's timeline: a user in k groups reads
  k + 1 sequences, each with a cursor of its own to keep per device).

Both store the same bodies; the figures are µs per message for the store step and per member read
for the sync step (each member reads the messages of ``--runs`` runs in one page). The push written to
each online member, the bulk of a delivery (see ``fanout``), is the same either way and not here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.report import machine, print_table, write_json
from cim.backends.memory import MemoryInbox
from cim.config import Config

SENDER = 1
TIMELINE = 2**62  # the id the group's timeline is kept under, apart from every member's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", default="2000,5000", help="comma-separated group sizes G")
    parser.add_argument("--run", type=int, default=4, help="messages per send (one read's run)")
    parser.add_argument("--runs", type=int, default=50, help="runs stored, then synced, per repeat")
    parser.add_argument("--payload", type=int, default=64, help="message body bytes")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the median is reported")


def _store(inbox: MemoryInbox, members: list[int], bodies: list[bytes], runs: int, diffusion: bool) -> float:
    """Seconds to store ``runs`` runs of ``bodies``."""
    started = time.perf_counter()
    for k in range(runs):
        first_id = 1 + k * len(bodies)
        ids = list(range(first_id, first_id + len(bodies)))  # clientMsgIds, as the SDK sends them
        if diffusion:
            inbox.append_each_now(members, SENDER, bodies, first_id, ids)
        else:
            inbox.append_now(TIMELINE, SENDER, bodies, first_id, ids)
    return time.perf_counter() - started


async def _sync(inbox: MemoryInbox, members: list[int], diffusion: bool, expected: int) -> float:
    """Seconds for every member to read what was stored, one page each from cursor 0."""
    started = time.perf_counter()
    for member in members:
        page = await inbox.read(member if diffusion else TIMELINE, 0, expected)
        assert len(page.entries) == expected, (len(page.entries), expected)
    return time.perf_counter() - started


async def measure(group_size: int, options: argparse.Namespace, diffusion: bool) -> tuple[float, float]:
    """(store µs per message, sync µs per member read): medians over ``--repeat`` fresh inboxes."""
    members = list(range(10, 10 + group_size))
    bodies = [b"x" * options.payload] * options.run
    messages = options.run * options.runs
    store, sync = [], []
    for _ in range(options.repeat):
        inbox = MemoryInbox(Config(inbox_max_messages=messages, dedup_window=messages))
        store.append(_store(inbox, members, bodies, options.runs, diffusion) / messages * 1e6)
        sync.append(await _sync(inbox, members, diffusion, messages) / group_size * 1e6)
    return statistics.median(store), statistics.median(sync)


def main(options: argparse.Namespace) -> None:
    rows, results = [], []
    for group_size in (int(g) for g in options.members.split(",")):
        for layout, diffusion in (("diffusion", True), ("timeline", False)):
            store_us, sync_us = asyncio.run(measure(group_size, options, diffusion))
            rows.append((group_size, layout, round(store_us, 2), round(sync_us, 2)))
            results.append({"members": group_size, "layout": layout, "store_us_per_message": store_us,
                            "sync_us_per_member_read": sync_us})
    print_table(f"group store, a run of {options.run}, {options.runs} runs, medians of {options.repeat}",
                ["G", "layout", "store µs / message", "sync µs / member read"], rows)
    write_json(options.json, {"scenario": "groupstore", "machine": machine(), "options": vars(options),
                              "results": results})
