"""cim.wire_fields against the schema: every field number and tag is what protobuf uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from cim import wire_fields
from cim._frame_py import encode_varint
from cim.messages import MessageIds, Sender, receiver_entry
from cim.proto import Request, Response, cim_pb2

# (the table's field number, its tag or None, the field in cim.proto: Message.field,
# or Message.mapField.key for a field of a map's entries)
FIELDS: list[tuple[int, int | None, str]] = [
    (wire_fields.REQUEST_REQ_MSG, wire_fields.TAG_REQUEST_REQ_MSG, "Request.reqMsg"),
    (wire_fields.REQUEST_REQUEST_ID, wire_fields.TAG_REQUEST_REQUEST_ID, "Request.requestId"),
    (wire_fields.REQUEST_CMD, wire_fields.TAG_REQUEST_CMD, "Request.cmd"),
    (wire_fields.REQUEST_PROPERTIES, wire_fields.TAG_REQUEST_PROPERTIES, "Request.properties"),
    (wire_fields.REQUEST_CLIENT_MSG_ID, None, "Request.clientMsgId"),
    (wire_fields.RESPONSE_RES_MSG, wire_fields.TAG_RESPONSE_RES_MSG, "Response.resMsg"),
    (wire_fields.RESPONSE_PROPERTIES, wire_fields.TAG_RESPONSE_PROPERTIES, "Response.properties"),
    (wire_fields.RESPONSE_MSG_ID, wire_fields.TAG_RESPONSE_MSG_ID, "Response.msgId"),
    (wire_fields.RESPONSE_SEQ, wire_fields.TAG_RESPONSE_SEQ, "Response.seq"),
    (wire_fields.RESPONSE_TIMESTAMP, wire_fields.TAG_RESPONSE_TIMESTAMP, "Response.timestamp"),
    (wire_fields.RESPONSE_CLIENT_MSG_ID, wire_fields.TAG_RESPONSE_CLIENT_MSG_ID, "Response.clientMsgId"),
    (wire_fields.ENTRY_KEY, wire_fields.TAG_ENTRY_KEY, "Request.properties.key"),
    (wire_fields.ENTRY_VALUE, wire_fields.TAG_ENTRY_VALUE, "Request.properties.value"),
    (wire_fields.ENTRY_KEY, wire_fields.TAG_ENTRY_KEY, "Response.properties.key"),
    (wire_fields.ENTRY_VALUE, wire_fields.TAG_ENTRY_VALUE, "Response.properties.value"),
]
# Tags the hot path and cim.messages read or write as a single byte.
ONE_BYTE_TAGS = [
    wire_fields.TAG_REQUEST_REQ_MSG,
    wire_fields.TAG_REQUEST_REQUEST_ID,
    wire_fields.TAG_REQUEST_CMD,
    wire_fields.TAG_REQUEST_PROPERTIES,
    wire_fields.TAG_RESPONSE_RES_MSG,
    wire_fields.TAG_RESPONSE_PROPERTIES,
    wire_fields.TAG_ENTRY_KEY,
    wire_fields.TAG_ENTRY_VALUE,
]
VARINT_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
}
LENGTH_DELIMITED_TYPES = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}


def schema_field(path: str) -> FieldDescriptor:
    """The descriptor of a field named as in ``FIELDS``."""
    message_name, *names = path.split(".")
    message: Descriptor | None = cim_pb2.DESCRIPTOR.message_types_by_name[message_name]
    field = None
    for name in names:
        assert message is not None, f"{path}: {field} is not a message"
        field = message.fields_by_name[name]
        message = field.message_type
    assert field is not None, f"{path}: names no field"
    return field


def wire_type(field: FieldDescriptor) -> int:
    """The wire type protobuf encodes a (non-packed) field with."""
    if field.type in VARINT_TYPES:
        return wire_fields.VARINT
    assert field.type in LENGTH_DELIMITED_TYPES, f"{field.full_name}: a wire type the table has no name for"
    return wire_fields.LEN


@pytest.mark.parametrize(("number", "tag", "path"), FIELDS, ids=[path for _, _, path in FIELDS])
def test_field_numbers_and_tags_are_the_schemas(number: int, tag: int | None, path: str) -> None:
    field = schema_field(path)
    assert number == field.number
    if tag is not None:
        assert tag == field.number << 3 | wire_type(field)


def test_client_msg_id_tag_bytes_are_the_canonical_varint() -> None:
    field = schema_field("Request.clientMsgId")
    expected = encode_varint(field.number << 3 | wire_type(field))
    assert expected == wire_fields.TAG_REQUEST_CLIENT_MSG_ID_BYTES
    assert Request(clientMsgId=1).SerializeToString() == expected + b"\x01"


def test_tags_matched_as_one_byte_fit_in_one() -> None:
    assert all(0 < tag < 0x80 for tag in ONE_BYTE_TAGS)


def test_property_names_are_those_the_schema_documents() -> None:
    schema = (Path(__file__).parents[1] / "cim" / "proto" / "cim.proto").read_text()
    response_properties = next(line for line in schema.splitlines() if "sendUserId" in line)
    assert "map<string, string> properties" in response_properties
    for name in (wire_fields.SEND_USER_ID, wire_fields.SEND_USER_NAME, wire_fields.RECEIVE_USER_ID):
        assert name in response_properties


def test_pushes_built_from_the_table_parse_as_protobuf() -> None:
    largest = 10**wire_fields.MAX_RECEIVER_DIGITS - 1
    assert Response.FromString(receiver_entry(largest)).properties == {wire_fields.RECEIVE_USER_ID: str(largest)}
    push = Response.FromString(Sender.of(1002, "lisi").prefix)
    assert push.properties == {wire_fields.SEND_USER_ID: "1002", wire_fields.SEND_USER_NAME: "lisi"}


def test_hot_path_bounds() -> None:
    assert wire_fields.MAX_RUN <= MessageIds.MAX_BLOCK  # a run's ids come from one block
    # The most digits that fit an int64 whatever they are.
    assert 10**wire_fields.MAX_RECEIVER_DIGITS - 1 < 2**63 <= 10 ** (wire_fields.MAX_RECEIVER_DIGITS + 1) - 1
