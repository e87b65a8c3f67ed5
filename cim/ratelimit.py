"""Rate limiting, sans-I/O: token buckets, the same per key, and a window of limit hits.

Nothing here reads a clock: every call takes ``now`` (seconds, any monotonic origin),
so the server passes its loop time, the route ``time.monotonic()``, and the tests
explicit times. A ``now`` earlier than one already seen counts as that time (clocks
are monotonic, but a caller may mix readings taken a moment apart).
"""

from __future__ import annotations

from collections import deque


def _check_positive(rate: float, burst: float) -> None:
    if rate <= 0 or burst <= 0:
        raise ValueError(f"rate and burst must be positive, not {rate} and {burst}")


class TokenBucket:
    """``rate`` tokens a second up to ``burst`` (starting full): over any span of ``t``
    seconds at most ``burst + rate * t`` tokens are taken."""

    # Slots: two of these per connection.
    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        _check_positive(rate, burst)
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def _refill(self, now: float) -> float:
        # No min() or max() here or below: builtin calls cost more than the arithmetic.
        # take_up_to and charge, which run for every read, have this inlined.
        tokens = self.tokens
        if now > self.updated:
            tokens += (now - self.updated) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.tokens = tokens
            self.updated = now
        return tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; False (nothing taken) otherwise."""
        if self._refill(now) >= cost:
            self.tokens -= cost
            return True
        return False

    def take_up_to(self, now: float, count: int) -> int:
        """Take one token for each of the first of ``count`` items that fit: how many did."""
        tokens = self.tokens
        if now > self.updated:  # _refill, inlined
            tokens += (now - self.updated) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.updated = now
        allowed = count if tokens >= count else int(tokens) if tokens > 0 else 0
        self.tokens = tokens - allowed
        return allowed

    def charge(self, now: float, cost: float) -> float:
        """Take ``cost`` tokens whatever is left, going into debt for what has already
        happened (bytes already read): the seconds until the debt is paid off, 0.0 if none.
        A caller that waits that long before the next charge keeps the bucket's bound,
        give or take one charge."""
        tokens = self.tokens
        if now > self.updated:  # _refill, inlined
            tokens += (now - self.updated) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.updated = now
        self.tokens = tokens = tokens - cost
        return -tokens / self.rate if tokens < 0 else 0.0

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0.0: now)."""
        missing = cost - self._refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def full(self, now: float) -> bool:
        """Refilled to ``burst``: no different from a new bucket."""
        return self._refill(now) >= self.burst


class KeyedBuckets:
    """A ``TokenBucket`` per key (an IP address), in bounded memory.

    A bucket that has refilled is no different from a new one, so it is dropped: a
    sweep over all keys runs whenever the table has doubled since the last one, which
    keeps the cost per call constant on average. Reaching ``max_keys`` live keys (a
    flood from very many addresses), the oldest half is dropped too, which only lets
    those keys start over with a full bucket.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        _check_positive(rate, burst)  # now, not at the first key
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
