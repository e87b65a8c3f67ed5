"""Wire compatibility with CIM: protobuf bytes written by hand from the wire format.

Field tags: (number << 3) | wire_type; 0 = varint, 2 = length-delimited.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from cim.frame import FrameDecoder, encode_frame
from cim.proto import BaseCommand, Request, Response

USER_ID_1001 = b"\xe9\x07"  # varint(1001)
USER_ID_1002 = b"\xea\x07"  # varint(1002)

# Request{reqMsg="zhangsan", requestId=1001}: no cmd on the wire, LOGIN_REQUEST is the default.
LOGIN = b"\x0a\x08zhangsan" + b"\x10" + USER_ID_1001
# Request{reqMsg="ping", requestId=1001, cmd=PING}
PING = b"\x0a\x04ping" + b"\x10" + USER_ID_1001 + b"\x18\x02"
# Response{resMsg="pong", cmd=PING}
PONG = b"\x0a\x04pong" + b"\x18\x02"
# Response{resMsg="hi", responseId=1002, cmd=MESSAGE, properties{receiveUserId: "1001"}}
PROPERTY_RECEIVER = b"\x22\x15" + b"\x0a\x0dreceiveUserId" + b"\x12\x041001"
PUSH = b"\x0a\x02hi" + b"\x10" + USER_ID_1002 + b"\x18\x01" + PROPERTY_RECEIVER


def test_login_request_golden_bytes() -> None:
    request = Request.FromString(LOGIN)
    assert (request.requestId, request.reqMsg, request.cmd) == (1001, "zhangsan", BaseCommand.LOGIN_REQUEST)
    assert Request(requestId=1001, reqMsg="zhangsan", cmd=BaseCommand.LOGIN_REQUEST).SerializeToString() == LOGIN


def test_ping_and_pong_golden_bytes() -> None:
    assert Request(requestId=1001, reqMsg="ping", cmd=BaseCommand.PING).SerializeToString() == PING
    assert Response(resMsg="pong", cmd=BaseCommand.PING).SerializeToString() == PONG


def test_pushed_message_golden_bytes() -> None:
    push = Response(resMsg="hi", responseId=1002, cmd=BaseCommand.MESSAGE)
    push.properties["receiveUserId"] = "1001"
    assert push.SerializeToString() == PUSH
    parsed = Response.FromString(PUSH)
    assert parsed.properties["receiveUserId"] == "1001"


def test_framed_login_is_netty_framing() -> None:
    frame = encode_frame(LOGIN)
    assert frame == bytes([len(LOGIN)]) + LOGIN
    assert FrameDecoder().feed(frame) == [LOGIN]


def test_extension_field_tags() -> None:
    # msgId = 16 (varint): tag (16 << 3) | 0 = 128 -> varint 0x80 0x01.
    assert Response(msgId=5).SerializeToString() == b"\x80\x01\x05"
    # clientMsgId = 16 on Request, code = 19 on Response (19 << 3 = 152 -> 0x98 0x01).
    assert Request(clientMsgId=7).SerializeToString() == b"\x80\x01\x07"
    assert Response(code=7000).SerializeToString() == b"\x98\x01\xd8\x36"


def _cim_only_response_class() -> type[Message]:
    """Response as CIM's own .proto knows it: fields 1-5 and commands 0-3 only."""
    f = descriptor_pb2.FileDescriptorProto(name="cim_only.proto", package="cimonly", syntax="proto3")
    enum = f.enum_type.add(name="BaseCommand")
    for number, name in enumerate(["LOGIN_REQUEST", "MESSAGE", "PING", "OFFLINE"]):
        enum.value.add(name=name, number=number)
    msg = f.message_type.add(name="Response")
    entry = msg.nested_type.add(name="PropertiesEntry")
    entry.options.map_entry = True
    F = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="resMsg", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="responseId", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    msg.field.add(name="cmd", number=3, type=F.TYPE_ENUM, type_name=".cimonly.BaseCommand", label=F.LABEL_OPTIONAL)
    msg.field.add(
        name="properties", number=4, type=F.TYPE_MESSAGE, type_name=".cimonly.Response.PropertiesEntry",
        label=F.LABEL_REPEATED,
    )
    msg.field.add(name="batchResMsg", number=5, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("cimonly.Response"))


def test_cim_only_schema_reads_extended_push() -> None:
    push = Response(resMsg="hi", responseId=1002, cmd=BaseCommand.MESSAGE, msgId=99, seq=3, timestamp=1_700_000_000_000)
    push.properties.update(sendUserId="1002", sendUserName="lisi", receiveUserId="1001")
    cim_response: Any = _cim_only_response_class().FromString(push.SerializeToString())  # fields known at run time
    assert cim_response.resMsg == "hi"
    assert cim_response.responseId == 1002
    assert cim_response.cmd == 1
    assert dict(cim_response.properties) == {"sendUserId": "1002", "sendUserName": "lisi", "receiveUserId": "1001"}
