"""``--data-dir``: the embedded store's accounts and inboxes on disk (SQLite), through a restart
and through a SIGKILL. The inbox's semantics, shared by every backend, are tests/test_inbox.py's."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cim.backends.memory import MemoryHub, MemoryStore
from cim.backends.registry import STORES, in_process, open_backends
from cim.backends.sqlite import SqliteStore, db_path
from cim.config import Config

ROOT = Path(__file__).resolve().parents[1]
BIG = 2**64 - 5  # a clientMsgId past int64, as a client may pick


async def opened(data_dir: Path, **options: Any) -> SqliteStore:
    """The store a deployment with ``--data-dir data_dir`` opens."""
    store = await STORES.open("memory://", Config(data_dir=str(data_dir), **options), MemoryHub())
    assert isinstance(store, SqliteStore)
    return store


async def test_a_restart_keeps_accounts_messages_dedup_records_and_cursors(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    alice, _ = await store.accounts.register("alice", "hash-a")
    bob, _ = await store.accounts.register("bob", None)
    assert (alice, bob) == (1, 2)
    first = store.inbox.append_now(bob, alice, [b"m1", b"m2", b"m3"], 100, [11, 0, BIG])
    group = store.inbox.append_each_now([alice, bob], 9, [b"g"], 200, [7])
    assert (first.first_seq, [s.first_seq for s in group]) == (1, [1, 4])
    await store.inbox.set_cursors([(bob, "phone", 2), (bob, "", 4)])
    await store.close()

    store = await opened(tmp_path)
    try:
        accounts = store.accounts
        assert await accounts.register("alice", "other") == (alice, False)
        assert await accounts.register("carol", "hash-c") == (3, True)  # ids go on, none reused
        assert (await accounts.password_hash(alice), await accounts.password_hash(bob)) == ("hash-a", None)
        assert await accounts.user_names([bob, 99, alice]) == ["bob", None, "alice"]
        inbox = store.inbox
        assert await inbox.latest([alice, bob, 3]) == [1, 4, 0]
        page = await inbox.read(bob, 0, 10)
        assert (page.entries, page.latest, page.truncated) == ([(1, b"m1"), (2, b"m2"), (3, b"m3"), (4, b"g")], 4, False)
        assert (await inbox.cursor(bob, "phone"), await inbox.cursor(bob, ""), await inbox.cursor(alice, "")) == (2, 4, 0)
        # The resends get the first msgIds and are not stored; a new message takes the next seq.
        again = inbox.append_now(bob, alice, [b"m1", b"m3", b"m5"], 300, [11, BIG, 12])
        assert (again.first_seq, again.bodies, again.duplicates) == (5, [b"m5"], {0: 100, 1: 102})
        assert inbox.append_each_now([alice, bob], 9, [b"g"], 400, [7])[1].duplicates == {0: 200}
    finally:
        await store.close()


async def test_retention_is_kept_through_a_restart_and_seqs_are_never_reused(tmp_path: Path) -> None:
    store = await opened(tmp_path, inbox_max_messages=3)
    store.inbox.append_now(1, 2, [b"1", b"2", b"3", b"4", b"5"], 10, [0] * 5)
    await store.close()
    store = await opened(tmp_path, inbox_max_messages=3)
    page = await store.inbox.read(1, 0, 10)
    assert (page.entries, page.truncated) == ([(3, b"3"), (4, b"4"), (5, b"5")], True)
    await store.close()
    assert sqlite3.connect(db_path(str(tmp_path))).execute("SELECT count(*) FROM messages").fetchone() == (3,)

    await asyncio.sleep(0.1)
    store = await opened(tmp_path, inbox_max_age=0.05)  # restarted with a shorter age: all too old now
    try:
        page = await store.inbox.read(1, 0, 10)
        assert (page.entries, page.latest, page.truncated) == ([], 5, True)
        assert store.inbox.append_now(1, 2, [b"6"], 20, [0]).first_seq == 6
        assert (await store.inbox.read(1, 0, 10)).entries == [(6, b"6")]
    finally:
        await store.close()


# Appends runs of 8 and prints "ok <first seq>" once each append has returned, then sleeps.
CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from cim.backends.memory import MemoryHub
    from cim.backends.sqlite import SqliteStore
    from cim.config import Config

    config = Config(data_dir=sys.argv[1])
    store = SqliteStore(config.data_dir, config, MemoryHub())
    asyncio.run(store.accounts.register("alice", "hash-a"))
    asyncio.run(store.inbox.set_cursors([(1, "", 3)]))
    for k in range(int(sys.argv[2])):
        ids = [8 * k + j + 1 for j in range(8)]
        stored = store.inbox.append_now(1, 2, [b"%d" % i for i in ids], 1000 + 8 * k, ids)
        os.write(1, b"ok %d\\n" % stored.first_seq)  # one write: whole or not at all
    time.sleep(60)
    """
)


async def test_every_acknowledged_append_survives_a_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "20000"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    try:
        acknowledged = [child.stdout.readline() for _ in range(200)]  # the child is still appending
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    acknowledged += child.stdout.read().splitlines()  # printed before the kill: acknowledged too
    child.stdout.close()
    seqs = [int(line.split()[1]) for line in acknowledged]
    assert seqs[:200] == list(range(1, 1601, 8)) and seqs == list(range(1, 8 * len(seqs), 8))

    store = await opened(tmp_path)
    try:
        assert await store.accounts.user_id("alice") == 1
        assert await store.inbox.cursor(1, "") == 3
        latest = (await store.inbox.latest([1]))[0]
        assert latest in (seqs[-1] + 7, seqs[-1] + 15)  # an append committed before its "ok" was printed
        page = await store.inbox.read(1, 0, latest)
        assert page.entries == [(i, b"%d" % i) for i in range(1, latest + 1)]  # seq i holds clientMsgId i
        resent = store.inbox.append_now(1, 2, [b"1", b"x"], 5, [latest, latest + 1])
        assert (resent.duplicates, resent.first_seq) == ({0: 1000 + latest - 1}, latest + 1)
    finally:
        await store.close()


async def test_a_data_dir_opens_sqlite_for_memory_urls_only(tmp_path: Path) -> None:
    hub = MemoryHub()
    config = Config(data_dir=str(tmp_path / "new" / "dir"))  # made if missing
    assert STORES.resolve("memory://") is MemoryStore and STORES.resolve("memory://", config) is SqliteStore
    assert in_process(config)
    route, server = await open_backends(config, hub), await open_backends(config, hub)
    try:
        # A route and a server started apart on one hub: the hub's presence and bus, one database.
        assert route.presence is server.presence is hub.store.presence and route.bus is server.bus is hub.store.bus
        alice, _ = await route.accounts.register("alice", None)
        assert await server.accounts.user_id("alice") == alice
        server.inbox.append_now(alice, 2, [b"hi"], 1, [0])
        assert (await route.inbox.read(alice, 0, 10)).entries == [(1, b"hi")]
    finally:
        await route.close()
        await server.close()
    with pytest.raises(ValueError, match="a data dir is for the memory:// store only, not 'redis://r'"):
        STORES.resolve("redis://r", Config(store="redis://r", data_dir=str(tmp_path)))


async def test_a_database_from_a_later_schema_is_refused(tmp_path: Path) -> None:
    await (await opened(tmp_path)).close()
    db = sqlite3.connect(db_path(str(tmp_path)))
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ValueError, match="schema version 99"):
        await opened(tmp_path)
    assert os.path.exists(db_path(str(tmp_path)))
