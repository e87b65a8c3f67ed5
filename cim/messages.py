"""Pushed messages: built once, framed per receiver, with cluster-unique ids.

A push is serialized once without ``receiveUserId``; each receiver's frame appends
that one map entry as raw protobuf bytes. Protobuf parsers merge repeated
occurrences of a map field, so ``body + entry`` parses as the push with
``properties[receiveUserId]`` set: group fan-out costs a bytes concatenation per
receiver, not a serialization.
"""

from __future__ import annotations

import itertools
import time

from cim.frame import encode_frame
from cim.proto import BaseCommand, Response

_PROPERTIES_TAG = b"\x22"  # field 4, length-delimited
_KEY = b"\x0a\x0dreceiveUserId"  # map entry field 1: "receiveUserId" (13 bytes)
_VALUE_TAG = b"\x12"  # map entry field 2

# Message ids: 41 bits of milliseconds since 2024-01-01, 10 bits of node number,
# 12 bits of per-millisecond sequence (Twitter's snowflake layout).
_EPOCH_MS = 1_704_067_200_000
_NODE_BITS = 10
_SEQ_BITS = 12


def receiver_entry(receiver_id: int) -> bytes:
    """The serialized ``properties{receiveUserId: str(receiver_id)}`` entry."""
    digits = str(receiver_id).encode()
    entry = _KEY + _VALUE_TAG + bytes((len(digits),)) + digits
    return _PROPERTIES_TAG + bytes((len(entry),)) + entry


def frame_for(body: bytes, receiver_id: int) -> bytes:
    """The wire frame of push ``body`` addressed to ``receiver_id``."""
    return encode_frame(body + receiver_entry(receiver_id))


def push_body(sender_id: int, sender_name: str, text: str, msg_id: int, timestamp_ms: int) -> bytes:
    push = Response(
        cmd=BaseCommand.MESSAGE, resMsg=text, responseId=sender_id, msgId=msg_id, timestamp=timestamp_ms
    )
    push.properties["sendUserId"] = str(sender_id)
    push.properties["sendUserName"] = sender_name
    return push.SerializeToString()


class MessageIds:
    """Snowflake ids: unique across nodes with distinct node numbers, increasing per node."""

    def __init__(self, node_number: int) -> None:
        self.node = node_number & ((1 << _NODE_BITS) - 1)
        self._last_ms = 0
        self._seq = itertools.count()

    def next(self) -> tuple[int, int]:
        """(message id, timestamp in ms)."""
        now = time.time_ns() // 1_000_000
        if now > self._last_ms:
            self._last_ms = now
            self._seq = itertools.count()
        seq = next(self._seq)
        if seq >> _SEQ_BITS:  # 4096 ids used this millisecond: borrow the next one
            self._last_ms += 1
            self._seq = itertools.count(1)
            seq = 0
        ms = self._last_ms
        return ((ms - _EPOCH_MS) << (_NODE_BITS + _SEQ_BITS)) | (self.node << _SEQ_BITS) | seq, ms
