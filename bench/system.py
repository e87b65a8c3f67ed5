"""Shared machinery for the system scenarios: targets, registration, measurement, report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from tqdm import tqdm

from bench.loadgen import PROTOCOLS, LoadGenerator, Plan
from bench.report import machine, print_table, write_json
from cim.auth import Tokens
from cim.client import RouteClient
from cim.config import AUTH_MODES
from cim.testing.services import CimProcess, free_port, free_ports_in_a_row, redis_server, wait_until, zookeeper_server

# The bench's accounts' password: fresh accounts on a target started here.
PASSWORD = "bench-password"
LIMITS = ("off", "on")
# --limits on: per-connection limits no generated connection reaches (p2p senders run at
# thousands of messages a second), so a run measures what checking them costs, not refusals.
UNREACHED_LIMITS = {"CIM_MAX_MESSAGES_PER_SECOND": str(10**9), "CIM_MAX_BYTES_PER_SECOND": str(10**12)}
# Per-address limits are always off: every generated user comes from a handful of
# loopback addresses, which those limits would rightly take for one abuser.
NO_PER_ADDRESS_LIMITS = {"CIM_MAX_CONNECTIONS_PER_IP": "0", "CIM_MAX_LOGINS_PER_MINUTE": "0",
                         "CIM_MAX_ROUTE_REQUESTS_PER_SECOND": "0"}


@dataclass
class Target:
    name: str
    host: str
    port: int
    route_url: str | None  # None: the ceiling relay, which needs no accounts
    root_pids: list[int] = field(default_factory=list)
    tokens: Tokens | None = None  # mints the users' login tokens; None: the target checks none
    node_ports: list[int] = field(default_factory=list)  # each node's client port (default: just ``port``)
    store_url: str | None = None  # the Redis the nodes share; None: none (embedded, the relay)

    def __post_init__(self) -> None:
        self.node_ports = self.node_ports or [self.port]

    def processes(self) -> list[psutil.Process]:
        procs = []
        for pid in self.root_pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
        return procs

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total


def target_env(auth: str, limits: str) -> tuple[dict[str, str], Tokens | None]:
    """The environment a cim target runs with (its settings as ``CIM_*`` variables, which
    every role reads and ignores where they do not apply), and what mints its tokens."""
    env = {"CIM_AUTH": auth, **NO_PER_ADDRESS_LIMITS}
    env.update(UNREACHED_LIMITS if limits == "on" else dict.fromkeys(UNREACHED_LIMITS, "0"))
    if auth == "none":
        return env, None
    # The generator logs users in with tokens minted with the target's secret, as a
    # deployment's own backend would: no route login (and claim) per connection.
    env["CIM_SECRET"] = secrets.token_urlsafe(32)
    return env, Tokens(env["CIM_SECRET"], ttl=24 * 3600.0)  # longer than any run


@contextlib.contextmanager
def cim_target(workdir: Path, workers: int = 1, heartbeat: float = 3600.0, auth: str = "token",
               limits: str = "off", settings: dict[str, str] | None = None, nodes: int = 1,
               on_redis: bool = False) -> Iterator[Target]:
    """cim as users run it: ``cim up`` (embedded), or (``on_redis``, more than one node or
    worker) a route and ``nodes`` cim-servers, each ``--workers N``, on real Redis (AOF
    everysec) and ZooKeeper started here; ``auth`` and ``limits`` as the bench options say,
    ``settings`` further ``CIM_*`` variables over those."""
    port, http_port, route_port = free_port(), free_port(), free_port()
    common = ["--heartbeat-interval", str(heartbeat), "--log-level", "warning"]
    env, tokens = target_env(auth, limits)
    env.update(settings or {})
    if workers == 1 and nodes == 1 and not on_redis:
        up = CimProcess(workdir, "cim-up", ["up", "--host", "127.0.0.1", "--port", str(port), "--http-port",
                                            str(http_port), "--route-port", str(route_port), *common], env)
        try:
            up.wait_http(route_port)
            yield Target("cim", "127.0.0.1", port, f"http://127.0.0.1:{route_port}", [up.proc.pid], tokens)
        finally:
            up.stop()
        return
    with redis_server(workdir) as redis_url, zookeeper_server(workdir) as zk:
        backend = ["--redis", redis_url, "--zk", zk]
        route = CimProcess(workdir, "cim-route", ["route", "--host", "127.0.0.1", "--port", str(route_port), *backend], env)
        ports = [port, *(free_port() for _ in range(nodes - 1))]
        servers: list[CimProcess] = []
        try:
            for node, node_port in enumerate(ports):
                # One node at a time: the next one's HTTP ports are chosen once this one's are bound.
                http_base = free_ports_in_a_row(workers)
                servers.append(CimProcess(workdir, f"cim-server-{node}", [
                    "server", "--workers", str(workers), "--host", "127.0.0.1", "--port", str(node_port),
                    "--http-port", str(http_base), *backend, *common], env))
                for i in range(workers):
                    servers[-1].wait_http(http_base + i)
            route.wait_http(route_port)
            wait_until(lambda: len(httpx.get(f"http://127.0.0.1:{route_port}/health").json()["servers"]) == nodes * workers,
                       30, "route sees every worker")
            yield Target("cim", "127.0.0.1", port, f"http://127.0.0.1:{route_port}", [s.proc.pid for s in servers], tokens,
                         ports, redis_url)
        finally:
            for server in servers:
                server.stop()
            route.stop()


@contextlib.contextmanager
def ceiling_target(workdir: Path, mode: str, workers: int = 1) -> Iterator[Target]:
    port = free_port()
    with open(workdir / f"relay-{mode}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.relay", "--port", str(port), "--mode", mode,
                                 "--workers", str(workers)], stdout=log, stderr=subprocess.STDOUT)
        try:
            def listening() -> bool:
                with contextlib.closing(__import__("socket").create_connection(("127.0.0.1", port), 1)):
                    return True

            wait_until(listening, 15, "relay")
            yield Target("ceiling", "127.0.0.1", port, None, [proc.pid])
        finally:
            proc.terminate()
            proc.wait(10)


async def _register(route_url: str, names: list[str], concurrency: int = 64) -> list[int]:
    semaphore = asyncio.Semaphore(concurrency)
    async with RouteClient(route_url, timeout=30, max_connections=concurrency) as route:
        async def one(name: str) -> int:
            async with semaphore:
                # Registering a name is idempotent, so a request lost on the way (a
                # connection reset by the route under load) is simply retried.
                attempt = 0
                while True:
                    try:
                        return await route.register(name, PASSWORD)
                    except httpx.TransportError:
                        attempt += 1
                        if attempt == 5:
                            raise
                        await asyncio.sleep(0.1 * attempt)

        return await asyncio.gather(*(one(n) for n in names))


def _register_slice(route_url: str, names: list[str]) -> list[int]:
    return asyncio.run(_register(route_url, names))


def accounts(target: Target, count: int, tag: str) -> list[tuple[int, str]]:
    """``count`` users for the target: registered through cim's route, or numbered for the relay.

    Registration is spread over processes: one HTTP client process, not the route,
    is the bottleneck for many accounts."""
    names = [f"{tag}-{i}" for i in range(count)]
    if target.route_url is None:
        return list(enumerate(names))
    if count < 5000:
        return list(zip(_register_slice(target.route_url, names), names, strict=True))
    chunks = [names[i : i + 5000] for i in range(0, count, 5000)]
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn")) as pool:
        ids = [i for chunk_ids in pool.map(_register_slice, [target.route_url] * len(chunks), chunks) for i in chunk_ids]
    return list(zip(ids, names, strict=True))


def named_group(target: Target, owner: tuple[int, str], members: list[tuple[int, str]]) -> str:
    """A named group of ``members`` owned by ``owner``, created through cim's route; its id."""
    route_url = target.route_url
    assert route_url is not None

    async def create() -> str:
        async with RouteClient(route_url, timeout=60) as route:
            token = target.tokens.mint(owner[0]) if target.tokens is not None else ""
            body = {"userId": owner[0], "name": f"bench-{len(members)}", "members": [u for u, _ in members]}
            return str((await route.call("/group/create", body, token=token)).data["groupId"])

    return asyncio.run(create())


