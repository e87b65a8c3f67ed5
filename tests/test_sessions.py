"""The session table and the ordering of a peer's events, with no sockets.

``RecordingPeer`` implements the ``Peer`` interface by recording what it is asked
to send: the table and the ordering component only ever talk to that interface.
"""

from __future__ import annotations

from cim.server.sessions import SessionTable
from cim.status import Status
from cim.wire import frame_each


class RecordingPeer:
    """A Peer that keeps what it is sent."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.ip = "127.0.0.1"
        self.connected_at = self.last_seen = 0.0
        self.paused_at: float | None = None
        self.closed = False
        self.pushed: list[tuple[bytes, bool]] = []
        self.ended: list[tuple[str, bool]] = []

    def push(self, frame: bytes, at_once: bool = False) -> None:
        self.pushed.append((frame, at_once))

    def send_pong(self) -> None: ...

    def send_receipts(self, client_msg_ids: list[int], first_id: int, status: Status = Status.SUCCESS) -> None: ...

    def send_receipt(self, client_msg_id: int, status: Status, text: str) -> None: ...

    def send_error(self, status: Status, reason: str) -> None: ...

    def pause_reading(self, seconds: float) -> None: ...

    def refuse(self, status: Status, reason: str) -> None: ...

    def end(self, reason: str, reconnect: bool) -> None:
        self.ended.append((reason, reconnect))

    def abort(self, reason: str) -> None: ...

    def flush(self) -> None: ...


def test_a_peer_is_pending_until_bound_then_in_its_users_session() -> None:
    table = SessionTable()
    peer = RecordingPeer(7)
    table.admit(peer)
    assert (table.connections, len(table), table.of(peer)) == (1, 0, None)
    session = table.bind(peer, 7, "alice")
    assert (table.connections, len(table), table.of(peer), table.by_user[7]) == (1, 1, session, session)
    assert session.sender.id == 7 and session.sender.name == "alice" and session.peers == [peer]
    assert table.pending == set()


def test_removing_the_last_peer_ends_the_session_once() -> None:
    table = SessionTable()
    first, second = RecordingPeer(7), RecordingPeer(7)
    for peer in (first, second):
        table.admit(peer)
        table.bind(peer, 7, "alice")
    assert table.by_user[7].peers == [first, second]
    assert table.remove(first) is None  # the user still has a peer
    ended = table.remove(second)
    assert ended is not None and ended.user_id == 7 and 7 not in table.by_user
    assert table.remove(second) is None and table.connections == 0  # twice: cleaned once


def test_removing_a_pending_peer_ends_no_session() -> None:
    table = SessionTable()
    peer = RecordingPeer(0)
    table.admit(peer)
    assert table.remove(peer) is None and table.connections == 0


def test_a_session_frames_a_push_once_for_every_peer() -> None:
    table = SessionTable()
    peers = [RecordingPeer(7), RecordingPeer(7)]
    for peer in peers:
        table.bind(peer, 7, "alice")
    session = table.by_user[7]
    session.push([b"body"], at_once=True)
    expected = frame_each([b"body"], session.receiver_entry)
    assert [p.pushed for p in peers] == [[(expected, True)], [(expected, True)]]


def test_busy_while_logging_in_and_while_logged_in() -> None:
    table = SessionTable()
    with table.logging_in(7):
        assert table.busy(7) and not table.busy(8)
    assert not table.busy(7)
    table.bind(RecordingPeer(7), 7, "alice")
    assert table.busy(7)
