"""The small interfaces every deployment is built from.

* ``Accounts``: user names and ids (durable).
* ``Presence``: who is logged in where: login claims, user -> server routes, the users
  of each server, node numbers (ephemeral: lost state only logs users out).
* ``Inbox``: every message for a user, numbered by a per-user seq, for every device
  to sync from; with dedup of resent clientMsgIds, retention and per-device cursors
  (durable, except the embedded in-memory one). ``Stored`` and ``Page`` are what its
  appends and reads answer.
* ``Groups``: named groups: a name, an owner and members (durable, except the
  embedded in-memory one).
* ``Delays``: delayed messages by due time, for the nodes to deliver then (durable,
  except the embedded in-memory one).
* ``Bus``: delivery between cim-server nodes (one channel per node + a broadcast).
* ``Discovery``: the live list of cim-servers, with a watch.

A store URL opens the first six together (a ``Store``), a discovery URL the last
(``cim.backends.registry``); ``memory`` implements all in-process (the embedded
default), ``redis`` a store, ``zookeeper`` discovery. Routes and servers only ever
talk to these interfaces, gathered in ``Backends``.

This module imports nothing from the backends package, so the package and every
backend can import it without a cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

from cim.frame import IMPLEMENTATION
from cim.server_info import ServerInfo

if IMPLEMENTATION == "python":
    from cim._inbox_py import Stored as Stored
    from cim._inbox_py import merged_duplicates as merged_duplicates
else:
    # Compiled: a group message makes one per receiver. Another class than the pure twin's to
    # mypy, which types the name as that one's; tests/test_inbox.py holds both to one interface.
    from cim._inbox import Stored as Stored  # type: ignore[assignment]
    from cim._inbox import merged_duplicates as merged_duplicates  # type: ignore[assignment]


class Accounts(ABC):
    """User accounts: a name and a password hash per id, shared by every route and server."""

    @abstractmethod
    async def register(self, user_name: str, password_hash: str | None) -> tuple[int, bool]:
        """The id of ``user_name`` and whether this call created the account.

        A new account keeps ``password_hash`` (None: none, as under ``--auth none``);
        a taken name keeps its own, so registering it again changes nothing.
        """

    @abstractmethod
    async def user_id(self, user_name: str) -> int | None:
        """The id of the account named ``user_name``, or None if there is none."""

    @abstractmethod
    async def password_hash(self, user_id: int) -> str | None:
        """The account's password hash, or None (no password, or an unknown id)."""

    @abstractmethod
    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace the hash of an existing account (the same password, hashed anew)."""

    @abstractmethod
    async def user_name(self, user_id: int) -> str | None:
        """The account's name, or None for an unknown id."""

    @abstractmethod
    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        """``user_name`` for many ids in one round trip."""


@dataclass(frozen=True, slots=True)
class DeviceLogin:
    """One device of a user, logged in (confirmed by a server): where, and since when."""

    server_id: str
    since_ms: int  # when the server confirmed it, ms since the epoch


class Presence(ABC):
    """Who is logged in on which server, per device: user -> {deviceId: server}.

    A route claims a device for a server (``reserve_login``: a claim that expires), the
    server the client connects to confirms it (``confirm_login``). A user's devices may be
    on different servers (workers sharing a port are picked by the kernel), so delivery
    rings every server in ``servers``. Only confirmed devices are online (``online_user_ids``,
    ``devices``); a claim only routes. CIM's client logs in as device "".
    """

    @abstractmethod
    async def reserve_login(self, user_id: int, server_id: str, ttl: float, device_id: str = "") -> None:
        """Route login: claim the device for ``server_id`` for ``ttl`` seconds (a new claim of
        the same device replaces the old), so a client that never connects locks nothing."""

    @abstractmethod
    async def confirm_login(self, user_id: int, server_id: str, device_id: str, max_devices: int) -> dict[str, str] | None:
        """Server login: the device's connection arrived on ``server_id``.

        Atomically: None (nothing recorded) when the user has ``max_devices`` other devices
        logged in already; else the device is recorded (its claim dropped) and the answer is
        every device logged in before, this one's own earlier login included
        (device id -> server), for the server to end what its policy ends.
        """

    @abstractmethod
    async def logout(self, user_id: int, server_id: str | None = None, device_id: str | None = None) -> dict[str, str]:
        """Log out the user's devices (``device_id``: that one only; ``server_id``: only those
        on that server), their claims included; returns what was cleared (device id -> server):
        calling it twice clears once."""

    @abstractmethod
    async def servers(self, user_id: int) -> list[str]:
        """Every server holding a device of the user, confirmed or claimed (distinct)."""

    @abstractmethod
    async def devices(self, user_id: int) -> dict[str, DeviceLogin]:
        """The user's confirmed devices."""

    @abstractmethod
    async def online_user_ids(self) -> list[int]:
        """Every user with a confirmed device, each once, in a list of the caller's own, by
        incremental iteration (SCAN on Redis, never KEYS, which would block the server). Names
        are the Accounts'."""

    @abstractmethod
    async def clear_server(self, server_id: str) -> list[int]:
        """Log out every device confirmed on a server that died; returns their users' ids."""

    @abstractmethod
    async def allocate_node_number(self) -> int:
        """A number unique among live nodes, for cluster-unique message ids."""


