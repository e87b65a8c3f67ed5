"""The session table and each connection's place in its inbox (the live/stored
seam), with no sockets.

``RecordingPeer`` implements the ``Peer`` interface by recording what it is asked
to send: the table and the streams only ever talk to that interface. Every test runs
against both twins of ``push_live``, through which a session pushes.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

import cim.server.sessions
from cim.backends import Stored
from cim.frame import FrameDecoder
from cim.proto import Response
from cim.server.sessions import Session, SessionTable
from cim.server.streams import Stream
from cim.status import Status
from cim.wire import frame_sequenced


@pytest.fixture(autouse=True)
def push_twin(lane: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session pushes through each twin of ``push_live`` in turn (``cim.server.lane``)."""
    monkeypatch.setattr(cim.server.sessions, "push_live", lane.push_live)


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
        self.write_now: Callable[[bytes], None] | None = None  # set: at-once pushes come to it, not to push

    def push(self, frame: bytes, at_once: bool = False) -> None:
        self.pushed.append((frame, at_once))

    def send_pong(self) -> None: ...

    def send_receipts(self, client_msg_ids: list[int], first_id: int, status: Status = Status.SUCCESS,
                      first_seq: int = 0, timestamp_ms: int = 0) -> None: ...

    def send_receipt(self, client_msg_id: int, status: Status, text: str, msg_id: int = 0) -> None: ...

    def send_login_answer(self, latest_seq: int, heartbeat_seconds: int, acked_seq: int) -> None: ...

    def send_sync_done(self, latest_seq: int, truncated: bool) -> None: ...

    def send_error(self, status: Status, reason: str) -> None: ...

    def pause_reading(self, seconds: float) -> None: ...

    def refuse(self, status: Status, reason: str) -> None: ...

    def end(self, reason: str, reconnect: bool) -> None:
        self.ended.append((reason, reconnect))

    def abort(self, reason: str) -> None: ...

    def flush(self) -> None: ...


def body(text: str) -> bytes:
    return Response(resMsg=text).SerializeToString()


def seqs(peer: RecordingPeer) -> list[int]:
    """The seqs of every push the peer was sent, in order."""
    return [Response.FromString(f).seq for frame, _ in peer.pushed for f in FrameDecoder().feed(frame)]


def live(gaps: list[Stream] | None = None) -> tuple[SessionTable, Session, Stream, RecordingPeer]:
    """A table with one logged-in user whose stream has seqs up to 3 and is live."""
    table = SessionTable(gap=(gaps if gaps is not None else []).append)
    peer = RecordingPeer(7)
    table.admit(peer)
    stream = table.bind(peer, 7, "alice", "")
    stream.sent, stream.catching_up = 3, False
    return table, table.by_user[7], stream, peer


def test_a_peer_is_pending_until_bound_then_in_its_users_session() -> None:
    table = SessionTable(gap=lambda stream: None)
    peer = RecordingPeer(7)
    table.admit(peer)
    assert (table.connections, len(table), table.of(peer)) == (1, 0, None)
    stream = table.bind(peer, 7, "alice", "phone")
    session = table.by_user[7]
    assert (table.connections, len(table), table.of(peer)) == (1, 1, session)
    assert session.sender.id == 7 and session.sender.name == "alice" and session.peers == [peer]
    assert session.stream(peer) is stream and stream.device_id == "phone" and stream.catching_up
    assert table.pending == set()


def test_removing_the_last_peer_ends_the_session_once() -> None:
    table = SessionTable(gap=lambda stream: None)
    first, second = RecordingPeer(7), RecordingPeer(7)
    for peer in (first, second):
        table.admit(peer)
        table.bind(peer, 7, "alice", "")
    assert table.by_user[7].peers == [first, second]
    removed = table.remove(first)
    assert removed is not None and removed[2] is False  # the user still has a peer
    removed = table.remove(second)
    assert removed is not None and removed[0].user_id == 7 and removed[2] is True and 7 not in table.by_user
    assert table.remove(second) is None and table.connections == 0  # twice: cleaned once


def test_removing_a_pending_peer_ends_no_session() -> None:
    table = SessionTable(gap=lambda stream: None)
    peer = RecordingPeer(0)
    table.admit(peer)
    assert table.remove(peer) is None and table.connections == 0


