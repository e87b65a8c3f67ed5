"""Pure-Python twin of ``cim/_wire.pyx``: the message hot path at the protobuf wire level.

Chat messages are by far the commonest frames after pings. Parsing each into a
``Request`` object and serializing a push and a receipt back costs microseconds
of Python per message; here a message is read and written as raw protobuf bytes:

* ``scan_chat_run`` reads a run of *plain* chat messages (the shape every client
  sends: cmd, text, receiver, clientMsgId) straight from the frames. Anything else
  (pings, other commands, unknown fields, odd receivers, bad UTF-8, an empty or
  oversized text) is not plain: the caller parses that frame with protobuf and
  handles it the general way, so the fast path never decides anything differently.
* ``scan_plain_read`` takes a whole read of CIM's commonest shape, plain private
  messages with no clientMsgId to one user in whole frames, framing and all: the
  node's one-read lane (``cim.server.lane``) needs no frame list, event or run for it.
* ``push_bodies``, ``frame_sequenced`` and ``encode_receipts`` write pushes and
  receipts byte-identical to what protobuf serializes for the same fields. (This twin
  lets protobuf serialize the id and seq fields: shorter, and no slower than varints
  in Python.)

Field numbers, tags and bounds come from ``cim.wire_fields``, shared with the
compiled twin, which has the same names and behaviour; one test suite runs
against both (tests/test_wire_hotpath.py).
"""

from __future__ import annotations

from cim._frame_py import MAX_VARINT_BYTES, encode_varint
from cim.proto import MESSAGE, Response
from cim.wire_fields import (
    MAX_RECEIVER_DIGITS,
    MAX_RUN,
    RECEIVE_USER_ID,
    TAG_ENTRY_KEY,
    TAG_ENTRY_VALUE,
    TAG_REQUEST_CLIENT_MSG_ID_BYTES,
    TAG_REQUEST_CMD,
    TAG_REQUEST_PROPERTIES,
    TAG_REQUEST_REQ_MSG,
    TAG_REQUEST_REQUEST_ID,
    TAG_RESPONSE_RES_MSG,
)

__all__ = ["MAX_RUN", "encode_receipts", "frame_sequenced", "push_bodies", "scan_chat_run", "scan_plain_read"]

_RECEIVE_USER_ID = RECEIVE_USER_ID.encode()
_RES_MSG_TAG = bytes((TAG_RESPONSE_RES_MSG,))
_CLIENT_MSG_ID_TAG_FIRST = TAG_REQUEST_CLIENT_MSG_ID_BYTES[0]  # a cheap test before the two-byte one
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _length(value: int) -> bytes:
    """A length as a base-128 varint."""
    return _ONE_BYTE[value] if value < 0x80 else encode_varint(value)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); position -1 when truncated or not a uint64."""
    if pos < end and data[pos] < 0x80:  # one byte: the usual case
        return data[pos], pos + 1
    value = shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:  # a 10th byte beyond 64 bits, or an 11th
            return 0, -1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return 0, -1


def _read_chunk(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """A length-delimited field's bytes and the position after them; -1 if truncated."""
    length, pos = _read_varint(data, pos, end)
    if pos < 0 or length > end - pos:
        return b"", -1
    return data[pos : pos + length], pos + length


def _receiver(entry: bytes) -> int:
    """The receiver a properties map entry names: 0 for none (an empty value), -1 if
    the entry is not plain (another key, or a value that is not a positive decimal)."""
    pos, end = 0, len(entry)
    key = value = b""
    while pos < end:
        tag = entry[pos]
        if tag != TAG_ENTRY_KEY and tag != TAG_ENTRY_VALUE:
            return -1
        chunk, pos = _read_chunk(entry, pos + 1, end)
        if pos < 0:
            return -1
        if tag == TAG_ENTRY_KEY:
            key = chunk
        else:
            value = chunk
    if key != _RECEIVE_USER_ID or len(value) > MAX_RECEIVER_DIGITS:
        return -1
    if not value:
        return 0
    receiver = int(value) if value.isdigit() else 0
    return receiver or -1  # "0" names no user


def _plain_chat(frame: bytes, max_text: int) -> tuple[int, bytes, int] | None:
    """(receiver or 0 for the group, text, clientMsgId) of a plain chat message, else None.

    Tags are matched as their canonical bytes: any other encoding is not plain.
    """
    pos, end = 0, len(frame)
    cmd = receiver = client_msg_id = 0
    text = b""
    while pos < end:
        tag = frame[pos]
        if tag == _CLIENT_MSG_ID_TAG_FIRST and frame.startswith(TAG_REQUEST_CLIENT_MSG_ID_BYTES, pos):
            client_msg_id, pos = _read_varint(frame, pos + 2, end)
        elif tag == TAG_REQUEST_REQUEST_ID:  # the connection already knows who sends
            _, pos = _read_varint(frame, pos + 1, end)
        elif tag == TAG_REQUEST_CMD:
            cmd, pos = _read_varint(frame, pos + 1, end)
        elif tag == TAG_REQUEST_REQ_MSG:
            text, pos = _read_chunk(frame, pos + 1, end)
        elif tag == TAG_REQUEST_PROPERTIES:  # a map entry
            entry, pos = _read_chunk(frame, pos + 1, end)
            if pos >= 0:
                receiver = _receiver(entry)
                if receiver < 0:
                    return None
        else:
            return None
        if pos < 0:
            return None
    if cmd != MESSAGE or not text or len(text) > max_text:
        return None
    try:
        text.decode()
    except UnicodeDecodeError:
        return None
    return receiver, text, client_msg_id