@dataclass(slots=True)
class Page:
    """Messages read from one inbox."""

    entries: list[tuple[int, bytes]]  # (seq, body), ascending, contiguous
    latest: int  # the inbox's latest seq (0: never written)
    truncated: bool  # messages after the read's ``after_seq`` were dropped by retention (count or age)


class Inbox(ABC):
    """Every message for a user, numbered by seq, kept for every device to sync from.

    * Seq is per user, gap-free from 1 and never reused, even after retention dropped
      old messages.
    * Dedup: a (sender, clientMsgId) pair already stored for the receiver is not
      stored again; the append reports it with the msgId the pair got first. A
      receiver's last ``Config.dedup_window`` pairs are always remembered; older
      ones may be, up to about twice the window (they are forgotten in batches).
      clientMsgId 0 means none and is never deduplicated.
    * Retention: the last ``Config.inbox_max_messages`` messages younger than
      ``Config.inbox_max_age`` seconds are kept (an expired one may linger a moment:
      the memory inbox drops it within 2 s, or 1/32 of the max age if that is less).
      A read from before what is kept gets what is kept, flagged ``truncated``.
    * Cursors: per user and device, the last seq the device acknowledged.
    """

    # True: the inbox lives in this process and the *_now methods work (no await on the hot path).
    in_process: ClassVar[bool] = False

    def append_now(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                   client_msg_ids: list[int]) -> Stored:
        """``append`` without an await; in-process inboxes only."""
        raise NotImplementedError(f"{type(self).__name__} is not in this process: await append()")

    def append_each_now(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                        client_msg_ids: list[int]) -> list[Stored]:
        """``append_each`` without an await; in-process inboxes only."""
        raise NotImplementedError(f"{type(self).__name__} is not in this process: await append_each()")

    def append_plain_now(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int) -> int:
        """``append_now`` of messages (not none) with no clientMsgId, so nothing to deduplicate:
        the seq of the first. (The memory inbox has a shorter way: CIM's client sends so.)"""
        return self.append_now(receiver_id, sender_id, bodies, first_msg_id, [0] * len(bodies)).first_seq

    @abstractmethod
    async def append(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                     client_msg_ids: list[int]) -> Stored:
        """Store ``bodies`` for the receiver, in order, each with the receiver's next seq.

        Body k has msgId ``first_msg_id + k`` and the sender's clientMsgId
        ``client_msg_ids[k]``; a pair already stored is left out (``Stored.duplicates``).
        """

    @abstractmethod
    async def append_each(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                          client_msg_ids: list[int]) -> list[Stored]:
        """``append`` for many receivers (a group send): one Stored per receiver, in order."""

    @abstractmethod
    async def read(self, user_id: int, after_seq: int, limit: int) -> Page:
        """Up to ``limit`` kept messages with seq > ``after_seq``, oldest first."""

    @abstractmethod
    async def read_back(self, user_id: int, before_seq: int, limit: int) -> Page:
        """The newest ``limit`` kept messages with seq < ``before_seq`` (0: up to the latest), oldest
        first: paging back through history (``cim.history``). ``truncated``: this page starts at the
        oldest kept message and retention dropped older ones (it is no seq 1)."""

    @abstractmethod
    async def latest(self, user_ids: list[int]) -> list[int]:
        """Each inbox's latest seq (0: never written), in one round trip."""

    @abstractmethod
    async def set_cursors(self, cursors: list[tuple[int, str, int]]) -> None:
        """Keep (user, device id, seq) cursors; a cursor never moves back (max of old and new)."""

    @abstractmethod
    async def cursor(self, user_id: int, device_id: str) -> int:
        """The device's cursor, 0 when never set."""


