"""``memory://`` with ``--data-dir DIR``: the embedded store, its accounts and inboxes on disk.

One SQLite database, ``DIR/cim.sqlite3`` (the stdlib ``sqlite3``), in WAL mode. SQLite rather than an
append-only log of our own: a log would need its own index (reads by seq), compaction (retention, the
dedup window, cursors overwritten in place) and recovery of a torn tail; SQLite has all three, tested,
and WAL makes a commit one sequential append to the log.

Durability: ``synchronous=NORMAL``. A commit appends the transaction to the write-ahead log and returns
without an fsync (the log is fsynced at checkpoints). So every committed transaction survives a crash of
the process (SIGKILL, an OOM kill): it is in the kernel's page cache, which writes it out. A power loss
or a kernel crash can lose the transactions committed since the last checkpoint (a suffix of them: the
database stays consistent, the log is checksummed). ``synchronous=FULL`` would survive that too by
fsyncing the log at every commit: a millisecond or more per append, on the event loop. Checkpoints are
SQLite's own, in the committing call once the log holds 1,000 pages (a few hundred appends): a pause of
a few milliseconds, with its two fsyncs.

Presence and the bus stay the hub's, in memory: they are ephemeral by design (a restart logs everyone
out), and the hub shares them with a route in this process. Nothing else is cached in memory, so two
stores opened on one hub (a route and a server started apart) see each other's writes.

The inbox is in-process (``Inbox.in_process``): its appends run on the event loop thread, one
transaction per call with prepared statements (``sqlite3``'s cache, by SQL text), as the embedded hot
path has no await to spare. They raise ``sqlite3.Error`` when the disk fails them (full, read-only):
nothing of the call is then stored.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

from cim.backends.base import (
    CLAIM_MS,
    Accounts,
    Delays,
    GroupFull,
    GroupInfo,
    Groups,
    InProcessInbox,
    Page,
    Store,
    Stored,
    format_group_id,
    parse_group_id,
)

if TYPE_CHECKING:
    from cim.backends.memory import MemoryHub
    from cim.config import Config

DATABASE = "cim.sqlite3"
SCHEMA_VERSION = 1  # PRAGMA user_version: a database a later cim wrote is refused, not misread
SCHEMA = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,  -- the largest + 1: from 1, never reused (accounts are never deleted)
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT
);
CREATE TABLE IF NOT EXISTS inboxes (
    user_id INTEGER PRIMARY KEY,
    latest INTEGER NOT NULL,  -- the last seq given out
    floor INTEGER NOT NULL,   -- the oldest seq retention keeps (latest + 1: none); older rows are deleted
    floor_at REAL NOT NULL,   -- the floor message's time or earlier (inf: none), so the age is rarely looked up
    pairs INTEGER NOT NULL    -- dedup pairs recorded so far: the newest one's ordinal
);
-- In append order, indexed by (user, seq): a commit then writes the table's last page and an index
-- page, where a table keyed by (user, seq) would split and rebalance pages in the middle of the file.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,  -- time.time() of the append, for retention by age
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (user_id, seq);
CREATE TABLE IF NOT EXISTS dedup (
    user_id INTEGER NOT NULL,
    sender_id INTEGER NOT NULL,
    client_msg_id INTEGER NOT NULL,  -- uint64 as SQLite's int64 (the same bits)
    msg_id INTEGER NOT NULL,         -- likewise
    ordinal INTEGER NOT NULL,        -- 1 for the receiver's first pair, and so on: the oldest go first
    PRIMARY KEY (user_id, sender_id, client_msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    user_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
-- Named groups (added within schema version 1: a database without them gets them at open, and
-- an older cim reading this one never looks at them). AUTOINCREMENT: a dissolved group's id is never reused.
CREATE TABLE IF NOT EXISTS named_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    group_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_user ON group_members (user_id, group_id);
-- Delayed messages (added within schema version 1, as the groups were). AUTOINCREMENT: an id done
-- is never handed out again, so a late ``done`` of a lapsed claim cannot delete a newer entry.
CREATE TABLE IF NOT EXISTS delays (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    due_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS delays_by_due ON delays (due_ms, id);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

IN_LIST = "IN (SELECT value FROM json_each(?))"  # one parameter for a list of values: a JSON array


class ByUsers:
    """A query over a list of user ids (``{users}`` in its SQL, the first parameter) in two forms:
    ``= ?`` for one id, a key lookup, the append hot path's case (the JSON array costs 2 µs more),
    and ``IN_LIST`` for more."""

    def __init__(self, sql: str) -> None:
        self.one = sql.format(users="= ?")
        self.many = sql.format(users=IN_LIST)

    def __call__(self, db: sqlite3.Connection, user_ids: list[int], *parameters: object) -> sqlite3.Cursor:
        if len(user_ids) == 1:
            return db.execute(self.one, (user_ids[0], *parameters))
        return db.execute(self.many, (str(user_ids), *parameters))


INBOXES = ByUsers("SELECT user_id, latest, floor, floor_at, pairs FROM inboxes WHERE user_id {users}")
LATEST = ByUsers("SELECT user_id, latest FROM inboxes WHERE user_id {users}")
NAMES = ByUsers("SELECT id, name FROM accounts WHERE id {users}")
FIND_PAIRS = ByUsers(
    f"SELECT user_id, client_msg_id, msg_id FROM dedup WHERE user_id {{users}} AND sender_id = ? AND client_msg_id {IN_LIST}"
)
SAVE_INBOX = "INSERT OR REPLACE INTO inboxes VALUES (?, ?, ?, ?, ?)"
INSERT_MESSAGE = "INSERT INTO messages (user_id, seq, at, body) VALUES (?, ?, ?, ?)"
FIRST_FRESH = "SELECT seq, at FROM messages WHERE user_id = ? AND seq >= ? AND at >= ? ORDER BY seq LIMIT 1"
DROP_MESSAGES = "DELETE FROM messages WHERE user_id = ? AND seq < ?"
READ = "SELECT seq, body FROM messages WHERE user_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
READ_RANGE = "SELECT seq, body FROM messages WHERE user_id = ? AND seq >= ? AND seq < ? ORDER BY seq"
SAVE_PAIR = "INSERT INTO dedup VALUES (?, ?, ?, ?, ?)"
FORGET_PAIRS = "DELETE FROM dedup WHERE user_id = ? AND ordinal <= ?"
SAVE_CURSOR = (
    "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET seq = max(seq, excluded.seq)"
)
CURSOR = "SELECT seq FROM cursors WHERE user_id = ? AND device_id = ?"

UINT63 = 1 << 63
UINT64 = 1 << 64


def db_path(data_dir: str) -> str:
    """The database file of a data dir."""
    return os.path.join(data_dir, DATABASE)


def connect(data_dir: str) -> sqlite3.Connection:
    """The database in ``data_dir`` (made if missing), in WAL mode, its tables created."""
    os.makedirs(data_dir, exist_ok=True)
    # isolation_level=None: no implicit BEGIN; ``transaction`` opens each one.
    db = sqlite3.connect(db_path(data_dir), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # the module docstring says what it keeps
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(f"{db_path(data_dir)} has schema version {version}; this cim reads {SCHEMA_VERSION}")
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    # IMMEDIATE takes the write lock at once: a deferred one could fail to upgrade mid-way.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.commit()
    except BaseException:  # a failed commit (a full disk) too: the next call must find no transaction open
        db.rollback()
        raise


def signed(value: int) -> int:
    """A uint64 as the int64 SQLite stores (the same 64 bits)."""
    return value - UINT64 if value >= UINT63 else value


def unsigned(value: int) -> int:
    """``signed`` undone."""
    return value + UINT64 if value < 0 else value


class SqliteAccounts(Accounts):
    """Accounts in a table; ids count up from 1, as MemoryAccounts' and Redis's INCR do."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def register(self, user_name: str, password_hash: str | None) -> tuple[int, bool]:
        with transaction(self._db):
            row = self._db.execute("SELECT id FROM accounts WHERE name = ?", (user_name,)).fetchone()
            if row is not None:
                return row[0], False
            cursor = self._db.execute("INSERT INTO accounts (name, password_hash) VALUES (?, ?)", (user_name, password_hash))
            assert cursor.lastrowid is not None
            return cursor.lastrowid, True

    async def user_id(self, user_name: str) -> int | None:
        row = self._db.execute("SELECT id FROM accounts WHERE name = ?", (user_name,)).fetchone()
        return None if row is None else row[0]

    async def password_hash(self, user_id: int) -> str | None:
        row = self._db.execute("SELECT password_hash FROM accounts WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else row[0]

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        with transaction(self._db):
            self._db.execute("UPDATE accounts SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    async def user_name(self, user_id: int) -> str | None:
        row = self._db.execute("SELECT name FROM accounts WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else row[0]

    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        found = dict(NAMES(self._db, user_ids))
        return [found.get(u) for u in user_ids]


class _Counters:
    """One inbox's row of ``inboxes``: read at the start of a call, saved at its end."""

    __slots__ = ("latest", "floor", "floor_at", "pairs")

    def __init__(self, latest: int = 0, floor: int = 1, floor_at: float = math.inf, pairs: int = 0) -> None:
        self.latest = latest
        self.floor = floor
        self.floor_at = floor_at
        self.pairs = pairs


class _Writes:
    """The rows an append call writes, one executemany per statement when it ends."""

    __slots__ = ("messages", "pairs", "forgotten", "dropped")

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, float, bytes]] = []  # (user, seq, at, body)
        self.pairs: list[tuple[int, int, int, int, int]] = []  # a dedup row
        self.forgotten: list[tuple[int, int]] = []  # (user, the last ordinal to forget)
        self.dropped: list[tuple[int, int]] = []  # (user, the new floor)

    def flush(self, db: sqlite3.Connection, counters: dict[int, _Counters]) -> None:
        db.executemany(INSERT_MESSAGE, self.messages)
        # In this order: a floor or a forgotten ordinal may be past rows this call inserted.
        for statement, rows in ((SAVE_PAIR, self.pairs), (FORGET_PAIRS, self.forgotten), (DROP_MESSAGES, self.dropped)):
            if rows:
                db.executemany(statement, rows)
        db.executemany(SAVE_INBOX, [(u, c.latest, c.floor, c.floor_at, c.pairs) for u, c in counters.items()])


class SqliteInbox(InProcessInbox):
    """Inboxes in tables: each one's counters, the messages kept, dedup pairs and cursors.

    An append call, for one receiver or a group, is one transaction of a few statements
    whatever the number of receivers: the counters and the pairs already stored are read
    with one query each, the new rows written with one executemany per table.
    """

    def __init__(self, db: sqlite3.Connection, config: Config) -> None:
        self._db = db
        self._max_messages = config.inbox_max_messages
        self._max_age = config.inbox_max_age
        self._window = config.dedup_window

    def append_now(
        self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int, client_msg_ids: list[int]
    ) -> Stored:
        return self.append_each_now([receiver_id], sender_id, bodies, first_msg_id, client_msg_ids)[0]

    def append_each_now(
        self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int, client_msg_ids: list[int]
    ) -> list[Stored]:
        if not bodies or not receiver_ids:
            return [Stored(0, bodies) for _ in receiver_ids]
        now = time.time()
        with transaction(self._db):
            counters = self._counters(receiver_ids)
            seen = self._seen(receiver_ids, sender_id, client_msg_ids) if any(client_msg_ids) else None
            writes = _Writes()
            stored = [
                self._append(writes, counters[r], seen, now, r, sender_id, bodies, first_msg_id, client_msg_ids)
                for r in receiver_ids
            ]
            writes.flush(self._db, counters)
        return stored

    async def read(self, user_id: int, after_seq: int, limit: int) -> Page:
        inbox = self._counters([user_id])[user_id]
        self._expire(user_id, inbox, time.time())
        after_seq = max(0, after_seq)
        # max(0, limit): SQLite reads a negative LIMIT as none.
        entries = self._db.execute(READ, (user_id, max(after_seq + 1, inbox.floor), max(0, limit))).fetchall()
        return Page(entries, inbox.latest, after_seq + 1 < inbox.floor)

    async def read_back(self, user_id: int, before_seq: int, limit: int) -> Page:
        inbox = self._counters([user_id])[user_id]
        self._expire(user_id, inbox, time.time())
        end = inbox.latest + 1 if before_seq <= 0 else min(before_seq, inbox.latest + 1)  # the first seq not read
        start = max(inbox.floor, end - max(0, limit))
        entries = self._db.execute(READ_RANGE, (user_id, start, end)).fetchall()
        return Page(entries, inbox.latest, start == inbox.floor > 1)

    async def latest(self, user_ids: list[int]) -> list[int]:
        found = dict(LATEST(self._db, user_ids))
        return [found.get(u, 0) for u in user_ids]

    async def set_cursors(self, cursors: list[tuple[int, str, int]]) -> None:
        with transaction(self._db):
            self._db.executemany(SAVE_CURSOR, [c for c in cursors if c[2] > 0])  # 0, never set, is the least

    async def cursor(self, user_id: int, device_id: str) -> int:
        row = self._db.execute(CURSOR, (user_id, device_id)).fetchone()
        return 0 if row is None else int(row[0])

    def _counters(self, user_ids: list[int]) -> dict[int, _Counters]:
        """Each inbox's counters (a never written one's are the defaults); one object per user."""
        found = {row[0]: _Counters(*row[1:]) for row in INBOXES(self._db, user_ids)}
        return {u: found.get(u) or _Counters() for u in user_ids}

    def _seen(self, receiver_ids: list[int], sender_id: int, client_msg_ids: list[int]) -> dict[tuple[int, int], int]:
        """(receiver, clientMsgId) -> msgId of the sender's pairs among these already stored."""
        asked = str([signed(c) for c in client_msg_ids if c])
        rows = FIND_PAIRS(self._db, receiver_ids, sender_id, asked)
        return {(u, unsigned(c)): unsigned(m) for u, c, m in rows}

    def _append(
        self,
        writes: _Writes,
        inbox: _Counters,
        seen: dict[tuple[int, int], int] | None,
        now: float,
        receiver_id: int,
        sender_id: int,
        bodies: list[bytes],
        first_msg_id: int,
        client_msg_ids: list[int],
    ) -> Stored:
        """One receiver's append: its rows into ``writes``, its counters moved on."""
        kept = bodies
        duplicates: dict[int, int] = {}
        if seen is not None:
            duplicates = self._deduplicate(writes, inbox, seen, receiver_id, sender_id, first_msg_id, client_msg_ids)
            if duplicates:
                kept = [body for k, body in enumerate(bodies) if k not in duplicates]
                if not kept:
                    return Stored(0, kept, duplicates)
        floor = inbox.floor
        self._expire(receiver_id, inbox, now)  # before this call's rows, which the query cannot see
        if inbox.floor > inbox.latest:  # nothing kept: these are the oldest
            inbox.floor_at = now
        first_seq = inbox.latest + 1
        writes.messages += [(receiver_id, first_seq + j, now, body) for j, body in enumerate(kept)]
        inbox.latest += len(kept)
        inbox.floor = max(inbox.floor, inbox.latest - self._max_messages + 1)  # floor_at: still a lower bound
        if inbox.floor > floor:
            writes.dropped.append((receiver_id, inbox.floor))
        return Stored(first_seq, kept, duplicates)

    def _deduplicate(
        self,
        writes: _Writes,
        inbox: _Counters,
        seen: dict[tuple[int, int], int],
        receiver_id: int,
        sender_id: int,
        first_msg_id: int,
        client_msg_ids: list[int],
    ) -> dict[int, int]:
        """Record the receiver's new pairs (in ``seen`` too, for a later one in this call); the
        duplicates, input index -> the msgId the pair got first."""
        duplicates: dict[int, int] = {}
        pairs = inbox.pairs
        for k, client_msg_id in enumerate(client_msg_ids):
            if not client_msg_id:
                continue
            original = seen.get((receiver_id, client_msg_id))
            if original is not None:
                duplicates[k] = original
                continue
            pairs += 1
            seen[receiver_id, client_msg_id] = first_msg_id + k
            writes.pairs.append((receiver_id, sender_id, signed(client_msg_id), signed(first_msg_id + k), pairs))
        # Once per window's worth of new pairs, all but the last window go: each pair is kept for a
        # window at least and forgotten within two, and the delete's scan of the receiver's pairs (two
        # windows at most) costs O(1) per pair.
        if pairs > self._window and pairs // self._window > inbox.pairs // self._window:
            writes.forgotten.append((receiver_id, pairs - self._window))
        inbox.pairs = pairs
        return duplicates

    def _expire(self, user_id: int, inbox: _Counters, now: float) -> None:
        """Move the floor past the messages older than the max age, from the front (as by count:
        the first young one keeps the rest)."""
        cutoff = now - self._max_age
        if inbox.floor_at >= cutoff:
            return
        row = self._db.execute(FIRST_FRESH, (user_id, inbox.floor, cutoff)).fetchone()
        inbox.floor, inbox.floor_at = (inbox.latest + 1, math.inf) if row is None else row


GROUP = "SELECT name, owner_id FROM named_groups WHERE id = ?"
GROUP_MEMBERS = "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id"
ADD_MEMBER = "INSERT OR IGNORE INTO group_members VALUES (?, ?)"
REMOVE_MEMBER = "DELETE FROM group_members WHERE group_id = ? AND user_id = ?"


class SqliteGroups(Groups):
    """Groups in two tables; each change one transaction, so the size limit holds under any interleaving."""

    def __init__(self, db: sqlite3.Connection, config: Config) -> None:
        self._db = db
        self._max = config.group_max_members

    def _members(self, number: int) -> list[int] | None:
        """The members of a group that exists, else None (a group always holds its owner)."""
        return [row[0] for row in self._db.execute(GROUP_MEMBERS, (number,))] or None

    async def create(self, owner_id: int, name: str, member_ids: list[int]) -> str:
        members = sorted({owner_id, *member_ids})
        if len(members) > self._max:
            raise GroupFull("", len(members), self._max)
        with transaction(self._db):
            number = self._db.execute("INSERT INTO named_groups (name, owner_id) VALUES (?, ?)", (name, owner_id)).lastrowid
            assert number is not None
            self._db.executemany(ADD_MEMBER, [(number, m) for m in members])
        return format_group_id(number)

    async def info(self, group_id: str) -> GroupInfo | None:
        number = parse_group_id(group_id)
        row = None if number is None else self._db.execute(GROUP, (number,)).fetchone()
        if number is None or row is None:
            return None
        return GroupInfo(group_id, row[0], row[1], self._members(number) or [])

    async def members(self, group_id: str) -> list[int] | None:
        number = parse_group_id(group_id)
        return None if number is None else self._members(number)

    async def add(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        return self._change(group_id, user_ids, ADD_MEMBER, joining=True)

    async def remove(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        return self._change(group_id, user_ids, REMOVE_MEMBER, joining=False)

    def _change(self, group_id: str, user_ids: list[int], statement: str, joining: bool) -> list[int] | None:
        """Add (``joining``) or remove the users not yet (or still) members, in one transaction;
        those changed, or None for no such group. An add over the limit changes nothing."""
        number = parse_group_id(group_id)
        if number is None:
            return None
        with transaction(self._db):
            members = self._members(number)
            if members is None:
                return None
            changed = sorted(set(user_ids).difference(members) if joining else set(user_ids).intersection(members))
            if joining and len(members) + len(changed) > self._max:
                raise GroupFull(group_id, len(members) + len(changed), self._max)
            self._db.executemany(statement, [(number, u) for u in changed])
        return changed

    async def rename(self, group_id: str, name: str) -> bool:
        number = parse_group_id(group_id)
        if number is None:
            return False
        with transaction(self._db):
            return self._db.execute("UPDATE named_groups SET name = ? WHERE id = ?", (name, number)).rowcount > 0

    async def dissolve(self, group_id: str) -> list[int] | None:
        number = parse_group_id(group_id)
        if number is None:
            return None
        with transaction(self._db):
            members = self._members(number)
            self._db.execute("DELETE FROM group_members WHERE group_id = ?", (number,))
            self._db.execute("DELETE FROM named_groups WHERE id = ?", (number,))
        return members

    async def groups_of(self, user_id: int) -> list[str]:
        rows = self._db.execute("SELECT group_id FROM group_members WHERE user_id = ? ORDER BY group_id", (user_id,))
        return [format_group_id(row[0]) for row in rows]


class SqliteDelays(Delays):
    """Delayed messages in a table indexed by due time; a take is one transaction (claim and read)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def add(self, due_ms: int, payload: bytes) -> int:
        with transaction(self._db):
            entry_id = self._db.execute("INSERT INTO delays (due_ms, payload) VALUES (?, ?)", (due_ms, payload)).lastrowid
        assert entry_id is not None
        return entry_id

    async def take_due(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        with transaction(self._db):
            rows = self._db.execute(
                "SELECT id, payload FROM delays WHERE due_ms <= ? ORDER BY due_ms, id LIMIT ?", (now_ms, limit)
            ).fetchall()
            ids = json.dumps([row[0] for row in rows])
            self._db.execute(f"UPDATE delays SET due_ms = ? WHERE id {IN_LIST}", (now_ms + CLAIM_MS, ids))
        return [(row[0], row[1]) for row in rows]

    async def done(self, entry_ids: list[int]) -> None:
        with transaction(self._db):
            self._db.execute(f"DELETE FROM delays WHERE id {IN_LIST}", (json.dumps(entry_ids),))


class SqliteStore(Store):
    """``memory://`` with a data dir: accounts, inboxes, groups and delays on disk, presence and the bus the hub's."""

    in_process: ClassVar[bool] = True

    def __init__(self, data_dir: str, config: Config, hub: MemoryHub) -> None:
        self._db = connect(data_dir)
        shared = hub.open_store(config)
        super().__init__(SqliteAccounts(self._db), shared.presence, SqliteInbox(self._db, config),
                         SqliteGroups(self._db, config), SqliteDelays(self._db), shared.bus)

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> SqliteStore:
        if config.data_dir is None:
            raise ValueError("the SQLite store keeps its database in a data dir (--data-dir), and none is set")
        return cls(config.data_dir, config, hub)

    async def close(self) -> None:
        await super().close()
        self._db.close()
