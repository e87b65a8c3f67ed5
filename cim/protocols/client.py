"""The client side of one cim connection, sans-I/O: frames out, events in.

Shaped like h11's ``Connection`` and websockets' ``ClientProtocol``: the builders
(``login``, ``ping``, ``message``, ...) return the framed bytes to write, and
``receive_data`` turns the bytes read into typed events. Nothing here touches a
socket, a clock or an event loop, so the asyncio SDK, the load generators (asyncio,
gevent) and plain-bytes tests (tests/test_client_connection.py) share it.

The frames are CIM's client's, byte for byte: a login is ``Request{requestId=userId,
reqMsg=userName}`` (no cmd: LOGIN_REQUEST is proto3's default), a ping
``Request{requestId, reqMsg="ping", cmd=PING}``. A message has exactly the fields of
the server's wire-level fast path (``cim.wire.scan_chat_run``): cmd, text, sender,
``properties{receiveUserId}``, clientMsgId.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cim.frame import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameError, encode_frame
from cim.proto import (
    DELIVERY_ACK,
    ERROR,
    HISTORY,
    LOGIN_ANSWER,
    MARK_READ,
    MESSAGE,
    MESSAGE_STATUS,
    OFFLINE,
    PING,
    PRESENCE,
    SEND_RECEIPT,
    SUBSCRIBE_PRESENCE,
    SYNC,
    MessageStatus,
    Request,
    Response,
)
from cim.protocols import ACCEPTED_CODES
from cim.status import Status
from cim.wire_fields import RECEIVE_USER_ID, SEND_USER_ID, SEND_USER_NAME


@dataclass(frozen=True, slots=True)
class Pushed:
    """A message pushed to this user, private or group (``receiver_id`` is this user
    either way, as CIM sends it). ``seq`` and ``group_id`` are 0 and "" from servers
    that do not set them. ``group_id``: sent to that named group; ``notice``: a change
    of its membership (``text`` says it), from the user who made it."""

    sender_id: int
    sender_name: str
    receiver_id: int
    text: str
    msg_id: int
    seq: int
    timestamp_ms: int
    group_id: str
    notice: bool = False
    to_user_id: int = 0
    client_msg_id: int = 0
    from_this_device: bool = False

    @property
    def outgoing(self) -> bool:
        return self.sender_id == self.receiver_id


@dataclass(frozen=True, slots=True)
class Receipt:
    """The server's answer to one message this client sent (matched by ``client_msg_id``):
    9000 in the online receiver's inbox (a resend: the original's ``msg_id``), 7000
    stored for an offline receiver, anything else failed. A message sent with
    clientMsgId 0 gets a receipt only when it failed."""

    code: int
    message: str
    msg_id: int
    client_msg_id: int
    # Not 0: the receipt stands for the sender's copy on the connection that sent it (no push
    # of it comes there): its seq in the sender's inbox and when it was stored.
    seq: int = 0
    timestamp_ms: int = 0

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED_CODES

    @property
    def stored_offline(self) -> bool:
        return self.code == Status.OFF_LINE.code


@dataclass(frozen=True, slots=True)
class LoginAnswer:
    """The server accepted the login: the user's inbox is at ``latest_seq``, this device
    acknowledged up to ``acked_seq``, and the server cuts a connection that does not
    ping at least every ``heartbeat_seconds``."""

    latest_seq: int
    heartbeat_seconds: int
    acked_seq: int = 0


@dataclass(frozen=True, slots=True)
class SyncDone:
    """A sync is complete: every inbox message up to ``latest_seq`` came before this.
    ``truncated``: some after the seq asked for had been dropped by retention."""

    latest_seq: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Messages this client sent reached a state at their receiver ``receiver_id``: ``status``
    "DELIVERED" (a device of theirs acknowledged them) or "READ" (they marked them read).
    Only to a login with ``wants_receipts``."""

    receiver_id: int
    status: str
    msg_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HistoryAnswer:
    """The answer to the HISTORY request with clientMsgId ``request_id``: ``code`` 9000 and a page of the
    user's inbox (``messages`` oldest first; ``has_more``: go on from ``next_seq``; ``truncated``: retention
    had dropped some), or the code and ``message`` of a refusal (see ``cim.history``)."""

    request_id: int
    code: int
    message: str
    messages: tuple[Pushed, ...]
    has_more: bool
    next_seq: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a ping. The server answers in order, so a pong also says that
    everything sent before the ping was handled (a login, for one)."""


@dataclass(frozen=True, slots=True)
class ServerError:
    """The server could not serve a request (a refused login, an unsupported command)."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Offline:
    """The server ends the session and closes the connection. Code 9000: for good
    (logged out); any other code: the client may reconnect (shutdown, heartbeat timeout)."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        return self.code != Status.SUCCESS.code


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The stream is unusable (bad framing, or a frame that is not a Response): the
    connection is closed and yields no more events; the transport should be dropped."""

    reason: str


