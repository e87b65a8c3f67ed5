"""The rate limiters with explicit times: token buckets, the same per key, windows of hits.

The bucket's tests, and ``settle_read``'s and ``settle_runs``', run against both twins (the ``ratelimit``
fixture: ``cim._ratelimit_py`` and the compiled ``cim._ratelimit``); the compiled one
is also held to the pure one operation by operation, to the last bit.

Times are whole milliseconds drawn by hypothesis (turned into seconds), so a window's
bound is checked exactly, up to float rounding.
"""

from __future__ import annotations

import itertools
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cim import _ratelimit_py
from cim.destinations import ToUser
from cim.proto import Request
from cim.protocols.connection import PING_EVENT, ChatMessages, Event, Login
from cim.ratelimit import HitWindow, KeyedBuckets, TokenBucket

EPSILON = 1e-6

# (milliseconds since the previous call, cost)
steps = st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 12)), max_size=150)
rates = st.integers(1, 50)
bursts = st.integers(1, 40)


def times(deltas_ms: list[int]) -> list[float]:
    return [ms / 1000 for ms in itertools.accumulate(deltas_ms)]


def assert_bound(taken: list[tuple[float, float]], rate: float, burst: float, slack: float = 0.0) -> None:
    """Over every span [t_i, t_j] of the calls, what was taken is at most burst + rate * span (+ slack)."""
    for i in range(len(taken)):
        total = 0.0
        for j in range(i, len(taken)):
            total += taken[j][1]
            span = taken[j][0] - taken[i][0]
            assert total <= burst + rate * span + slack + EPSILON, (i, j, total, span)


def test_a_bucket_starts_full_then_refills_at_its_rate(ratelimit: ModuleType) -> None:
    # Times in eighths of a second: exact in binary, so a token is exactly one.
    bucket = ratelimit.TokenBucket(rate=4, burst=8, now=100.0)
    assert [bucket.take(100.0) for _ in range(9)] == [True] * 8 + [False]
    assert bucket.wait(100.0) == 0.25
    assert not bucket.take(100.125)  # half a token
    assert bucket.take(100.25)
    assert bucket.wait(100.25) == 0.25
    assert not bucket.take(200.0, cost=9)  # never more than the burst at once
    assert bucket.full(200.0) and bucket.take(200.0, cost=8)


def test_take_up_to_lets_the_first_that_fit_through(ratelimit: ModuleType) -> None:
    bucket = ratelimit.TokenBucket(rate=100, burst=400)
    assert bucket.take_up_to(0.0, 2000) == 400
    assert bucket.take_up_to(0.0, 5) == 0
    assert bucket.take_up_to(1.0, 2000) == 100
    assert bucket.take_up_to(1.0, 0) == 0


def test_charge_goes_into_debt_and_says_for_how_long(ratelimit: ModuleType) -> None:
    bucket = ratelimit.TokenBucket(rate=1000, burst=2000)
    assert bucket.charge(0.0, 1500) == 0.0
    assert bucket.charge(0.0, 1500) == pytest.approx(1.0)  # 1000 over, at 1000/s
    assert not bucket.take(0.5)  # still 500 in debt
    assert bucket.charge(1.0, 0) == 0.0 and bucket.wait(1.0, 1) == pytest.approx(0.001)


