"""The rate limiters with explicit times: token buckets, the same per key, windows of hits.

Times are whole milliseconds drawn by hypothesis (turned into seconds), so a window's
bound is checked exactly, up to float rounding.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_a_bucket_starts_full_then_refills_at_its_rate() -> None:
    # Times in eighths of a second: exact in binary, so a token is exactly one.
    bucket = TokenBucket(rate=4, burst=8, now=100.0)
    assert [bucket.take(100.0) for _ in range(9)] == [True] * 8 + [False]
    assert bucket.wait(100.0) == 0.25
    assert not bucket.take(100.125)  # half a token
    assert bucket.take(100.25)
    assert bucket.wait(100.25) == 0.25
    assert not bucket.take(200.0, cost=9)  # never more than the burst at once
    assert bucket.full(200.0) and bucket.take(200.0, cost=8)


def test_take_up_to_lets_the_first_that_fit_through() -> None:
    bucket = TokenBucket(rate=100, burst=400)
    assert bucket.take_up_to(0.0, 2000) == 400
    assert bucket.take_up_to(0.0, 5) == 0
    assert bucket.take_up_to(1.0, 2000) == 100
    assert bucket.take_up_to(1.0, 0) == 0


def test_charge_goes_into_debt_and_says_for_how_long() -> None:
    bucket = TokenBucket(rate=1000, burst=2000)
    assert bucket.charge(0.0, 1500) == 0.0
    assert bucket.charge(0.0, 1500) == pytest.approx(1.0)  # 1000 over, at 1000/s
    assert not bucket.take(0.5)  # still 500 in debt
    assert bucket.charge(1.0, 0) == 0.0 and bucket.wait(1.0, 1) == pytest.approx(0.001)


def test_an_earlier_time_counts_as_the_latest_seen() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)  # not a refill from 5 to 10 again
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError, match="positive"):
        KeyedBuckets(rate, burst)


@given(rate=rates, burst=bursts, calls=steps)
def test_take_never_allows_more_than_burst_plus_rate_times_span(rate: int, burst: int, calls: list[tuple[int, int]]) -> None:
    bucket = TokenBucket(rate, burst)
    taken = []
    for now, (_, cost) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        if bucket.take(now, cost):
            taken.append((now, float(cost)))
    assert_bound(taken, rate, burst)


@given(rate=rates, burst=bursts, calls=steps)
def test_take_up_to_never_allows_more_than_burst_plus_rate_times_span(
    rate: int, burst: int, calls: list[tuple[int, int]]
) -> None:
    bucket = TokenBucket(rate, burst)
    taken = []
    for now, (_, count) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        allowed = bucket.take_up_to(now, count)
        assert 0 <= allowed <= count
        taken.append((now, float(allowed)))
    assert_bound(taken, rate, burst)


@given(rate=rates, burst=bursts, calls=steps)
def test_a_bucket_that_can_take_does(rate: int, burst: int, calls: list[tuple[int, int]]) -> None:
    # The other side of the bound: a refusal means the tokens were really not there.
    bucket = TokenBucket(rate, burst)
    for now, (_, cost) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        waited = bucket.wait(now, cost)
        assert bucket.take(now, cost) == (waited == 0.0)


@given(rate=rates, burst=bursts, calls=steps)
def test_charging_after_each_pause_keeps_the_bound_give_or_take_one_charge(
    rate: int, burst: int, calls: list[tuple[int, int]]
) -> None:
    # The transport's use: every read is charged, and after an overdraft nothing is
    # read until the debt is paid.
    bucket = TokenBucket(rate, burst)
    taken: list[tuple[float, float]] = []
    resume_at = 0.0
    for now, (_, cost) in zip(times([ms for ms, _ in calls]), calls, strict=True):
        if now < resume_at:
            continue  # reading is paused
        pause = bucket.charge(now, cost)
        taken.append((now, float(cost)))
        resume_at = now + pause
    assert_bound(taken, rate, burst, slack=max((c for _, c in calls), default=0))


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
