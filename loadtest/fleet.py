"""SDK users spread over worker processes: what the soak and the chaos test share.

The parent registers fresh accounts through the route (``register_users``) and starts
worker processes (``start_workers``), each with a share of the users. A worker
(a ``FleetWorker`` subclass) connects its users with the SDK (``cim.client.Client``),
sends at its share of the rate from random senders when the parent says so, and
logs its users out at the end. A user may have several devices (``FleetWorker.device_ids``),
a ``Client`` each: the worker's clients and receivers are ``Device``s, (user id, device id).
Parent and workers share a ``Shared``: counters the
workers add to (progress, and what the parent waits for), the phase the parent sets,
and settings the parent writes for the workers to act on. The parent watches them
with a ``Monitor``. Texts carry what a receiver needs to account for a message:
``<tag>:<kind>:<sender>:<sending device>:<per-sender counter>:<send time ns>``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import multiprocessing
import queue
import random
import secrets
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import uvloop

from bench.report import percentiles
from cim.client import Client, ClientError, Message, RouteClient

PRIVATE, GROUP, NAMED = "p", "g", "n"  # to one user, to everyone online, to a named group's members
KINDS = (PRIVATE, GROUP, NAMED)
Device = tuple[int, str]  # (user id, device id): one client
# Every load-test account's: the accounts are fresh each run, on a cluster under test.
PASSWORD = "soak-password"
FLUSH_EVERY = 0.5  # seconds between a worker's counter updates
# A flush this much later than due is a stall: the worker's loop could not run its clients
# (their pings, their reads) meanwhile, and a server may rightly have ended them for silence.
STALL = 1.0
POLL_EVERY = 0.05  # seconds between looks at the shared phase / counters


class Phase(IntEnum):
    CONNECTING = 0
    SENDING = 1
    SYNCING = 2  # the chaos test's: every client catches up with its inbox
    STOPPING = 3
    ABORTING = 4


class RunError(Exception):
    """The run could not be carried out (a worker failed, users did not connect in time)."""


# -- texts ------------------------------------------------------------------------


def message_key(sender: int, counter: int) -> int:
    """One int per message: cheaper than a tuple in the per-receiver sets."""
    return sender << 32 | counter


def key_sender(key: int) -> int:
    return key >> 32


def key_counter(key: int) -> int:
    return key & 0xFFFFFFFF


class Text(NamedTuple):
    """What a ``format_text`` text says."""

    kind: str
    sender: int
    device: str  # the sender's device it was sent from
    counter: int
    sent_ns: int


def format_text(tag: str, kind: str, sender: Device, counter: int) -> str:
    """A message text that says where it is from (user and device), which of its sender's it is and
    when it was sent."""
    return f"{tag}:{kind}:{sender[0]}:{sender[1]}:{counter}:{time.time_ns()}"


def parse_text(tag: str, text: str) -> Text | None:
    """What a ``format_text`` text says; None for anything else."""
    parts = text.split(":")
    if len(parts) != 6 or parts[0] != tag or parts[1] not in KINDS:
        return None
    try:
        return Text(parts[1], int(parts[2]), parts[3], int(parts[4]), int(parts[5]))
    except ValueError:
        return None


def latency_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = percentiles(values, (0.50, 0.99))
    return {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(max(values), 2)}


# -- what the parent and the workers share ------------------------------------------


@dataclass
class Shared:
    """Counters the workers add to, the phase and settings the parent sets, across processes."""

    counter_names: tuple[str, ...]
    setting_names: tuple[str, ...]
    counters: SynchronizedArray[int]
    settings: SynchronizedArray[float]
    phase: Synchronized[int]
    start_at: Synchronized[float]  # wall-clock time the send phase starts, the same in every worker

    @classmethod
    def create(cls, ctx: SpawnContext, counter_names: tuple[str, ...], setting_names: tuple[str, ...] = ()) -> Shared:
        return cls(counter_names, setting_names, ctx.Array("q", len(counter_names)),
                   ctx.Array("d", max(1, len(setting_names))), ctx.Value("i", Phase.CONNECTING), ctx.Value("d", 0.0))

    def add(self, deltas: list[int]) -> None:
        with self.counters.get_lock():  # an RLock: the item access below takes it again
            for i, delta in enumerate(deltas):
                self.counters[i] += delta

    def totals(self) -> dict[str, int]:
        return dict(zip(self.counter_names, self.counters[:], strict=True))

    def setting(self, name: str) -> float:
        return float(self.settings[self.setting_names.index(name)])

    def set(self, **values: float) -> None:
        with self.settings.get_lock():
            for name, value in values.items():
                self.settings[self.setting_names.index(name)] = value


# -- the worker process -------------------------------------------------------------


class FleetWorker(ABC):
    """One worker process's users: connected, sending at the process's share of the
    rate, logged out at the end. Subclasses say what a client is built with, what a
    send and a receipt mean (``send_one``, ``on_message``) and how the run goes (``main``);
    they may give users several devices (``device_ids``) and pick kinds and senders their way."""

    def __init__(self, users: list[tuple[int, str]], everyone: list[int], options: argparse.Namespace,
                 shared: Shared) -> None:
        self.users = users
        self.everyone = everyone
        self.options = options
        self.shared = shared
        self.index = {name: i for i, name in enumerate(shared.counter_names)}
        self.deltas = [0] * len(shared.counter_names)
        self.clients: dict[Device, Client] = {}
        self.senders: list[Client] = []  # every client, once all are connected
        # One route client for every user of this process (see Client's ``route``).
        self.route: RouteClient | None = None
        self.counters: dict[int, itertools.count[int]] = {user_id: itertools.count(1) for user_id, _ in users}
        self.stalls: list[tuple[float, float]] = []  # (wall time the stall began, seconds), at least STALL each

    # -- what subclasses say

    @abstractmethod
    def client_options(self, device: Device) -> dict[str, Any]:
        """Keyword arguments for the device's ``Client`` besides the account, device id and ``on_message``."""

    @abstractmethod
    def on_message(self, receiver: Device, message: Message) -> None:
        """What ``receiver``'s client does with a message handed to the app."""

    @abstractmethod
    async def send_one(self, client: Client, kind: str) -> None:
        """One send of ``kind`` (one of KINDS) from ``client``, its outcome noted."""

    def device_ids(self) -> tuple[str, ...]:
        """Each user's devices, a client each: one, CIM's default device ""."""
        return ("",)

    def pick_kind(self) -> str:
        return GROUP if random.random() < self.options.group_ratio else PRIVATE

    def pick_sender(self, kind: str) -> Client:
        """The client a send of ``kind`` goes from: any, at random."""
        return random.choice(self.senders)

    @abstractmethod
    async def main(self) -> Any:
        """The run once every user is connected; returns the worker's result (plain containers:
        a class defined in a module run as ``__main__`` would pickle as ``__mp_main__.X``
        in a spawned child, which the parent cannot load)."""

    def before_close(self) -> None:
        """Called before the users are logged out (a subclass notes their state)."""

    # -- counters

    def bump(self, name: str, amount: int = 1) -> None:
        self.deltas[self.index[name]] += amount

    def flush(self) -> None:
        self.shared.add(self.deltas)
        self.deltas = [0] * len(self.deltas)

    async def flush_forever(self) -> None:
        """Flush every FLUSH_EVERY seconds, noting how late each came (``stalls``)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + FLUSH_EVERY
            await asyncio.sleep(FLUSH_EVERY)
            late = loop.time() - due
            if late >= STALL:
                self.stalls.append((time.time() - late, late))
            self.flush()

    # -- the run

    async def run(self) -> Any:
        flusher = asyncio.create_task(self.flush_forever())
        try:
            await self.connect_all()
            return await self.main()
        finally:
            self.before_close()
            await self.close_all()
            flusher.cancel()
            self.flush()

    async def wait_phase(self, *phases: Phase) -> Phase:
        while (phase := Phase(self.shared.phase.value)) not in phases:
            await asyncio.sleep(POLL_EVERY)
        return phase

    async def connect_all(self) -> None:
        limit = asyncio.Semaphore(self.options.concurrency)
        self.route = RouteClient(self.options.route, timeout=30)

        async def connect(user_id: int, user_name: str, device_id: str) -> None:
            device = (user_id, device_id)
            async with limit:
                client = Client(self.options.route, user_id, user_name, password=PASSWORD, device_id=device_id,
                                on_message=functools.partial(self.on_message, device), route=self.route,
                                **self.client_options(device))
                try:
                    await client.connect()
                except BaseException:
                    await client.close()
                    raise
                self.clients[device] = client
                self.bump("connected")

        # A TaskGroup: the first refused login cancels the rest, and the run aborts.
        try:
            async with asyncio.TaskGroup() as group:
                for user_id, user_name in self.users:
                    for device_id in self.device_ids():
                        group.create_task(connect(user_id, user_name, device_id))
        except* (ClientError, OSError, httpx.HTTPError) as failed:
            raise RunError(f"{len(failed.exceptions)} login(s) failed, the first: {failed.exceptions[0]!r}") from None
        self.senders = list(self.clients.values())

    async def close_all(self) -> None:
        limit = asyncio.Semaphore(self.options.concurrency)

        async def close(client: Client) -> None:
            async with limit:
                await client.close()

        await asyncio.gather(*(close(c) for c in self.clients.values()))
        if self.route is not None:
            await self.route.aclose()

    async def send_phase(self) -> tuple[float, set[asyncio.Task[None]]]:
        """Sends at this process's share of ``--rate`` for ``--duration`` s (or until the
        run aborts), a task each: the schedule does not wait for receipts. Returns the
        seconds it took and the sends still waiting for their receipts."""
        loop = asyncio.get_running_loop()
        rate = self.options.rate / self.options.processes
        start = loop.time() + (self.shared.start_at.value - time.time())
        end = start + self.options.duration
        in_flight: set[asyncio.Task[None]] = set()
        for n in itertools.count():
            due = start + n / rate
            if due >= end or self.shared.phase.value == Phase.ABORTING:
                break
            await asyncio.sleep(due - loop.time())
            kind = self.pick_kind()
            task = asyncio.create_task(self.send_one(self.pick_sender(kind), kind))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        return loop.time() - start, in_flight

    def pick_receiver(self, sender: int) -> int:
        while (receiver := random.choice(self.everyone)) == sender:
            pass
        return receiver


def worker_main(
    worker_class: type[FleetWorker], index: int, users: list[tuple[int, str]], everyone: list[int],
    options: argparse.Namespace, shared: Shared, results: Queue[tuple[str, Any]],
) -> None:
    """A worker process: always puts exactly one ("result", what ``main`` returned) or ("error", text)."""
    # Ctrl-C reaches the whole process group: the parent alone decides, and tells the
    # workers to abort, so they still log their users out and answer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = uvloop.run(worker_class(users, everyone, options, shared).run())
    except RunError as err:
        results.put(("error", f"worker {index}: {err}"))
    except Exception:  # a bug: the whole story
        results.put(("error", f"worker {index}: {traceback.format_exc()}"))
    else:
        results.put(("result", result))


def start_workers(
    ctx: SpawnContext, worker_class: type[FleetWorker], users: list[tuple[int, str]], options: argparse.Namespace,
    shared: Shared,
) -> tuple[Queue[tuple[str, Any]], list[SpawnProcess]]:
    """``options.processes`` worker processes, the users dealt out round-robin; their answer queue."""
    everyone = [user_id for user_id, _ in users]
    results: Queue[tuple[str, Any]] = ctx.Queue()
    processes = [
        ctx.Process(target=worker_main, name=f"{worker_class.__name__}-{i}",
                    args=(worker_class, i, users[i :: options.processes], everyone, options, shared, results))
        for i in range(options.processes)
    ]
    for process in processes:
        process.start()
    return results, processes


def spawn_context() -> SpawnContext:
    # spawn, not fork: a child starts clean, without the parent's loop or connections.
    return multiprocessing.get_context("spawn")


# -- the parent -----------------------------------------------------------------------


async def register_users(route: str, count: int, concurrency: int, tag: str) -> list[tuple[int, str]]:
    """Fresh accounts ``<tag>-<run>-<n>``: a new run never sees an old run's stored messages."""
    run_id = secrets.token_hex(3)
    limit = asyncio.Semaphore(concurrency)
    # One route client for all: the SDK's ``register`` builds one per call, and each
    # costs ~15 ms and ~850 KB (a fresh TLS context), even for plain http.
    async with RouteClient(route, timeout=30) as route_client:

        async def one(user_name: str) -> tuple[int, str]:
            async with limit:
                return await route_client.register(user_name, PASSWORD), user_name

        return list(await asyncio.gather(*(one(f"{tag}-{run_id}-{n}") for n in range(count))))


