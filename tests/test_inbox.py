"""The sequenced Inbox, one suite over every backend: seq, dedup, paging, retention, cursors.

Each backend is opened through the registry as the servers open it: ``memory://``, real
Redis (AOF on), and ``memory://`` with a data dir (SQLite). A hypothesis state machine
checks the memory inbox, the embedded hot path, against a plain model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import cim._inbox_py
from cim.backends.base import Inbox, Page, Store, Stored
from cim.backends.memory import INBOX_CORE, MemoryHub, MemoryInbox
from cim.backends.registry import STORES
from cim.config import Config
from cim.testing.services import redis_server

OpenInbox = Callable[..., Awaitable[Inbox]]
T = TypeVar("T")

ALICE, BOB, CAROL, DAVE = 1, 2, 3, 4


async def open_store(backend: str, workdir: Path, redis_url: str | None, **overrides: Any) -> Store:
    """A store of ``backend`` opened by the registry from a Config with ``overrides``."""
    if backend == "redis":
        assert redis_url is not None
        config = Config(store=redis_url, key_prefix=f"t{uuid.uuid4().hex[:8]}", **overrides)
    elif backend == "sqlite":
        config = Config(data_dir=str(workdir), **overrides)
    else:
        config = Config(**overrides)
    store = await STORES.open(config.store, config, MemoryHub())
    if backend == "sqlite":  # a memory store would pass the suite without keeping anything on disk
        assert type(store.inbox).__module__ == "cim.backends.sqlite", type(store.inbox)
    return store


@pytest.fixture(params=["memory", "memory-python", "redis", "sqlite"])
async def open_inbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenInbox]:
    """Opens an inbox of the param's backend; keyword arguments are Config fields.
    ``memory`` is the registry's (compiled hot path when built), ``memory-python`` the
    same inbox on the pure-Python twin of its hot path."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    stores: list[Store] = []

    async def open_(**overrides: Any) -> Inbox:
        if request.param == "memory-python":
            return MemoryInbox(Config(**overrides), core=cim._inbox_py)
        workdir = tmp_path / f"data{len(stores)}"
        workdir.mkdir()
        stores.append(await open_store(request.param, workdir, redis_url, **overrides))
        return stores[-1].inbox

    yield open_
    for store in stores:
        await store.close()


@pytest.fixture
async def inbox(open_inbox: OpenInbox) -> Inbox:
    return await open_inbox()


async def everything(inbox: Inbox, user_id: int, after_seq: int = 0) -> Page:
    return await inbox.read(user_id, after_seq, 1_000_000)


def seqs(page: Page) -> list[int]:
    return [seq for seq, _ in page.entries]


