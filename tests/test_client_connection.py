"""The client connection state machine (cim.protocols.client), fed bytes, no sockets."""

from __future__ import annotations

import itertools
from types import ModuleType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cim.frame import FrameDecoder, encode_frame, encode_frames
from cim.messages import Sender, receiver_entry
from cim.proto import DELIVERY_ACK, ERROR, LOGIN_ANSWER, MESSAGE, OFFLINE, PING, SEND_RECEIPT, SYNC, Request, Response
from cim.protocols.client import (
    PONG,
    ClientConnection,
    ClientEvent,
    LoginAnswer,
    Offline,
    Pong,
    ProtocolError,
    Pushed,
    Receipt,
    ServerError,
    SyncDone,
)
from cim.protocols.connection import ServerConnection
from cim.status import Status
from cim.wire import frame_sequenced, push_bodies

# CIM's client's frames for user 1001 "zhangsan", byte for byte (see tests/test_wire.py).
CIM_LOGIN = b"\x0a\x08zhangsan" + b"\x10\xe9\x07"
CIM_PING = b"\x0a\x04ping" + b"\x10\xe9\x07" + b"\x18\x02"


def request_of(frame: bytes) -> Request:
    """The one Request a builder's bytes hold."""
    [payload] = FrameDecoder().feed(frame)
    return Request.FromString(payload)


def payload(properties: dict[str, str] | None = None, **fields: Any) -> bytes:
    """A serialized Response, built with protobuf."""
    message = Response(**fields)
    message.properties.update(properties or {})
    return message.SerializeToString()


def response(properties: dict[str, str] | None = None, **fields: Any) -> bytes:
    """A framed Response."""
    return encode_frame(payload(properties, **fields))


def alice() -> ClientConnection:
    return ClientConnection(7, "alice")


# -- frames out ----------------------------------------------------------------


def test_login_and_ping_are_cims_bytes() -> None:
    cim = ClientConnection(1001, "zhangsan")
    assert cim.login() == encode_frame(CIM_LOGIN)
    assert cim.ping() == encode_frame(CIM_PING)
    assert cim.ping() is cim.ping()  # built once


def test_login_carries_token_and_device_when_given() -> None:
    login = request_of(alice().login(token="t0k", device_id="phone"))
    assert (login.requestId, login.reqMsg, login.cmd, login.token, login.deviceId) == (7, "alice", 0, "t0k", "phone")


def test_messages_private_and_group() -> None:
    private = request_of(alice().message("hi bob", receiver_id=8, client_msg_id=3))
    assert (private.requestId, private.reqMsg, private.cmd, private.clientMsgId) == (7, "hi bob", MESSAGE, 3)
    assert dict(private.properties) == {"receiveUserId": "8"}
    group = request_of(alice().message("hello all", client_msg_id=4))
    assert (group.reqMsg, group.cmd, group.clientMsgId, dict(group.properties)) == ("hello all", MESSAGE, 4, {})
    named = request_of(alice().message("team", group_id="dev"))
    assert (named.groupId, dict(named.properties)) == ("dev", {})


def test_messages_take_the_servers_fast_path(wire: ModuleType) -> None:
    frames = FrameDecoder().feed(alice().message("hi bob", 8, 3) + alice().message("hi again", 8, 4))
    assert wire.scan_chat_run(frames, 0, 4096) == (2, 8, [b"hi bob", b"hi again"], [3, 4])
    [group] = FrameDecoder().feed(alice().message("hello all", client_msg_id=5))
    assert wire.scan_chat_run([group], 0, 4096) == (1, 0, [b"hello all"], [5])


def test_ack_sync_and_offline() -> None:
    ack, sync, offline = (request_of(f) for f in (alice().ack(41), alice().sync(40), alice().offline()))
    assert (ack.requestId, ack.cmd, ack.ackSeq) == (7, DELIVERY_ACK, 41)
    assert (sync.requestId, sync.cmd, sync.ackSeq) == (7, SYNC, 40)
    assert (offline.requestId, offline.cmd, offline.reqMsg) == (7, OFFLINE, "bye")


# -- events in -----------------------------------------------------------------


def test_a_push_is_a_pushed_message() -> None:
    push = response(cmd=MESSAGE, resMsg="hi alice", responseId=8, msgId=99, seq=5, timestamp=1_700_000_000_123,
                    groupId="dev", properties={"sendUserId": "8", "sendUserName": "bob", "receiveUserId": "7"})
    assert alice().receive_data(push) == [Pushed(8, "bob", 7, "hi alice", 99, 5, 1_700_000_000_123, "dev")]


def test_a_cim_push_names_the_sender_only_in_response_id() -> None:
    push = response(cmd=MESSAGE, resMsg="hi", responseId=1002, properties={"receiveUserId": "1001"})
    assert alice().receive_data(push) == [Pushed(1002, "", 1001, "hi", 0, 0, 0, "")]


def test_a_servers_push_carries_its_seq() -> None:
    bodies = push_bodies(Sender.of(8, "bob").prefix, [b"one", b"two"], 500, 1_700_000_000_000, [0, 0])
    pushed = alice().receive_data(frame_sequenced(bodies, 2**32 + 1, receiver_entry(7)))
    assert pushed == [
        Pushed(8, "bob", 7, "one", 500, 2**32 + 1, 1_700_000_000_000, ""),
        Pushed(8, "bob", 7, "two", 501, 2**32 + 2, 1_700_000_000_000, ""),
    ]