def login_tokens(target: Target, users: list[tuple[int, str]]) -> dict[int, str]:
    """Each user's token for its TCP login; none for a target that checks none."""
    if target.tokens is None:
        return {}
    return {user_id: target.tokens.mint(user_id) for user_id, _ in users}


@dataclass
class Run:
    """One target's measured run phase."""

    duration: float
    cpu_seconds: float
    rss_before: int
    rss_connected: int
    stats: list[dict[str, Any]]
    also_cpu_seconds: dict[str, float] = field(default_factory=dict)  # other processes watched, by name

    def total(self, key: str) -> int:
        return sum(s[key] for s in self.stats)

    @property
    def latencies_us(self) -> list[int]:
        return [v for s in self.stats for v in s["latencies_us"]]

    @property
    def receipt_latencies_us(self) -> list[int]:
        return [v for s in self.stats for v in s["receipt_latencies_us"]]

    @property
    def generator_cpu_pct(self) -> float:
        """The busiest generator process, % of one core over the run phase."""
        return float(max(s["cpu_seconds"] for s in self.stats)) / self.duration * 100


def measure(target: Target, plans: list[Plan], progress: Callable[[str], None], also: Sequence[Target] = ()) -> Run:
    """Run ``plans`` against ``target``: its CPU (and that of the ``also`` processes, a store
    say) over the run phase, its memory before and once connected, the generators' stats."""
    rss_before = target.rss()
    progress(f"{target.name}: connecting {sum(len(p.users) for p in plans):,} users from {len(plans)} processes")
    generator = LoadGenerator(plans)
    generator.step()  # all connected
    rss_connected = target.rss()
    cpu0 = target.cpu_seconds()
    also_cpu0 = [other.cpu_seconds() for other in also]
    started = time.monotonic()
    progress(f"{target.name}: connected")
    generator.step()  # go
    for _ in tqdm(range(math.ceil(plans[0].duration)), desc=f"{target.name} run", unit="s", leave=False):
        time.sleep(min(1.0, max(0.0, plans[0].duration - (time.monotonic() - started))))
    generator.step()  # done
    duration = time.monotonic() - started
    cpu = target.cpu_seconds() - cpu0
    also_cpu = {other.name: other.cpu_seconds() - before for other, before in zip(also, also_cpu0, strict=True)}
    return Run(duration, cpu, rss_before, rss_connected, generator.collect(), also_cpu)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def add_common_arguments(parser: argparse.ArgumentParser, duration: float) -> None:
    parser.add_argument("--duration", type=float, default=duration, help="seconds of the measured phase")
    parser.add_argument("--repeat", type=int, default=1, help="runs per target; medians are reported")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--source-ips", type=int, default=4, help="loopback source addresses (127.0.0.2...)")
    parser.add_argument("--workdir", type=Path, default=None, help="where logs go (default: a temp dir)")
    parser.add_argument("--auth", choices=AUTH_MODES, default="token",
                        help="cim's auth mode: token (users register with a password, log in with a token) or none "
                             "(CIM's; faster to set up: registering hashes each password)")
    parser.add_argument("--limits", choices=LIMITS, default="off",
                        help="cim's per-connection message and byte limits: off, or on at rates no connection reaches "
                             "(their cost without refusals); per-address limits are off either way")


