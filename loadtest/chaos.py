"""Chaos: SDK users chat on a cluster that keeps failing, and no message is lost, repeated or reordered.

    python -m loadtest.chaos                                   # 1000 users, 300 s, every fault
    python -m loadtest.chaos --users 300 --duration 60 --json chaos.json
    python -m loadtest.chaos --users 100 --duration 60 --faults kill-node,rst --rounds 1

Starts a cluster here (``loadtest.cluster``): real Redis with its append-only file on,
real ZooKeeper, ``--nodes`` cim-server nodes (the last with ``--workers``) and a route.
Fresh users, in ``--named-groups`` named groups made through the route, connect with the
SDK (``cim.client.Client``: it resends unanswered sends after a reconnect with the same
clientMsgId, syncs by seq, acks), ``--devices`` clients each (a ``--ws-share`` of them over
WebSocket), from ``--processes`` worker processes and send private, group and named-group
messages at ``--rate``. Meanwhile, at random gaps, faults from ``--faults``, in shuffled rounds:

* ``kill-node``: SIGKILL every process of a node, restart it on the same ports;
* ``kill-worker``: SIGKILL one worker of the ``--workers`` node (its supervisor starts another);
* ``rst``: cut ``--cut-share`` of the client connections with a TCP RST (SO_LINGER 0), WebSocket ones too;
* ``redis``: SHUTDOWN Redis, start it again on the same port and directory;
* ``stop-node``: SIGSTOP a node for longer than the heartbeat timeout, then SIGCONT.

After the send phase every send gets ``--settle`` s to be answered; then every client
syncs: it waits until the seqs it handed the app reach its inbox's latest seq in Redis
(a client stuck behind has its connection cut, so the SDK reconnects and syncs). The
checker (``loadtest.checker``) then accounts for every message that got an accepted
receipt (9000/7000). The report gives lost / duplicated / reordered / pending, the
receipts by code, and each fault with its recovery (first accepted receipt and first
delivery for the users it hit, and when all of them were connected again). Exit
status 0 only when nothing was lost, duplicated, reordered or misaddressed; 1 otherwise;
2 when the run could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import pickle
import random
import shutil
import socket
import struct
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvloop
from redis.exceptions import RedisError

from cim.backends.base import Store
from cim.backends.memory import MemoryHub
from cim.backends.registry import STORES
from cim.client import Client, ClientError, Message, RouteClient
from cim.client.route import RouteSession
from cim.client.transport import TcpTransport
from cim.config import Config
from cim.testing.services import ServiceError
from loadtest import checker
from loadtest.checker import PENDING, Cast, ChaosResult
from loadtest.cluster import PREFIX, Cluster, Fault, Node, cluster
from loadtest.fleet import (
    GROUP,
    NAMED,
    PASSWORD,
    PRIVATE,
    Device,
    FleetWorker,
    Monitor,
    Phase,
    RunError,
    Shared,
    check_load_options,
    format_text,
    message_key,
    parse_text,
    register_users,
    spawn_context,
    start_workers,
    write_report,
)

TAG = "chaos"
FAULTS = ("kill-node", "kill-worker", "rst", "redis", "stop-node")
COUNTERS = ("connected", "sent", "ok", "failed", "received", "senders_done", "synced")
SETTINGS = ("cut_wave", "cut_share")  # the parent's order to cut connections: wave number, share
WATCH_EVERY = 0.1  # seconds between a worker's looks at its clients' connections
NUDGE_AFTER = 5.0  # seconds a client may stay behind its inbox in the final sync before its connection is cut
EXAMPLES = 20
RECORDS = "records.pickle"  # in the work directory
LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, dropping what is unsent
DEVICE_IDS = ("a", "b", "c", "d", "e")  # a user's devices, the first --devices of them (the server allows 5)


# -- the worker process -------------------------------------------------------


class ChaosWorker(FleetWorker):
    def __init__(self, users: list[tuple[int, str]], everyone: list[int], options: argparse.Namespace,
                 shared: Shared) -> None:
        super().__init__(users, everyone, options, shared)
        self.members = set(everyone)
        self.groups_of: dict[int, list[str]] = {user_id: [] for user_id, _ in users}
        for group_id, members in options.groups.items():
            for member in members:
                if member in self.groups_of:
                    self.groups_of[member].append(group_id)
        devices = [(user_id, device_id) for user_id, _ in users for device_id in self.device_ids()]
        self.transports = {device: "ws" if random.random() < options.ws_share else "tcp" for device in devices}
        self.named_senders: list[Client] = []  # the clients of users in a named group, once connected
        self.sends: list[list[Any]] = []
        self.received = {device: (array("Q"), array("d")) for device in devices}
        self.seen: dict[Device, set[int]] = {device: set() for device in devices}
        self.last_seq = dict.fromkeys(devices, 0)
        # (sender, sending device, receiving device) -> (counter, kind) of the last message in order
        self.last_from: dict[tuple[int, str, Device], tuple[int, str]] = {}
        self.anomalies: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.latencies = array("f")
        self.timeline: dict[Device, list[list[Any]]] = {device: [] for device in devices}
        self.reconnects_seen: dict[Device, int] = {}
        self.cuts: list[tuple[int, float, list[Device]]] = []
        self.wave = 0
        self.send_seconds = 0.0
        self.behind: dict[Device, tuple[int, int]] = {}
        self.nudged = 0

    def device_ids(self) -> tuple[str, ...]:
        return DEVICE_IDS[: self.options.devices]

    def client_options(self, device: Device) -> dict[str, Any]:
        return {
            "heartbeat_interval": 30.0,  # until the server's login answer names its own
            "reconnect_attempts": self.options.reconnect_attempts,
            "backoff_base": 0.2,
            "backoff_max": 2.0,
            "send_timeout": self.options.send_timeout,
            **({"transport": "ws"} if self.transports[device] == "ws" else {}),
        }

    def pick_kind(self) -> str:
        draw = random.random()
        if draw < self.options.named_ratio:
            return NAMED
        return GROUP if draw < self.options.named_ratio + self.options.group_ratio else PRIVATE

    def pick_sender(self, kind: str) -> Client:
        return random.choice(self.named_senders if kind == NAMED else self.senders)

    async def main(self) -> ChaosResult:
        self.named_senders = [client for (user_id, _), client in self.clients.items() if self.groups_of[user_id]]
        watcher = asyncio.create_task(self.watch())
        try:
            if await self.wait_phase(Phase.SENDING, Phase.ABORTING) is Phase.SENDING:
                self.send_seconds, in_flight = await self.send_phase()
                if in_flight:
                    _, unanswered = await asyncio.wait(in_flight, timeout=self.options.settle)
                    for task in unanswered:
                        task.cancel()  # its send stays PENDING
                    await asyncio.gather(*unanswered, return_exceptions=True)
                self.bump("senders_done")
                if await self.wait_phase(Phase.SYNCING, Phase.ABORTING) is Phase.SYNCING:
                    await self.final_sync()
                self.bump("synced")
                await self.wait_phase(Phase.STOPPING, Phase.ABORTING)
        finally:
            watcher.cancel()
        return self.result()

    def result(self) -> ChaosResult:
        return ChaosResult(
            send_seconds=self.send_seconds, sends=self.sends, received=self.received, anomalies=self.anomalies,
            examples=self.examples, cuts=self.cuts, behind=self.behind, latencies_ms=self.latencies,
            timeline={device: [(up, down, port, http_port) for up, down, port, http_port in spans]
                      for device, spans in self.timeline.items()},
            transports=self.transports, reconnects=sum(c.reconnects for c in self.clients.values()),
            gave_up=Counter(self.why_stopped(c) for c in self.clients.values() if c.done.done()), nudged=self.nudged,
            disconnected=[device for device, client in self.clients.items() if not client.connected],
            stalls=self.stalls,
        )

    @staticmethod
    def why_stopped(client: Client) -> str:
        """Why a client stopped before the end (its ``done`` is the only place that says)."""
        error = None if client.done.cancelled() else client.done.exception()
        return "ended by the server" if error is None else repr(error)

    # -- connections: watched, and cut on the parent's order

    async def watch(self) -> None:
        """Note every client's connections as spans (up at, down at, port, http port) and
        carry out the parent's cut waves. Up means logged in: from ``connect`` returning
        (the first time, or a reconnect counted in ``reconnects``) until ``connected`` drops."""
        for device, client in self.clients.items():
            self.open_span(device, client, time.time())
        while True:
            now = time.time()
            for device, client in self.clients.items():
                spans = self.timeline[device]
                up = bool(spans) and math.isinf(spans[-1][1])
                reconnected = client.reconnects != self.reconnects_seen[device]
                if up and (not client.connected or reconnected):
                    spans[-1][1] = now
                    up = False
                if not up and client.connected and reconnected:
                    self.open_span(device, client, now)
            wave = int(self.shared.setting("cut_wave"))
            if wave > self.wave:
                self.wave = wave
                self.cut_wave(wave, self.shared.setting("cut_share"))
            await asyncio.sleep(WATCH_EVERY)

    def open_span(self, device: Device, client: Client, at: float) -> None:
        self.reconnects_seen[device] = client.reconnects
        server = client.server
        self.timeline[device].append([at, math.inf, server.port if server else 0, server.http_port if server else 0])

    def cut_wave(self, wave: int, share: float) -> None:
        connected = [device for device, client in self.clients.items() if client.connected]
        victims = random.sample(connected, round(share * len(connected)))
        at = time.time()
        self.cuts.append((wave, at, [device for device in victims if self.cut(self.clients[device])]))

    @staticmethod
    def cut(client: Client) -> bool:
        """Reset the client's connection (RST) under its TCP or WebSocket transport: what is in
        flight either way is lost, as when a peer dies. False if it has no connection to cut."""
        transport = client._writer  # the SDK's; it offers no handle on its socket of its own
        if not isinstance(transport, TcpTransport) or not client.connected or transport.writer.transport.is_closing():
            return False
        stream = transport.writer.transport  # a WsTransport's too: its messages ride on this TCP stream
        stream.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        stream.abort()
        return True

    # -- sending and receiving

    async def send_one(self, client: Client, kind: str) -> None:
        sender = (client.user_id, client.delivery.device_id)
        # The counter and time are taken right before the SDK writes the frame (or
        # queues it while reconnecting, keeping the order), so counter order is send order.
        counter = next(self.counters[client.user_id])
        to: int | str = 0
        if kind == PRIVATE:
            to = self.pick_receiver(client.user_id)
        elif kind == NAMED:
            to = random.choice(self.groups_of[client.user_id])
        text = format_text(TAG, kind, sender, counter)
        record: list[Any] = [message_key(client.user_id, counter), kind, to, time.time(), 0.0, PENDING, sender[1]]
        self.sends.append(record)
        self.bump("sent")
        try:
            if kind == PRIVATE:
                receipt = await client.send_private(int(to), text)
            else:
                receipt = await client.send_group(text, group_id=str(to) if kind == NAMED else "")
        except ClientError as err:
            record[4:6] = [time.time(), str(err.code)]
            self.bump("failed")
        except (ConnectionError, TimeoutError) as err:  # SendTimeout, Stopped: maybe stored, not resent
            record[4:6] = [time.time(), type(err).__name__]
            self.bump("failed")
        else:
            record[4:6] = [time.time(), str(receipt.code)]
            self.bump("ok")

    def on_message(self, receiver: Device, message: Message) -> None:
        now = time.time()
        self.check_seq(receiver, message.seq)
        if message.notice:
            self.anomalies["notice"] += 1  # a named group's membership change: the groups made before the run
            return
        parsed = parse_text(TAG, message.text)
        if parsed is None or parsed.sender not in self.members:
            self.anomalies["foreign"] += 1  # not from this run
            return
        kind, sender, sender_device, counter, sent_ns = parsed
        if (kind == NAMED) != bool(message.group_id):
            self.anomalies["group_id_wrong"] += 1
            self.example("group_id_wrong", receiver, kind, sender, counter, message.seq, group_id=message.group_id)
        if sender == receiver[0] and message.from_this_device != (sender_device == receiver[1]):
            self.anomalies["copy_wrong"] += 1  # the user's copy: sent from this device or another, told wrongly
            self.example("copy_wrong", receiver, kind, sender, counter, message.seq, from_device=sender_device)
        key = message_key(sender, counter)
        seen = self.seen[receiver]
        if key in seen:
            self.anomalies["duplicated"] += 1
            self.example("duplicated", receiver, kind, sender, counter, message.seq)
            return
        seen.add(key)
        keys, times = self.received[receiver]
        keys.append(key)
        times.append(now)
        self.latencies.append((now * 1e9 - sent_ns) / 1e6)
        self.bump("received")
        # One sequence per sending device, every kind alike: the order it sent them in.
        stream = (sender, sender_device, receiver)
        previous = self.last_from.get(stream)
        if previous is not None and counter < previous[0]:
            self.anomalies["reordered"] += 1
            if previous[1] == kind:
                self.anomalies["reordered_within_kind"] += 1
            self.example("reordered", receiver, kind, sender, counter, message.seq, after=f"{sender}#{previous[0]}")
        else:
            self.last_from[stream] = (counter, kind)

    def check_seq(self, receiver: Device, seq: int) -> None:
        """The SDK hands each device seqs 1, 2, 3, ...: count what breaks that."""
        last = self.last_seq[receiver]
        if seq == 0:
            self.anomalies["seq_zero"] += 1
        elif seq <= last:
            self.anomalies["seq_repeats"] += 1
        else:
            self.anomalies["seq_gaps"] += seq - last - 1
            self.last_seq[receiver] = seq

    def example(self, problem: str, receiver: Device, kind: str, sender: int, counter: int, seq: int, **more: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append({"problem": problem, "receiver": f"{receiver[0]}/{receiver[1]}", "kind": kind,
                                  "message": f"{sender}#{counter}", "seq": seq,
                                  "at": round(time.time() - self.shared.start_at.value, 3), **more})

    # -- the end

    @staticmethod
    async def open_store(config: Config, deadline: float) -> Store:
        """The run's store, tried until ``deadline`` (loop time): Redis may be busy with the run's load or
        just restarted, and one PING timing out must not abort the run."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await STORES.open(config.store, config, MemoryHub())
            except (ConnectionError, TimeoutError, RedisError):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(1.0)

    async def final_sync(self) -> None:
        """Wait until every client has handed the app its user's inbox's latest seq (read from
        Redis); a client making no progress for NUDGE_AFTER s has its connection cut, so
        the SDK reconnects and syncs. Gives up after ``--sync-timeout`` s (``behind``)."""
        config = Config(store=self.options.store, key_prefix=PREFIX, log_level="warning")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.sync_timeout
        store = await self.open_store(config, deadline)
        users = [user_id for user_id, _ in self.users]
        progress = {device: (self.last_seq[device], loop.time()) for device in self.clients}
        try:
            while True:
                latest = dict(zip(users, await store.inbox.latest(users), strict=True))
                self.behind = {d: (self.last_seq[d], latest[d[0]]) for d in self.clients if self.last_seq[d] < latest[d[0]]}
                now = loop.time()
                if not self.behind or now >= deadline:
                    return
                for device in self.behind:
                    seen, since = progress[device]
                    if self.last_seq[device] != seen:
                        progress[device] = (self.last_seq[device], now)
                    elif now - since > NUDGE_AFTER:
                        self.nudged += self.cut(self.clients[device])
                        progress[device] = (seen, now)
                await asyncio.sleep(0.5)
        finally:
            await store.close()


