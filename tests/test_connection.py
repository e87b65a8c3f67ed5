"""The server connection state machine, fed bytes, no sockets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cim.destinations import EVERYONE, ToGroup, ToUser
from cim.frame import FrameDecoder, encode_frame, encode_frames
from cim.proto import DELIVERY_ACK, LOGIN_ANSWER, MESSAGE, PING, SYNC, BaseCommand, Request, Response
from cim.protocols.connection import (
    ChatMessages,
    DeliveryAck,
    Login,
    Offline,
    Ping,
    ProtocolViolation,
    ServerConnection,
    State,
    Sync,
)
from cim.status import Status


def frame(*, properties: Mapping[str, str] | None = None, **fields: Any) -> bytes:
    """A framed Request; ``fields`` are Request's keyword arguments (Any: ``cmd`` may be a number no BaseCommand names)."""
    request = Request(**fields)
    request.properties.update(properties or {})
    return encode_frame(request.SerializeToString())


def sent(conn: ServerConnection) -> list[Response]:
    return [Response.FromString(f) for f in FrameDecoder().feed(conn.data_to_send())]


def logged_in() -> ServerConnection:
    conn = ServerConnection(max_frame_size=1024, max_message_bytes=100)
    [event] = conn.receive_data(frame(requestId=7, reqMsg="alice"))
    assert event == Login(7, "alice", Request(requestId=7, reqMsg="alice"))
    return conn


def test_login_without_cmd_on_the_wire() -> None:
    conn = logged_in()
    assert conn.state is State.OPEN and conn.user_id == 7 and conn.user_name == "alice"
    assert conn.data_to_send() == b""


def test_first_frame_not_a_login_is_refused_with_receiver_set() -> None:
    conn = ServerConnection(1024, 100)
    events = conn.receive_data(frame(requestId=7, reqMsg="hi", cmd=BaseCommand.MESSAGE))
    assert isinstance(events[0], ProtocolViolation) and conn.state is State.CLOSED
    [error] = sent(conn)
    assert error.cmd == BaseCommand.ERROR and error.code == Status.VALIDATION_FAIL.code
    assert error.properties["receiveUserId"] == "7"
    assert "first frame must be a login" in error.resMsg
    assert conn.receive_data(frame(requestId=7)) == []  # closed: nothing more is read


def test_ping_answers_cim_pong() -> None:
    conn = logged_in()
    assert conn.receive_data(frame(requestId=7, reqMsg="ping", cmd=BaseCommand.PING)) == [Ping()]
    conn.send_pong()
    assert conn.data_to_send() == encode_frame(b"\x0a\x04pong\x18\x02")


def test_messages_private_and_group() -> None:
    conn = logged_in()
    events = conn.receive_data(
        frame(reqMsg="to bob", cmd=BaseCommand.MESSAGE, clientMsgId=1, properties={"receiveUserId": "8"})
        + frame(reqMsg="to all", cmd=BaseCommand.MESSAGE, clientMsgId=2)
    )
    assert events == [ChatMessages([b"to bob"], ToUser(8), [1]), ChatMessages([b"to all"], EVERYONE, [2])]


def test_a_group_id_names_a_group_never_everyone() -> None:
    conn = logged_in()
    events = conn.receive_data(frame(reqMsg="to the team", cmd=BaseCommand.MESSAGE, clientMsgId=3, groupId="team"))
    assert events == [ChatMessages([b"to the team"], ToGroup("team"), [3])]


def test_a_receiver_and_a_group_id_together_are_refused() -> None:
    conn = logged_in()
    both = frame(reqMsg="?", cmd=BaseCommand.MESSAGE, clientMsgId=4, groupId="team", properties={"receiveUserId": "8"})
    assert conn.receive_data(both) == []
    [receipt] = sent(conn)
    assert (receipt.cmd, receipt.code, receipt.clientMsgId) == (BaseCommand.SEND_RECEIPT, Status.VALIDATION_FAIL.code, 4)
    assert "not both" in receipt.resMsg and receipt.properties["receiveUserId"] == "7"