@dataclass(frozen=True, slots=True)
class PresenceReport:
    """Users' online states (``cim.presence``): an event (``request_id`` 0: a watched user came or went) or
    the answer to the SUBSCRIBE_PRESENCE with that clientMsgId (``code`` 9000, or 3000 and ``message`` why)."""

    request_id: int
    code: int
    message: str
    states: dict[int, bool]


ClientEvent = (Pushed | Receipt | LoginAnswer | SyncDone | StatusReport | HistoryAnswer | PresenceReport | Pong
               | ServerError | Offline | ProtocolError)

PONG = Pong()  # stateless: one instance serves every pong


def parse_response(payload: bytes) -> ClientEvent | None:
    """The event one unframed ``Response`` carries; None for a command this client
    does not know (skipped, as CIM's client does, so newer servers stay compatible)."""
    try:
        return _event(Response.FromString(payload))
    except (DecodeError, ValueError) as err:  # ValueError: a user id property that is not a number
        return ProtocolError(f"malformed frame: not a cim Response ({err})")


def _pushed(response: Response) -> Pushed:
    properties = response.properties
    return Pushed(
        # CIM's servers name the sender only in responseId.
        sender_id=int(properties.get(SEND_USER_ID) or response.responseId),
        sender_name=properties.get(SEND_USER_NAME, ""),
        receiver_id=int(properties.get(RECEIVE_USER_ID) or 0),
        text=response.resMsg,
        msg_id=response.msgId,
        seq=response.seq,
        timestamp_ms=response.timestamp,
        group_id=response.groupId,
        notice=response.notice,
        to_user_id=response.toUserId,
        client_msg_id=response.clientMsgId,
    )


def _event(response: Response) -> ClientEvent | None:
    cmd = response.cmd
    if cmd == MESSAGE:
        return _pushed(response)
    if cmd == SEND_RECEIPT:
        return Receipt(response.code, response.resMsg, response.msgId, response.clientMsgId, response.seq,
                       response.timestamp)
    if cmd == PING:
        return PONG
    if cmd == LOGIN_ANSWER:
        return LoginAnswer(response.seq, response.heartbeatSeconds, response.ackedSeq)
    if cmd == SYNC:
        return SyncDone(response.seq, response.truncated)
    if cmd == ERROR:
        return ServerError(response.code, response.resMsg)
    if cmd == OFFLINE:
        return Offline(response.code, response.resMsg)
    if cmd == MESSAGE_STATUS:
        return StatusReport(response.responseId, MessageStatus.Name(response.status), tuple(response.msgIds))
    if cmd == PRESENCE:
        return PresenceReport(response.clientMsgId, response.code, response.resMsg,
                              dict(zip(response.presenceUserIds, response.presenceOnline, strict=True)))
    if cmd == HISTORY:
        messages = tuple(_pushed(Response.FromString(body)) for body in response.messages)
        return HistoryAnswer(response.clientMsgId, response.code, response.resMsg, messages, response.hasMore,
                             response.nextSeq, response.truncated)
    return None


def _framed(request: Request) -> bytes:
    return encode_frame(request.SerializeToString())


