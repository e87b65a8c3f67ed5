"""Fuzzing the sans-I/O protocols: hypothesis state machines on ServerConnection and ClientConnection.

Each machine drives two connections in lockstep: ``whole`` reads every chunk in one
piece, ``split`` reads the same chunk cut at random points, as TCP may deliver it. The
rules feed random bytes, truncated and mutated valid frames, oversized or overlong length
prefixes and valid frames (messages, pings, syncs, delivery acks), and answer as the
application would (receipts, pushes with seqs, login and sync answers); the invariants
hold after every step: nothing raises, events are the declared types in a legal order,
the decoder never holds more than one frame, every byte written is well framed, nothing
comes out of a closed connection, and both connections saw the same events and wrote the
same frames.

Bounded for CI: each machine runs a few seconds (``settings`` at the bottom of each).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import cast

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cim._frame_py import MAX_VARINT_BYTES
from cim.destinations import ToEveryone, ToGroup, ToUser
from cim.frame import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame, encode_varint
from cim.messages import Sender, receiver_entry
from cim.proto import (
    DELIVERY_ACK,
    ERROR,
    LOGIN_ANSWER,
    MESSAGE,
    OFFLINE,
    PING,
    SEND_RECEIPT,
    SYNC,
    BaseCommand,
    Request,
    Response,
)
from cim.protocols import ACCEPTED_CODES
from cim.protocols.client import (
    ClientConnection,
    ClientEvent,
    ProtocolError,
    Pushed,
)
from cim.protocols.connection import (
    PONG,
    ChatMessages,
    DeliveryAck,
    Event,
    Login,
    Ping,
    ProtocolViolation,
    ServerConnection,
    State,
    Sync,
)
from cim.protocols.connection import Offline as ClientOffline  # the client's OFFLINE, read by the server
from cim.status import Status
from cim.wire import frame_sequenced, push_bodies
from cim.wire_fields import RECEIVE_USER_ID, SEND_USER_ID, SEND_USER_NAME

# Small limits, so that oversized frames and messages are common draws (yet every frame
# the SDK builds here fits: the texts drawn are at most 80 characters).
MAX_FRAME = 512
MAX_MESSAGE = 64
# What a decoder may hold between reads: the prefix and the start of one frame, never more.
BUFFER_BOUND = MAX_FRAME + MAX_VARINT_BYTES

USER_IDS = st.integers(-3, 5) | st.sampled_from([2**31, 2**63 - 1, -(2**63)])
NAMES = st.text(max_size=12)
TEXTS = st.text(max_size=MAX_MESSAGE + 16)  # some over the message limit, in chars or in UTF-8 bytes
UINT64 = st.integers(0, 2**64 - 1)
UINT32 = st.integers(0, 2**32 - 1)
MSG_IDS = st.integers(0, 2**60)  # room for a few more ids after the first
SEQS = st.integers(0, 2**63)  # inbox seqs, likewise
CLIENT_MSG_IDS = st.just(0) | UINT64  # 0: none, as CIM's client sends (no receipt unless it fails)
INT64 = st.integers(-(2**63), 2**63 - 1)
# The named commands and numbers no BaseCommand names (proto3 enums are open: protobuf keeps them).
COMMANDS = st.integers(0, 21).map(lambda number: cast(BaseCommand, number))
CODES = st.sampled_from([status.code for status in Status]) | st.integers(-(2**31), 2**31 - 1)
PROPERTY_KEYS = st.sampled_from([RECEIVE_USER_ID, SEND_USER_ID, SEND_USER_NAME, "other"])
PROPERTY_VALUES = USER_IDS.map(str) | NAMES
STATUSES = st.sampled_from(Status)
REASONS = st.text(max_size=40)
EVERYDAY_RECEIVERS = st.sampled_from([1, 2])


def cut(data: st.DataObject, chunk: bytes) -> list[bytes]:
    """``chunk`` cut at random points, as TCP may deliver it."""
    if len(chunk) < 2:
        return [chunk]
    points = sorted(data.draw(st.sets(st.integers(1, len(chunk) - 1), max_size=8), label="cuts"))
    return [chunk[start:stop] for start, stop in itertools.pairwise([0, *points, len(chunk)])]


def frames_of(data: bytes) -> list[bytes]:
    """The payloads of bytes written to the peer, which must be whole frames and nothing else."""
    decoder = FrameDecoder(DEFAULT_MAX_FRAME_SIZE)
    payloads = decoder.feed(data)
    assert decoder.buffered == 0, f"written bytes end inside a frame: {data!r}"
    return payloads


# -- byte strategies -------------------------------------------------------------------


@st.composite
def any_request(draw: st.DrawFn) -> bytes:
    """A framed Request with any fields protobuf can hold: every command, property and id."""
    request = Request(
        reqMsg=draw(TEXTS), requestId=draw(USER_IDS), cmd=draw(COMMANDS), clientMsgId=draw(UINT64),
        ackSeq=draw(UINT64), groupId=draw(st.just("") | NAMES), token=draw(st.just("") | NAMES),
        batchReqMsg=draw(st.lists(NAMES, max_size=2)),
    )
    request.properties.update(draw(st.dictionaries(PROPERTY_KEYS, PROPERTY_VALUES, max_size=2)))
    return encode_frame(request.SerializeToString())


@st.composite
def client_frame(draw: st.DrawFn, user_id: int) -> bytes:
    """A frame as the SDK builds it, mostly for ``user_id`` (the one logged in), so its pings
    and messages take the server's fast paths."""
    client = ClientConnection(draw(st.just(user_id) | USER_IDS), draw(NAMES))
    # Everyone or one of a couple of users, mostly: then frames in a row often make a run
    # of messages to one destination, which the server reads as one event.
    receiver = draw(st.none() | EVERYDAY_RECEIVERS | USER_IDS)
    builders: list[Callable[[], bytes]] = [
        lambda: client.login(token=draw(st.just("") | NAMES)),
        client.ping,
        lambda: client.message(draw(TEXTS), receiver, draw(CLIENT_MSG_IDS)),
        lambda: client.message(draw(TEXTS), receiver, draw(CLIENT_MSG_IDS), draw(NAMES)),
        lambda: client.ack(draw(UINT64)),
        lambda: client.sync(draw(UINT64)),
        client.offline,
    ]
    return draw(st.sampled_from(builders))()


