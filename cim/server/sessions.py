"""Role: the session table, the one source of truth for who is logged in where.

user -> ``Session`` -> its peers (connections; several devices later). A connection
that has not logged in yet is *pending*. The protocol's own state says what was
received (a login frame); only this table says what was accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cim.messages import Sender, receiver_entry
from cim.server.peer import Peer
from cim.wire import frame_each


@dataclass(slots=True, eq=False)
class Session:
    """A user logged in on this node, with what every push to or from them needs,
    serialized once at login."""

    user_id: int
    sender: Sender  # this user as a sender
    receiver_entry: bytes  # the receiveUserId entry each push to this user ends with
    peers: list[Peer] = field(default_factory=list)

    def push(self, bodies: list[bytes], at_once: bool = False) -> None:
        """Framed once for this user, pushed to each of their peers (see ``Peer.push``)."""
        frame = frame_each(bodies, self.receiver_entry)
        peers = self.peers
        if len(peers) == 1:  # the common case, without a loop
            peers[0].push(frame, at_once)
            return
        for peer in peers:
            peer.push(frame, at_once)


class SessionTable:
    """Pending connections, sessions by user, and the session of each peer."""

    def __init__(self) -> None:
        self.pending: set[Peer] = set()
        self.by_user: dict[int, Session] = {}
        self.by_peer: dict[Peer, Session] = {}
        # Users whose login is being checked: a second connection racing the first
        # across the store's await is refused like a duplicate.
        self._logging_in: set[int] = set()

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
        return user_id in self.by_user or user_id in self._logging_in

    @contextmanager
    def logging_in(self, user_id: int) -> Iterator[None]:
        self._logging_in.add(user_id)
        try:
            yield
        finally:
            self._logging_in.discard(user_id)

    def bind(self, peer: Peer, user_id: int, user_name: str) -> Session:
        """The login was accepted: the peer leaves pending and joins the user's session."""
        self.pending.discard(peer)
        session = self.by_user.get(user_id)
        if session is None:
            session = Session(user_id, Sender.of(user_id, user_name), receiver_entry(user_id))
            self.by_user[user_id] = session
        session.peers.append(peer)
        self.by_peer[peer] = session
        return session

    def remove(self, peer: Peer) -> Session | None:
        """Forget a closed connection; returns the session it ended (its last peer), if any."""
        self.pending.discard(peer)
        session = self.by_peer.pop(peer, None)
        if session is None:
            return None
        session.peers.remove(peer)
        if session.peers:
            return None
        if self.by_user.get(session.user_id) is session:
            del self.by_user[session.user_id]
        return session