def test_login_answer_and_sync_done() -> None:
    frames = [
        response(cmd=LOGIN_ANSWER, code=9000, seq=41, heartbeatSeconds=2, properties={"receiveUserId": "7"}),
        response(cmd=SYNC, code=9000, seq=2**63, truncated=True, properties={"receiveUserId": "7"}),
        response(cmd=SYNC, code=9000),  # nothing in the inbox: seq 0
    ]
    assert alice().receive_data(b"".join(frames)) == [LoginAnswer(41, 2), SyncDone(2**63, True), SyncDone(0, False)]


def test_what_a_server_connection_writes_is_read_back() -> None:
    server = ServerConnection(1024, 100)
    server.receive_data(alice().login())
    server.send_login_answer(latest_seq=12, heartbeat_seconds=30, acked_seq=9)
    server.send_sync_done(latest_seq=12, truncated=False)
    server.send_receipts([0], first_id=700)  # sent without a clientMsgId: no receipt
    server.send_receipts([3], first_id=701)
    server.send_receipt(4, Status.SUCCESS, Status.SUCCESS.message, msg_id=650)  # a resend: the original msgId
    assert alice().receive_data(server.data_to_send()) == [
        LoginAnswer(12, 30, 9), SyncDone(12, False),
        Receipt(9000, Status.SUCCESS.message, 701, 3), Receipt(9000, Status.SUCCESS.message, 650, 4),
    ]


def test_receipts_pongs_errors_and_offline() -> None:
    frames = [
        response(cmd=SEND_RECEIPT, code=9000, resMsg="Success", msgId=99, clientMsgId=3),
        response(cmd=SEND_RECEIPT, code=7000, resMsg="offline", msgId=100, clientMsgId=4),
        response(cmd=SEND_RECEIPT, code=3000, resMsg="empty message", clientMsgId=5),
        response(cmd=PING, resMsg="pong"),
        response(cmd=ERROR, code=5000, resMsg="Repeat login"),
        response(cmd=OFFLINE, code=4000, resMsg="shutting down"),
    ]
    delivered, stored, refused, pong, error, offline = alice().receive_data(b"".join(frames))
    assert delivered == Receipt(9000, "Success", 99, 3) and delivered.accepted and not delivered.stored_offline
    assert stored == Receipt(7000, "offline", 100, 4) and stored.accepted and stored.stored_offline
    assert refused == Receipt(3000, "empty message", 0, 5) and not refused.accepted
    assert pong == Pong() and pong is PONG
    assert error == ServerError(5000, "Repeat login")
    assert offline == Offline(4000, "shutting down") and offline.reconnect


def test_offline_9000_ends_the_session_for_good() -> None:
    [offline] = alice().receive_data(response(cmd=OFFLINE, code=9000, resMsg="logged out"))
    assert offline == Offline(9000, "logged out") and not offline.reconnect


def test_a_command_this_client_does_not_know_is_skipped() -> None:
    connection = alice()
    assert connection.receive_data(response(cmd=99, resMsg="from the future") + response(cmd=PING)) == [PONG]
    assert not connection.closed


STREAM = [
    response(cmd=LOGIN_ANSWER, code=9000, seq=300, heartbeatSeconds=30),
    response(cmd=PING, resMsg="pong"),
    response(cmd=MESSAGE, resMsg="x" * 300, responseId=8, properties={"receiveUserId": "7"}),  # a 2-byte prefix
    response(cmd=SEND_RECEIPT, code=9000, clientMsgId=1),
    response(cmd=SYNC, code=9000, seq=2**40, truncated=True),
    response(cmd=OFFLINE, code=9000, resMsg="bye"),
]


@given(st.lists(st.integers(0, len(b"".join(STREAM))), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    data = b"".join(STREAM)
    whole = alice().receive_data(data)
    assert len(whole) == len(STREAM)
    connection = alice()
    chunked: list[ClientEvent] = []
    for start, end in itertools.pairwise([0, *sorted(cuts), len(data)]):
        chunked += connection.receive_data(data[start:end])
    assert chunked == whole


# -- an unusable stream --------------------------------------------------------


def test_bad_framing_ends_the_stream_after_the_frames_before_it() -> None:
    connection = alice()
    events = connection.receive_data(response(cmd=PING) + b"\x80\x80\x80\x80\x80\x01")  # a 6-byte varint
    assert events[0] == PONG and isinstance(events[1], ProtocolError) and len(events) == 2
    assert "bad frame" in events[1].reason and connection.closed
    assert connection.receive_data(response(cmd=PING)) == []


def test_a_frame_over_the_limit_ends_the_stream() -> None:
    connection = ClientConnection(7, "alice", max_frame_size=64)
    [error] = connection.receive_data(response(cmd=MESSAGE, resMsg="x" * 100))
    assert isinstance(error, ProtocolError) and connection.closed


def test_a_frame_that_is_not_a_response_ends_the_stream() -> None:
    for garbage in (b"\xff", b"\x0a\x02\xff\xfe", payload(cmd=MESSAGE, properties={"sendUserId": "bob"})):
        connection = alice()
        events = connection.receive_data(encode_frames([garbage]) + response(cmd=PING))
        assert len(events) == 1 and isinstance(events[0], ProtocolError), garbage
        assert "not a cim Response" in events[0].reason and connection.closed
        assert connection.receive_data(response(cmd=PING)) == []