@st.composite
def burst(draw: st.DrawFn, user_id: int) -> list[bytes]:
    """Messages in a row to one destination, as a chatty client writes them."""
    client = ClientConnection(user_id, "")
    receiver = draw(st.none() | EVERYDAY_RECEIVERS)
    messages = draw(st.lists(st.tuples(TEXTS, CLIENT_MSG_IDS), max_size=8))
    return [client.message(text, receiver, client_msg_id) for text, client_msg_id in messages]


@st.composite
def any_response(draw: st.DrawFn) -> bytes:
    """A framed Response with any fields protobuf can hold (non-numeric user ids too)."""
    response = Response(
        resMsg=draw(TEXTS), responseId=draw(USER_IDS), cmd=draw(COMMANDS), msgId=draw(UINT64), seq=draw(UINT64),
        timestamp=draw(INT64), code=draw(CODES), clientMsgId=draw(UINT64), groupId=draw(st.just("") | NAMES),
        heartbeatSeconds=draw(UINT32), truncated=draw(st.booleans()),
    )
    response.properties.update(draw(st.dictionaries(PROPERTY_KEYS, PROPERTY_VALUES, max_size=3)))
    return encode_frame(response.SerializeToString())


def push_frames(sender_id: int, sender_name: str, texts: list[str], first_id: int, first_seq: int,
                receiver_id: int) -> bytes:
    """Pushes to ``receiver_id`` (its inbox's seqs from ``first_seq``) exactly as a node
    frames them (cim.messages, cim.wire)."""
    bodies = push_bodies(Sender.of(sender_id, sender_name).prefix, [text.encode() for text in texts], first_id, 1_700_000_000_000,
                         [0] * len(texts))
    return frame_sequenced(bodies, first_seq, receiver_entry(receiver_id))


