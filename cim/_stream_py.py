"""What the hot path reads of each receiver (pure-Python twin of ``cim._stream``): a
connection's ``Stream``, its place in its user's inbox (``cim.server.streams``), and
``SessionCore``, the fields of a logged-in user's ``cim.server.sessions.Session``.

Compiled, a push to a stream reads and writes these as struct fields, not by attribute
lookup: a group message reads them once per receiver. ``Session`` subclasses
``SessionCore`` with its methods; nothing else of either lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cim.messages import Sender
    from cim.server.peer import Peer


@dataclass(slots=True, eq=False)
class Stream:
    """One connection's place in its user's inbox."""

    peer: Peer
    device_id: str
    sent: int = 0  # every seq up to this was written (or, before a sync, is the client's to ask for)
    catching_up: bool = True  # until the login has read the inbox's latest: pushes wait, as in a catch-up
    missed: int = 0  # the highest seq a live push brought while catching up
    acked: int = 0  # the client's DELIVERY_ACK: it has everything up to here
    cursor_written: int = 0  # the device cursor the store has (acked, or sent for a client that never acks)
    syncs: bool = False  # the client sent SYNC: it numbers messages itself (CIM's client does not)
    login_seq: int = 0  # the inbox's latest at login: CIM's client gets older ones by /fetchOfflineMsgs
    replayed: int = 0  # the highest of those it got (by /fetchOfflineMsgs)
    receipts: bool = False  # the login asked for MESSAGE_STATUS frames (wantsReceipts; CIM's client does not know them)

    @property
    def cursor(self) -> int:
        """What the device has: its acks, or, for a client that never acks (CIM's), what was written to it."""
        return self.acked if self.acked or self.syncs else self.sent


GapHandler = Callable[[Stream], None]


class SessionCore:
    """A user logged in on this node: what every push to or from them needs, serialized once
    at login, and their streams (one per connection)."""

    __slots__ = ("user_id", "sender", "receiver_entry", "to_user_field", "gap", "streams")

    def __init__(self, user_id: int, sender: Sender, receiver_entry: bytes, to_user_field: bytes,
                 gap: GapHandler) -> None:
        self.user_id = user_id
        self.sender = sender  # this user as a sender
        self.receiver_entry = receiver_entry  # the receiveUserId entry each push to this user ends with
        self.to_user_field = to_user_field  # the toUserId of private pushes to this user (cim.messages.to_user_field)
        self.gap = gap  # a stream that a push found behind its inbox: catch it up
        self.streams: list[Stream] = []