def scan_chat_run(frames: list[bytes], start: int, max_text: int) -> tuple[int, int, list[bytes], list[int]]:
    """The plain chat messages from ``frames[start]`` on that share one destination.

    Returns ``(end, receiver, texts, client_msg_ids)``: frames ``start..end-1`` are
    the run (at most ``MAX_RUN``), ``receiver`` is a user id or 0 for the group.
    ``end == start`` when ``frames[start]`` is not a plain chat message.
    """
    texts: list[bytes] = []
    client_msg_ids: list[int] = []
    destination = -1
    end = start
    limit = min(len(frames), start + MAX_RUN)
    while end < limit:
        chat = _plain_chat(frames[end], max_text)
        if chat is None or (destination >= 0 and chat[0] != destination):
            break
        destination = chat[0]
        texts.append(chat[1])
        client_msg_ids.append(chat[2])
        end += 1
    return end, max(destination, 0), texts, client_msg_ids


def scan_plain_read(data: bytes, max_frame: int, max_text: int) -> tuple[int, list[bytes], list[int]] | None:
    """``(receiver, texts, client_msg_ids)`` when ``data`` is nothing but whole frames (each
    of 1 to ``max_frame`` bytes), each a plain chat message to one and the same user, all
    with a clientMsgId or all without (every id 0), at most ``MAX_RUN`` of them; else None,
    and the read goes the general way (a ``FrameDecoder``, then ``scan_chat_run``), which
    decides alike about every frame."""
    texts: list[bytes] = []
    client_msg_ids: list[int] = []
    receiver = 0
    pos, end = 0, len(data)
    while pos < end:
        length, start = _read_varint(data, pos, end)
        if start < 0 or start - pos > MAX_VARINT_BYTES or not 0 < length <= max_frame or length > end - start:
            return None
        pos = start + length
        chat = _plain_chat(data[start:pos], max_text)
        if chat is None or chat[0] <= 0 or (receiver and chat[0] != receiver) or len(texts) == MAX_RUN \
                or (texts and bool(chat[2]) != bool(client_msg_ids[0])):
            return None
        receiver = chat[0]
        texts.append(chat[1])
        client_msg_ids.append(chat[2])
    return (receiver, texts, client_msg_ids) if texts else None


def push_bodies(prefix: bytes, texts: list[bytes], first_id: int, timestamp_ms: int,
                client_msg_ids: list[int]) -> list[bytes]:
    """Serialized pushes: ``prefix`` (the sender's part) + resMsg, msgId, timestamp, clientMsgId.

    The k-th text gets message id ``first_id + k`` and carries ``client_msg_ids[k]`` (the
    sender's id of it: their other devices match their own sends by it). Zero fields are
    left out, as protobuf leaves them out.
    """
    if len(client_msg_ids) != len(texts):
        raise ValueError("one clientMsgId per text")
    return [
        prefix
        + (_RES_MSG_TAG + _length(len(text)) + text if text else b"")
        + Response(msgId=first_id + k, timestamp=timestamp_ms, clientMsgId=client_msg_id).SerializeToString()
        for k, (text, client_msg_id) in enumerate(zip(texts, client_msg_ids, strict=True))
    ]


def frame_sequenced(bodies: list[bytes], first_seq: int, suffix: bytes) -> bytes:
    """Every ``body`` + seq ``first_seq + k`` + ``suffix`` as a frame, all in one buffer (one write).

    The pushes to one receiver: ``suffix`` is its ``receiveUserId`` entry
    (``cim.messages.receiver_entry``), the k-th body gets the k-th seq of its inbox.
    """
    frames = []
    for k, body in enumerate(bodies):
        payload = body + Response(seq=first_seq + k).SerializeToString() + suffix
        frames.append(_length(len(payload)) + payload)
    return b"".join(frames)


def encode_receipts(head: bytes, client_msg_ids: list[int], first_id: int, first_seq: int = 0,
                    timestamp_ms: int = 0) -> bytes:
    """Framed receipts, ``head`` + msgId ``first_id + k`` + the k-th clientMsgId; with ``first_seq``
    (not 0) each also carries seq ``first_seq + k`` and ``timestamp_ms``: it stands for the sender's
    copy of the message on the connection that sent it (``cim.server.dispatch``)."""
    frames = []
    for k, client_msg_id in enumerate(client_msg_ids):
        ids = Response(msgId=first_id + k, clientMsgId=client_msg_id)
        if first_seq:
            ids.seq, ids.timestamp = first_seq + k, timestamp_ms
        payload = head + ids.SerializeToString()
        frames.append(_length(len(payload)) + payload)
    return b"".join(frames)