@st.composite
def server_frames(draw: st.DrawFn, user_id: int) -> bytes:
    """What a real ServerConnection logged in as ``user_id`` writes when the application
    answers: login and sync answers, receipts, pushes, pongs, errors, an OFFLINE or a refusal."""
    server = ServerConnection(DEFAULT_MAX_FRAME_SIZE, MAX_MESSAGE)
    server.receive_data(ClientConnection(user_id, "me").login())
    answers: list[Callable[[], None]] = [
        lambda: server.send_login_answer(draw(UINT64), draw(UINT32), draw(UINT64)),
        lambda: server.send_sync_done(draw(UINT64), draw(st.booleans())),
        lambda: server.send_receipts(draw(st.lists(CLIENT_MSG_IDS, min_size=1, max_size=3)), draw(MSG_IDS), draw(STATUSES)),
        lambda: server.send_receipt(draw(CLIENT_MSG_IDS), draw(STATUSES), draw(REASONS), draw(MSG_IDS)),
        lambda: server.send_push(push_frames(draw(USER_IDS), draw(NAMES), draw(st.lists(TEXTS, min_size=1, max_size=3)),
                                             draw(MSG_IDS), draw(SEQS), user_id)),
        server.send_pong,
        lambda: server.send_error(draw(STATUSES), draw(REASONS)),
        lambda: server.close(draw(REASONS), draw(st.booleans())),
        lambda: server.refuse(draw(STATUSES), draw(REASONS)),
    ]
    for answer in draw(st.lists(st.sampled_from(answers), min_size=1, max_size=3)):
        answer()
    # Accepted receipts for clientMsgId 0 write nothing: then a pong, so there is a frame.
    return server.data_to_send() or PONG


def truncated(frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid frame cut short: the rest may never come, or come fused with what follows."""
    return frames.flatmap(lambda frame: st.integers(0, len(frame) - 1).map(lambda stop: frame[:stop]))


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame with a few bits flipped and bytes inserted or deleted, prefix included."""
    data = bytearray(draw(frames))
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["flip", "insert", "delete"]))
        if operation == "insert":
            position = draw(st.integers(0, len(data)))
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            position = draw(st.integers(0, len(data) - 1))
            if operation == "flip":
                data[position] ^= 1 << draw(st.integers(0, 7))
            else:
                del data[position]
    return bytes(data)


# A prefix over the frame limit, or a varint32 longer than 5 bytes; some payload may follow.
OVERSIZED = st.builds(
    bytes.__add__,
    st.integers(MAX_FRAME + 1, 2**35 - 1).map(encode_varint) | st.integers(6, 9).map(lambda n: b"\x80" * (n - 1) + b"\x01"),
    st.binary(max_size=8),
)