class ClientConnection:
    """One user's side of one TCP connection to a cim-server, with no I/O.

    The builders return framed bytes for the caller to write; ``receive_data``
    takes bytes as read (cut anywhere) and returns the events they complete, in
    order. After a ``ProtocolError`` the connection is ``closed`` and returns no
    more events. A new TCP connection needs a new ``ClientConnection``.
    """

    __slots__ = ("user_id", "user_name", "_decoder", "_ping", "_closed")

    def __init__(self, user_id: int, user_name: str, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.user_id = user_id
        self.user_name = user_name
        self._decoder = FrameDecoder(max_frame_size)
        # The commonest frame by far, and the server recognises it byte for byte: built once.
        self._ping = _framed(Request(requestId=user_id, reqMsg="ping", cmd=PING))
        self._closed = False

    @property
    def closed(self) -> bool:
        """The stream is unusable (after a ``ProtocolError``)."""
        return self._closed

    # -- frames out ------------------------------------------------------------

    def login(self, token: str = "", device_id: str = "", wants_receipts: bool = False) -> bytes:
        """The first frame on a connection. Empty ``token`` and ``device_id`` (and no
        ``wants_receipts``: StatusReports of the messages sent) are not on the wire
        (proto3 defaults), so by default this is CIM's login exactly."""
        return _framed(Request(requestId=self.user_id, reqMsg=self.user_name, token=token, deviceId=device_id,
                               wantsReceipts=wants_receipts))

    def ping(self) -> bytes:
        """A heartbeat; the server answers with a ``Pong``."""
        return self._ping

    def message(self, text: str, receiver_id: int | None = None, client_msg_id: int = 0, group_id: str = "",
                delay_seconds: int = 0) -> bytes:
        """A chat message: private to ``receiver_id`` when given, else to the group; delivered
        ``delay_seconds`` later if not 0. The server answers with a ``Receipt`` carrying ``client_msg_id``."""
        request = Request(requestId=self.user_id, reqMsg=text, cmd=MESSAGE, clientMsgId=client_msg_id, groupId=group_id,
                          delaySeconds=delay_seconds)
        if receiver_id is not None:
            request.properties[RECEIVE_USER_ID] = str(receiver_id)
        return _framed(request)

    def ack(self, seq: int) -> bytes:
        """Every pushed message up to ``seq`` has been received (cumulative; no answer)."""
        return _framed(Request(requestId=self.user_id, cmd=DELIVERY_ACK, ackSeq=seq))

    def mark_read(self, seq: int) -> bytes:
        """The user has read every inbox message up to ``seq`` (cumulative; no answer): their
        senders who asked get a READ ``StatusReport``."""
        return _framed(Request(requestId=self.user_id, cmd=MARK_READ, ackSeq=seq))

    def history(self, request_id: int, peer_id: int = 0, group_id: str = "", before_seq: int = 0, after_seq: int = 0,
                limit: int = 0, keyword: str = "") -> bytes:
        """A HISTORY request (``cim.history``): a page of this user's inbox, answered with a ``HistoryAnswer``
        carrying ``request_id``. 0 and "" are "not given" (limit 0: the server's default)."""
        return _framed(Request(requestId=self.user_id, cmd=HISTORY, clientMsgId=request_id, peerId=peer_id,
                               groupId=group_id, beforeSeq=before_seq, afterSeq=after_seq, limit=limit, keyword=keyword))

    def subscribe_presence(self, request_id: int, user_ids: list[int], unsubscribe: bool = False) -> bytes:
        """Watch (or stop watching) these users' presence; a watch is answered with a ``PresenceReport``
        carrying ``request_id`` and their states, and later ones (request id 0) come as they change."""
        return _framed(Request(requestId=self.user_id, cmd=SUBSCRIBE_PRESENCE, clientMsgId=request_id,
                               presenceUserIds=user_ids, presenceUnsubscribe=unsubscribe))

    def sync(self, seq: int) -> bytes:
        """Ask for every inbox message after ``seq`` (resuming after a reconnect); the
        server pushes them, then answers ``SyncDone``."""
        return _framed(Request(requestId=self.user_id, cmd=SYNC, ackSeq=seq))

    def offline(self) -> bytes:
        """Going away (CIM's OFFLINE command)."""
        return _framed(Request(requestId=self.user_id, reqMsg="bye", cmd=OFFLINE))

    # -- bytes in --------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """The events ``data`` completes, in order; a ``ProtocolError`` is the last one ever."""
        if self._closed:
            return []
        failure: ProtocolError | None = None
        try:
            frames = self._decoder.feed(data)
        except FrameError as err:
            # The frames before the bad prefix still count; after it the stream is lost.
            frames = err.frames
            failure = ProtocolError(f"bad frame: {err}")
        events: list[ClientEvent] = []
        for frame in frames:
            event = parse_response(frame)
            if isinstance(event, ProtocolError):
                failure = event
                break
            if event is not None:
                events.append(event)
        if failure is not None:
            self._closed = True
            events.append(failure)
        return events
