"""Role: the node's figures for Prometheus, at no cost to the message hot path.

The node counts in a ``Counts``, a ``Counter`` (``metrics["messages_in"] += n``: one dict
update per run of messages, never a prometheus_client call). ``NodeMetrics.sync``
carries what changed into prometheus_client series: on every scrape and, in
multiprocess mode (``--workers``), every few seconds too, so that the sum any worker
serves includes the others' recent figures; an idle worker wakes for that no more
often. Latencies are histograms observed once per run of messages or per bus
delivery, never on the hot path.

The hot path (messages to a user on this node) answers every message it takes with
9000 and counts only ``messages_in`` and ``messages_out``, as before; every other
message in ``messages_in`` went through the backends (``messages_backend``), whose
receipts are counted by code. So its receipts are the difference, added at scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Literal

import prometheus_client

from cim.metrics import LATENCY_BUCKETS, multiprocess_dir, new_registry
from cim.proto import Response
from cim.server.peer import Peer
from cim.server.sessions import SessionTable
from cim.status import Status


class Counts(Counter[str]):
    """A ``Counter`` whose item writes are dict's own. ``Counter`` defines ``__delitem__`` in
    Python, which makes every ``counts[key] += n`` go through a Python-level slot too (~0.15 µs,
    several times on every message's path); a missing key's ``del`` raises, as a dict's does."""

    __delitem__ = dict.__delitem__  # type: ignore[assignment]  # dict's C slot is the point: the key types differ only on paper


# Seconds between syncs in multiprocess mode (the other workers' view of this one).
MULTIPROCESS_SYNC_SECONDS = 5.0

# Counter keys -> (series, help). A key missing here is exported all the same, as cim_<key>_total.
COUNTERS: dict[str, tuple[str, str]] = {
    "connections_total": ("cim_connections_opened", "Client connections accepted by the listener."),
    "refused_full": ("cim_connections_refused_full", "Connections refused because the node held its maximum."),
    "logins": ("cim_logins", "Logins accepted."),
    "logins_unauthorized": ("cim_logins_unauthorized", "Logins refused for a missing, invalid or expired token (4001)."),
    "logouts": ("cim_logouts", "Sessions ended, for whatever reason."),
    "login_timeouts": ("cim_login_timeouts", "Connections closed for sending no login in time."),
    "messages_in": ("cim_messages_in", "Chat messages from clients the node handled."),
    "messages_out": ("cim_messages_out", "Chat messages pushed to clients (a group message once per receiver)."),
    "messages_backend": ("cim_messages_backend", "Chat messages from clients sent through the store or the bus."),
    "bytes_in": ("cim_bytes_in", "Bytes read from clients."),
    "protocol_errors": ("cim_protocol_errors", "Connections closed for a protocol violation (a bad frame, no login first)."),
    "errors": ("cim_backend_errors", "Events and background tasks that failed in a backend (store, bus)."),
    "heartbeat_timeouts": ("cim_heartbeat_timeouts", "Sessions ended after 3 silent heartbeat intervals."),
    "slow_consumer_cuts": ("cim_slow_consumer_cuts", "Connections dropped for not reading their pushes."),
    "abuse_closes": ("cim_abuse_closes", "Connections closed for hitting the limits --abuse-limit times within 10 s."),
    "registrations_restored": ("cim_registrations_restored", "Registry entries restored after a registry outage."),
}

# Key prefixes -> (series, label, help): "limit_hits_bytes" is cim_limit_hits_total{limit="bytes"}.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "receipts_": ("cim_receipts", "code", "SEND_RECEIPT frames sent, by CIM code (9000 sent, 7000 stored offline, errors)."),
    "limit_hits_": ("cim_limit_hits", "limit", "Abuse limits hit, by limit."),
}

LOCAL_RECEIPTS = f"receipts_{Status.SUCCESS.code}"  # the hot path's are added to these

GaugeMode = Literal["livesum", "livemax"]

# Keys the node sets once at start (Counter.update), not counts: -> (series, help, how workers add up).
SETTINGS: dict[str, tuple[str, str, GaugeMode]] = {
    "max_connections": ("cim_max_connections", "Client connections the node makes room for.", "livesum"),
    "nofile_soft": ("cim_open_files_soft_limit", "The process's soft limit of open files.", "livemax"),
    "nofile_hard": ("cim_open_files_hard_limit", "The process's hard limit of open files.", "livemax"),
}