# -- the parent -----------------------------------------------------------------


def describe(t: dict[str, int], clients: int) -> str:
    return (f"connected {t['connected']}/{clients}  sent {t['sent']}  ok {t['ok']}  failed {t['failed']}  "
            f"received {t['received']}")


def draw_groups(everyone: list[int], count: int, size: int, rng: random.Random) -> list[list[int]]:
    """``count`` member lists of ``size``: the users dealt out over the groups first (so that, when
    ``count * size`` allows, every user is in one), then each topped up with others drawn at random
    (a user may be in several)."""
    order = list(everyone)
    rng.shuffle(order)
    groups = [order[g::count][:size] for g in range(count)]
    for members in groups:
        taken = set(members)
        members += rng.sample([u for u in everyone if u not in taken], size - len(members))
    return groups


async def create_groups(route_url: str, users: list[tuple[int, str]], member_lists: list[list[int]],
                        concurrency: int) -> dict[str, list[int]]:
    """The named groups through the route (``/group/create``), each owned by its first member: id -> members."""
    names = dict(users)
    limit = asyncio.Semaphore(concurrency)
    async with RouteClient(route_url, timeout=30) as route:

        async def one(n: int, members: list[int]) -> tuple[str, list[int]]:
            owner = members[0]
            async with limit:  # no token yet: the first call gets 4001 and the session gets one
                group_id = await RouteSession(route, owner, names[owner], PASSWORD).groups.create(f"{TAG}-{n}", members[1:])
            return group_id, members

        return dict(await asyncio.gather(*(one(n, members) for n, members in enumerate(member_lists))))


