"""The memory inbox's hot path (pure-Python twin of ``cim._inbox``): a user's ``Slot``
and the appends every embedded private or group send makes.

A ``Slot`` holds one user's bodies from seq ``base`` on, age marks for retention and
the dedup records: per sender a ``Seen`` (clientMsgId -> msgId), in two generations
(once ``recent`` holds a window of pairs it becomes ``older`` and the older one is
dropped whole, so the last window of pairs is always remembered and at most twice
that). ``append_run`` stores a run that needs no message-by-message look (its
clientMsgIds rising and each new, or all 0 as CIM's client sends): the common case,
and the one compiled. Anything else it leaves untouched and answers 0, and
``cim.backends.memory`` goes message by message. Retention is checked lazily, here
too: the count once a slot has grown past the cap by a slack, the age when a slot
starts a new clock tick.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType

# The duplicates of a run stored whole (nearly every one): one shared map, read-only.
NO_DUPLICATES: Mapping[int, int] = MappingProxyType({})


@dataclass(slots=True)
class Stored:
    """What an append kept for one receiver (``cim.backends.base.Inbox``; compiled in
    ``cim._inbox``: a group message makes one per receiver)."""

    first_seq: int  # seq of bodies[0]; the j-th stored body has first_seq + j (0 when nothing stored)
    bodies: list[bytes]  # the bodies stored, in order: the input minus duplicates (the same list object when none)
    duplicates: Mapping[int, int] = field(default_factory=lambda: NO_DUPLICATES)  # input index -> the msgId that pair got first


def merged_duplicates(stored: list[Stored]) -> dict[int, int]:
    """The duplicates of every receiver's run in one map (input index -> the msgId that pair
    got first): what a group send answers its sender (``cim.delivery``)."""
    merged: dict[int, int] = {}
    for each in stored:
        if each.duplicates:
            merged.update(each.duplicates)
    return merged


class Seen:
    """One dedup generation's pairs from one sender to one receiver: clientMsgId -> the msgId it got.

    The SDK's clientMsgIds rise (each above the device's last: its clock in µs), so a pair
    whose id is above every one before goes at the end of two flat arrays, which stay
    sorted: a new id is one comparison with the last, a resend is found by binary search.
    An id that comes out of step (another device of the sender, its clock behind) goes to
    ``stragglers``, a dict; those are all below the last id. Flat arrays of uint64 rather
    than a dict of Python ints: 16 bytes a pair instead of about 100, no object per pair
    to make or free, and a new id's check touches no memory but the last id (with a dict,
    its probes were ~6 % of the server's CPU in p2p, missing the cache).
    """

    __slots__ = ("ids", "msg_ids", "stragglers")

    def __init__(self) -> None:
        self.ids = array("Q")  # rising
        self.msg_ids = array("Q")  # msg_ids[k] is what ids[k] got
        self.stragglers: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.ids) + len(self.stragglers)

    def get(self, client_msg_id: int) -> int | None:
        """The msgId the pair got, None if it is not here."""
        ids = self.ids
        if not ids or client_msg_id > ids[-1]:
            return None
        k = bisect_left(ids, client_msg_id)
        if ids[k] == client_msg_id:
            return self.msg_ids[k]
        return self.stragglers.get(client_msg_id)

    def add(self, client_msg_id: int, msg_id: int) -> None:
        """Record a pair that is not here."""
        ids = self.ids
        if not ids or client_msg_id > ids[-1]:
            ids.append(client_msg_id)
            self.msg_ids.append(msg_id)
        else:
            self.stragglers[client_msg_id] = msg_id


# sender -> their pairs: one dedup generation of one receiver
Pairs = dict[int, Seen]


class Limits:
    """What the appends keep: the dedup window, the count cap (and where a trim is due) and the max age in ticks."""

    __slots__ = ("window", "max_messages", "trim_at", "age_ticks")

    def __init__(self, window: int, max_messages: int, age_ticks: int) -> None:
        self.window = window
        self.max_messages = max_messages
        self.trim_at = max_messages + max(16, max_messages // 8)
        self.age_ticks = age_ticks


class Slot:
    """One user's inbox: the bodies from seq ``base`` on, age marks, dedup records."""

    __slots__ = ("base", "bodies", "tick", "mark_ticks", "mark_seqs", "recent", "older", "pairs")

    def __init__(self) -> None:
        self.base = 1  # seq of bodies[0]; the latest seq is base + len(bodies) - 1
        # Retention drops a prefix lazily (``trim``): what is kept may start later.
        self.bodies: list[bytes] = []
        # Age: mark_seqs[i] is the first seq stored in clock tick mark_ticks[i] (ascending).
        self.tick = -1  # mark_ticks[-1], kept apart for the hot path
        self.mark_ticks: list[int] = []
        self.mark_seqs: list[int] = []
        self.recent: Pairs = {}
        self.older: Pairs = {}
        self.pairs = 0  # in ``recent``

    def trim(self, max_messages: int, oldest_tick: int) -> int:
        """Drop what is beyond the last ``max_messages`` or from before ``oldest_tick``;
        the first seq kept (latest + 1: none)."""
        latest = self.base + len(self.bodies) - 1
        first = max(self.base, latest - max_messages + 1)
        ticks = self.mark_ticks
        if ticks and ticks[0] < oldest_tick:
            young = bisect_left(ticks, oldest_tick)
            first = max(first, self.mark_seqs[young] if young < len(ticks) else latest + 1)
        if first > self.base:
            del self.bodies[: first - self.base]
            self.base = first
            older = bisect_right(self.mark_seqs, first) - 1  # the marks before the one ``first`` is in
            if older > 0:
                del ticks[:older], self.mark_seqs[:older]
        return first

    def next_generation(self) -> None:
        """The recent pairs (a window of them) become the older ones; the older are forgotten."""
        self.older, self.recent = self.recent, {}
        self.pairs = 0