class InProcessInbox(Inbox):
    """An inbox in this process: the appends are synchronous, their async forms call them."""

    in_process: ClassVar[bool] = True

    @abstractmethod
    def append_now(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                   client_msg_ids: list[int]) -> Stored:
        """As ``append``, on the caller's stack."""

    @abstractmethod
    def append_each_now(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                        client_msg_ids: list[int]) -> list[Stored]:
        """As ``append_each``, on the caller's stack."""

    async def append(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                     client_msg_ids: list[int]) -> Stored:
        return self.append_now(receiver_id, sender_id, bodies, first_msg_id, client_msg_ids)

    async def append_each(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                          client_msg_ids: list[int]) -> list[Stored]:
        return self.append_each_now(receiver_ids, sender_id, bodies, first_msg_id, client_msg_ids)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A named group as kept: its members ascending, the owner always among them."""

    group_id: str
    name: str
    owner_id: int
    members: list[int]


GROUP_ID_PREFIX = "g"


def format_group_id(number: int) -> str:
    """The id of the group numbered ``number`` by its store's counter."""
    return f"{GROUP_ID_PREFIX}{number}"


def parse_group_id(group_id: str) -> int | None:
    """The counter value a group id names, None for a string no store hands out (so a
    made-up id never reaches a key or a query)."""
    digits = group_id[len(GROUP_ID_PREFIX) :]
    if not group_id.startswith(GROUP_ID_PREFIX) or not digits.isascii() or not digits.isdigit() or digits[0] == "0":
        return None
    return int(digits) if len(digits) <= 18 else None


class GroupFull(Exception):
    """A change that would take a group past ``Config.group_max_members``: nothing was changed."""

    def __init__(self, group_id: str, size: int, limit: int) -> None:
        super().__init__(f"group {group_id or '(new)'} would have {size} members; the limit is {limit}")
        self.size = size
        self.limit = limit