def fault_plan(kinds: list[str], rounds: int, rng: random.Random) -> Iterator[str]:
    """The faults in order: each round every kind once, shuffled; ``rounds`` 0: no end."""
    for _ in itertools.count() if rounds == 0 else range(rounds):
        shuffled = list(kinds)
        rng.shuffle(shuffled)
        yield from shuffled


class Chaos:
    """The faults the parent brings on the cluster while its workers send."""

    def __init__(self, cluster: Cluster, shared: Shared, monitor: Monitor, options: argparse.Namespace,
                 rng: random.Random) -> None:
        self.cluster = cluster
        self.shared = shared
        self.monitor = monitor
        self.options = options
        self.rng = rng
        self.faults: list[Fault] = []

    def sleep(self, seconds: float) -> None:
        self.monitor.sleep("faulting", seconds)

    def run(self) -> None:
        """Faults at random gaps from the start of sending until ``--quiet-end`` s before its end."""
        start = self.shared.start_at.value
        last = start + self.options.duration - self.options.quiet_end
        at = start + self.rng.uniform(*self.options.fault_gap)
        for kind in fault_plan(self.options.faults, self.options.rounds, self.rng):
            if at > last:
                return
            self.monitor.sleep("sending", at - time.time())
            fault = self.apply(kind)
            self.faults.append(fault)
            print(f"fault {kind} on {fault.target} at {fault.at - start:.1f} s, over after {fault.until - fault.at:.1f} s",
                  flush=True)
            at = time.time() + self.rng.uniform(*self.options.fault_gap)

    def pick_node(self) -> Node:
        """A random node, weighted by its users: after a fault most users may sit on one
        node, and a fault on an empty one tests little."""
        nodes = self.cluster.nodes
        weights = [1 + sum(node.stats(port).get("sessions", 0) for port in node.http_ports) for node in nodes]
        return self.rng.choices(nodes, weights)[0]

    def apply(self, kind: str) -> Fault:
        nodes = self.cluster.nodes
        if kind == "kill-node":
            return self.cluster.kill_node(self.pick_node(), self.rng.uniform(*self.options.down), self.sleep)
        if kind == "kill-worker":
            node = next(n for n in reversed(nodes) if len(n.http_ports) > 1)
            # The worker with the most users: the fault is about them.
            return self.cluster.kill_worker(node, max(node.http_ports, key=lambda p: node.stats(p).get("sessions", 0)))
        if kind == "rst":
            wave = int(self.shared.setting("cut_wave")) + 1
            self.shared.set(cut_share=self.options.cut_share, cut_wave=wave)
            now = time.time()
            return Fault("rst", f"{self.options.cut_share:.0%} of the connections", now, now, wave=wave)
        if kind == "redis":
            return self.cluster.restart_redis(self.rng.uniform(*self.options.down), self.sleep)
        return self.cluster.stop_node(self.pick_node(), self.options.stop_seconds, self.sleep)


