"""Rate limiting, sans-I/O: token buckets, the same per key, and a window of limit hits.

``TokenBucket``, ``settle_read`` and ``settle_runs`` (one read against a connection's two buckets) are
compiled (``cim/_ratelimit.pyx``, twin ``cim/_ratelimit_py.py``), chosen with the frame
codec as ``cim.wire`` is: they run on every read of every connection.

Nothing here reads a clock: every call takes ``now`` (seconds, any monotonic origin),
so the server passes its loop time, the route ``time.monotonic()``, and the tests
explicit times. A ``now`` earlier than one already seen counts as that time (clocks
are monotonic, but a caller may mix readings taken a moment apart).
"""

from __future__ import annotations

from collections import deque

from cim._ratelimit_py import check_positive
from cim.frame import IMPLEMENTATION

if IMPLEMENTATION == "python":
    from cim._ratelimit_py import TokenBucket, settle_read, settle_runs
else:
    # Another class than the pure twin's to mypy, which types the names as that one's:
    # the two share one interface, and tests/test_ratelimit.py holds both to it.
    from cim._ratelimit import TokenBucket, settle_read, settle_runs  # type: ignore[assignment]

__all__ = [
    "BURST_SECONDS", "IMPLEMENTATION", "HitWindow", "KeyedBuckets", "TokenBucket",
    "per_key_per_minute", "per_key_per_second", "per_second", "settle_read", "settle_runs",
]


class KeyedBuckets:
    """A ``TokenBucket`` per key (an IP address), in bounded memory.

    A bucket that has refilled is no different from a new one, so it is dropped: a
    sweep over all keys runs whenever the table has doubled since the last one, which
    keeps the cost per call constant on average. Reaching ``max_keys`` live keys (a
    flood from very many addresses), the oldest half is dropped too, which only lets
    those keys start over with a full bucket.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        check_positive(rate, burst)  # now, not at the first key
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = 64  # table size that triggers the next sweep

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        """``TokenBucket.take`` on ``key``'s bucket."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now, cost)

    def wait(self, key: str, now: float, cost: float = 1.0) -> float:
        """``TokenBucket.wait`` on ``key``'s bucket (0.0 for a key with none: it would start full)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now, cost)

    def _sweep(self, now: float) -> None:
        buckets = self._buckets
        for key in [k for k, b in buckets.items() if b.full(now)]:
            del buckets[key]
        if len(buckets) >= self.max_keys:
            # Half at once, so that a table full of live keys is not swept on every call.
            for key in list(buckets)[: len(buckets) - self.max_keys // 2]:  # dicts keep insertion order
                del buckets[key]
        self._sweep_at = min(max(64, 2 * len(buckets)), self.max_keys)


class HitWindow:
    """Counts limit hits: ``hit`` says when ``limit`` of them fell within ``window`` seconds
    (an exact sliding window: it keeps the times of the last ``limit`` hits)."""

    __slots__ = ("limit", "window", "_times")

    def __init__(self, limit: int, window: float) -> None:
        if limit <= 0 or window <= 0:
            raise ValueError(f"limit and window must be positive, not {limit} and {window}")
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque(maxlen=limit)

    def hit(self, now: float) -> bool:
        """Count a hit at ``now``: True when it is the ``limit``-th within ``window`` seconds."""
        times = self._times
        times.append(now)
        return len(times) == self.limit and now - times[0] <= self.window


BURST_SECONDS = 2  # a per-second limit's bucket holds this many seconds' worth (bursts of twice the rate)


def per_second(rate: float, now: float) -> TokenBucket | None:
    """A full bucket for ``rate`` a second with bursts of ``BURST_SECONDS`` worth; None for 0 (off)."""
    return TokenBucket(rate, BURST_SECONDS * rate, now) if rate else None


def per_key_per_second(rate: float) -> KeyedBuckets | None:
    """``per_second`` for each key (an IP address); None for 0 (off)."""
    return KeyedBuckets(rate, BURST_SECONDS * rate) if rate else None


def per_key_per_minute(count: int) -> KeyedBuckets | None:
    """``count`` a minute for each key, all of them at once at most; None for 0 (off)."""
    return KeyedBuckets(count / 60, count) if count else None
