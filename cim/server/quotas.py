"""Role: the abuse limits. Per connection: messages and bytes a second (token buckets), and
repeated hits closing it; per IP address: connections, and logins a minute.

``Quotas`` is the node's part (the per-IP tables), ``PeerQuota`` one connection's, made at
admission and consulted by ``OrderedEvents`` as each read arrives: its bytes are charged
(over the rate the client is told why and the transport stops reading until the bucket
has refilled) and its events screened (messages over the rate are refused with 4029,
each with its receipt, in order with the rest). The checks cost one bucket per read and
one per run of messages, whatever their size; a read within both rates is settled in one
compiled call (``cim.ratelimit.settle_read``). Every flag at 0 turns its limit off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cim.config import Config
from cim.protocols.connection import ChatMessages, Event, Login
from cim.ratelimit import HitWindow, per_key_per_minute, per_second, settle_read, settle_runs
from cim.server.peer import Peer
from cim.status import Status

ABUSE_WINDOW = 10.0  # seconds in which --abuse-limit hits close a connection


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class OverRate:
    """Messages refused at arrival, over the connection's messages a second: each gets a
    4029 receipt, in order with the answers to what the client sent before them."""

    client_msg_ids: list[int]


Screened = Event | OverRate


class Quotas:
    """A node's abuse limits: connections and logins per IP address, and the settings
    every connection's ``PeerQuota`` starts from."""

    def __init__(self, config: Config, metrics: Counter[str], clock: Callable[[], float]) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.max_connections_per_ip = config.max_connections_per_ip
        self._connections: Counter[str] = Counter()  # live connections per IP, refused ones included
        per_minute = config.max_logins_per_minute
        self.logins = per_key_per_minute(per_minute)

    def connect(self, ip: str) -> bool:
        """Count a new connection from ``ip`` until ``disconnect``: False when it is one
        too many. Refused connections count as long as they are open: they hold a socket too."""
        self._connections[ip] += 1
        limit = self.max_connections_per_ip
        return not limit or self._connections[ip] <= limit

    def disconnect(self, ip: str) -> None:
        left = self._connections[ip] - 1
        if left > 0:
            self._connections[ip] = left
        else:
            del self._connections[ip]  # only live addresses are kept

    def for_peer(self, peer: Peer) -> PeerQuota | None:
        """The quota of an admitted connection; None when no limit applies to it."""
        config = self.config
        if not (config.max_messages_per_second or config.max_bytes_per_second or config.max_logins_per_minute):
            return None
        return PeerQuota(self, peer)