def run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the cluster, connect, send under faults, settle, sync, check; the report. Raises RunError."""
    rng = random.Random(options.seed)
    workers = [1] * (options.nodes - 1) + [options.workers]
    with cluster(workdir, workers, options.heartbeat_interval, options.zk_session_timeout, options.log_level,
                 ws=options.ws_share > 0) as running:
        print(f"cluster up: route {running.url}, nodes {[(n.name, n.port) for n in running.nodes]}, logs in {workdir}",
              flush=True)
        options.route, options.store = running.url, running.redis_url
        users = uvloop.run(register_users(running.url, options.users, options.concurrency, TAG))
        everyone = [user_id for user_id, _ in users]
        member_lists = draw_groups(everyone, options.named_groups, options.group_size, rng)
        options.groups = uvloop.run(create_groups(running.url, users, member_lists, options.concurrency))
        cast = Cast(everyone, options.groups, DEVICE_IDS[: options.devices])
        clients = len(users) * options.devices
        ctx = spawn_context()
        shared = Shared.create(ctx, COUNTERS, SETTINGS)
        results, processes = start_workers(ctx, ChaosWorker, users, options, shared)
        monitor = Monitor(shared, results, processes, lambda t: describe(t, clients), options.progress)
        chaos = Chaos(running, shared, monitor, options, rng)
        final = Phase.ABORTING
        try:
            if not monitor.wait("connecting", lambda t: t["connected"] >= clients, options.connect_timeout):
                raise RunError(f"only {shared.totals()['connected']} of {clients} clients ({len(users)} users x "
                               f"{options.devices} devices) connected after {options.connect_timeout} s")
            shared.start_at.value = time.time() + 0.2  # every worker starts on the same tick
            shared.phase.value = Phase.SENDING
            chaos.run()
            if not monitor.wait("settling", lambda t: t["senders_done"] >= len(processes),
                                options.duration + options.settle + 60):
                raise RunError("the workers did not finish sending in time")
            shared.phase.value = Phase.SYNCING
            if not monitor.wait("syncing", lambda t: t["synced"] >= len(processes), options.sync_timeout + 60):
                raise RunError("the workers did not finish syncing in time")
            final = Phase.STOPPING
        finally:
            shared.phase.value = final
            worker_results: list[ChaosResult] = monitor.collect(timeout=300)
        # Everything the checker saw, to look into a failure or check again: ``checker.check(*pickle.load(f))``.
        records = (worker_results, chaos.faults, cast, options.margin, shared.start_at.value)
        with open(workdir / RECORDS, "wb") as f:
            pickle.dump(records, f)
        report = checker.check(*records)
        return {
            "params": {k: getattr(options, k) for k in (
                "users", "devices", "rate", "duration", "group_ratio", "named_ratio", "named_groups", "group_size",
                "ws_share", "processes", "nodes", "workers", "heartbeat_interval", "faults", "cut_share", "seed")},
            "cluster": running.describe(),
            "send_seconds": round(max(r["send_seconds"] for r in worker_results), 2),
            **report,
        }


def print_report(report: dict[str, Any]) -> None:
    latency = report["latency_ms"]
    gave_up = f" {report['gave_up']}" if report["gave_up"] else ""
    params = report["params"]
    print(
        f"{params['users']} users x {params['devices']} devices ({report['clients']} clients, {report['clients_ws']} "
        f"over WebSocket), {params['named_groups']} named groups of {params['group_size']}\n"
        f"sent {report['sent']} (private {report['sent_private']}, group {report['sent_group']}, named group "
        f"{report['sent_named']}) in {report['send_seconds']} s; receipts {report['receipts']}; accepted "
        f"{report['accepted']}, pending {report['pending']}\n"
        f"delivered {report['delivered']}: lost {report['lost']} (private {report['lost_private']}, group "
        f"{report['lost_group']}, named {report['lost_named']}; "
        f"{report['excused']} group copies excused: receiver not connected throughout), "
        f"duplicated {report['duplicated']}, reordered {report['reordered']} (within a kind "
        f"{report['reordered_within_kind']}), wrong address {report['wrong_address']}, wrong groupId "
        f"{report['group_id_wrong']}, own copies told wrongly {report['copy_wrong']}\n"
        f"SDK: seq gaps {report['seq_gaps']}, seq repeats {report['seq_repeats']}, seq 0 {report['seq_zero']}; "
        f"reconnects {report['reconnects']}, gave up {sum(report['gave_up'].values())}{gave_up}, "
        f"disconnected at the end "
        f"{len(report['disconnected_at_end'])}, behind their inbox at the end "
        f"{len(report['behind_at_end'])}, nudged {report['nudged']}; delivered without an accepted receipt "
        f"{report['delivered_without_accepted_receipt']}\n"
        f"latency ms p50 {latency['p50']} p99 {latency['p99']} max {latency['max']}; generator stalls "
        f"{len(report['generator_stalls'])}, longest {report['generator_longest_stall_s']} s",
        flush=True,
    )
    for fault in report["faults"]:
        relisted = f", route whole +{fault['relisted_s']} s" if "relisted_s" in fault else ""
        print(f"  {fault['kind']:<11} {fault['target']:<28} at {fault['at_s']:>6} s lasted {fault['lasted_s']:>5} s: "
              f"affected {fault['affected']} ({fault['affected_ws']} ws, dropped {fault['dropped']}), "
              f"first receipt +{fault['first_receipt_s']} s, "
              f"first delivery +{fault['first_delivery_s']} s, all reconnected +{fault['all_reconnected_s']} s "
              f"(never {fault['never_reconnected']}){relisted}")
    for example in report["lost_examples"][:5] + report["examples"][:5]:
        print(f"  {example}")
    print("PASSED" if report["passed"] else "FAILED", flush=True)


def seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    values = (float(low), float(high or low))
    if not 0 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"want MIN,MAX seconds with 0 <= MIN <= MAX, not {text!r}")
    return values


def fault_list(text: str) -> list[str]:
    kinds = [k for k in text.split(",") if k]
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown faults {sorted(unknown)}: known are {', '.join(FAULTS)}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--users", type=int, default=1000, help="SDK users, registered fresh")
    add("--rate", type=float, default=50.0, help="messages per second, all workers together")
    add("--duration", type=float, default=300.0, help="seconds of sending")
    add("--group-ratio", type=float, default=0.05, help="fraction sent to the group (each reaches every user online)")
    add("--named-ratio", type=float, default=0.1,
        help="fraction sent to a named group of the sender's (each reaches every member, online or not)")
    add("--named-groups", type=int, default=None, help="named groups made before the run (default: users / 10)")
    add("--group-size", type=int, default=20, help="members of each named group (at most --users)")
    add("--devices", type=int, default=2, help="devices per user, a client each (device ids a, b, ...)")
    add("--ws-share", type=float, default=0.25, help="share of the clients connected over WebSocket, the rest TCP")
    add("--processes", type=int, default=2, help="worker processes the users are spread over")
    add("--nodes", type=int, default=2, help="cim-server nodes (>= 2)")
    add("--workers", type=int, default=2, help="worker processes of the last node (>= 2 for kill-worker)")
    add("--heartbeat-interval", type=float, default=3.0, help="the servers' heartbeat interval, seconds (the SDK follows)")
    add("--zk-session-timeout", type=float, default=4.0, help="the servers' ZooKeeper session timeout, seconds")
    add("--faults", type=fault_list, default=list(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    add("--rounds", type=int, default=0, help="rounds of --faults (each once, shuffled); 0: until the send phase ends")
    add("--fault-gap", type=seconds_range, default=(10.0, 25.0), metavar="MIN,MAX", help="seconds between faults")
    add("--quiet-end", type=float, default=15.0, help="no fault starts in the last seconds of sending")
    add("--down", type=seconds_range, default=(1.0, 4.0), metavar="MIN,MAX",
        help="seconds a killed node or a shut down Redis stays down")
    add("--stop-seconds", type=float, default=None, help="seconds a node stays SIGSTOPped (default: 3 heartbeats + 2)")
    add("--cut-share", type=float, default=0.3, help="share of the connections an rst wave cuts")
    add("--margin", type=float, default=2.0,
        help="a group receiver counts for loss if connected from this long before the send to this long after the receipt")
    add("--send-timeout", type=float, default=60.0, help="the SDK's send timeout, seconds")
    add("--settle", type=float, default=90.0, help="seconds the sends get for their receipts after the send phase")
    add("--sync-timeout", type=float, default=120.0, help="seconds the clients get to catch up with their inboxes")
    add("--reconnect-attempts", type=int, default=1000, help="SDK reconnect attempts after a lost connection")
    add("--concurrency", type=int, default=50, help="registrations/logins/logouts in flight per process")
    add("--connect-timeout", type=float, default=300.0, help="seconds for every user to connect")
    add("--progress", type=float, default=5.0, help="seconds between progress lines")
    add("--log-level", default="warning", help="the cluster's cim processes' log level (their logs are in the work directory)")
    add("--seed", type=int, default=None, help="seeds the fault plan (the workers' choices stay random)")
    add("--workdir", type=Path, default=None, help="logs and data here (kept); default: a temporary directory, "
        "removed after a passing run")
    add("--json", metavar="PATH", help="write the report as JSON")
    return parser


def check_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """Exits with the parser's error on bad options; fills in the defaults that depend on others."""
    check_load_options(parser, options)
    if options.nodes < 2 or options.workers < 1:
        parser.error("need --nodes >= 2, --workers >= 1")
    if not 1 <= options.devices <= len(DEVICE_IDS):
        parser.error(f"--devices must be between 1 and {len(DEVICE_IDS)}")
    if not 0 <= options.ws_share <= 1 or not 0 <= options.named_ratio <= 1 - options.group_ratio:
        parser.error("need 0 <= --ws-share <= 1 and 0 <= --named-ratio <= 1 - --group-ratio")
    if options.named_groups is None:
        options.named_groups = max(1, options.users // 10)
    options.group_size = min(options.group_size, options.users)
    if options.named_groups < 1 or options.group_size < 2:
        parser.error("need --named-groups >= 1 and --group-size >= 2")
    if options.named_ratio and options.named_groups * options.group_size < options.users:
        parser.error(f"--named-groups x --group-size ({options.named_groups} x {options.group_size}) must be at "
                     f"least --users ({options.users}): every user is in a named group, so any may send to one")
    if "kill-worker" in options.faults and options.workers < 2:
        parser.error("kill-worker needs --workers >= 2")
    if options.stop_seconds is None:
        options.stop_seconds = 3 * options.heartbeat_interval + 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    check_options(parser, options)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="cim-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = run(options, workdir)
    except (RunError, ServiceError, ClientError, httpx.HTTPError, OSError) as err:  # OSError: TimeoutError too
        print(f"chaos aborted: {err}; logs in {workdir}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chaos interrupted; logs in {workdir}", file=sys.stderr)
        return 2
    print_report(report)
    write_report(options.json, report)
    if report["passed"] and options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs in {workdir}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