def add_protocol_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=PROTOCOLS, default="sdk",
                        help="the generated clients: sdk (each message its own clientMsgId, so a receipt for each; "
                             "receivers ack every 64 messages) or cim (CIM's client: no clientMsgId, no receipts for "
                             "accepted messages, no acks)")


def median_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def report(scenario: str, params: dict[str, Any], rows: list[dict[str, Any]], json_path: str | None,
           ratio_keys: dict[str, str], notes: list[str]) -> dict[str, Any]:
    """Print the table and write the JSON: ``{scenario, params, cim, ceiling, ratio}``.

    ``rows`` is one entry per sweep point: ``{"point": {...}, "cim": figures, "ceiling": figures}``.
    ``ratio_keys`` maps a ratio's name to the figure it divides (cim / ceiling).
    """
    for row in rows:
        row["ratio"] = {name: (row["cim"][key] / row["ceiling"][key] if row["ceiling"][key] else 0.0)
                        for name, key in ratio_keys.items()}
    keys = list(rows[0]["cim"])
    table = []
    for row in rows:
        label = ", ".join(f"{k}={v}" for k, v in row["point"].items())
        for key in keys:
            table.append([f"{label} {key}".strip(), row["cim"][key], row["ceiling"][key]])
        for name, value in row["ratio"].items():
            table.append([f"{label} ratio {name}".strip(), f"{value:.2f}x", ""])
    print_table(f"{scenario}: cim vs the ceiling relay, same generator, same run", ["figure", "cim", "ceiling"], table)
    for note in notes:
        print(f"note: {note}")
    result: dict[str, Any] = {"scenario": scenario, "params": params, "machine": machine()}
    if len(rows) == 1:
        result.update(cim=rows[0]["cim"], ceiling=rows[0]["ceiling"], ratio=rows[0]["ratio"])
    else:
        result.update(cim=[{**r["point"], **r["cim"]} for r in rows], ceiling=[{**r["point"], **r["ceiling"]} for r in rows],
                      ratio=[{**r["point"], **r["ratio"]} for r in rows])
    result["notes"] = notes
    write_json(json_path, result)
    return result


def generator_note(runs: dict[str, list[Run]], limit: float = 85.0) -> list[str]:
    busiest = max(r.generator_cpu_pct for r in runs["ceiling"])
    if busiest >= limit:
        return [f"the load generator ran at {busiest:.0f}% of a core against the ceiling: the ceiling is "
                "generator-bound, so ratios understate how far cim is from the relay's real limit"]
    return []