def test_a_session_frames_a_push_once_for_every_live_peer() -> None:
    table = SessionTable(gap=lambda stream: None)
    peers = [RecordingPeer(7), RecordingPeer(7)]
    for peer in peers:
        stream = table.bind(peer, 7, "alice", "")
        stream.catching_up = False
    session = table.by_user[7]
    session.push([body("body")], 1, at_once=True)
    expected = frame_sequenced([body("body")], 1, session.receiver_entry)
    assert [p.pushed for p in peers] == [[(expected, True)], [(expected, True)]]
    assert [s.sent for s in session.streams] == [1, 1]


def test_live_pushes_are_written_once_and_in_order() -> None:
    _, session, stream, peer = live()
    session.push([body("a"), body("b")], 4)
    session.push([body("b")], 5)  # written already (a catch-up got there first): skipped
    session.push([body("c"), body("d"), body("e")], 5)  # overlaps: only what is new
    assert seqs(peer) == [4, 5, 6, 7] and stream.sent == 7


def test_a_gap_starts_a_catch_up_instead_of_a_write() -> None:
    gaps: list[Stream] = []
    _, session, stream, peer = live(gaps)
    session.push([body("x")], 6)  # 4 and 5 have not come: their doorbell was lost or is late
    assert gaps == [stream] and peer.pushed == [] and stream.catching_up and stream.missed == 6
    session.push([body("y")], 7)  # while catching up: remembered, not written, no second catch-up
    assert gaps == [stream] and peer.pushed == [] and stream.missed == 7


def test_a_stream_catching_up_remembers_what_it_was_not_sent() -> None:
    table = SessionTable(gap=lambda stream: None)
    peer = RecordingPeer(7)
    stream = table.bind(peer, 7, "alice", "")  # catching up until the login read the inbox
    table.by_user[7].push([body("early")], 1)
    assert peer.pushed == [] and stream.missed == 1


def test_the_sending_connection_up_to_date_takes_its_copy_as_its_receipts() -> None:
    """The sender's copy: the connection that sent it is written nothing (its receipts carry the
    seqs, True), the user's other connections get the push; both move on past it."""
    table, session, sending, sender = live()
    other = RecordingPeer(7)
    other_stream = table.bind(other, 7, "alice", "tablet")
    other_stream.sent, other_stream.catching_up = 3, False
    assert session.push([body("mine"), body("too")], 4, answered=sender) is True
    assert sender.pushed == [] and sending.sent == 5
    assert seqs(other) == [4, 5] and other_stream.sent == 5
    session.push([body("next")], 6)  # what comes next is pushed to both, no gap
    assert seqs(sender) == [6] and seqs(other) == [4, 5, 6]


def test_a_sending_connection_behind_its_inbox_gets_its_copy_the_usual_way() -> None:
    """Catching up (or behind): no receipt can stand for the copy in order; the stream is
    offered the push like any other (here: remembered for the catch-up), and False says so."""
    gaps: list[Stream] = []
    _, session, stream, peer = live(gaps)
    stream.catching_up = True
    assert session.push([body("mine")], 4, answered=peer) is False
    assert peer.pushed == [] and stream.missed == 4 and stream.sent == 3
    stream.catching_up = False
    assert session.push([body("mine")], 6, answered=peer) is False  # 4 and 5 not had yet: a gap
    assert gaps == [stream] and stream.sent == 3


def test_one_appends_runs_go_to_each_user_here_at_once(lane: ModuleType) -> None:
    """``push_each`` (a group message): each user here gets the run at their own seq, written
    at once; a user not here is skipped (the run waits in their inbox); a run with duplicates
    pushes what was new and rings the user's streams (the first push may never have left)."""
    rings: list[Stream] = []
    table = SessionTable(gap=rings.append)
    alice, bob = RecordingPeer(7), RecordingPeer(8)
    for peer, name in ((alice, "alice"), (bob, "bob")):
        table.bind(peer, peer.user_id, name, "").catching_up = False
    table.by_user[8].streams[0].sent = 4
    run = [body("a"), body("b")]
    stored = [Stored(1, run), Stored(1, run), Stored(5, run[1:], {0: 99})]
    assert lane.push_each(table.by_user, [7, 404, 8], stored) == 3
    assert seqs(alice) == [1, 2] and seqs(bob) == [5] and all(at_once for _, at_once in alice.pushed + bob.pushed)
    assert rings == table.by_user[8].streams  # bob's run had a duplicate: his stream catches up
    assert lane.push_each(table.by_user, [404], [Stored(1, run)]) == 0


