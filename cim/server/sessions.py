"""Role: the session table, the one source of truth for who is logged in where.

user -> ``Session`` -> its streams, one per peer (connection: one per device, see
``cim.server.devices``), each with its place in the user's inbox (``cim.server.streams``). A
connection that has not logged in yet is *pending*. The protocol's own state says
what was received (a login frame); only this table says what was accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cim.messages import Sender, receiver_entry, to_user_field
from cim.server.lane import push_live
from cim.server.peer import Peer
from cim.server.streams import GapHandler, SessionCore, Stream


class Session(SessionCore):
    """A user logged in on this node, with what every push to or from them needs,
    serialized once at login (the fields: ``SessionCore``)."""

    __slots__ = ()

    @property
    def peers(self) -> list[Peer]:
        return [stream.peer for stream in self.streams]

    def stream(self, peer: Peer) -> Stream | None:
        for stream in self.streams:
            if stream.peer is peer:
                return stream
        return None

    def streams_of(self, device_id: str) -> list[Stream]:
        return [stream for stream in self.streams if stream.device_id == device_id]

    def ring(self) -> None:
        """The inbox may hold messages no push brought (a resend of one stored before,
        a doorbell without pushes): every live stream catches up."""
        for stream in self.streams:
            if not stream.catching_up:
                stream.catching_up = True
                self.gap(stream)

    def push(self, bodies: list[bytes], first_seq: int, at_once: bool = False, answered: Peer | None = None) -> bool:
        """Live messages, stored in this user's inbox from ``first_seq`` on: framed once,
        written to each stream that is up to date (see ``Peer.push``), offered to the rest.
        ``answered``: the connection that sent them (they are the sender's copy). Up to date, it
        is written nothing and True is returned: its receipts are to stand for the push (they
        carry the seqs, ``Peer.send_receipts``). Else it is offered the push like any stream."""
        return push_live(self.streams, bodies, first_seq, self.receiver_entry, at_once, answered, self.gap)


class SessionTable:
    """Pending connections, sessions by user, and the session of each peer."""

    def __init__(self, gap: GapHandler) -> None:
        self.gap = gap  # see Session.gap
        self.pending: set[Peer] = set()
        self.by_user: dict[int, Session] = {}
        self.by_peer: dict[Peer, Session] = {}
        # (user, device) logins being checked: a second connection of the device racing the
        # first across the store's await is refused like a duplicate.
        self._logging_in: set[tuple[int, str]] = set()

    def __len__(self) -> int:
        return len(self.by_user)

    @property
    def connections(self) -> int:
        return len(self.pending) + len(self.by_peer)

    def peers(self) -> list[Peer]:
        """Every connection, logged in or not."""
        return [*self.pending, *self.by_peer]

    def of(self, peer: Peer) -> Session | None:
        """The peer's session, or None while (or if never) logged in."""
        return self.by_peer.get(peer)

    def admit(self, peer: Peer) -> None:
        self.pending.add(peer)

    def busy(self, user_id: int) -> bool:
        """The user has a session here, or a login being checked."""
        return user_id in self.by_user or any(user == user_id for user, _ in self._logging_in)

    def device_busy(self, user_id: int, device_id: str) -> bool:
        """A login of this device of the user is being checked."""
        return (user_id, device_id) in self._logging_in

    @contextmanager
    def logging_in(self, user_id: int, device_id: str = "") -> Iterator[None]:
        self._logging_in.add((user_id, device_id))
        try:
            yield
        finally:
            self._logging_in.discard((user_id, device_id))

    def bind(self, peer: Peer, user_id: int, user_name: str, device_id: str) -> Stream:
        """The login was accepted: the peer leaves pending and joins the user's session.
        Its stream is catching up until the login has read where the inbox stands."""
        self.pending.discard(peer)
        session = self.by_user.get(user_id)
        if session is None:
            session = Session(user_id, Sender.of(user_id, user_name), receiver_entry(user_id), to_user_field(user_id), self.gap)
            self.by_user[user_id] = session
        stream = Stream(peer, device_id)
        session.streams.append(stream)
        self.by_peer[peer] = session
        return stream

    def remove(self, peer: Peer) -> tuple[Session, Stream, bool] | None:
        """Forget a closed connection; returns its session, its stream and whether it was
        the session's last (the session is gone then); None for a peer never logged in."""
        self.pending.discard(peer)
        session = self.by_peer.pop(peer, None)
        if session is None:
            return None
        stream = session.stream(peer)
        assert stream is not None
        session.streams.remove(stream)
        if session.streams:
            return session, stream, False
        if self.by_user.get(session.user_id) is session:
            del self.by_user[session.user_id]
        return session, stream, True