def chunks(frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """What one read may hold: a few pieces, valid or not, back to back."""
    piece = st.one_of(frames, mutated(frames), truncated(frames), st.binary(max_size=24), OVERSIZED)
    return st.lists(piece, min_size=1, max_size=4).map(b"".join)


# -- the server side ---------------------------------------------------------------------


def per_message(events: list[Event]) -> list[object]:
    """Events with each run of chat messages spread out to one entry per message: a run
    ends where a read ends, so only the messages themselves must match across chunkings."""
    flat: list[object] = []
    for event in events:
        if isinstance(event, ChatMessages):
            flat += [(text, event.destination, msg_id) for text, msg_id in zip(event.texts, event.client_msg_ids, strict=True)]
        else:
            flat.append(event)
    return flat


class ServerConnectionMachine(RuleBasedStateMachine):
    """A cim-server's connection fed anything a client (or an attacker) can send, and the
    application's answers to what it understood."""

    def __init__(self) -> None:
        super().__init__()
        self.whole = ServerConnection(MAX_FRAME, MAX_MESSAGE)
        self.split = ServerConnection(MAX_FRAME, MAX_MESSAGE)
        self.events_seen = 0
        self.was_closed = False
        self.unanswered: list[int] = []  # clientMsgIds of messages the application owes a receipt
        self.pings = 0  # pings the application owes a pong

    # -- helpers -----------------------------------------------------------------------

    def feed(self, data: st.DataObject, chunk: bytes) -> list[Event]:
        closed_before = self.whole.state is State.CLOSED
        events = self.whole.receive_data(chunk)
        split_events = [event for piece in cut(data, chunk) for event in self.split.receive_data(piece)]
        assert per_message(events) == per_message(split_events)
        if closed_before:
            assert events == [] and self.whole.data_to_send() == b"" and self.split.data_to_send() == b""
        self.check(events)
        return events

    def check(self, events: list[Event]) -> None:
        """Each event is a declared type, in an order the protocol allows."""
        for index, event in enumerate(events):
            assert isinstance(event, Login | ChatMessages | Ping | Sync | DeliveryAck | ClientOffline | ProtocolViolation)
            if isinstance(event, Login):
                assert self.events_seen == 0, "a login after the first event"
                assert event.user_id > 0 and event.user_id == self.whole.user_id
            elif isinstance(event, ProtocolViolation):
                assert index == len(events) - 1 and self.whole.state is State.CLOSED
                assert event.reason
            elif isinstance(event, ChatMessages):
                assert self.events_seen > 0, "a message before the login"
                assert event.texts and all(0 < len(text) <= MAX_MESSAGE for text in event.texts)
                assert isinstance(event.destination, ToUser | ToGroup | ToEveryone)
                assert all(event.client_msg_ids) or not any(event.client_msg_ids), "a run is all with ids or none"
                self.unanswered += event.client_msg_ids
            elif isinstance(event, Ping):
                assert self.events_seen > 0, "a ping before the login"
                self.pings += 1
            elif isinstance(event, Sync | DeliveryAck):
                assert self.events_seen > 0, "a sync or an ack before the login"
            else:
                assert self.events_seen > 0, "an OFFLINE before the login"
            self.events_seen += 1

    def written(self) -> list[Response]:
        """What both connections wrote since the last step: the same frames, each well formed."""
        payloads = frames_of(self.whole.data_to_send())
        assert payloads == frames_of(self.split.data_to_send())
        responses = []
        for payload in payloads:
            response = Response.FromString(payload)
            if encode_frame(payload) != PONG:
                # CIM's client reads receiveUserId from every frame but the pong.
                assert RECEIVE_USER_ID in response.properties, f"a frame without receiveUserId: {response}"
                if self.whole.user_id:
                    assert response.properties[RECEIVE_USER_ID] == str(self.whole.user_id)
            responses.append(response)
        return responses

    # -- the client's bytes ------------------------------------------------------------

    # Three runs in four start logged in, so that most steps reach the open connection.
    @initialize(data=st.data(), log_in=st.integers(0, 3).map(bool))
    def start(self, data: st.DataObject, log_in: bool) -> None:
        if log_in:
            self.feed(data, ClientConnection(data.draw(st.integers(1, 5), label="user"), data.draw(NAMES)).login())

    @rule(data=st.data())
    def receive_frames(self, data: st.DataObject) -> None:
        """Frames as the SDK builds them: the everyday input."""
        # Unless a truncated frame read before swallows them, none ends an open session.
        clean = self.whole.state is State.OPEN and self.whole._decoder.buffered == 0
        frames = st.lists(client_frame(self.whole.user_id), min_size=1, max_size=6) | burst(self.whole.user_id)
        self.feed(data, b"".join(data.draw(frames, label="frames")))
        if clean:
            assert self.whole.state is State.OPEN

    @rule(data=st.data())
    def receive_anything(self, data: st.DataObject) -> None:
        frames = st.one_of(client_frame(self.whole.user_id), any_request())
        self.feed(data, data.draw(chunks(frames), label="chunk"))

    @precondition(lambda self: self.whole.state is State.OPEN and self.whole._decoder.buffered == 0)
    @rule(data=st.data(), frames=st.lists(st.tuples(st.booleans(), UINT64), min_size=1, max_size=4))
    def sync_and_ack(self, data: st.DataObject, frames: list[tuple[bool, int]]) -> None:
        """SYNC and DELIVERY_ACK frames as the SDK builds them: one event each, in order,
        and no answer of the protocol's own."""
        client = ClientConnection(self.whole.user_id, "")
        events = self.feed(data, b"".join(client.sync(seq) if sync else client.ack(seq) for sync, seq in frames))
        assert events == [Sync(seq) if sync else DeliveryAck(seq) for sync, seq in frames]
        assert self.written() == []

    @rule(data=st.data())
    def ping_fast_path(self, data: st.DataObject) -> None:
        """The transport's shortcut for an exact ping must mean what the general path means."""
        ping = ClientConnection(self.whole.user_id, "").ping()
        nothing_owed = not self.unanswered and not self.pings
        pong = self.whole.answer_ping(ping) if nothing_owed else None
        if pong is None:
            self.feed(data, ping)
            return
        assert pong == PONG and self.whole.state is State.OPEN
        assert per_message([event for piece in cut(data, ping) for event in self.split.receive_data(piece)]) == [Ping()]
        self.split.send_pong()
        assert frames_of(self.split.data_to_send()) == frames_of(pong)

    # -- the application's answers -----------------------------------------------------

    @precondition(lambda self: self.unanswered and self.whole.state is State.OPEN)
    @rule(first_id=MSG_IDS, status=STATUSES)
    def answer_messages(self, first_id: int, status: Status) -> None:
        """The oldest run owed a receipt: messages in a row all with a clientMsgId or all without (as the
        events bring them, and as the node answers them)."""
        with_ids = bool(self.unanswered[0])
        run = list(itertools.takewhile(lambda client_msg_id: bool(client_msg_id) == with_ids, self.unanswered))
        del self.unanswered[: len(run)]
        for conn in (self.whole, self.split):
            conn.send_receipts(run, first_id, status)
        receipts = self.written()
        # Receipts only when asked: an accepted message sent with clientMsgId 0 gets none.
        asked = status.code not in ACCEPTED_CODES
        assert [(r.cmd, r.code, r.clientMsgId, r.msgId) for r in receipts] == [
            (SEND_RECEIPT, status.code, client_msg_id, first_id + k)
            for k, client_msg_id in enumerate(run) if client_msg_id or asked
        ]

    @precondition(lambda self: self.unanswered and self.whole.state is State.OPEN)
    @rule(status=STATUSES, reason=REASONS, msg_id=MSG_IDS)
    def answer_one_message(self, status: Status, reason: str, msg_id: int) -> None:
        """A failure in words of its own, or a resend's receipt with the original msgId."""
        client_msg_id = self.unanswered.pop(0)
        for conn in (self.whole, self.split):
            conn.send_receipt(client_msg_id, status, reason, msg_id)
        receipts = [(r.cmd, r.code, r.clientMsgId, r.resMsg, r.msgId) for r in self.written()]
        if client_msg_id or status.code not in ACCEPTED_CODES:
            assert receipts == [(SEND_RECEIPT, status.code, client_msg_id, reason, msg_id)]
        else:
            assert receipts == []

    @precondition(lambda self: self.whole.state is State.OPEN)
    @rule(latest_seq=UINT64, heartbeat_seconds=UINT32, acked_seq=UINT64)
    def answer_login(self, latest_seq: int, heartbeat_seconds: int, acked_seq: int) -> None:
        for conn in (self.whole, self.split):
            conn.send_login_answer(latest_seq, heartbeat_seconds, acked_seq)
        [answer] = self.written()
        expected = (LOGIN_ANSWER, 9000, latest_seq, heartbeat_seconds, acked_seq)
        assert (answer.cmd, answer.code, answer.seq, answer.heartbeatSeconds, answer.ackedSeq) == expected

    @precondition(lambda self: self.whole.state is State.OPEN)
    @rule(latest_seq=UINT64, truncated=st.booleans())
    def answer_sync(self, latest_seq: int, truncated: bool) -> None:
        for conn in (self.whole, self.split):
            conn.send_sync_done(latest_seq, truncated)
        [done] = self.written()
        assert (done.cmd, done.code, done.seq, done.truncated) == (SYNC, 9000, latest_seq, truncated)

    @precondition(lambda self: self.pings and self.whole.state is State.OPEN)
    @rule()
    def answer_pings(self) -> None:
        for conn in (self.whole, self.split):
            for _ in range(self.pings):
                conn.send_pong()
        assert [encode_frame(r.SerializeToString()) for r in self.written()] == [PONG] * self.pings
        self.pings = 0

    @precondition(lambda self: self.whole.state is State.OPEN)
    @rule(sender=st.integers(1, 2**63 - 1), name=NAMES, texts=st.lists(TEXTS, min_size=1, max_size=4), first_id=MSG_IDS,
          first_seq=SEQS)
    def push(self, sender: int, name: str, texts: list[str], first_id: int, first_seq: int) -> None:
        for conn in (self.whole, self.split):
            conn.send_push(push_frames(sender, name, texts, first_id, first_seq, conn.user_id))
        pushes = self.written()
        assert [(p.cmd, p.resMsg, p.msgId, p.seq, p.properties[SEND_USER_ID], p.properties[SEND_USER_NAME]) for p in pushes] == [
            (MESSAGE, text, first_id + k, first_seq + k, str(sender), name) for k, text in enumerate(texts)
        ]

    @precondition(lambda self: self.whole.state is State.OPEN)
    @rule(status=STATUSES, reason=REASONS)
    def send_error(self, status: Status, reason: str) -> None:
        for conn in (self.whole, self.split):
            conn.send_error(status, reason)
        [error] = self.written()
        assert (error.cmd, error.code, error.resMsg) == (ERROR, status.code, reason)

    # One rule for both ways to end: as separate rules they would end most runs early.
    @rule(refuse=st.booleans(), status=STATUSES, reason=REASONS, reconnect=st.booleans())
    def end(self, refuse: bool, status: Status, reason: str, reconnect: bool) -> None:
        """A refusal (bad token, login timeout) is an ERROR frame; a close (shutdown,
        heartbeat timeout, logout) one OFFLINE frame, however often asked."""
        closed_before = self.whole.state is State.CLOSED
        if refuse and closed_before:
            return  # the transport is gone: nobody refuses a closed connection
        for conn in (self.whole, self.split):
            if refuse:
                conn.refuse(status, reason)
            else:
                conn.close(reason, reconnect)
        last = [(r.cmd, r.code, r.resMsg) for r in self.written()]
        if refuse:
            assert last == [(ERROR, status.code, reason)]
        elif closed_before:
            assert last == []
        else:
            assert last == [(OFFLINE, Status.FAIL.code if reconnect else Status.SUCCESS.code, reason)]

    # -- after every step --------------------------------------------------------------

    @invariant()
    def wrote_well_framed_frames(self) -> None:
        self.written()

    @invariant()
    def buffers_at_most_one_frame(self) -> None:
        # Private, on purpose: bounded buffering is the point, and nothing public shows it.
        assert self.whole._decoder.buffered <= BUFFER_BOUND and self.split._decoder.buffered <= BUFFER_BOUND

    @invariant()
    def chunking_changes_nothing(self) -> None:
        whole, split = self.whole, self.split
        assert (whole.state, whole.user_id, whole.user_name) == (split.state, split.user_id, split.user_name)

    @invariant()
    def closed_for_good(self) -> None:
        if self.was_closed:
            assert self.whole.state is State.CLOSED
        self.was_closed = self.whole.state is State.CLOSED


ServerConnectionMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestServerConnection = ServerConnectionMachine.TestCase


# -- the client side ---------------------------------------------------------------------

USER_ID = 7


class ClientConnectionMachine(RuleBasedStateMachine):
    """The SDK's connection fed anything a server (or something posing as one) can send,
    and asked for every frame it builds; what it builds, a real server connection reads."""

    def __init__(self) -> None:
        super().__init__()
        self.whole = ClientConnection(USER_ID, "alice", MAX_FRAME)
        self.split = ClientConnection(USER_ID, "alice", MAX_FRAME)
        self.was_closed = False
        # The server end, logged in as this user, reads every frame the builders make.
        self.server = ServerConnection(DEFAULT_MAX_FRAME_SIZE, MAX_MESSAGE)
        [login] = self.server.receive_data(self.whole.login())
        assert isinstance(login, Login) and login.user_id == USER_ID

    def feed(self, data: st.DataObject, chunk: bytes) -> list[ClientEvent]:
        closed_before = self.whole.closed
        events = self.whole.receive_data(chunk)
        assert events == [event for piece in cut(data, chunk) for event in self.split.receive_data(piece)]
        if closed_before:
            assert events == []
        for index, event in enumerate(events):
            assert isinstance(event, ClientEvent)  # one of the declared kinds, nothing else
            if isinstance(event, ProtocolError):
                assert index == len(events) - 1 and self.whole.closed and event.reason
        return events

    @rule(data=st.data())
    def receive(self, data: st.DataObject) -> None:
        self.feed(data, data.draw(chunks(st.one_of(server_frames(USER_ID), any_response())), label="chunk"))

    @precondition(lambda self: not self.whole.closed and self.whole._decoder.buffered == 0)
    @rule(data=st.data())
    def receive_server_answers(self, data: st.DataObject) -> None:
        """What a real server writes is read whole: one event per frame, never an error."""
        written = data.draw(server_frames(USER_ID), label="server frames")
        events = self.feed(data, written)
        assert len(events) == len(frames_of(written))
        assert not any(isinstance(event, ProtocolError) for event in events)
        for event in events:
            if isinstance(event, Pushed):
                assert event.receiver_id == USER_ID

    @rule(data=st.data())
    def build(self, data: st.DataObject) -> None:
        """Every builder makes one well-framed Request for this user, which the server reads
        without closing the connection."""
        text, receiver = data.draw(TEXTS), data.draw(st.none() | USER_IDS)
        frame = data.draw(st.sampled_from([
            self.whole.login(token=data.draw(NAMES)), self.whole.ping(),
            self.whole.message(text, receiver, data.draw(CLIENT_MSG_IDS), data.draw(st.just("") | NAMES)),
            self.whole.ack(data.draw(UINT64)), self.whole.sync(data.draw(UINT64)), self.whole.offline(),
        ]), label="frame")
        [payload] = frames_of(frame)
        try:
            request = Request.FromString(payload)
        except DecodeError as err:
            raise AssertionError(f"a builder made a frame protobuf cannot read: {frame!r}") from err
        assert request.requestId == USER_ID
        events = self.server.receive_data(frame)
        assert self.server.state is State.OPEN, f"the server closed on a frame the SDK built: {request}"
        if request.cmd == PING:
            assert events == [Ping()]
        elif request.cmd == SYNC:
            assert events == [Sync(request.ackSeq)]
        elif request.cmd == DELIVERY_ACK:
            assert events == [DeliveryAck(request.ackSeq)]
        self.server.data_to_send()  # the server's answers (receipts, errors) are not this machine's concern

    @invariant()
    def buffers_at_most_one_frame(self) -> None:
        # Private, on purpose: bounded buffering is the point, and nothing public shows it.
        assert self.whole._decoder.buffered <= BUFFER_BOUND and self.split._decoder.buffered <= BUFFER_BOUND

    @invariant()
    def closed_for_good(self) -> None:
        assert self.whole.closed == self.split.closed
        if self.was_closed:
            assert self.whole.closed
        self.was_closed = self.whole.closed


ClientConnectionMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestClientConnection = ClientConnectionMachine.TestCase


def test_a_bad_prefix_after_a_closing_frame_is_no_second_violation() -> None:
    """Found by the server machine: one read holding a frame that closes the connection and
    then a bad length prefix gave two violations and two ERROR frames (in two reads, one)."""
    conn = ServerConnection(MAX_FRAME, MAX_MESSAGE)
    not_a_login = encode_frame(b"")
    events = conn.receive_data(not_a_login + encode_varint(MAX_FRAME + 1))
    assert [type(event) for event in events] == [ProtocolViolation] and conn.state is State.CLOSED
    assert [Response.FromString(payload).cmd for payload in frames_of(conn.data_to_send())] == [ERROR]
