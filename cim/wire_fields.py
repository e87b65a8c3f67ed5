"""The wire constants of cim/proto/cim.proto, for code that reads or writes raw protobuf bytes.

The hot path (``cim._wire_py`` and its compiled twin ``cim._wire``) and the push
builder (``cim.messages``) match and write fields as bytes instead of going through
protobuf objects; this is the one table of what they rely on: field numbers, their
tags, the ``properties`` map keys CIM's client reads, and the hot path's bounds.
tests/test_wire_fields.py holds every number and tag to the protobuf descriptor.

Plain ints, bytes and strings on purpose: the compiled twin copies them into C
globals at import, so its loops compare C values and never look a name up.
"""

from __future__ import annotations

# Wire types: how a field's value follows its tag.
VARINT = 0
LEN = 2  # length-delimited: strings, bytes, nested messages and map entries

# Field numbers of Request (client -> server).
REQUEST_REQ_MSG = 1
REQUEST_REQUEST_ID = 2
REQUEST_CMD = 3
REQUEST_PROPERTIES = 4
REQUEST_CLIENT_MSG_ID = 16

# Field numbers of Response (server -> client).
RESPONSE_RES_MSG = 1
RESPONSE_PROPERTIES = 4
RESPONSE_MSG_ID = 16
RESPONSE_SEQ = 17
RESPONSE_TIMESTAMP = 18
RESPONSE_CLIENT_MSG_ID = 20

# Field numbers of a map<string, string> entry: on the wire every map entry is a
# nested message of these two fields.
ENTRY_KEY = 1
ENTRY_VALUE = 2


def tag(field: int, wire_type: int) -> int:
    """A field's tag: the varint in front of its value."""
    return field << 3 | wire_type


# Tags. Fields 1-15 have tags under 0x80, one byte on the wire: the hot path
# matches them as that byte.
TAG_REQUEST_REQ_MSG = tag(REQUEST_REQ_MSG, LEN)
TAG_REQUEST_REQUEST_ID = tag(REQUEST_REQUEST_ID, VARINT)
TAG_REQUEST_CMD = tag(REQUEST_CMD, VARINT)
TAG_REQUEST_PROPERTIES = tag(REQUEST_PROPERTIES, LEN)
TAG_RESPONSE_RES_MSG = tag(RESPONSE_RES_MSG, LEN)
TAG_RESPONSE_PROPERTIES = tag(RESPONSE_PROPERTIES, LEN)
TAG_ENTRY_KEY = tag(ENTRY_KEY, LEN)
TAG_ENTRY_VALUE = tag(ENTRY_VALUE, LEN)
# Fields 16 and up (cim's extensions) have two-byte tags. The hot path matches a
# sender's clientMsgId as its tag's canonical two bytes, varint(16 << 3 | VARINT);
# the writers encode the Response tags as varints.
TAG_REQUEST_CLIENT_MSG_ID_BYTES = b"\x80\x01"
TAG_RESPONSE_MSG_ID = tag(RESPONSE_MSG_ID, VARINT)
TAG_RESPONSE_SEQ = tag(RESPONSE_SEQ, VARINT)
TAG_RESPONSE_TIMESTAMP = tag(RESPONSE_TIMESTAMP, VARINT)
TAG_RESPONSE_CLIENT_MSG_ID = tag(RESPONSE_CLIENT_MSG_ID, VARINT)

# Keys of the ``properties`` map, as CIM names them: its client reads them on every push.
RECEIVE_USER_ID = "receiveUserId"
SEND_USER_ID = "sendUserId"
SEND_USER_NAME = "sendUserName"

# Bounds of the hot path, the same in both twins.
# At most this many messages in one run: bounds the ids one run takes in a
# millisecond (cim.messages.MessageIds hands out 4,096 per node) and the work done
# before the loop yields.
MAX_RUN = 256
# A receiveUserId of at most this many decimal digits fits an int64 whatever the digits.
MAX_RECEIVER_DIGITS = 18
