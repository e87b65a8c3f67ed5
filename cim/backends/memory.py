"""Embedded backends: store and discovery in this process (``memory://``, ``cim up``).

One ``MemoryHub`` per process is shared by the route and the server running in it,
the way Redis and ZooKeeper are shared by separate processes. Its inboxes are lost
when the process ends (``--data-dir`` keeps them on disk: ``cim.backends.sqlite``).
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import inspect
import itertools
import math
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import ClassVar

from cim._inbox_py import Slot
from cim.backends.base import (
    CLAIM_MS,
    Accounts,
    Bus,
    Delays,
    DeliveryHandler,
    DeviceLogin,
    Discovery,
    GroupFull,
    GroupInfo,
    Groups,
    InProcessInbox,
    Page,
    Presence,
    ServersCallback,
    Store,
    Stored,
    format_group_id,
    parse_group_id,
)
from cim.config import Config
from cim.frame import IMPLEMENTATION
from cim.server_info import ServerInfo

# The inboxes' hot path, chosen with the frame codec (setup.py builds every extension or none);
# its Slot is typed as the twin's, which the compiled one mirrors (tests/test_inbox.py runs both).
INBOX_CORE = importlib.import_module("cim._inbox" if IMPLEMENTATION == "cython" else "cim._inbox_py")


class MemoryAccounts(Accounts):
    """Accounts in dicts; ids count up from 1, as Redis's INCR does."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._names: dict[int, str] = {}
        self._ids_by_name: dict[str, int] = {}
        self._password_hashes: dict[int, str] = {}

    async def register(self, user_name: str, password_hash: str | None) -> tuple[int, bool]:
        user_id = self._ids_by_name.get(user_name)
        if user_id is not None:
            return user_id, False
        user_id = next(self._ids)
        self._ids_by_name[user_name] = user_id
        self._names[user_id] = user_name
        if password_hash is not None:
            self._password_hashes[user_id] = password_hash
        return user_id, True

    async def user_id(self, user_name: str) -> int | None:
        return self._ids_by_name.get(user_name)

    async def password_hash(self, user_id: int) -> str | None:
        return self._password_hashes.get(user_id)

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        self._password_hashes[user_id] = password_hash

    async def user_name(self, user_id: int) -> str | None:
        return self._names.get(user_id)

    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        return [self._names.get(u) for u in user_ids]