def keep(slot: Slot, bodies: list[bytes], tick: int, limits: Limits) -> int:
    """Store ``bodies`` (not empty) in the slot, with the upkeep due; the seq of the first."""
    stored = slot.bodies
    first = slot.base + len(stored)
    stored += bodies
    if slot.tick != tick:  # a new tick's age mark, and the age retention when due
        slot.tick = tick
        slot.mark_ticks.append(tick)
        slot.mark_seqs.append(first)
        if slot.mark_ticks[0] < tick - limits.age_ticks:
            slot.trim(limits.max_messages, tick - limits.age_ticks)
            return first
    if len(stored) > limits.trim_at:
        slot.trim(limits.max_messages, tick - limits.age_ticks)
    return first


def keep_in(slots: dict[int, Slot], receiver_id: int, bodies: list[bytes], tick: int, limits: Limits) -> int:
    """``keep`` in the receiver's slot (made if it has none): messages with no clientMsgId,
    nothing to deduplicate. The seq of the first."""
    slot = slots.get(receiver_id)
    if slot is None:
        slot = slots[receiver_id] = Slot()
    return keep(slot, bodies, tick, limits)


def append_run(slot: Slot, sender_id: int, bodies: list[bytes], first_msg_id: int, client_msg_ids: list[int],
               tick: int, limits: Limits) -> int:
    """Store a run (not empty) for one receiver if it needs no message-by-message look,
    recording its pairs; the seq of its first message, or 0 with nothing changed."""
    if not client_msg_ids:
        raise ValueError("an empty run")
    if not client_msg_ids[0]:
        if any(client_msg_ids):
            return 0  # a clientMsgId 0 among others
        return keep(slot, bodies, tick, limits)  # none at all (CIM's client): nothing to dedup
    if any(later <= earlier for earlier, later in pairwise(client_msg_ids)):
        return 0  # not rising: a 0 among others, an id twice, or a resend's order
    recent = slot.recent.get(sender_id)
    older = slot.older.get(sender_id) if slot.older else None
    for generation in (recent, older):
        if generation is not None and any(generation.get(client_msg_id) is not None for client_msg_id in client_msg_ids):
            return 0
    if recent is None:
        recent = slot.recent[sender_id] = Seen()
    for k, client_msg_id in enumerate(client_msg_ids):
        recent.add(client_msg_id, first_msg_id + k)
    slot.pairs += len(client_msg_ids)
    if slot.pairs >= limits.window:
        slot.next_generation()
    return keep(slot, bodies, tick, limits)


# The memory inbox's message-by-message look: (slot, sender, bodies, clientMsgIds, first msgId, tick).
EachMessage = Callable[[Slot, int, list[bytes], list[int], int, int], Stored]


def append_runs(slots: dict[int, Slot], receiver_ids: list[int], sender_id: int, bodies: list[bytes],
                first_msg_id: int, client_msg_ids: list[int], tick: int, limits: Limits,
                each_message: EachMessage) -> list[Stored]:
    """``append_run`` for each receiver (a group send; a slot is made for a receiver
    without one): per receiver what was stored, the run whole, or, where ``append_run``
    left it, what ``each_message`` (the message-by-message look) stored of it, called
    with the receiver's slot and this call's arguments."""
    stored = []
    for receiver_id in receiver_ids:
        slot = slots.get(receiver_id)
        if slot is None:
            slot = slots[receiver_id] = Slot()
        first = append_run(slot, sender_id, bodies, first_msg_id, client_msg_ids, tick, limits)
        stored.append(Stored(first, bodies) if first
                      else each_message(slot, sender_id, bodies, client_msg_ids, first_msg_id, tick))
    return stored
