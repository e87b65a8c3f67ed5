"""Role: what each connection has been sent of its user's inbox.

Every message for a user is in their inbox, numbered by ``seq``, before any push of
it leaves (``cim.backends.base.Inbox``). A connection's ``Stream`` remembers the
last seq written to it (``sent``), so a live push is written once and in order: one
that was written already (a sync got there first) is skipped, one that leaves a gap
(a lost or overtaken doorbell) starts a catch-up from the inbox instead
(``cim.server.catchup``). While a catch-up runs, live pushes are not written but
remembered (``missed``): the catch-up reads until it has passed them, so the seam
between stored and live messages has no gap and no duplicate. ``Owner`` is what the
hot path (``cim.server.lane``, ``cim.server.resends``) uses of the user the streams belong to.
``Stream`` and ``SessionCore`` (the fields of that user's session) are compiled
(``cim/_stream.pyx``, twin ``cim/_stream_py.py``), chosen with the frame codec.
"""

from __future__ import annotations

from typing import Protocol

from cim._stream_py import GapHandler
from cim.frame import IMPLEMENTATION
from cim.messages import Sender
from cim.server.peer import Peer
from cim.wire import frame_sequenced

if IMPLEMENTATION == "python":
    from cim._stream_py import SessionCore, Stream
else:
    # Compiled: the hot path reads them as structs. Other classes than the pure twin's to mypy,
    # which types the names as those; tests/test_sessions.py holds both to one interface.
    from cim._stream import SessionCore, Stream  # type: ignore[assignment]

__all__ = ["GapHandler", "Owner", "SessionCore", "Stream", "offer"]


def offer(stream: Stream, bodies: list[bytes], first_seq: int, receiver_entry: bytes, at_once: bool,
          gap: GapHandler) -> bytes | None:
    """Write a live push of ``bodies`` (seqs ``first_seq``...) to the stream's peer, minus
    what it has; returns the frame written when it was all of them (for the user's other
    peers to reuse), else None. A gap is handed to ``gap`` and nothing is written."""
    last = first_seq + len(bodies) - 1
    if stream.catching_up:
        if last > stream.missed:
            stream.missed = last
        return None
    sent = stream.sent
    if last <= sent:
        return None  # written already, by a catch-up that read it from the inbox
    if first_seq > sent + 1:
        stream.catching_up = True
        stream.missed = last
        gap(stream)
        return None
    skip = sent + 1 - first_seq  # > 0 only when a catch-up wrote the first ones
    frame = frame_sequenced(bodies[skip:] if skip else bodies, sent + 1, receiver_entry)
    stream.peer.push(frame, at_once)
    stream.sent = last
    return None if skip else frame


class Owner(Protocol):
    """What the hot path uses of a logged-in user's ``cim.server.sessions.Session`` (which
    pushes through ``cim.server.lane.push_live``, so the lane does not import it)."""

    @property
    def user_id(self) -> int: ...
    @property
    def sender(self) -> Sender: ...
    @property
    def receiver_entry(self) -> bytes: ...
    @property
    def to_user_field(self) -> bytes: ...
    @property
    def gap(self) -> GapHandler: ...
    @property
    def streams(self) -> list[Stream]: ...
    def push(self, bodies: list[bytes], first_seq: int, at_once: bool = False, answered: Peer | None = None) -> bool: ...
    def ring(self) -> None: ...
