"""Pushed messages: built once, framed per receiver, with cluster-unique ids.

A push is serialized once without ``receiveUserId`` (``cim.wire.push_bodies``:
the sender's serialized ``prefix`` + the text and ids); each receiver's frame
appends that one map entry as raw protobuf bytes (computed once per session, at
login). Protobuf parsers merge repeated occurrences of a map field, so
``body + entry`` parses as the push with ``properties[receiveUserId]`` set: group
fan-out costs a copy per receiver (``cim.wire.frame_sequenced``, which puts each
receiver's inbox ``seq`` before the entry), not a serialization. Ids come from
``MessageIds`` (compiled ``cim/_ids.pyx``, twin ``cim/_ids_py.py``, chosen with the frame codec).
"""

from __future__ import annotations

from dataclasses import dataclass

from cim.frame import IMPLEMENTATION
from cim.proto import MESSAGE, Response
from cim.wire_fields import (
    RECEIVE_USER_ID,
    SEND_USER_ID,
    SEND_USER_NAME,
    TAG_ENTRY_KEY,
    TAG_ENTRY_VALUE,
    TAG_RESPONSE_PROPERTIES,
)

# The fixed bytes of a receiver's entry; every length in it is under 0x80, one byte.
_PROPERTIES_TAG = bytes((TAG_RESPONSE_PROPERTIES,))
_KEY = bytes((TAG_ENTRY_KEY, len(RECEIVE_USER_ID))) + RECEIVE_USER_ID.encode()
_VALUE_TAG = bytes((TAG_ENTRY_VALUE,))


if IMPLEMENTATION == "python":
    from cim._ids_py import MessageIds
else:
    # Another class than the pure twin's to mypy: the two share one interface (tests/test_ids.py).
    from cim._ids import MessageIds  # type: ignore[assignment]

__all__ = ["MessageIds", "Sender", "group_prefix", "receiver_entry", "to_user_field"]


def receiver_entry(receiver_id: int) -> bytes:
    """The serialized ``properties{receiveUserId: str(receiver_id)}`` entry."""
    digits = str(receiver_id).encode()
    entry = _KEY + _VALUE_TAG + bytes((len(digits),)) + digits
    return _PROPERTIES_TAG + bytes((len(entry),)) + entry


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends, with the part of every push that depends only on them, serialized once.

    Protobuf parses concatenated serialized messages as one merged message, so a
    push is ``prefix`` (cmd, responseId and the sendUserId/sendUserName map
    entries: the costly part) followed by the few scalar fields of the message.
    """

    id: int
    name: str
    prefix: bytes

    @classmethod
    def of(cls, user_id: int, user_name: str) -> Sender:
        push = Response(cmd=MESSAGE, responseId=user_id)
        push.properties[SEND_USER_ID] = str(user_id)
        push.properties[SEND_USER_NAME] = user_name
        return cls(user_id, user_name, push.SerializeToString())


def group_prefix(prefix: bytes, group_id: str, notice: bool = False) -> bytes:
    """A sender's ``prefix`` for pushes to a named group: ``groupId`` (and ``notice``) merged in
    the way the receiver's entry is, so ``push_bodies`` and the fan-out stay as they are."""
    return prefix + Response(groupId=group_id, notice=notice).SerializeToString()


def to_user_field(receiver_id: int) -> bytes:
    """The serialized ``toUserId`` of private pushes to the user, appended to a sender's ``prefix``
    as ``group_prefix`` appends groupId: the receiver's push and the sender's own copy (the same
    body in both inboxes) say whom the message is to."""
    return Response(toUserId=receiver_id).SerializeToString()