class Groups(ABC):
    """Named groups: ids handed out once (``"g"`` + a counter, never reused, even after a
    dissolve), a name, an owner who is always a member, and at most ``Config.group_max_members``
    members. Only the data: who may change what is ``cim.groups``'s rule. A change to a group
    that does not exist (unknown, or dissolved) changes nothing and answers None."""

    @abstractmethod
    async def create(self, owner_id: int, name: str, member_ids: list[int]) -> str:
        """A new group of the owner and ``member_ids``; its id. GroupFull when they are too many."""

    @abstractmethod
    async def info(self, group_id: str) -> GroupInfo | None:
        """The group, or None."""

    @abstractmethod
    async def members(self, group_id: str) -> list[int] | None:
        """The group's members (in no particular order), or None: the send path's one lookup."""

    @abstractmethod
    async def add(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        """Add the users; the ones that were not members yet. GroupFull past the limit (nobody is added)."""

    @abstractmethod
    async def remove(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        """Remove the users; the ones that were members."""

    @abstractmethod
    async def rename(self, group_id: str, name: str) -> bool:
        """Give the group a new name; False if there is no such group."""

    @abstractmethod
    async def dissolve(self, group_id: str) -> list[int] | None:
        """Delete the group; the members it had."""

    @abstractmethod
    async def groups_of(self, user_id: int) -> list[str]:
        """The ids of the groups the user is a member of."""


CLAIM_MS = 30_000  # how long a taken delayed message stays claimed before it comes due again


class Delays(ABC):
    """Delayed messages, each an opaque payload with a due time (ms since the epoch), for
    whichever node polls first to deliver.

    Claim, then deliver, then ``done``: ``take_due`` hands each due entry to one caller
    and moves its due time ``CLAIM_MS`` ahead, atomically, so concurrent takers (every
    node polls) never get the same entry, and an entry whose taker died before ``done``
    comes due again by itself. A pop instead would lose the message if its node died
    between the pop and the inbox append; deliver-then-delete without a claim would have
    every node deliver it. What the claim leaves, a second delivery after a claim that
    lapsed mid-way, the inbox's dedup absorbs: a delayed message is appended with its
    clientMsgId, or its msgId when it has none (``cim.delivery``).
    """

    @abstractmethod
    async def add(self, due_ms: int, payload: bytes) -> int:
        """Keep ``payload`` until ``due_ms``; its entry id."""

    @abstractmethod
    async def take_due(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """Claim up to ``limit`` entries due at ``now_ms``, the earliest first: (id, payload)."""

    @abstractmethod
    async def done(self, entry_ids: list[int]) -> None:
        """Forget delivered (or undeliverable) entries."""


DeliveryHandler = Callable[[bytes], None]


class Bus(ABC):
    """Node-to-node delivery: a channel per node and one broadcast channel."""

    @abstractmethod
    async def subscribe(self, node_id: str, handler: DeliveryHandler) -> None:
        """Call ``handler(payload)`` on the loop for every payload sent to the node or broadcast."""

    @abstractmethod
    async def publish(self, node_id: str, payload: bytes) -> None:
        """Send to one node; order is kept between payloads from one publisher."""

    @abstractmethod
    async def broadcast(self, payload: bytes) -> None:
        """Send to every node, this one included."""

    async def close(self) -> None:
        """Unsubscribe and release connections."""


ServersCallback = Callable[[list[ServerInfo]], Awaitable[None] | None]


class Discovery(ABC):
    """The live list of cim-servers."""

    in_process: ClassVar[bool] = False  # as Store.in_process

    @abstractmethod
    async def register(self, server: ServerInfo, restored: Callable[[], None] | None = None) -> None:
        """Announce this server; it disappears when the process dies.

        A registry that can drop a live server (a ZooKeeper session that expired)
        puts it back when it can and then calls ``restored()`` on the loop: routes
        saw the server leave and logged its users out, so the server claims them back.
        """

    @abstractmethod
    async def unregister(self, server: ServerInfo) -> None:
        """Withdraw this server (graceful shutdown)."""

    @abstractmethod
    async def watch(self, callback: ServersCallback) -> None:
        """Call ``callback(servers)`` on the loop now and on every change."""

    @abstractmethod
    def servers(self) -> list[ServerInfo]:
        """The list as last seen (after ``watch``)."""

    async def close(self) -> None:
        """Stop watching and release the session."""


class Store:
    """What a store URL opens: accounts, presence, inbox, groups, delays and bus on one service.

    The six share the service's connections, so the store, not each part, releases
    them in ``close``. Each backend subclasses it (``MemoryStore``, ``RedisStore``).
    """

    # True for a backend that lives in this process: worker processes cannot share it.
    in_process: ClassVar[bool] = False

    def __init__(self, accounts: Accounts, presence: Presence, inbox: Inbox, groups: Groups, delays: Delays,
                 bus: Bus) -> None:
        self.accounts = accounts
        self.presence = presence
        self.inbox = inbox
        self.groups = groups
        self.delays = delays
        self.bus = bus

    async def close(self) -> None:
        """Release connections, the bus's included."""
        await self.bus.close()


@dataclass
class Backends:
    """Everything a route or a cim-server talks to: a store's six parts and discovery.

    Built from a store (``Backends(store, discovery)``); the parts are fields of their
    own so that callers name what they use (``backends.presence``), not where it lives.
    """

    store: Store
    discovery: Discovery
    accounts: Accounts = field(init=False)
    presence: Presence = field(init=False)
    inbox: Inbox = field(init=False)
    groups: Groups = field(init=False)
    delays: Delays = field(init=False)
    bus: Bus = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = self.store.accounts
        self.presence = self.store.presence
        self.inbox = self.store.inbox
        self.groups = self.store.groups
        self.delays = self.store.delays
        self.bus = self.store.bus

    async def close(self) -> None:
        await self.store.close()
        await self.discovery.close()