class Monitor:
    """The parent's view of its workers: progress lines, worker failures, their answers."""

    def __init__(self, shared: Shared, results: Queue[tuple[str, Any]], processes: list[SpawnProcess],
                 describe: Callable[[dict[str, int]], str], progress_every: float) -> None:
        self.shared = shared
        self.results = results
        self.processes = processes
        self.describe = describe
        self.progress_every = progress_every
        self.answers: list[tuple[str, Any]] = []
        self.started = time.monotonic()
        self.next_progress = self.started + progress_every

    def wait(self, label: str, done: Callable[[dict[str, int]], bool], timeout: float) -> bool:
        """Until ``done(totals)``; False after ``timeout`` s. Raises RunError if a worker fails."""
        deadline = time.monotonic() + timeout
        while not done(totals := self.shared.totals()):
            now = time.monotonic()
            if now >= deadline:
                return False
            self._check_workers()
            if now >= self.next_progress:
                self.next_progress = now + self.progress_every
                self.progress(label, totals)
            time.sleep(POLL_EVERY)
        return True

    def sleep(self, label: str, seconds: float) -> None:
        """``seconds`` of watching the workers (progress lines, failures)."""
        self.wait(label, lambda _: False, seconds)

    def _check_workers(self) -> None:
        # Before the stop a worker answers only when it failed.
        try:
            self.answers.append(self.results.get_nowait())
        except queue.Empty:
            if any(p.exitcode is not None for p in self.processes):
                raise RunError("a worker process exited early") from None
            return
        raise RunError(self.answers[-1][1])

    def progress(self, label: str, totals: dict[str, int]) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {label:<10} {self.describe(totals)}", flush=True)

    def collect(self, timeout: float) -> list[Any]:
        """Every worker's answer, then the processes are joined; raises RunError on a failure."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < len(self.processes) and time.monotonic() < deadline:
            try:
                self.answers.append(self.results.get(timeout=POLL_EVERY))
            except queue.Empty:
                if all(p.exitcode is not None for p in self.processes):
                    break  # the rest died without a word
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()
        errors = [payload for kind, payload in self.answers if kind == "error"]
        if errors:
            raise RunError("\n".join(errors))
        if len(self.answers) < len(self.processes):
            raise RunError(f"{len(self.processes) - len(self.answers)} worker(s) gave no result")
        return [payload for _, payload in self.answers]


def check_load_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """The options every load run shares (users, rate, duration, group ratio, processes); exits on bad ones."""
    if options.users < 2 or options.rate <= 0 or options.duration <= 0 or not 0 <= options.group_ratio <= 1:
        parser.error("need --users >= 2, --rate > 0, --duration > 0 and 0 <= --group-ratio <= 1")
    if not 1 <= options.processes <= options.users:
        parser.error("--processes must be between 1 and --users")


def write_report(path: str | None, report: dict[str, Any]) -> None:
    """Write the report as JSON to ``path`` (if given), saying so."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