def test_messages_in_a_row_to_one_destination_are_one_event() -> None:
    conn = logged_in()
    to_bob: dict[str, Any] = {"cmd": BaseCommand.MESSAGE, "properties": {"receiveUserId": "8"}}
    events = conn.receive_data(
        frame(reqMsg="1", clientMsgId=1, **to_bob)
        + frame(reqMsg="2", clientMsgId=2, **to_bob)
        + frame(requestId=7, reqMsg="ping", cmd=BaseCommand.PING)
        + frame(reqMsg="3", clientMsgId=3, **to_bob)
        + frame(reqMsg="4", clientMsgId=4, deviceId="phone", **to_bob)  # not plain: parsed by protobuf
        + frame(reqMsg="5", clientMsgId=5, cmd=BaseCommand.MESSAGE)
    )
    assert events == [
        ChatMessages([b"1", b"2"], ToUser(8), [1, 2]),
        Ping(),
        ChatMessages([b"3"], ToUser(8), [3]),
        ChatMessages([b"4"], ToUser(8), [4]),
        ChatMessages([b"5"], EVERYONE, [5]),
    ]


def test_receipts_carry_each_message_its_id() -> None:
    conn = logged_in()
    conn.send_receipts([11, 12], first_id=500)
    conn.send_receipts([13], first_id=502, status=Status.OFF_LINE)
    receipts = sent(conn)
    assert [(r.cmd, r.clientMsgId, r.msgId, r.code) for r in receipts] == [
        (BaseCommand.SEND_RECEIPT, 11, 500, 9000), (BaseCommand.SEND_RECEIPT, 12, 501, 9000),
        (BaseCommand.SEND_RECEIPT, 13, 502, 7000),
    ]
    assert all(r.properties["receiveUserId"] == "7" for r in receipts)


def test_accepted_messages_sent_without_a_client_msg_id_get_no_receipt() -> None:
    conn = logged_in()
    # CIM's client: no clientMsgId, one message per read.
    cim_style = b"".join(frame(requestId=7, reqMsg=f"m{k}", cmd=MESSAGE, properties={"receiveUserId": "8"}) for k in range(3))
    [event] = conn.receive_data(cim_style)
    assert event == ChatMessages([b"m0", b"m1", b"m2"], ToUser(8), [0, 0, 0])
    conn.send_receipts(event.client_msg_ids, first_id=500)
    conn.send_receipts([0], first_id=503, status=Status.OFF_LINE)
    conn.send_receipt(0, Status.SUCCESS, "a resend", msg_id=42)
    conn.send_receipt(0, Status.OFF_LINE, Status.OFF_LINE.message, msg_id=42)
    assert conn.data_to_send() == b""


def test_failures_are_answered_with_or_without_a_client_msg_id() -> None:
    conn = logged_in()
    conn.send_receipts([0, 0], first_id=0, status=Status.FAIL)
    conn.send_receipt(0, Status.RATE_LIMITED, Status.RATE_LIMITED.message)
    conn.send_receipt(0, Status.VALIDATION_FAIL, "empty message")
    receipts = sent(conn)
    assert [(r.cmd, r.code, r.clientMsgId, r.resMsg) for r in receipts] == [
        (BaseCommand.SEND_RECEIPT, 4000, 0, Status.FAIL.message), (BaseCommand.SEND_RECEIPT, 4000, 0, Status.FAIL.message),
        (BaseCommand.SEND_RECEIPT, 4029, 0, Status.RATE_LIMITED.message), (BaseCommand.SEND_RECEIPT, 3000, 0, "empty message"),
    ]
    assert all(r.properties["receiveUserId"] == "7" for r in receipts)


def test_a_mixed_run_is_split_where_the_client_msg_ids_come_and_go() -> None:
    """A run is all with clientMsgIds or none (what a receipt and the sender's copy depend on)."""
    conn = logged_in()
    ids = [0, 11, 0, 0, 12, 13]
    data = b"".join(frame(requestId=7, reqMsg=f"m{k}", cmd=MESSAGE, clientMsgId=c, properties={"receiveUserId": "8"})
                    for k, c in enumerate(ids))
    events = conn.receive_data(data)
    assert events == [ChatMessages([b"m0"], ToUser(8), [0]), ChatMessages([b"m1"], ToUser(8), [11]),
                      ChatMessages([b"m2", b"m3"], ToUser(8), [0, 0]), ChatMessages([b"m4", b"m5"], ToUser(8), [12, 13])]
    for event, first_id in zip(events, (500, 501, 502, 504), strict=True):
        assert isinstance(event, ChatMessages)
        conn.send_receipts(event.client_msg_ids, first_id)
    receipts = sent(conn)
    assert [(r.code, r.clientMsgId, r.msgId) for r in receipts] == [(9000, 11, 501), (9000, 12, 504), (9000, 13, 505)]
    assert all(r.cmd == BaseCommand.SEND_RECEIPT and r.properties["receiveUserId"] == "7" for r in receipts)