class Latencies:
    """The node's histograms. Each observation is a run of messages (one event, or a
    batch the dispatcher sent together) or a delivery, not a message."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self._receipts = prometheus_client.Histogram(
            "cim_send_receipt_seconds",
            "From reading a run of messages to queuing its receipts, for runs through the store or the bus (to "
            "everyone, to a user elsewhere or offline) or queued behind one that was. Runs to a user on this node "
            "are answered within the read's own callback, microseconds, and not timed.",
            registry=registry, buckets=LATENCY_BUCKETS,
        )
        self._delivery = prometheus_client.Histogram(
            "cim_delivery_seconds",
            "From a message's timestamp (its sender's node, millisecond clock) to its push at the receiver's node, "
            "per delivery over the bus (group messages, private ones across nodes).",
            registry=registry, buckets=LATENCY_BUCKETS,
        )

    def receipts_queued(self, read_at: float) -> None:
        """A run read at ``read_at`` (``time.monotonic()``) has its receipts queued."""
        self._receipts.observe(time.monotonic() - read_at)

    def delivered(self, bodies: list[bytes]) -> None:
        """Pushes of one delivery were written (all share one timestamp: one id block)."""
        sent_ms = Response.FromString(bodies[-1]).timestamp
        # Across hosts the clocks differ a little: a push is never counted as early.
        self._delivery.observe(max(0.0, time.time() - sent_ms / 1000))


class NodeMetrics:
    """A node's Prometheus registry, filled from its ``Counter`` and its session table."""

    def __init__(self, counts: Counter[str], sessions: SessionTable, slow: set[Peer]) -> None:
        self.registry = new_registry()
        self.counts = counts
        self.latencies = Latencies(self.registry)
        self._sessions = sessions
        self._slow = slow
        self._synced: Counter[str] = Counter()  # each count as of the last sync
        # By key: the known ones from the start (a dashboard shows 0, not "no data"), others at their first sync.
        self._counters = {
            key: prometheus_client.Counter(name, help, registry=self.registry) for key, (name, help) in COUNTERS.items()
        }
        self._families = {
            prefix: prometheus_client.Counter(name, help, [label], registry=self.registry)
            for prefix, (name, label, help) in FAMILIES.items()
        }
        self._settings = {
            key: prometheus_client.Gauge(name, help, registry=self.registry, multiprocess_mode=mode)
            for key, (name, help, mode) in SETTINGS.items()
        }
        self._connections = self._live_gauge("cim_connections", "Open client connections, logged in or not.")
        self._logged_in = self._live_gauge("cim_sessions", "Users logged in.")
        self._slow_consumers = self._live_gauge("cim_slow_consumers", "Connections whose write buffer is over the high mark.")
        self._publishing: asyncio.Task[None] | None = None

    def _live_gauge(self, name: str, help: str) -> prometheus_client.Gauge:
        # livesum: a host's figure is the sum over its live workers.
        return prometheus_client.Gauge(name, help, registry=self.registry, multiprocess_mode="livesum")

    def sync(self) -> None:
        """Bring the series up to date (a few dozen keys: microseconds)."""
        synced = self._synced
        for key, value in self._with_local_receipts().items():
            change = value - synced[key]
            if not change:
                continue
            synced[key] = value
            setting = self._settings.get(key)
            if setting is not None:
                setting.set(value)
            else:
                self._counter(key).inc(change)  # counts only grow: a decrease is a bug, and raises
        sessions = self._sessions
        self._connections.set(sessions.connections)
        self._logged_in.set(len(sessions))
        self._slow_consumers.set(len(self._slow))

    def _with_local_receipts(self) -> Counter[str]:
        """The counts, with the hot path's receipts added (see the module docstring)."""
        counts = self.counts.copy()
        counts[LOCAL_RECEIPTS] += counts["messages_in"] - counts["messages_backend"]
        return counts

    def _counter(self, key: str) -> prometheus_client.Counter:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._series_of(key)
        return counter

    def _series_of(self, key: str) -> prometheus_client.Counter:
        for prefix, family in self._families.items():
            if key.startswith(prefix):
                return family.labels(key.removeprefix(prefix))
        return prometheus_client.Counter(f"cim_{key}", f"The node's count {key!r}.", registry=self.registry)

    def start(self) -> None:
        if multiprocess_dir() is not None:
            self._publishing = asyncio.create_task(self._publish(), name="cim-metrics")

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(MULTIPROCESS_SYNC_SECONDS)
            self.sync()

    def stop(self) -> None:
        """Stop syncing, after a last sync (in multiprocess mode the other workers go on
        serving this one's figures)."""
        if self._publishing is not None:
            self._publishing.cancel()
        self.sync()