def test_an_at_once_push_goes_to_the_peers_write_now_when_it_has_one(lane: ModuleType) -> None:
    """``Peer.write_now`` is what ``push(frame, at_once=True)`` would call: the lane calls it itself
    while the peer has one, and pushes as usual when it has none (queued frames, closed, paused)
    or the push is not at once."""
    table, session, stream, peer = live()
    written: list[bytes] = []
    peer.write_now = written.append
    session.push([body("a")], 4, at_once=True)
    session.push([body("b")], 5)  # not at once: coalesced with the turn's other frames, by push
    peer.write_now = None
    session.push([body("c")], 6, at_once=True)
    assert [Response.FromString(f).seq for frame in written for f in FrameDecoder().feed(frame)] == [4]
    assert seqs(peer) == [5, 6] and [at_once for _, at_once in peer.pushed] == [False, True]


def test_a_doorbells_run_goes_to_each_user_here_at_their_seq(lane: ModuleType) -> None:
    """``push_runs`` (a doorbell off the bus): the one run to each user here from their own seq,
    at once; a user not here is skipped; a stream behind its inbox catches up instead (a gap)."""
    gaps: list[Stream] = []
    table = SessionTable(gap=gaps.append)
    alice, bob = RecordingPeer(7), RecordingPeer(8)
    for peer, name in ((alice, "alice"), (bob, "bob")):
        table.bind(peer, peer.user_id, name, "").catching_up = False
    table.by_user[7].streams[0].sent = 2
    run = [body("a"), body("b")]
    assert lane.push_runs(table.by_user, [7, 404, 8], run, [3, 1, 4]) == 2
    assert seqs(alice) == [3, 4] and all(at_once for _, at_once in alice.pushed)
    assert bob.pushed == [] and gaps == table.by_user[8].streams  # bob has had nothing up to 3: he catches up
    with pytest.raises(ValueError, match="2 receivers, 1 seqs"):
        lane.push_runs(table.by_user, [7, 8], run, [5])


def test_push_each_refuses_receivers_and_appends_that_do_not_match(lane: ModuleType) -> None:
    table = SessionTable(gap=lambda stream: None)
    with pytest.raises(ValueError, match="2 receivers, 1 appends"):
        lane.push_each(table.by_user, [7, 8], [Stored(1, [body("a")])])


def test_busy_while_logging_in_and_while_logged_in() -> None:
    table = SessionTable(gap=lambda stream: None)
    with table.logging_in(7):
        assert table.busy(7) and not table.busy(8)
    assert not table.busy(7)
    table.bind(RecordingPeer(7), 7, "alice", "")
    assert table.busy(7)


def test_both_twins_of_stream_and_session_core_have_one_interface(stream_core: ModuleType) -> None:
    """``cim.server.streams.Stream`` and ``SessionCore`` (compiled when built): the fields and
    their defaults, the cursor, identity for equality and hashing, a subclass's methods."""
    peer = RecordingPeer(7)
    stream = stream_core.Stream(peer, "phone")
    assert (stream.peer, stream.device_id, stream.sent, stream.catching_up, stream.missed, stream.acked) == (
        peer, "phone", 0, True, 0, 0)
    assert (stream.cursor_written, stream.syncs, stream.login_seq, stream.replayed, stream.receipts) == (0, False, 0, 0, False)
    stream.sent, stream.catching_up = 9, False
    assert stream.cursor == 9  # a client that never acks (CIM's) has what was written to it
    stream.syncs = True
    assert stream.cursor == 0
    stream.acked = 5
    assert stream.cursor == 5
    other = stream_core.Stream(peer, "phone")
    assert stream != other and stream == stream and len({stream, other}) == 2

    class Core(stream_core.SessionCore):  # type: ignore[name-defined,misc]  # a module fixture's class
        __slots__ = ()

        def first_peer(self) -> object:
            return self.streams[0].peer

    core = Core(7, None, b"entry", b"to", print)
    assert (core.user_id, core.receiver_entry, core.to_user_field, core.gap, core.streams) == (7, b"entry", b"to", print, [])
    core.streams.append(stream)
    assert core.first_peer() is peer and core.streams is not Core(8, None, b"", b"", print).streams
