"""Pure-Python twin of ``cim/_ratelimit.pyx``: the token bucket, and the check of one
read against a connection's two buckets.

Every read of every client connection is charged to two buckets (bytes and messages a
second, ``cim.server.quotas``). In Python that costs a few hundred nanoseconds a read:
float arithmetic allocates, and every step is a method call. The compiled twin keeps
the bucket in C doubles and settles the usual read (within both rates) in one call,
``settle_read``; this twin has the same names and behaviour, for builds without the
extensions, and one test suite runs against both (tests/test_ratelimit.py).

Nothing here reads a clock: every call takes ``now`` (seconds, any monotonic origin).
A ``now`` earlier than one already seen counts as that time.
"""

from __future__ import annotations

from cim.protocols.connection import ChatMessages, Event, Login

__all__ = ["TokenBucket", "check_positive", "settle_read", "settle_runs"]


def check_positive(rate: float, burst: float) -> None:
    """Refuse a bucket that could never hold or gain a token."""
    if rate <= 0 or burst <= 0:
        raise ValueError(f"rate and burst must be positive, not {rate} and {burst}")


class TokenBucket:
    """``rate`` tokens a second up to ``burst`` (starting full): over any span of ``t``
    seconds at most ``burst + rate * t`` tokens are taken.

    The numbers are floats (as the compiled twin's C doubles), whatever was passed."""

    # Slots: two of these per connection.
    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        check_positive(rate, burst)
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = float(now)

    def _level(self, now: float) -> float:
        """The tokens there are at ``now``, nothing stored: ``settle_read`` may yet take
        nothing, and a refill split in two rounds may round differently from one."""
        tokens = self.tokens
        if now > self.updated:  # no min(): the same operations as the compiled twin's
            tokens += (now - self.updated) * self.rate
            if tokens > self.burst:
                tokens = self.burst
        return tokens

    def _settle(self, tokens: float, now: float) -> None:
        """Store what ``_level`` found at ``now``, less what was taken."""
        self.tokens = tokens
        if now > self.updated:
            self.updated = now

    def _refill(self, now: float) -> float:
        tokens = self._level(now)
        self._settle(tokens, now)
        return tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; False (nothing taken) otherwise."""
        if self._refill(now) >= cost:
            self.tokens -= cost
            return True
        return False

    def take_up_to(self, now: float, count: int) -> int:
        """Take one token for each of the first of ``count`` items that fit: how many did."""
        tokens = self._refill(now)
        allowed = count if tokens >= count else int(tokens) if tokens > 0 else 0
        self.tokens = tokens - allowed
        return allowed

    def charge(self, now: float, cost: float) -> float:
        """Take ``cost`` tokens whatever is left, going into debt for what has already
        happened (bytes already read): the seconds until the debt is paid off, 0.0 if none.
        A caller that waits that long before the next charge keeps the bucket's bound,
        give or take one charge."""
        self.tokens = tokens = self._refill(now) - cost
        return -tokens / self.rate if tokens < 0 else 0.0

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0.0: now)."""
        missing = cost - self._refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def full(self, now: float) -> bool:
        """Refilled to ``burst``: no different from a new bucket."""
        return self._refill(now) >= self.burst


def settle_read(messages: TokenBucket | None, bytes_: TokenBucket | None, events: list[Event], now: float, size: int) -> bool:
    """The usual case of ``PeerQuota.screen``, all or nothing: when none of ``events`` is a
    ``Login``, ``settle_runs`` of its runs of messages. Otherwise take nothing (False)."""
    run_sizes = []
    for event in events:
        if type(event) is ChatMessages:
            run_sizes.append(len(event.texts))
        elif type(event) is Login:
            return False
    return settle_runs(messages, bytes_, run_sizes, now, size)


def settle_runs(messages: TokenBucket | None, bytes_: TokenBucket | None, run_sizes: list[int], now: float,
                size: int) -> bool:
    """A read of ``size`` bytes with runs of messages of these sizes, all or nothing: when
    the bytes fit ``bytes_`` with no debt and every run fits ``messages`` whole, take it all
    and return True, leaving both buckets exactly as ``charge`` and ``take_up_to``, one run
    at a time, would have (the messages bucket untouched by a read with no messages).
    Otherwise take nothing, not even a refill, and return False: the caller's slow path
    decides, from the same state. A bucket that is None is a limit that is off."""
    byte_tokens = 0.0
    if bytes_ is not None:
        byte_tokens = bytes_._level(now) - size
        if byte_tokens < 0:
            return False
    runs = messages is not None and bool(run_sizes)  # runs are counted only with a messages bucket
    tokens = 0.0
    if runs and messages is not None:
        tokens = messages._level(now)
        for count in run_sizes:
            if not tokens >= count:  # take_up_to's test, so that a NaN decides alike
                return False
            tokens -= count
    if bytes_ is not None:
        bytes_._settle(byte_tokens, now)
    if runs and messages is not None:
        messages._settle(tokens, now)
    return True