def test_a_resend_is_answered_with_the_original_msg_id() -> None:
    conn = logged_in()
    conn.send_receipt(11, Status.SUCCESS, Status.SUCCESS.message, msg_id=2**63 + 5)
    conn.send_receipt(12, Status.SUCCESS, "duplicate", msg_id=77)
    receipts = sent(conn)
    assert [(r.code, r.clientMsgId, r.msgId, r.resMsg) for r in receipts] == [
        (9000, 11, 2**63 + 5, Status.SUCCESS.message), (9000, 12, 77, "duplicate"),
    ]
    assert all(r.properties["receiveUserId"] == "7" for r in receipts)


def test_sync_and_delivery_acks_are_events() -> None:
    conn = logged_in()
    events = conn.receive_data(
        frame(requestId=7, cmd=SYNC, ackSeq=40)
        + frame(requestId=7, cmd=MESSAGE, reqMsg="between", clientMsgId=1)
        + frame(requestId=7, cmd=DELIVERY_ACK, ackSeq=41)
        + frame(requestId=7, cmd=SYNC)  # from the start: ackSeq 0 is not on the wire
        + frame(requestId=7, cmd=DELIVERY_ACK, ackSeq=2**64 - 1)
    )
    assert events == [Sync(40), ChatMessages([b"between"], EVERYONE, [1]), DeliveryAck(41), Sync(0), DeliveryAck(2**64 - 1)]
    assert conn.data_to_send() == b"" and conn.state is State.OPEN  # an ack has no answer; a sync is the node's


def test_sync_or_ack_before_login_is_refused() -> None:
    for cmd in (SYNC, DELIVERY_ACK):
        conn = ServerConnection(1024, 100)
        [event] = conn.receive_data(frame(requestId=7, cmd=cmd, ackSeq=3))
        assert isinstance(event, ProtocolViolation) and conn.state is State.CLOSED
        [error] = sent(conn)
        assert (error.cmd, error.code, error.properties["receiveUserId"]) == (BaseCommand.ERROR, 3000, "7")


def test_login_answer_and_sync_done_frames() -> None:
    conn = logged_in()
    conn.send_login_answer(latest_seq=2**40, heartbeat_seconds=30, acked_seq=2**40 - 1)
    conn.send_sync_done(latest_seq=2**40 + 3, truncated=True)
    conn.send_sync_done(latest_seq=0, truncated=False)
    answer, done, empty = sent(conn)
    assert (answer.cmd, answer.code, answer.seq, answer.heartbeatSeconds, answer.ackedSeq) == (
        LOGIN_ANSWER, 9000, 2**40, 30, 2**40 - 1)
    assert (done.cmd, done.code, done.seq, done.truncated) == (SYNC, 9000, 2**40 + 3, True)
    assert (empty.cmd, empty.code, empty.seq, empty.truncated) == (SYNC, 9000, 0, False)
    assert all(r.properties["receiveUserId"] == "7" for r in (answer, done, empty))


def test_bad_messages_get_failed_receipts_and_the_connection_goes_on() -> None:
    conn = logged_in()
    events = conn.receive_data(
        frame(reqMsg="", cmd=BaseCommand.MESSAGE, clientMsgId=1)
        + frame(reqMsg="x" * 101, cmd=BaseCommand.MESSAGE, clientMsgId=2)
        + frame(reqMsg="hi", cmd=BaseCommand.MESSAGE, clientMsgId=3, properties={"receiveUserId": "bob"})
        + frame(reqMsg="ok", cmd=BaseCommand.MESSAGE, clientMsgId=4)
    )
    assert events == [ChatMessages([b"ok"], EVERYONE, [4])]
    receipts = sent(conn)
    assert [(r.cmd, r.clientMsgId, r.code) for r in receipts] == [(BaseCommand.SEND_RECEIPT, i, 3000) for i in (1, 2, 3)]
    assert "empty" in receipts[0].resMsg and "100 bytes" in receipts[1].resMsg and "'bob'" in receipts[2].resMsg
    assert all(r.properties["receiveUserId"] == "7" for r in receipts)
    assert conn.state is State.OPEN