class MemoryPresence(Presence):
    """Devices and claims in dicts; a claim's expiry is checked whenever it is read."""

    def __init__(self) -> None:
        self._devices: dict[int, dict[str, DeviceLogin]] = {}  # user -> confirmed devices
        self._claims: dict[int, dict[str, tuple[str, float]]] = {}  # user -> device -> (server, expiry)
        self._node_numbers = itertools.count()

    def _live_claims(self, user_id: int) -> dict[str, tuple[str, float]]:
        claims = self._claims.get(user_id)
        if claims is None:
            return {}
        now = time.monotonic()
        for device_id in [d for d, (_, expires) in claims.items() if expires <= now]:
            del claims[device_id]
        if not claims:
            del self._claims[user_id]
        return claims

    async def reserve_login(self, user_id: int, server_id: str, ttl: float, device_id: str = "") -> None:
        self._claims.setdefault(user_id, {})[device_id] = (server_id, time.monotonic() + ttl)

    async def confirm_login(self, user_id: int, server_id: str, device_id: str, max_devices: int) -> dict[str, str] | None:
        devices = self._devices.get(user_id, {})
        if sum(1 for d in devices if d != device_id) >= max_devices:
            return None
        before = {d: login.server_id for d, login in devices.items()}
        self._devices.setdefault(user_id, {})[device_id] = DeviceLogin(server_id, time.time_ns() // 1_000_000)
        self._live_claims(user_id).pop(device_id, None)
        return before

    async def logout(self, user_id: int, server_id: str | None = None, device_id: str | None = None) -> dict[str, str]:
        def chosen(device: str, server: str) -> bool:
            return (device_id is None or device == device_id) and (server_id is None or server == server_id)

        claims = self._live_claims(user_id)
        for device in [d for d, (server, _) in claims.items() if chosen(d, server)]:
            del claims[device]
        if not claims:
            self._claims.pop(user_id, None)
        devices = self._devices.get(user_id, {})
        cleared = {d: login.server_id for d, login in devices.items() if chosen(d, login.server_id)}
        for device in cleared:
            del devices[device]
        if not devices:
            self._devices.pop(user_id, None)
        return cleared

    async def servers(self, user_id: int) -> list[str]:
        found = [login.server_id for login in self._devices.get(user_id, {}).values()]
        found += [server for server, _ in self._live_claims(user_id).values()]
        return list(dict.fromkeys(found))

    async def devices(self, user_id: int) -> dict[str, DeviceLogin]:
        return dict(self._devices.get(user_id, {}))

    async def online_user_ids(self) -> list[int]:
        return list(self._devices)

    async def clear_server(self, server_id: str) -> list[int]:
        gone = [u for u, devices in self._devices.items() if any(d.server_id == server_id for d in devices.values())]
        for user_id in gone:
            await self.logout(user_id, server_id)
        return gone

    async def allocate_node_number(self) -> int:
        return next(self._node_numbers)


class MemoryInbox(InProcessInbox):
    """Inboxes in this process (lost when it ends); the embedded hot path.

    Per user a ``Slot`` of ``core`` (``cim._inbox``, compiled, or its pure-Python twin
    ``cim._inbox_py``, chosen with the frame codec; read the twin for the layout). A run
    with nothing to look at message by message (every clientMsgId new and distinct, or
    none at all) is stored by ``core.append_run``; any other goes message by message
    here. Ticks are 1 s, or 1/64 of the max age when that is shorter: a message is kept
    at least the max age and at most two ticks more.
    """

    def __init__(self, config: Config | None = None, clock: Callable[[], float] = time.monotonic,
                 core: ModuleType = INBOX_CORE) -> None:
        config = config or Config()
        self._core = core
        self._slots: dict[int, Slot] = {}
        self._cursors: dict[tuple[int, str], int] = {}
        self._clock = clock
        tick = min(1.0, config.inbox_max_age / 64)
        self._ticks_per_second = 1 / tick
        self._limits = core.Limits(config.dedup_window, config.inbox_max_messages, math.ceil(config.inbox_max_age / tick))
        self._append_run = core.append_run
        self._append_runs = core.append_runs
        self._keep_in = core.keep_in

    def _tick(self) -> int:
        """The clock tick now: age retention's unit."""
        return int(self._clock() * self._ticks_per_second)

    def _slot(self, user_id: int) -> Slot:
        slot = self._slots.get(user_id)
        if slot is None:
            slot = self._slots[user_id] = self._core.Slot()
        return slot

    def append_now(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                   client_msg_ids: list[int]) -> Stored:
        if not bodies:
            return Stored(0, bodies)
        slot = self._slots.get(receiver_id) or self._slot(receiver_id)
        tick = int(self._clock() * self._ticks_per_second)  # _tick, inline: once per read of messages
        first = self._append_run(slot, sender_id, bodies, first_msg_id, client_msg_ids, tick, self._limits)
        if first:
            return Stored(first, bodies)
        return self._append_each_message(slot, sender_id, bodies, client_msg_ids, first_msg_id, tick)

    def append_plain_now(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int) -> int:
        # One compiled call: no dedup record to look at or make, no Stored.
        first: int = self._keep_in(self._slots, receiver_id, bodies, int(self._clock() * self._ticks_per_second),
                                   self._limits)
        return first

    def append_each_now(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                        client_msg_ids: list[int]) -> list[Stored]:
        if not bodies:
            return [Stored(0, bodies) for _ in receiver_ids]
        tick = int(self._clock() * self._ticks_per_second)  # _tick, inline: once per read of messages
        stored: list[Stored] = self._append_runs(self._slots, receiver_ids, sender_id, bodies, first_msg_id,
                                                 client_msg_ids, tick, self._limits, self._append_each_message)
        return stored

    def _append_each_message(self, slot: Slot, sender_id: int, bodies: list[bytes], ids: list[int],
                             first_msg_id: int, tick: int) -> Stored:
        """A run with a duplicate, a clientMsgId 0 among others, or one twice: message by message."""
        recent = slot.recent.get(sender_id)
        if recent is None:
            recent = slot.recent[sender_id] = self._core.Seen()
        older = slot.older.get(sender_id)
        duplicates: dict[int, int] = {}
        kept: list[bytes] = []
        for k, client_msg_id in enumerate(ids):
            if client_msg_id:
                first = recent.get(client_msg_id)
                if first is None and older is not None:
                    first = older.get(client_msg_id)
                if first is not None:
                    duplicates[k] = first
                    continue
                recent.add(client_msg_id, first_msg_id + k)
                slot.pairs += 1
            kept.append(bodies[k])
        if slot.pairs >= self._limits.window:
            slot.next_generation()
        return Stored(self._core.keep(slot, kept, tick, self._limits) if kept else 0, kept, duplicates)

    async def read(self, user_id: int, after_seq: int, limit: int) -> Page:
        slot = self._slots.get(user_id)
        if slot is None:
            return Page([], 0, False)
        limits = self._limits
        first = slot.trim(limits.max_messages, self._tick() - limits.age_ticks)
        after_seq = max(0, after_seq)
        start = max(after_seq + 1, first)
        chunk = slot.bodies[start - first : start - first + max(0, limit)]
        entries = list(zip(range(start, start + len(chunk)), chunk, strict=True))
        return Page(entries, first + len(slot.bodies) - 1, first > after_seq + 1)

    async def read_back(self, user_id: int, before_seq: int, limit: int) -> Page:
        slot = self._slots.get(user_id)
        if slot is None:
            return Page([], 0, False)
        limits = self._limits
        first = slot.trim(limits.max_messages, self._tick() - limits.age_ticks)
        latest = first + len(slot.bodies) - 1
        end = latest + 1 if before_seq <= 0 else min(before_seq, latest + 1)  # the first seq not read
        start = max(first, end - max(0, limit))
        chunk = slot.bodies[start - first : max(start, end) - first]
        return Page(list(zip(range(start, start + len(chunk)), chunk, strict=True)), latest, start == first > 1)

    async def latest(self, user_ids: list[int]) -> list[int]:
        slots = self._slots
        return [slot.base + len(slot.bodies) - 1 if (slot := slots.get(u)) else 0 for u in user_ids]

    async def set_cursors(self, cursors: list[tuple[int, str, int]]) -> None:
        kept = self._cursors
        for user_id, device_id, seq in cursors:
            if seq > kept.get((user_id, device_id), 0):
                kept[user_id, device_id] = seq

    async def cursor(self, user_id: int, device_id: str) -> int:
        return self._cursors.get((user_id, device_id), 0)


class _Group:
    """One named group's name, owner and members."""

    __slots__ = ("name", "owner_id", "members")

    def __init__(self, name: str, owner_id: int, members: set[int]) -> None:
        self.name = name
        self.owner_id = owner_id
        self.members = members


class MemoryGroups(Groups):
    """Groups in dicts, with each user's groups indexed for ``groups_of``."""

    def __init__(self, config: Config | None = None) -> None:
        self._max = (config or Config()).group_max_members
        self._numbers = itertools.count(1)
        self._groups: dict[int, _Group] = {}
        self._of_user: dict[int, set[int]] = {}

    def _group(self, group_id: str) -> tuple[int, _Group] | None:
        number = parse_group_id(group_id)
        group = None if number is None else self._groups.get(number)
        return None if number is None or group is None else (number, group)

    def _index(self, number: int, user_ids: Iterable[int], member: bool) -> None:
        for user_id in user_ids:
            groups = self._of_user.setdefault(user_id, set())
            if member:
                groups.add(number)
            else:
                groups.discard(number)

    async def create(self, owner_id: int, name: str, member_ids: list[int]) -> str:
        members = {owner_id, *member_ids}
        if len(members) > self._max:
            raise GroupFull("", len(members), self._max)
        number = next(self._numbers)
        self._groups[number] = _Group(name, owner_id, members)
        self._index(number, members, True)
        return format_group_id(number)

    async def info(self, group_id: str) -> GroupInfo | None:
        found = self._group(group_id)
        if found is None:
            return None
        group = found[1]
        return GroupInfo(group_id, group.name, group.owner_id, sorted(group.members))

    async def members(self, group_id: str) -> list[int] | None:
        found = self._group(group_id)
        return None if found is None else list(found[1].members)

    async def add(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        found = self._group(group_id)
        if found is None:
            return None
        number, group = found
        added = sorted(set(user_ids) - group.members)
        if len(group.members) + len(added) > self._max:
            raise GroupFull(group_id, len(group.members) + len(added), self._max)
        group.members.update(added)
        self._index(number, added, True)
        return added

    async def remove(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        found = self._group(group_id)
        if found is None:
            return None
        number, group = found
        removed = sorted(group.members.intersection(user_ids))
        group.members.difference_update(removed)
        self._index(number, removed, False)
        return removed

    async def rename(self, group_id: str, name: str) -> bool:
        found = self._group(group_id)
        if found is not None:
            found[1].name = name
        return found is not None

    async def dissolve(self, group_id: str) -> list[int] | None:
        found = self._group(group_id)
        if found is None:
            return None
        number, group = found
        del self._groups[number]
        self._index(number, group.members, False)
        return sorted(group.members)

    async def groups_of(self, user_id: int) -> list[str]:
        return [format_group_id(n) for n in sorted(self._of_user.get(user_id, ()))]


class MemoryDelays(Delays):
    """A heap of (due, id) over the entries; one whose due time moved (a claim) or that is
    done leaves its old heap item behind, skipped when it comes up."""

    def __init__(self) -> None:
        self._due: dict[int, int] = {}
        self._payloads: dict[int, bytes] = {}
        self._heap: list[tuple[int, int]] = []
        self._ids = itertools.count(1)

    def _schedule(self, entry_id: int, due_ms: int) -> None:
        self._due[entry_id] = due_ms
        heapq.heappush(self._heap, (due_ms, entry_id))

    async def add(self, due_ms: int, payload: bytes) -> int:
        entry_id = next(self._ids)
        self._payloads[entry_id] = payload
        self._schedule(entry_id, due_ms)
        return entry_id

    async def take_due(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        taken: list[tuple[int, bytes]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and len(taken) < limit:
            due_ms, entry_id = heapq.heappop(heap)
            if self._due.get(entry_id) == due_ms:  # else a stale item: claimed again since, or done
                self._schedule(entry_id, now_ms + CLAIM_MS)
                taken.append((entry_id, self._payloads[entry_id]))
        return taken

    async def done(self, entry_ids: list[int]) -> None:
        for entry_id in entry_ids:
            self._due.pop(entry_id, None)
            self._payloads.pop(entry_id, None)


class MemoryBus(Bus):
    """Handlers by node id, called on a later loop turn."""

    def __init__(self) -> None:
        self._handlers: dict[str, DeliveryHandler] = {}

    async def subscribe(self, node_id: str, handler: DeliveryHandler) -> None:
        self._handlers[node_id] = handler

    async def publish(self, node_id: str, payload: bytes) -> None:
        handler = self._handlers.get(node_id)
        if handler is not None:
            # Delivered on a later loop turn, as a network bus would: a publisher
            # never re-enters its own handler. call_soon keeps FIFO order.
            asyncio.get_running_loop().call_soon(handler, payload)

    async def broadcast(self, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        for handler in list(self._handlers.values()):
            loop.call_soon(handler, payload)

    def unsubscribe(self, node_id: str) -> None:
        self._handlers.pop(node_id, None)


class MemoryStore(Store):
    """``memory://``: the six store parts in this process."""

    in_process: ClassVar[bool] = True

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(MemoryAccounts(), MemoryPresence(), MemoryInbox(config), MemoryGroups(config), MemoryDelays(),
                         MemoryBus())

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> MemoryStore:
        return hub.open_store(config)


class MemoryDiscovery(Discovery):
    """``memory://``: the servers registered in this process."""

    in_process: ClassVar[bool] = True

    def __init__(self) -> None:
        self._servers: set[ServerInfo] = set()
        self._callbacks: list[ServersCallback] = []

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> MemoryDiscovery:
        return hub.discovery

    async def register(self, server: ServerInfo, restored: Callable[[], None] | None = None) -> None:
        self._servers.add(server)  # in-process: never dropped, so never restored
        await self._notify()

    async def unregister(self, server: ServerInfo) -> None:
        self._servers.discard(server)
        await self._notify()

    async def watch(self, callback: ServersCallback) -> None:
        self._callbacks.append(callback)
        result = callback(self.servers())
        if inspect.isawaitable(result):
            await result

    def servers(self) -> list[ServerInfo]:
        return sorted(self._servers)

    async def _notify(self) -> None:
        for callback in list(self._callbacks):
            result = callback(self.servers())
            if inspect.isawaitable(result):
                await result


class MemoryHub:
    """The embedded backends one process shares: every ``memory://`` URL opened with
    this hub gets its store or its discovery."""

    def __init__(self) -> None:
        self._store: MemoryStore | None = None
        self.discovery = MemoryDiscovery()

    def open_store(self, config: Config) -> MemoryStore:
        """The hub's store; the first call builds it with ``config``'s inbox settings
        (a route and a server in one process run on one Config)."""
        if self._store is None:
            self._store = MemoryStore(config)
        return self._store

    @property
    def store(self) -> MemoryStore:
        """The store ``memory://`` opens (with Config defaults if none was opened yet)."""
        return self.open_store(Config())