class PeerQuota:
    """One connection's limits, consulted on the way in (see the module docstring)."""

    # Slots: one of these per connection.
    __slots__ = ("quotas", "peer", "_messages", "_bytes", "_hits")

    def __init__(self, quotas: Quotas, peer: Peer) -> None:
        config, now = quotas.config, quotas.clock()
        self.quotas = quotas
        self.peer = peer
        rate, byte_rate = config.max_messages_per_second, config.max_bytes_per_second
        self._messages = per_second(rate, now)
        self._bytes = per_second(byte_rate, now)
        self._hits: HitWindow | None = None  # made at the first hit: most connections never hit a limit

    def screen(self, events: list[Event], now: float, size: int) -> Sequence[Screened]:
        """What of one read (``size`` bytes, ``events``) goes on. Over the bytes rate, an
        error frame says so and the transport stops reading until the debt is paid off
        (what was read is still served). Messages past the rate are cut from their run (in
        place) and followed by an ``OverRate`` for them; a login past its IP's rate is
        refused. Returns ``events`` itself when nothing is cut (the usual case)."""
        # The usual case (within both rates, no login) in one compiled call: checking
        # the limits costs a read tens of nanoseconds, not hundreds. Anything else is
        # decided below, from the same state (settle_read takes nothing then).
        if settle_read(self._messages, self._bytes, events, now, size):
            return events
        return self._screen(events, now, size)

    def fits(self, count: int, now: float, size: int) -> bool:
        """A read of ``size`` bytes that is one run of ``count`` messages, charged as ``screen``
        would when it is within both rates (True); else nothing is taken (False): screen it."""
        return settle_runs(self._messages, self._bytes, [count], now, size)

    def _screen(self, events: list[Event], now: float, size: int) -> Sequence[Screened]:
        """``screen``'s slow path: charge, take and cut one step at a time."""
        if self._bytes is not None:
            pause = self._bytes.charge(now, size)
            if pause > 0 and self._over_bytes(now, pause):
                return ()  # closed: the rest goes nowhere
        messages = self._messages
        for event in events:  # nothing is copied until something is cut
            if type(event) is ChatMessages:
                if messages is not None:
                    count = len(event.texts)
                    allowed = messages.take_up_to(now, count)
                    if allowed < count:
                        return self._cut(events, event, allowed, now)
            elif type(event) is Login:
                return self._cut(events, event, 0, now)
        return events

    def _cut(self, events: list[Event], first: Event, allowed: int, now: float) -> list[Screened]:
        """``screen`` from ``first`` on: the first run with messages past the rate (of
        which ``allowed`` fit, already taken) or a login. What goes on is a new list."""
        start = next(index for index, event in enumerate(events) if event is first)
        kept: list[Screened] = list(events[:start])
        for event in events[start:]:
            if type(event) is ChatMessages and self._messages is not None:
                count = len(event.texts)
                if event is not first:
                    allowed = self._messages.take_up_to(now, count)
                if allowed < count:
                    over = self._over_rate(event, allowed, now)
                    if event.texts:
                        kept.append(event)
                    kept.append(over)
                else:
                    kept.append(event)
            elif type(event) is not Login or self._login_allowed(now):
                kept.append(event)
            if self.peer.closed:  # refused, or closed for repeated hits: the rest goes nowhere
                break
        return kept

    def _over_bytes(self, now: float, pause: float) -> bool:
        """Past the bytes rate: True when that closed the connection."""
        if self._hit(now, "bytes"):
            return True
        rate = self.quotas.config.max_bytes_per_second
        self.peer.send_error(
            Status.RATE_LIMITED, f"rate limit exceeded: over {rate} bytes/s; reading paused for {pause:.2f} s"
        )
        self.peer.pause_reading(pause)
        return False

    def _over_rate(self, event: ChatMessages, allowed: int, now: float) -> OverRate:
        """Cut the messages past the first ``allowed`` from ``event``: they are refused."""
        over = OverRate(event.client_msg_ids[allowed:])  # counted with their receipts, as receipts_4029
        del event.texts[allowed:], event.client_msg_ids[allowed:]
        self._hit(now, "messages")
        return over

    def _login_allowed(self, now: float) -> bool:
        logins, ip = self.quotas.logins, self.peer.ip
        if logins is None or logins.take(ip, now):
            return True
        self.quotas.metrics["limit_hits_logins"] += 1
        per_minute = self.quotas.config.max_logins_per_minute
        self.peer.refuse(Status.RATE_LIMITED, f"rate limit exceeded: over {per_minute} logins a minute from {ip}")
        return False

    def _hit(self, now: float, limit: str) -> bool:
        """Count a limit hit; True when it closed the connection (too many, too fast)."""
        metrics, abuse_limit = self.quotas.metrics, self.quotas.config.abuse_limit
        metrics[f"limit_hits_{limit}"] += 1
        if not abuse_limit:
            return False
        if self._hits is None:
            self._hits = HitWindow(abuse_limit, ABUSE_WINDOW)
        if not self._hits.hit(now):
            return False
        metrics["abuse_closes"] += 1
        self.peer.refuse(Status.RATE_LIMITED, f"rate limit exceeded {abuse_limit} times within {ABUSE_WINDOW:g} s: closing")
        return True
