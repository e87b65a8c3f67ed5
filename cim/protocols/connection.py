"""The cim-server side of one client connection, sans-I/O.

Fed bytes with ``receive_data``, it returns events for the application (login,
messages, syncs, delivery acks, offline) and queues the frames the protocol
answers by itself (pong, errors) for ``data_to_send``. Chat messages are read at
the wire level (``cim.wire``) in runs to one destination; anything unusual is
parsed by protobuf. The application answers events through the ``send_*`` methods.
Nothing here touches a socket, a clock or a backend, so it is tested with plain
bytes (tests/test_connection.py).

Every frame sent to the client carries the ``receiveUserId`` property except the
pong, because CIM's client reads it from every non-PING frame.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cim.destinations import EVERYONE, Destination, Now, ToGroup, ToUser, later
from cim.frame import FrameDecoder, FrameError, encode_frame
from cim.proto import (
    DELIVERY_ACK,
    ERROR,
    HISTORY,
    LOGIN_ANSWER,
    LOGIN_REQUEST,
    MARK_READ,
    MESSAGE,
    OFFLINE,
    PING,
    SEND_RECEIPT,
    SUBSCRIBE_PRESENCE,
    SYNC,
    Request,
    Response,
)
from cim.protocols import ACCEPTED_CODES
from cim.status import Status
from cim.wire import encode_receipts, scan_chat_run, scan_plain_read
from cim.wire_fields import RECEIVE_USER_ID

PONG = encode_frame(Response(cmd=PING, resMsg="pong").SerializeToString())
# The longest framed ping CIM's client sends (the largest userId): a longer read is no
# ping, and its transport need not ask ``answer_ping``.
MAX_PING_FRAME = len(encode_frame(Request(requestId=2**63 - 1, reqMsg="ping", cmd=PING).SerializeToString()))


class State(enum.Enum):
    AWAITING_LOGIN = "awaiting-login"
    OPEN = "open"
    CLOSED = "closed"  # the protocol wants the transport closed once data_to_send is written


# The members as module names: read through the class, a member costs a Python-level
# EnumType.__getattr__ hook on Python 3.11 (~0.15 µs), and the hot path compares every read.
AWAITING_LOGIN, OPEN, CLOSED = State.AWAITING_LOGIN, State.OPEN, State.CLOSED


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class Login:
    user_id: int
    user_name: str
    request: Request


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class ChatMessages:
    """Messages the client sent in a row to one destination. Texts are UTF-8 bytes,
    as on the wire; the k-th text came with the k-th clientMsgId (0: none). Either every
    one has a clientMsgId or none has (``runs_of``): what a send with them gets (a
    receipt, the sender's copy: cim.delivery) is then the same for the whole run."""

    texts: list[bytes]
    destination: Destination
    client_msg_ids: list[int]


def runs_of(texts: list[bytes], destination: Destination, client_msg_ids: list[int]) -> list[ChatMessages]:
    """Messages in a row split where they switch between having a clientMsgId and not."""
    runs: list[ChatMessages] = []
    start = 0
    for k in range(1, len(texts) + 1):
        if k == len(texts) or bool(client_msg_ids[k]) != bool(client_msg_ids[start]):
            runs.append(ChatMessages(texts[start:k], destination, client_msg_ids[start:k]))
            start = k
    return runs


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class Ping:
    """A heartbeat. Answered in order with the other events, so a pong also says
    that everything the client sent before the ping has been handled."""


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class Sync:
    """The client asks for every message of its inbox after ``after_seq`` (its last one)."""

    after_seq: int


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class DeliveryAck:
    """The client has every message of its inbox up to ``seq`` (cumulative); ``read``: MARK_READ,
    the user has read them (a cursor of its own, for read receipts)."""

    seq: int
    read: bool = False


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class HistoryRequest:
    """The client asks for a page of its inbox's history (``cim.history`` reads the request's fields)."""

    request: Request


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class PresenceSubscription:
    """The client watches (or, ``unsubscribe``, stops watching) these users' presence (``cim.presence``)."""

    request_id: int  # clientMsgId, echoed in the answer
    user_ids: list[int]
    unsubscribe: bool


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class Offline:
    """The client says it is going away (CIM's OFFLINE command)."""


@dataclass(slots=True)  # not frozen: frozen dataclasses cost more per event
class ProtocolViolation:
    """The stream is unusable; an error frame is queued and the state is CLOSED."""

    status: Status
    reason: str


Event = Login | ChatMessages | Ping | Sync | DeliveryAck | HistoryRequest | PresenceSubscription | Offline | ProtocolViolation

PING_EVENT = Ping()  # stateless: one instance serves every ping

# Commands whose frame becomes its event with nothing of the connection's (after the login; looked up once
# PING and MESSAGE, the common ones, are not the command).
REQUEST_EVENTS: dict[int, Callable[[Request], Event]] = {
    DELIVERY_ACK: lambda request: DeliveryAck(request.ackSeq),
    SYNC: lambda request: Sync(request.ackSeq),
    MARK_READ: lambda request: DeliveryAck(request.ackSeq, read=True),
    HISTORY: HistoryRequest,
    SUBSCRIBE_PRESENCE: lambda request: PresenceSubscription(
        request.clientMsgId, list(request.presenceUserIds), request.presenceUnsubscribe),
    OFFLINE: lambda request: Offline(),
}


class ServerConnection:
    # Slots: one of these per connection (100k per node); smaller, and the ping path
    # touches fewer cache lines.
    __slots__ = (
        "state", "user_id", "user_name", "max_frame_size", "max_message_bytes", "_decoder", "_partial", "outgoing",
        "_receipt_heads", "_ping_frame", "_ping", "_to_user",
    )

    def __init__(self, max_frame_size: int, max_message_bytes: int) -> None:
        self.state, self.user_id, self.user_name = AWAITING_LOGIN, 0, ""
        self.max_frame_size, self.max_message_bytes = max_frame_size, max_message_bytes
        self._decoder = FrameDecoder(max_frame_size)
        self._partial = False  # the decoder holds part of a frame
        self.outgoing: list[bytes] = []  # frames to write, as ``data_to_send`` takes them; the transport only looks
        # By code, not by Status: an Enum member hashes in Python, an int in C (every read pays it).
        self._receipt_heads: dict[int, bytes] = {}
        # This user's ping exactly as CIM's client sends it, framed and not (set at login).
        self._ping_frame = self._ping = b""
        # The destination of the last private run: a client usually writes to one user many
        # times in a row, and building the tuple each time costs more than the check.
        self._to_user = ToUser(0)

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is CLOSED:
            return []
        try:
            frames = self._decoder.feed(data)
        except FrameError as err:
            # Frames before the bad prefix are still served; then the stream is lost. One
            # of them may have closed it already: then that was the one violation.
            events = self._handle_frames(err.frames)
            if not (events and isinstance(events[-1], ProtocolViolation)):
                events.append(self._violation(Status.VALIDATION_FAIL, f"bad frame: {err}"))
            return events
        self._partial = self._decoder.buffered > 0
        return self._handle_frames(frames)

    def receive_messages(self, payloads: list[bytes]) -> list[Event]:
        """Whole frames' payloads, with no length prefix: a message-oriented transport's
        input (one WebSocket message each), served exactly as frames read from bytes."""
        if self.state is CLOSED:
            return []
        return self._handle_frames(payloads)

    def reject_input(self, reason: str, fatal: bool) -> list[Event]:
        """Input the transport could not take: a WebSocket text message (only it is lost, with an
        error frame), or with ``fatal`` an oversized or malformed one (the stream is lost). Before
        the login either loses the stream, as a malformed login frame does."""
        if self.state is CLOSED:
            return []
        if fatal or self.state is AWAITING_LOGIN:
            return [self._violation(Status.VALIDATION_FAIL, reason)]
        self.send_error(Status.VALIDATION_FAIL, f"{reason}; ignored")
        return []

    def answer_ping(self, data: bytes) -> bytes | None:
        """The pong, when ``data`` is exactly this user's ping and nothing is pending here.

        The commonest input by far (100k idle clients ping all the time), sent byte-identical
        by CIM's client and ours: answered with no varint, no protobuf and no event. The caller
        makes sure nothing received earlier is still being handled (a pong says everything
        before it was), else it uses ``receive_data``."""
        if data == self._ping_frame and not self.outgoing and not self._partial and self.state is OPEN:
            return PONG
        return None

    def plain_read(self, data: bytes) -> tuple[int, list[bytes], list[int]] | None:
        """``(receiver, texts, client_msg_ids)`` when ``data``, read at a frame boundary of an open
        connection, is nothing but plain messages to one user (``scan_plain_read``): the one
        ``ChatMessages`` that ``receive_data`` would make of it, with no state changed. Else None."""
        if self.state is OPEN and not self._partial:
            return scan_plain_read(data, self.max_frame_size, self.max_message_bytes)
        return None

    def _handle_frames(self, frames: list[bytes]) -> list[Event]:
        events: list[Event] = []
        index, count = 0, len(frames)
        while index < count and self.state is not CLOSED:
            if self.state is OPEN:
                end, receiver, texts, client_msg_ids = scan_chat_run(frames, index, self.max_message_bytes)
                if end > index:
                    if not receiver:
                        destination: Destination = EVERYONE
                    else:  # inline, not a method: this runs for every run of messages
                        destination = self._to_user
                        if destination.user_id != receiver:
                            destination = self._to_user = ToUser(receiver)
                    if all(client_msg_ids) or not any(client_msg_ids):
                        events.append(ChatMessages(texts, destination, client_msg_ids))
                    else:  # mixed (no client of ours sends so): see ChatMessages
                        events += runs_of(texts, destination, client_msg_ids)
                    index = end
                    continue
                if frames[index] == self._ping:
                    events.append(PING_EVENT)
                    index += 1
                    continue
            frame = frames[index]
            index += 1
            try:
                request = Request.FromString(frame)
            except DecodeError:
                # The framing is intact, so only this frame is lost: say so and go on.
                if self.state is AWAITING_LOGIN:
                    events.append(self._violation(Status.VALIDATION_FAIL, "malformed login frame: not a Request"))
                else:
                    self.send_error(Status.VALIDATION_FAIL, "malformed frame: not a protobuf Request; ignored")
                continue
            event = self._handle_request(request)
            if event is not None:
                events.append(event)
        return events

    def _handle_request(self, request: Request) -> Event | None:
        cmd = request.cmd
        if self.state is AWAITING_LOGIN:
            if cmd != LOGIN_REQUEST or request.requestId <= 0:
                return self._violation(
                    Status.VALIDATION_FAIL,
                    "the first frame must be a login (cmd LOGIN_REQUEST, requestId = userId > 0)",
                    request.requestId,
                )
            self.state = OPEN
            self.user_id = request.requestId
            self.user_name = request.reqMsg
            self._ping = Request(requestId=request.requestId, reqMsg="ping", cmd=PING).SerializeToString()
            self._ping_frame = encode_frame(self._ping)
            return Login(request.requestId, request.reqMsg, request)
        if cmd == PING:
            return PING_EVENT
        if cmd == MESSAGE:
            return self._chat_message(request)
        as_event = REQUEST_EVENTS.get(cmd)
        if as_event is not None:
            return as_event(request)
        if cmd == LOGIN_REQUEST:
            self.send_error(Status.REPEAT_LOGIN, "this connection is already logged in; ignored")
            return None
        self.send_error(Status.VALIDATION_FAIL, f"unsupported command {cmd}; ignored")
        return None

    def _chat_message(self, request: Request) -> ChatMessages | None:
        """A message the wire-level scan left to protobuf: checked and answered in full."""
        text = request.reqMsg
        failure = None
        if not text:
            failure = "empty message"
        elif len(text) * 4 > self.max_message_bytes and len(text.encode()) > self.max_message_bytes:
            failure = f"message over {self.max_message_bytes} bytes"
        destination: Now = EVERYONE
        raw_receiver = request.properties.get(RECEIVE_USER_ID)
        if failure is None and raw_receiver:
            if request.groupId:
                failure = "a message goes to a receiveUserId or a groupId, not both"
            else:
                try:
                    destination = ToUser(int(raw_receiver))
                except ValueError:
                    failure = f"receiveUserId {raw_receiver!r} is not a user id"
        elif request.groupId:
            destination = ToGroup(request.groupId)
        if failure is not None:
            self.send_receipt(request.clientMsgId, Status.VALIDATION_FAIL, failure)
            return None
        # Never from the wire-level scan, which takes plain messages only.
        return ChatMessages([text.encode()], later(destination, request.delaySeconds), [request.clientMsgId])

    def _violation(self, status: Status, reason: str, receiver: int = 0) -> ProtocolViolation:
        self.outgoing.append(self._frame(Response(cmd=ERROR, code=status.code, resMsg=reason), receiver))
        self.state = CLOSED
        return ProtocolViolation(status, reason)

    # -- output --------------------------------------------------------------

    def _receipt_head(self, status: Status, text: str) -> bytes:
        """A receipt's fields but the ids: serialized once per status and connection."""
        return Response(cmd=SEND_RECEIPT, code=status.code, resMsg=text, properties={RECEIVE_USER_ID: str(self.user_id)}
                        ).SerializeToString()

    def _frame(self, response: Response, receiver: int = 0) -> bytes:
        """``response`` framed, to ``receiver`` (default: this user)."""
        response.properties[RECEIVE_USER_ID] = str(receiver or self.user_id)
        return encode_frame(response.SerializeToString())

    def send_pong(self) -> None:
        self.outgoing.append(PONG)

    def send_error(self, status: Status, reason: str) -> None:
        self.outgoing.append(self._frame(Response(cmd=ERROR, code=status.code, resMsg=reason)))

    def send_login_answer(self, latest_seq: int, heartbeat_seconds: int, acked_seq: int) -> None:
        """The login is accepted: the user's latest inbox seq, the ping interval the server expects
        and the last seq the login's device acknowledged."""
        answer = Response(cmd=LOGIN_ANSWER, code=Status.SUCCESS.code, seq=latest_seq, heartbeatSeconds=heartbeat_seconds,
                          ackedSeq=acked_seq)
        self.outgoing.append(self._frame(answer))

    def send_sync_done(self, latest_seq: int, truncated: bool) -> None:
        """A sync is complete: every message up to ``latest_seq`` was sent before this;
        ``truncated``: some after the client's seq were dropped by retention."""
        self.outgoing.append(self._frame(Response(cmd=SYNC, code=Status.SUCCESS.code, seq=latest_seq, truncated=truncated)))

    def send_receipts(self, client_msg_ids: list[int], first_id: int, status: Status = Status.SUCCESS,
                      first_seq: int = 0, timestamp_ms: int = 0) -> None:
        """The fate of messages this client sent: the k-th got message id ``first_id + k``; with
        ``first_seq``, its copy in the sender's inbox got seq ``first_seq + k`` (stored at
        ``timestamp_ms``), and the receipt stands for that copy's push on this connection.
        Receipts only when asked: a message sent with clientMsgId 0 (CIM's client, which stops
        reading at a frame it does not know) gets a receipt only if it failed. A run is all
        asked for or none (``ChatMessages``), so its first says which."""
        code = status.code
        head = self._receipt_heads.get(code)
        if head is None:
            head = self._receipt_heads[code] = self._receipt_head(status, status.message)
        if code in ACCEPTED_CODES and not client_msg_ids[0]:
            return
        self.outgoing.append(encode_receipts(head, client_msg_ids, first_id, first_seq, timestamp_ms))

    def send_receipt(self, client_msg_id: int, status: Status, text: str, msg_id: int = 0) -> None:
        """One message's fate in words of its own: why it failed, or ``msg_id`` (a
        duplicate's original id). Accepted and not asked for (clientMsgId 0): nothing."""
        if text == status.message:  # in the status's own words (every message over a rate): its cached head
            self.send_receipts([client_msg_id], msg_id, status)
        elif client_msg_id or status.code not in ACCEPTED_CODES:
            self.outgoing.append(encode_receipts(self._receipt_head(status, text), [client_msg_id], msg_id))

    def send_push(self, frame: bytes) -> None:
        """A complete, already framed push (see ``cim.messages``)."""
        self.outgoing.append(frame)

    def refuse(self, status: Status, reason: str) -> None:
        """Refuse the login (or end the session) with an error frame, then close."""
        self._violation(status, reason)

    def close(self, reason: str, reconnect: bool) -> None:
        """Tell the client why, then close. The OFFLINE frame's code says whether to come back:
        9000 the session ended for good (logged out), 4000 it may reconnect (shutdown, timeout)."""
        if self.state is not CLOSED:
            status = Status.FAIL if reconnect else Status.SUCCESS
            self.outgoing.append(self._frame(Response(cmd=OFFLINE, code=status.code, resMsg=reason)))
            self.state = CLOSED

    def data_to_send(self) -> bytes:
        if not self.outgoing:
            return b""
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        return data