async def test_seq_counts_from_1_without_gaps(inbox: Inbox) -> None:
    bodies = [b"a", b"b"]
    first = await inbox.append(ALICE, BOB, bodies, 100, [0, 0])
    assert first == Stored(1, bodies) and first.bodies is bodies  # nothing left out: the same list
    assert (await inbox.append(ALICE, BOB, [b"c"], 102, [0])).first_seq == 3
    each = await inbox.append_each([ALICE, CAROL], BOB, [b"d", b"e"], 103, [0, 0])
    assert [(s.first_seq, s.bodies) for s in each] == [(4, [b"d", b"e"]), (1, [b"d", b"e"])]
    assert await inbox.latest([ALICE, CAROL, DAVE]) == [5, 2, 0]
    assert (await everything(inbox, ALICE)) == Page([(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d"), (5, b"e")], 5, False)
    assert (await everything(inbox, CAROL)).entries == [(1, b"d"), (2, b"e")]
    assert await everything(inbox, DAVE) == Page([], 0, False)


async def test_appending_nothing_changes_nothing(inbox: Inbox) -> None:
    assert await inbox.append(ALICE, BOB, [], 100, []) == Stored(0, [])
    assert await inbox.append_each([], BOB, [b"a"], 100, [1]) == []
    assert await inbox.append_each([ALICE, CAROL], BOB, [], 100, []) == [Stored(0, []), Stored(0, [])]
    assert await inbox.latest([ALICE, CAROL]) == [0, 0]


async def test_the_in_process_appends_need_no_await(inbox: Inbox) -> None:
    if not inbox.in_process:
        with pytest.raises(NotImplementedError):
            inbox.append_now(ALICE, BOB, [b"a"], 100, [0])
        return
    assert inbox.append_now(ALICE, BOB, [b"a"], 100, [7]).first_seq == 1
    assert [s.first_seq for s in inbox.append_each_now([ALICE, CAROL], BOB, [b"b"], 101, [8])] == [2, 1]
    assert inbox.append_now(ALICE, BOB, [b"a"], 102, [7]) == Stored(0, [], {0: 100})
    assert (await everything(inbox, ALICE)).entries == [(1, b"a"), (2, b"b")]


async def test_a_resent_pair_gets_its_first_msg_id_and_is_not_stored_again(inbox: Inbox) -> None:
    await inbox.append(ALICE, BOB, [b"1", b"2"], 100, [7, 8])
    again = await inbox.append(ALICE, BOB, [b"2 again", b"3"], 200, [8, 9])
    assert again == Stored(3, [b"3"], {0: 101})
    assert await inbox.append(ALICE, BOB, [b"1 again"], 300, [7]) == Stored(0, [], {0: 100})
    assert (await everything(inbox, ALICE)).entries == [(1, b"1"), (2, b"2"), (3, b"3")]
    assert await inbox.latest([ALICE]) == [3]


async def test_a_pair_is_the_sender_and_the_receiver_s_own(inbox: Inbox) -> None:
    await inbox.append(ALICE, BOB, [b"from bob"], 100, [7])
    assert (await inbox.append(ALICE, CAROL, [b"from carol"], 200, [7])).first_seq == 2  # another sender
    assert (await inbox.append(DAVE, BOB, [b"to dave"], 300, [7])).first_seq == 1  # another receiver
    assert (await inbox.append(ALICE, BOB, [b"resent"], 400, [7])).duplicates == {0: 100}


async def test_a_senders_ids_from_two_devices_out_of_step_are_deduplicated(inbox: Inbox) -> None:
    # The SDK's clientMsgIds grow per device; a sender's two devices interleave theirs, so a
    # new id or a resend may be below the sender's highest id.
    await inbox.append(ALICE, BOB, [b"phone 1"], 100, [1_000])
    await inbox.append(ALICE, BOB, [b"laptop 1", b"laptop 2"], 200, [10, 20])
    await inbox.append(ALICE, BOB, [b"phone 2", b"phone 3"], 300, [1_001, 1_002])
    assert await inbox.append(ALICE, BOB, [b"laptop 2 again"], 400, [20]) == Stored(0, [], {0: 201})
    assert await inbox.append(ALICE, BOB, [b"laptop 3", b"phone 3 again"], 500, [30, 1_002]) == Stored(6, [b"laptop 3"], {1: 301})
    assert await inbox.append(ALICE, BOB, [b"phone 4", b"phone 5"], 600, [1_003, 1_004]) == Stored(7, [b"phone 4", b"phone 5"])
    resent_and_new = await inbox.append(ALICE, BOB, [b"phone 1 again", b"phone 6"], 700, [1_000, 1_005])
    assert resent_and_new == Stored(9, [b"phone 6"], {0: 100})
    assert (await inbox.append(ALICE, CAROL, [b"carol's own"], 800, [5])).first_seq == 10  # pairs are per sender


async def test_client_msg_id_0_is_never_a_duplicate(inbox: Inbox) -> None:
    await inbox.append(ALICE, BOB, [b"a", b"b"], 100, [0, 0])
    assert await inbox.append(ALICE, BOB, [b"c", b"d"], 200, [0, 5]) == Stored(3, [b"c", b"d"])
    assert (await inbox.append(ALICE, BOB, [b"e", b"f"], 300, [0, 5])) == Stored(5, [b"e"], {1: 201})


async def test_a_pair_twice_in_one_append_is_stored_once(inbox: Inbox) -> None:
    assert await inbox.append(ALICE, BOB, [b"a", b"b", b"c"], 100, [5, 6, 5]) == Stored(1, [b"a", b"b"], {2: 100})
    each = await inbox.append_each([CAROL, DAVE], BOB, [b"x", b"y"], 200, [9, 9])
    assert each == [Stored(1, [b"x"], {1: 200}), Stored(1, [b"x"], {1: 200})]


async def test_group_sends_are_deduplicated_per_receiver(inbox: Inbox) -> None:
    await inbox.append_each([ALICE, CAROL], BOB, [b"hi all", b"again"], 100, [7, 8])
    # Resent after a reconnect, when dave had come online too: only dave gets it now.
    resent = await inbox.append_each([ALICE, CAROL, DAVE], BOB, [b"hi all", b"again"], 200, [7, 8])
    assert resent == [Stored(0, [], {0: 100, 1: 101}), Stored(0, [], {0: 100, 1: 101}), Stored(1, [b"hi all", b"again"])]
    assert (await inbox.append(ALICE, BOB, [b"hi all"], 300, [7])).duplicates == {0: 100}  # as a private resend
    await inbox.append(ALICE, CAROL, [b"private"], 400, [9])
    assert await inbox.append_each([ALICE, DAVE], CAROL, [b"group"], 500, [9]) == [Stored(0, [], {0: 400}), Stored(3, [b"group"])]
    assert await inbox.latest([ALICE, CAROL, DAVE]) == [3, 2, 3]


async def test_the_dedup_window_remembers_the_last_pairs(open_inbox: OpenInbox) -> None:
    window = 4
    inbox = await open_inbox(dedup_window=window)
    for k in range(1, window + 1):
        await inbox.append(ALICE, BOB, [b"%d" % k], 100 + k, [k])
    assert (await inbox.append(ALICE, BOB, [b"1"], 200, [1])).duplicates == {0: 101}  # within the window
    for k in range(window + 1, 3 * window + 1):
        await inbox.append(ALICE, CAROL if k % 2 else BOB, [b"%d" % k], 100 + k, [k])
    assert await inbox.append(ALICE, BOB, [b"1"], 300, [1]) == Stored(3 * window + 1, [b"1"])  # forgotten by now
    # Always remembered: the last window of pairs, whoever sent them (the one above included).
    last = await inbox.append(ALICE, CAROL, [b"11"], 400, [2 * window + 3])
    assert last.duplicates == {0: 100 + 2 * window + 3}


async def test_a_group_send_is_forgotten_per_receiver(open_inbox: OpenInbox) -> None:
    window = 4
    inbox = await open_inbox(dedup_window=window)
    await inbox.append_each([ALICE, CAROL], BOB, [b"group"], 100, [7])
    for k in range(2 * window):  # alice's window moves on, carol's does not
        await inbox.append(ALICE, DAVE, [b"%d" % k], 200 + k, [k + 1])
    resent = await inbox.append_each([ALICE, CAROL], BOB, [b"group"], 300, [7])
    assert resent == [Stored(2 * window + 2, [b"group"]), Stored(0, [], {0: 100})]


async def test_a_long_run_in_one_append(inbox: Inbox) -> None:
    n = 9000  # more than Lua passes to one command at once
    ids = list(range(1, n + 1))
    bodies = [b"%d" % k for k in ids]
    assert (await inbox.append(ALICE, BOB, bodies, 10_000, ids)).first_seq == 1
    again = await inbox.append(ALICE, BOB, bodies, 50_000, ids)
    assert again == Stored(0, [], {k: 10_000 + k for k in range(n)})
    assert (await inbox.read(ALICE, n - 2, 10)).entries == [(n - 1, bodies[-2]), (n, bodies[-1])]


async def test_reads_page_through_the_inbox(inbox: Inbox) -> None:
    for k in range(10):
        await inbox.append(ALICE, BOB, [b"m%d" % (k + 1)], 100 + k, [0])
    assert await inbox.read(ALICE, 0, 3) == Page([(1, b"m1"), (2, b"m2"), (3, b"m3")], 10, False)
    assert seqs(await inbox.read(ALICE, 3, 3)) == [4, 5, 6]
    assert await inbox.read(ALICE, 9, 5) == Page([(10, b"m10")], 10, False)
    assert await inbox.read(ALICE, 10, 5) == Page([], 10, False)
    assert await inbox.read(ALICE, 50, 5) == Page([], 10, False)  # a client beyond the latest: nothing
    assert await inbox.read(ALICE, 2, 0) == Page([], 10, False)


async def test_retention_by_count_keeps_the_latest(open_inbox: OpenInbox) -> None:
    inbox = await open_inbox(inbox_max_messages=5)
    for k in range(1, 9):
        await inbox.append(ALICE, BOB, [b"%d" % k], 100 + k, [0])
    assert await everything(inbox, ALICE) == Page([(s, b"%d" % s) for s in range(4, 9)], 8, True)
    assert (await everything(inbox, ALICE, 2)).truncated  # 3 was dropped
    assert not (await everything(inbox, ALICE, 3)).truncated  # nothing after 3 was dropped
    assert not (await everything(inbox, ALICE, 8)).truncated
    assert (await inbox.append(ALICE, BOB, [b"%d" % k for k in range(9, 21)], 200, [0] * 12)).first_seq == 9
    assert seqs(await everything(inbox, ALICE)) == list(range(16, 21))  # a seq is never reused


async def test_retention_by_age(open_inbox: OpenInbox) -> None:
    inbox = await open_inbox(inbox_max_age=0.4)
    await inbox.append(ALICE, BOB, [b"old", b"older"], 100, [0, 0])
    assert seqs(await everything(inbox, ALICE)) == [1, 2]  # young enough
    await asyncio.sleep(0.6)
    assert (await inbox.append(ALICE, BOB, [b"new"], 200, [0])).first_seq == 3
    assert await everything(inbox, ALICE) == Page([(3, b"new")], 3, True)
    assert await everything(inbox, ALICE, 2) == Page([(3, b"new")], 3, False)
    await asyncio.sleep(0.6)
    assert await everything(inbox, ALICE) == Page([], 3, True)  # all gone, the seq stays
    assert await inbox.latest([ALICE]) == [3]
    assert (await inbox.append(ALICE, BOB, [b"newer"], 300, [0])).first_seq == 4


async def test_cursors_only_move_forward(inbox: Inbox) -> None:
    assert await inbox.cursor(ALICE, "") == 0
    await inbox.set_cursors([(ALICE, "", 5), (ALICE, "phone", 3), (BOB, "", 1)])
    await inbox.set_cursors([(ALICE, "", 4), (ALICE, "phone", 7)])
    await inbox.set_cursors([])
    assert [await inbox.cursor(u, d) for u, d in [(ALICE, ""), (ALICE, "phone"), (BOB, ""), (BOB, "phone")]] == [5, 7, 1, 0]


async def test_a_killed_redis_keeps_every_acknowledged_append(tmp_path: Path) -> None:
    """SIGKILL, then a restart on the same dir (AOF on): every append acknowledged more
    than a second before is there. AOF ``everysec`` (what redis_server runs) writes each
    command to the file before the reply unless an fsync is running late, when it may hold
    writes back up to 2 s: a kill then, or a power loss, can lose the last second or two.
    ``appendfsync always`` fsyncs before every reply and loses nothing acknowledged, at
    the cost of one fsync per write."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with redis_server(tmp_path) as url:
        store = await STORES.open(url, Config(store=url, key_prefix=prefix), MemoryHub())
        await store.inbox.append(ALICE, BOB, [b"a", b"b"], 100, [7, 8])
        await store.inbox.append_each([ALICE, CAROL], BOB, [b"c"], 102, [9])
        await store.inbox.set_cursors([(ALICE, "phone", 2)])
        await store.close()
        await asyncio.sleep(1.5)  # past the everysec fsync
        with redis.Redis.from_url(url) as client:
            os.kill(int(client.info("server")["process_id"]), signal.SIGKILL)
    with redis_server(tmp_path) as url:
        store = await STORES.open(url, Config(store=url, key_prefix=prefix), MemoryHub())
        inbox = store.inbox
        # The restarted Redis has no scripts: each kind of call loads its own.
        assert await inbox.append_each([ALICE, CAROL], BOB, [b"b", b"d"], 200, [8, 10]) == [
            Stored(4, [b"d"], {0: 101}), Stored(2, [b"b", b"d"]),
        ]
        await inbox.set_cursors([(ALICE, "phone", 1), (CAROL, "", 1)])
        assert (await inbox.append(ALICE, BOB, [b"c"], 300, [9])).duplicates == {0: 102}
        assert (await everything(inbox, ALICE)).entries == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
        assert await inbox.latest([ALICE, CAROL]) == [4, 3]
        assert (await inbox.cursor(ALICE, "phone"), await inbox.cursor(CAROL, "")) == (2, 1)
        await store.close()


# -- the memory inbox against a model --------------------------------------------------

WINDOW = 3
MAX_MESSAGES = 6
MAX_AGE = 64.0  # ticks of 1 s, so a message goes between 64 s and 66 s after it was stored
MAX_RUN = 3
USERS = st.integers(1, 4)
CLIENT_MSG_IDS = st.lists(st.integers(0, 6), min_size=1, max_size=MAX_RUN)


class MemoryInboxMachine(RuleBasedStateMachine):
    """Random appends (resends among them), group sends, reads and clock steps.

    The model keeps every message with its time and every pair recorded. Where the
    contract leaves room (a pair between one and two windows back, a message between
    the max age and two ticks more) the inbox's answer is checked against both bounds.
    """

    core: ModuleType = cim._inbox_py  # the hot path's twin under test

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.inbox = MemoryInbox(Config(inbox_max_messages=MAX_MESSAGES, inbox_max_age=MAX_AGE, dedup_window=WINDOW),
                                 clock=lambda: self.now, core=self.core)
        self.bodies: dict[int, list[tuple[float, bytes]]] = {}  # user -> (time stored, body) by seq - 1
        self.pairs: dict[int, list[tuple[int, int, int]]] = {}  # receiver -> (sender, clientMsgId, msgId) recorded
        self.next_msg_id = 1
        self.first_kept: dict[int, int] = {}

    def check_append(self, receiver: int, sender: int, ids: list[int], first_msg_id: int, stored: Stored) -> None:
        recorded = self.pairs.setdefault(receiver, [])
        kept: list[bytes] = []
        for k, client_msg_id in enumerate(ids):
            body = b"%d" % (first_msg_id + k)
            back = [i for i, (s, c, _) in enumerate(recorded) if (s, c) == (sender, client_msg_id)]
            age = len(recorded) - back[-1] if back else None  # pairs recorded since, this one included
            if client_msg_id == 0 or age is None or age > 2 * WINDOW + MAX_RUN:
                assert k not in stored.duplicates
            elif age <= WINDOW or k in stored.duplicates:
                assert stored.duplicates.get(k) == recorded[back[-1]][2]
            if k not in stored.duplicates:
                kept.append(body)
                if client_msg_id:
                    recorded.append((sender, client_msg_id, first_msg_id + k))
        assert stored.bodies == kept
        messages = self.bodies.setdefault(receiver, [])
        assert stored.first_seq == (len(messages) + 1 if kept else 0)
        messages += [(self.now, body) for body in kept]

    def run(self, ids: list[int]) -> tuple[int, list[bytes]]:
        first_msg_id = self.next_msg_id
        self.next_msg_id += len(ids)
        return first_msg_id, [b"%d" % (first_msg_id + k) for k in range(len(ids))]

    @rule(receiver=USERS, sender=USERS, ids=CLIENT_MSG_IDS)
    def append(self, receiver: int, sender: int, ids: list[int]) -> None:
        first_msg_id, bodies = self.run(ids)
        self.check_append(receiver, sender, ids, first_msg_id, self.inbox.append_now(receiver, sender, bodies, first_msg_id, ids))

    @rule(receivers=st.sets(USERS, min_size=1), sender=USERS, ids=CLIENT_MSG_IDS)
    def append_each(self, receivers: set[int], sender: int, ids: list[int]) -> None:
        first_msg_id, bodies = self.run(ids)
        stored = self.inbox.append_each_now(sorted(receivers), sender, bodies, first_msg_id, ids)
        for receiver, each in zip(sorted(receivers), stored, strict=True):
            self.check_append(receiver, sender, ids, first_msg_id, each)

    @rule(seconds=st.sampled_from([0.3, 1.0, 20.0, 63.0, 70.0]))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(user=USERS, after=st.integers(-1, 30), limit=st.integers(0, 8))
    def read(self, user: int, after: int, limit: int) -> None:
        messages = self.bodies.get(user, [])
        latest = len(messages)
        whole = at_once(self.inbox.read(user, 0, 1_000_000))
        first = whole.entries[0][0] if whole.entries else latest + 1  # the first seq kept
        # Kept: the count's worth of what is not surely too old, and all that is surely young.
        lowest = max(1, latest - MAX_MESSAGES + 1)
        too_old = [seq for seq, (t, _) in enumerate(messages, 1) if self.now - t >= MAX_AGE + 2]
        young = [seq for seq, (t, _) in enumerate(messages, 1) if self.now - t < MAX_AGE]
        assert max(lowest, too_old[-1] + 1 if too_old else 1) <= first <= max(lowest, young[0] if young else latest + 1)
        assert first >= self.first_kept.get(user, 1)  # nothing comes back
        self.first_kept[user] = first
        start = max(after + 1, first, 1)
        expected = [(seq, messages[seq - 1][1]) for seq in range(start, latest + 1)][:limit]
        assert at_once(self.inbox.read(user, after, limit)) == Page(expected, latest, first > max(0, after) + 1)

    @invariant()
    def latest(self) -> None:
        users = [1, 2, 3, 4]
        assert at_once(self.inbox.latest(users)) == [len(self.bodies.get(u, [])) for u in users]


def at_once(coroutine: Coroutine[Any, Any, T]) -> T:
    """The value of a coroutine that never waits, as the memory inbox's: no event loop needed."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    raise AssertionError("the coroutine waited")


class CompiledMemoryInboxMachine(MemoryInboxMachine):
    core = INBOX_CORE  # compiled when built


TestMemoryInbox = MemoryInboxMachine.TestCase
TestMemoryInbox.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestCompiledMemoryInbox = CompiledMemoryInboxMachine.TestCase
TestCompiledMemoryInbox.settings = TestMemoryInbox.settings


def test_both_twins_of_stored_have_one_interface(inbox_core: ModuleType) -> None:
    """What an append answers (``cim.backends.Stored``: compiled when built) in both twins:
    the fields, no duplicates as one shared read-only map, equality by value, the dataclass's repr."""
    stored = inbox_core.Stored
    bodies = [b"a"]
    made = stored(3, bodies)
    assert (made.first_seq, made.bodies, made.duplicates) == (3, bodies, {}) and made.bodies is bodies
    assert made == stored(3, [b"a"], {}) and made != stored(3, [b"a"], {0: 9}) and made != (3, bodies, {})
    assert stored(1, []).duplicates is stored(2, []).duplicates is inbox_core.NO_DUPLICATES
    assert made == cim._inbox_py.Stored(3, [b"a"]) == made  # across the twins too (a pure core's in a compiled build)
    with pytest.raises(TypeError):
        made.duplicates[0] = 1  # shared by every run stored whole: never written
    assert repr(stored(1, [b"x"], {0: 5})) == "Stored(first_seq=1, bodies=[b'x'], duplicates={0: 5})"
    with pytest.raises(TypeError):
        hash(made)


def test_append_runs_stores_each_receivers_run_whole_or_hands_it_to_the_look_message_by_message(
        inbox_core: ModuleType) -> None:
    """A group send's appends (both twins): a Stored per receiver in order, the run whole at that
    receiver's seq (a slot made for one without); a receiver who has a pair of the run already
    goes to ``each_message`` with their slot, and what it answers is theirs."""
    limits = inbox_core.Limits(100, 1000, 1000)
    slots = {1: inbox_core.Slot(), 2: inbox_core.Slot()}
    assert inbox_core.append_runs(slots, [1], 9, [b"old"], 50, [7], 0, limits, None)[0].first_seq == 1
    looked: list[object] = []
    answer = inbox_core.Stored(0, [], {0: 50})

    def each_message(slot: object, sender_id: int, run: list[bytes], client_msg_ids: list[int], first_msg_id: int,
                     tick: int) -> object:
        looked.append(slot)
        assert (sender_id, run, client_msg_ids, first_msg_id, tick) == (9, bodies, [7, 8], 60, 0)
        return answer

    bodies = [b"x", b"y"]
    stored = inbox_core.append_runs(slots, [2, 3, 1], 9, bodies, 60, [7, 8], 0, limits, each_message)
    assert [(each.first_seq, each.bodies, dict(each.duplicates)) for each in stored[:2]] == [(1, bodies, {}), (1, bodies, {})]
    assert stored[0].bodies is bodies and stored[2] is answer and looked == [slots[1]] and 3 in slots


def test_a_group_sends_duplicates_are_merged_over_its_receivers(inbox_core: ModuleType) -> None:
    stored = inbox_core.Stored
    runs = [stored(4, [b"a", b"b"]), stored(0, [], {0: 70, 1: 71}), stored(9, [b"b"], {0: 70})]
    assert inbox_core.merged_duplicates(runs) == {0: 70, 1: 71}
    assert inbox_core.merged_duplicates(runs[:1]) == {} and inbox_core.merged_duplicates([]) == {}


def test_seen_finds_rising_ids_and_ones_out_of_step(inbox_core: ModuleType) -> None:
    """A sender's pairs (both twins): ids above all before in order, the others (a second
    device's clock behind) apart; each found with the msgId it got, nothing else found."""
    seen = inbox_core.Seen()
    assert len(seen) == 0 and seen.get(5) is None
    for client_msg_id, msg_id in [(1_000, 1), (1_002, 2), (10, 3), (1_005, 4), (1_001, 5), (2**64 - 1, 6)]:
        seen.add(client_msg_id, msg_id)
    assert len(seen) == 6
    assert [seen.get(i) for i in (1_000, 1_002, 10, 1_005, 1_001, 2**64 - 1)] == [1, 2, 3, 4, 5, 6]
    assert [seen.get(i) for i in (9, 11, 999, 1_003, 1_006, 2**64 - 2)] == [None] * 6
    many = inbox_core.Seen()  # past its first growth
    for k in range(1, 100):
        many.add(k * 3, k)
    assert [many.get(k * 3) for k in range(1, 100)] == list(range(1, 100)) and many.get(4) is None


def test_a_run_not_rising_goes_message_by_message(inbox_core: ModuleType) -> None:
    """``append_run`` (both twins) stores a run whole only when its ids rise and are new; any
    other it leaves untouched (0) for the look message by message."""
    limits = inbox_core.Limits(100, 1000, 1000)
    slot = inbox_core.Slot()
    assert inbox_core.append_run(slot, 9, [b"a", b"b"], 50, [7, 8], 0, limits) == 1
    for ids in ([20, 19], [21, 21], [22, 0], [30, 8]):
        assert inbox_core.append_run(slot, 9, [b"x", b"y"], 60, ids, 0, limits) == 0
    assert (slot.base, slot.bodies, slot.pairs, len(slot.recent[9])) == (1, [b"a", b"b"], 2, 2)
    assert inbox_core.append_run(slot, 9, [b"c"], 70, [5], 0, limits) == 3  # below the top, but new
    assert [slot.recent[9].get(i) for i in (5, 7, 8)] == [70, 50, 51]