def test_an_earlier_time_counts_as_the_latest_seen(ratelimit: ModuleType) -> None:
    bucket = ratelimit.TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)  # not a refill from 5 to 10 again
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_a_bucket_needs_a_positive_rate_and_burst(ratelimit: ModuleType, rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ratelimit.TokenBucket(rate, burst)
    with pytest.raises(ValueError, match="positive"):
        KeyedBuckets(rate, burst)


@given(rate=rates, burst=bursts, calls=steps)
def test_take_never_allows_more_than_burst_plus_rate_times_span(
    ratelimit: ModuleType, rate: int, burst: int, calls: list[tuple[int, int]]
) -> None:
    bucket = ratelimit.TokenBucket(rate, burst)
    taken = []
    for now, (_, cost) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        if bucket.take(now, cost):
            taken.append((now, float(cost)))
    assert_bound(taken, rate, burst)


@given(rate=rates, burst=bursts, calls=steps)
def test_take_up_to_never_allows_more_than_burst_plus_rate_times_span(
    ratelimit: ModuleType, rate: int, burst: int, calls: list[tuple[int, int]]
) -> None:
    bucket = ratelimit.TokenBucket(rate, burst)
    taken = []
    for now, (_, count) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        allowed = bucket.take_up_to(now, count)
        assert 0 <= allowed <= count
        taken.append((now, float(allowed)))
    assert_bound(taken, rate, burst)


@given(rate=rates, burst=bursts, calls=steps)
def test_a_bucket_that_can_take_does(
    ratelimit: ModuleType, rate: int, burst: int, calls: list[tuple[int, int]]
) -> None:
    # The other side of the bound: a refusal means the tokens were really not there.
    bucket = ratelimit.TokenBucket(rate, burst)
    for now, (_, cost) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        waited = bucket.wait(now, cost)
        assert bucket.take(now, cost) == (waited == 0.0)


@given(rate=rates, burst=bursts, calls=steps)
def test_charging_after_each_pause_keeps_the_bound_give_or_take_one_charge(
    ratelimit: ModuleType, rate: int, burst: int, calls: list[tuple[int, int]]
) -> None:
    # The transport's use: every read is charged, and after an overdraft nothing is
    # read until the debt is paid.
    bucket = ratelimit.TokenBucket(rate, burst)
    taken: list[tuple[float, float]] = []
    resume_at = 0.0
    for now, (_, cost) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        if now < resume_at:
            continue  # reading is paused
        pause = bucket.charge(now, cost)
        taken.append((now, float(cost)))
        resume_at = now + pause
    assert_bound(taken, rate, burst, slack=max((c for _, c in calls), default=0))


# (milliseconds since the previous call, some earlier than the last, operation, cost)
operations = st.lists(
    st.tuples(st.integers(-200, 1500), st.sampled_from(["take", "take_up_to", "charge", "wait", "full"]), st.integers(0, 12)),
    max_size=150,
)


def state(bucket: object) -> tuple[float, float, float, float]:
    return (bucket.rate, bucket.burst, bucket.tokens, bucket.updated)  # type: ignore[attr-defined]


def copy_of(ratelimit: ModuleType, bucket: object) -> object:
    rate, burst, tokens, updated = state(bucket)
    twin = ratelimit.TokenBucket(rate, burst, updated)
    twin.tokens = tokens
    return twin


@given(rate=rates, burst=bursts, calls=operations)
def test_the_compiled_bucket_is_the_pure_one_to_the_last_bit(
    ratelimit: ModuleType, rate: int, burst: int, calls: list[tuple[int, str, int]]
) -> None:
    pure, twin = _ratelimit_py.TokenBucket(rate, burst), ratelimit.TokenBucket(rate, burst)
    now = 0.0
    for ms, operation, cost in calls:
        now += ms / 1000
        args = (now,) if operation == "full" else (now, cost)
        assert getattr(twin, operation)(*args) == getattr(pure, operation)(*args)
        assert state(twin) == state(pure)


def used_buckets(ratelimit: ModuleType, rate: int, burst: int, byte_rate: int, history: list[tuple[int, int]],
                 later_ms: int) -> tuple[Any, Any, float]:
    """A messages and a bytes bucket part used by earlier reads (``history``: ms after the one
    before, cost), and the time ``later_ms`` after the last of them."""
    messages, bytes_ = ratelimit.TokenBucket(rate, burst), ratelimit.TokenBucket(byte_rate, 2 * byte_rate)
    now = 0.0
    for ms, cost in history:
        now += ms / 1000
        messages.take_up_to(now, cost)
        bytes_.charge(now, cost * 100)
    return messages, bytes_, now + later_ms / 1000


def read_events(counts: list[int], login: bool) -> list[Event]:
    """A read: a run of ``n`` messages for each count (0: a ping), a login last if asked."""
    events: list[Event] = [ChatMessages([b"x"] * n, ToUser(2), list(range(n))) if n else PING_EVENT for n in counts]
    return [*events, Login(1, "alice", Request())] if login else events


@given(
    rate=rates, burst=bursts, byte_rate=st.integers(100, 5000), history=steps,
    limits=st.sampled_from([(True, True), (True, False), (False, True), (False, False)]),
    counts=st.lists(st.integers(0, 12), max_size=5), login=st.booleans(),
    later_ms=st.integers(-200, 1500), size=st.integers(0, 4000),
)
def test_settle_read_takes_all_the_slow_path_would_or_nothing(
    ratelimit: ModuleType, rate: int, burst: int, byte_rate: int, history: list[tuple[int, int]],
    limits: tuple[bool, bool], counts: list[int], login: bool, later_ms: int, size: int,
) -> None:
    # Buckets part used by earlier reads, then one read: settle_read either does what
    # charge and take_up_to, run by run, would have done with nothing cut, or nothing.
    messages, bytes_, now = used_buckets(ratelimit, rate, burst, byte_rate, history, later_ms)
    slow_messages, slow_bytes = copy_of(ratelimit, messages), copy_of(ratelimit, bytes_)
    untouched_messages, untouched_bytes = copy_of(ratelimit, messages), copy_of(ratelimit, bytes_)
    with_messages, with_bytes = limits
    events = read_events(counts, login)

    settled = ratelimit.settle_read(messages if with_messages else None, bytes_ if with_bytes else None, events, now, size)

    fits = not login
    if with_bytes:
        fits &= slow_bytes.charge(now, size) == 0.0  # type: ignore[attr-defined]
    if with_messages:
        for n in counts:
            if n:
                fits &= slow_messages.take_up_to(now, n) == n  # type: ignore[attr-defined]
    assert settled == fits
    # Not even refilled when nothing is taken: a refill in two rounds may round differently.
    expected_messages, expected_bytes = (slow_messages, slow_bytes) if settled else (untouched_messages, untouched_bytes)
    if with_messages:
        assert state(messages) == state(expected_messages)
    if with_bytes:
        assert state(bytes_) == state(expected_bytes)


@given(rate=rates, burst=bursts, history=steps, counts=st.lists(st.integers(0, 12), max_size=5),
       later_ms=st.integers(-200, 1500), size=st.integers(0, 4000))
def test_settle_runs_is_settle_read_of_those_runs(
    ratelimit: ModuleType, rate: int, burst: int, history: list[tuple[int, int]], counts: list[int], later_ms: int,
    size: int,
) -> None:
    # The one-read lane (cim.server.lane) has no events, only the size of its one run.
    messages, bytes_, now = used_buckets(ratelimit, rate, burst, 1000, history, later_ms)
    read_messages, read_bytes = copy_of(ratelimit, messages), copy_of(ratelimit, bytes_)
    sizes = [n for n in counts if n]  # a count of 0 is a ping in read_events: no run
    assert ratelimit.settle_runs(messages, bytes_, sizes, now, size) == ratelimit.settle_read(
        read_messages, read_bytes, read_events(counts, login=False), now, size)
    assert (state(messages), state(bytes_)) == (state(read_messages), state(read_bytes))


def test_keyed_buckets_are_independent_per_key() -> None:
    buckets = KeyedBuckets(rate=1, burst=2)
    assert [buckets.take("10.0.0.1", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("10.0.0.2", 0.0)
    assert buckets.wait("10.0.0.1", 0.0) == pytest.approx(1.0)
    assert buckets.wait("10.0.0.3", 0.0) == 0.0  # no bucket yet: it would start full


def test_keyed_buckets_drop_refilled_keys() -> None:
    buckets = KeyedBuckets(rate=1, burst=1)
    for n in range(1000):
        buckets.take(f"a{n}", 0.0)
    assert len(buckets) >= 1000  # all still in debt at t=0
    for n in range(1000):
        buckets.take(f"b{n}", 5.0)  # by now every "a" bucket is full again
    assert len(buckets) <= 1000 + 64


def test_keyed_buckets_stay_within_max_keys_under_a_flood_of_keys() -> None:
    buckets = KeyedBuckets(rate=1, burst=5, max_keys=100)
    for n in range(10_000):
        assert buckets.take(f"k{n}", 0.0)  # a new key starts full, even after evictions
        assert len(buckets) <= 100


@given(
    rate=rates, burst=bursts,
    calls=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 150), st.integers(1, 6)), min_size=100, max_size=400),
)
def test_dropping_refilled_keys_never_changes_a_decision(
    rate: int, burst: int, calls: list[tuple[int, int, int]]
) -> None:
    # A refilled bucket is a new bucket: the table (which sweeps once it holds 64 keys)
    # decides as one that kept every key.
    buckets = KeyedBuckets(rate, burst)
    kept: dict[str, TokenBucket] = {}
    for now, (_, key, cost) in zip(times([ms for ms, _, _ in calls]), calls, strict=True):
        expected = kept.setdefault(str(key), TokenBucket(rate, burst, now)).take(now, cost)
        assert buckets.take(str(key), now, cost) == expected
    assert len(buckets) <= len(kept)


def test_a_hit_window_trips_on_the_limit_th_hit_within_the_window() -> None:
    hits = HitWindow(limit=3, window=10.0)
    assert [hits.hit(t) for t in (0.0, 1.0)] == [False, False]
    assert hits.hit(9.0)
    assert not HitWindow(limit=3, window=10.0).hit(0.0)


def test_hits_spread_wider_than_the_window_never_trip() -> None:
    hits = HitWindow(limit=3, window=10.0)
    assert not any(hits.hit(t * 5.1) for t in range(100))  # 3 hits always span 10.2 s


def test_a_hit_window_needs_a_positive_limit_and_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        HitWindow(0, 10.0)