def test_garbage_protobuf_after_login_is_reported_and_skipped() -> None:
    conn = logged_in()
    after = Request(reqMsg="after", cmd=BaseCommand.MESSAGE).SerializeToString()
    events = conn.receive_data(encode_frames([b"\xff\xff\xff", after]))
    assert events == [ChatMessages([b"after"], EVERYONE, [0])]
    [error] = sent(conn)
    assert error.cmd == BaseCommand.ERROR and "not a protobuf Request" in error.resMsg
    assert error.properties["receiveUserId"] == "7"


def test_garbage_login_closes() -> None:
    conn = ServerConnection(1024, 100)
    [event] = conn.receive_data(encode_frame(b"\xff\xff\xff"))
    assert isinstance(event, ProtocolViolation) and conn.state is State.CLOSED
    assert sent(conn)[0].properties["receiveUserId"] == "0"


def test_oversized_frame_serves_earlier_frames_then_closes() -> None:
    conn = logged_in()
    events = conn.receive_data(frame(reqMsg="before", cmd=BaseCommand.MESSAGE) + b"\x80\x80\x80\x80\x04")
    assert events[0] == ChatMessages([b"before"], EVERYONE, [0])
    assert isinstance(events[1], ProtocolViolation) and "exceeds the limit" in events[1].reason
    assert conn.state is State.CLOSED
    assert sent(conn)[0].cmd == BaseCommand.ERROR


def test_second_login_and_unknown_command_are_errors_not_closes() -> None:
    conn = logged_in()
    assert conn.receive_data(frame(requestId=7, reqMsg="alice") + frame(cmd=99)) == []
    errors = sent(conn)
    assert [e.code for e in errors] == [Status.REPEAT_LOGIN.code, Status.VALIDATION_FAIL.code]
    assert conn.state is State.OPEN


def test_offline_and_close() -> None:
    conn = logged_in()
    assert conn.receive_data(frame(cmd=BaseCommand.OFFLINE)) == [Offline()]
    conn.close("bye", reconnect=False)
    [bye] = sent(conn)
    assert bye.cmd == BaseCommand.OFFLINE and bye.properties["receiveUserId"] == "7" and bye.code == 9000
    assert conn.state is State.CLOSED


def test_refuse_login() -> None:
    conn = logged_in()
    conn.refuse(Status.ACCOUNT_NOT_MATCH, "no")
    [error] = sent(conn)
    assert (error.code, error.properties["receiveUserId"], conn.state) == (9100, "7", State.CLOSED)


def test_pings_take_the_fast_path_or_the_full_one_alike() -> None:
    conn = logged_in()
    exact = frame(requestId=7, reqMsg="ping", cmd=PING)  # as CIM's client sends it: the fast path
    other = frame(requestId=0, reqMsg="", cmd=PING)  # any other PING: decoded and parsed
    assert conn.receive_data(exact) == [Ping()]
    assert conn.receive_data(exact[:2]) == []  # split: the decoder holds a partial frame...
    assert conn.receive_data(exact[2:]) == [Ping()]  # ...so the rest goes the full way
    assert conn.receive_data(other + exact) == [Ping(), Ping()]
    assert conn.data_to_send() == b""  # the node answers pings (send_pong), not the parser


def test_answer_ping_only_for_the_exact_ping_with_nothing_pending() -> None:
    exact = frame(requestId=7, reqMsg="ping", cmd=PING)
    assert ServerConnection(1024, 100).answer_ping(exact) is None  # not logged in yet
    conn = logged_in()
    assert conn.answer_ping(exact) == encode_frame(b"\x0a\x04pong\x18\x02")
    assert conn.answer_ping(frame(requestId=0, reqMsg="", cmd=PING)) is None  # another PING: receive_data
    assert conn.answer_ping(exact + exact) is None
    conn.receive_data(exact[:2])
    assert conn.answer_ping(exact) is None  # a partial frame is buffered: order needs the full way
    conn.receive_data(exact[2:])
    conn.send_error(Status.VALIDATION_FAIL, "queued")
    assert conn.answer_ping(exact) is None  # output is queued: the pong must not overtake it
