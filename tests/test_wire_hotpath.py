"""The message hot path at the wire level (cim._wire_py and cim._wire), no sockets.

The fast path must never decide differently from protobuf: whatever it accepts,
protobuf parses to the same fields, and what it writes, protobuf would have
serialized byte for byte. Each test runs against both twins.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cim import _wire_py
from cim.frame import FrameDecoder, encode_frame, encode_frames
from cim.messages import Sender, receiver_entry
from cim.proto import MESSAGE, PING, SEND_RECEIPT, Request, Response
from cim.wire_fields import MAX_RECEIVER_DIGITS, RECEIVE_USER_ID, SEND_USER_ID

MAX_TEXT = 4096
UINT64 = st.integers(0, 2**64 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Inbox seqs: from 1 (0 is "none": protobuf leaves it out), past 32 bits, up to 2**63.
SEQS = st.integers(0, 2**63) | st.sampled_from([1, 127, 128, 2**32 - 1, 2**32, 2**63 - 1, 2**63])


def chat(text: str, receiver: str | None = None, client_msg_id: int = 0, **extra: Any) -> bytes:
    request = Request(requestId=7, reqMsg=text, cmd=MESSAGE, clientMsgId=client_msg_id, **extra)
    if receiver is not None:
        request.properties["receiveUserId"] = receiver
    return request.SerializeToString()


def expected(frame: bytes, max_text: int = MAX_TEXT) -> tuple[int, bytes, int] | None:
    """What the general path (protobuf) makes of a frame, if it is a message it would accept."""
    try:
        request = Request.FromString(frame)
    except DecodeError:
        return None
    raw = request.reqMsg.encode()
    receiver = request.properties.get("receiveUserId", "")
    if request.cmd != MESSAGE or not raw or len(raw) > max_text:
        return None
    if receiver and not (receiver.isdigit() and receiver.isascii() and int(receiver) > 0):
        return None
    return (int(receiver) if receiver else 0), raw, request.clientMsgId


def scan_one(wire: ModuleType, frame: bytes, max_text: int = MAX_TEXT) -> tuple[int, bytes, int] | None:
    end, receiver, texts, client_msg_ids = wire.scan_chat_run([frame], 0, max_text)
    return (receiver, texts[0], client_msg_ids[0]) if end == 1 else None


def test_what_clients_send_takes_the_fast_path(wire: ModuleType) -> None:
    assert scan_one(wire, chat("hello", "42", 9)) == (42, b"hello", 9)
    assert scan_one(wire, chat("to all")) == (0, b"to all", 0)
    emoji = "emoji \N{GRINNING FACE}"
    assert scan_one(wire, chat(emoji, "1001", 2**64 - 1)) == (1001, emoji.encode(), 2**64 - 1)
    # CIM's client: requestId, reqMsg, cmd and the receiver property, nothing else.
    assert scan_one(wire, chat("from CIM", "1002")) == (1002, b"from CIM", 0)


def test_anything_unusual_goes_the_general_way(wire: ModuleType) -> None:
    assert scan_one(wire, Request(requestId=7, reqMsg="ping", cmd=PING).SerializeToString()) is None
    assert scan_one(wire, chat("")) is None  # empty: the general path answers with a failed receipt
    assert scan_one(wire, chat("x" * 11), max_text=10) is None  # oversized: likewise
    assert scan_one(wire, chat("hi", "0")) is None  # names no user
    assert scan_one(wire, chat("hi", "bob")) is None
    assert scan_one(wire, chat("hi", " 42")) is None
    assert scan_one(wire, chat("hi", groupId="room")) is None  # a field the fast path does not know
    other_key = Request(reqMsg="hi", cmd=MESSAGE)
    other_key.properties["trace"] = "x"
    assert scan_one(wire, other_key.SerializeToString()) is None
    assert scan_one(wire, chat("hi")[:-1]) is None  # truncated
    assert scan_one(wire, b"\x0a\x02\xff\xfe\x18\x01") is None  # not UTF-8: protobuf rejects it too


@pytest.mark.parametrize("length", range(1, 26))
def test_a_texts_bytes_are_checked_for_utf8_wherever_they_fall(wire: ModuleType, length: int) -> None:
    """The ASCII check goes eight bytes at a time, then byte by byte: a non-ASCII byte in any
    place of either part is seen (a valid character passes, an invalid byte does not)."""
    for place in range(length):
        ascii_around = b"a" * place, b"b" * (length - place - 1)
        valid = ascii_around[0] + "\N{LATIN SMALL LETTER E WITH ACUTE}".encode() + ascii_around[1]
        invalid = ascii_around[0] + b"\xff" + ascii_around[1]
        assert scan_one(wire, b"\x0a" + bytes([len(valid)]) + valid + b"\x18\x01") == (0, valid, 0)
        assert scan_one(wire, b"\x0a" + bytes([len(invalid)]) + invalid + b"\x18\x01") is None
    assert scan_one(wire, b"\x0a" + bytes([length]) + b"z" * length + b"\x18\x01") == (0, b"z" * length, 0)


def test_runs_share_one_destination(wire: ModuleType) -> None:
    frames = [chat("a", "5", 1), chat("b", "5", 2), chat("c", "6", 3), chat("d", None, 4), chat("e", "", 5),
              Request(reqMsg="ping", cmd=PING).SerializeToString(), chat("f", "5", 6)]
    assert wire.scan_chat_run(frames, 0, MAX_TEXT) == (2, 5, [b"a", b"b"], [1, 2])
    assert wire.scan_chat_run(frames, 2, MAX_TEXT) == (3, 6, [b"c"], [3])
    assert wire.scan_chat_run(frames, 3, MAX_TEXT) == (5, 0, [b"d", b"e"], [4, 5])  # "" is the group too
    assert wire.scan_chat_run(frames, 5, MAX_TEXT) == (5, 0, [], [])
    assert wire.scan_chat_run(frames, 6, MAX_TEXT) == (7, 5, [b"f"], [6])
    assert wire.scan_chat_run(frames, 7, MAX_TEXT) == (7, 0, [], [])


def test_a_run_is_bounded(wire: ModuleType) -> None:
    frames = [chat("m", "5", k) for k in range(wire.MAX_RUN + 10)]
    end, _, texts, _ = wire.scan_chat_run(frames, 0, MAX_TEXT)
    assert end == len(texts) == wire.MAX_RUN


requests = st.builds(
    Request,
    reqMsg=st.text(max_size=20),
    requestId=INT64,
    cmd=st.sampled_from([0, 1, 1, 1, 2, 3, 16, 2**31 - 1]),
    properties=st.dictionaries(
        st.sampled_from(["receiveUserId", "receiveUserId", "other", ""]),
        st.one_of(st.from_regex(r"\A[0-9]{0,20}\Z"), st.text(max_size=4)),
        max_size=2,
    ),
    clientMsgId=UINT64,
    groupId=st.sampled_from(["", "", "", "g"]),
)


def general_way(data: bytes, max_frame: int, max_text: int) -> tuple[int, list[bytes], list[int]] | None:
    """What a FrameDecoder and scan_chat_run make of a read, as ``scan_plain_read`` answers it."""
    decoder = FrameDecoder(max_frame)
    try:
        frames = decoder.feed(data)
    except ValueError:
        return None
    end, receiver, texts, client_msg_ids = _wire_py.scan_chat_run(frames, 0, max_text)
    whole = frames and end == len(frames) and not decoder.buffered and all(frames)
    same_kind = all(client_msg_ids) or not any(client_msg_ids)  # all ask for receipts, or none does
    return (receiver, texts, client_msg_ids) if whole and receiver and same_kind else None


def test_a_read_of_plain_messages_to_one_user_is_taken_whole(wire: ModuleType) -> None:
    to_bob = [encode_frame(chat(text, "42")) for text in ("a", "b", "c")]
    assert wire.scan_plain_read(b"".join(to_bob), 4096, MAX_TEXT) == (42, [b"a", b"b", b"c"], [0, 0, 0])
    answered = encode_frames([chat("a", "42", 5), chat("b", "42", 1 << 40)])  # the SDK's: receipts asked for
    assert wire.scan_plain_read(answered, 4096, MAX_TEXT) == (42, [b"a", b"b"], [5, 1 << 40])
    anything_else = [
        b"",
        to_bob[0] + encode_frame(chat("d", "43")),  # two receivers
        to_bob[0] + encode_frame(chat("d", "42", 5)),  # one asks for a receipt, one does not
        encode_frame(chat("d", "42", 5)) + to_bob[0],
        encode_frame(chat("to all")),  # the group
        to_bob[0] + encode_frame(Request(requestId=7, reqMsg="ping", cmd=PING).SerializeToString()),
        to_bob[0][:-1],  # part of a frame
        to_bob[0] + b"\x00",  # an empty frame
        b"\x80\x80\x80\x80\x80\x01" + b"x",  # a length prefix over five bytes
        encode_frame(chat("x" * 200, "42")),  # over max_frame (100 below)
    ]
    for data in anything_else:
        assert wire.scan_plain_read(data, 100, MAX_TEXT) is None, data
    assert wire.scan_plain_read(encode_frames([chat("m", "42")] * (wire.MAX_RUN + 1)), 4096, MAX_TEXT) is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.builds(chat, st.sampled_from(["hi", "", "x" * 20]), st.sampled_from(["42", "43", None, "0"]), st.sampled_from([0, 0, 9])),
    st.binary(max_size=6),
), min_size=1, max_size=5), st.integers(0, 2), st.integers(8, 64), st.integers(1, 16))
def test_a_read_taken_whole_is_what_the_general_way_makes_of_it(
    wire: ModuleType, payloads: list[bytes], cut: int, max_frame: int, max_text: int,
) -> None:
    data = encode_frames(payloads)
    data = data[: len(data) - cut]
    assert wire.scan_plain_read(data, max_frame, max_text) == general_way(data, max_frame, max_text)


@settings(max_examples=400, deadline=None)
@given(requests, st.integers(0, 30))
def test_fast_path_agrees_with_protobuf(wire: ModuleType, request: Request, max_text: int) -> None:
    frame = request.SerializeToString()
    fast = scan_one(wire, frame, max_text)
    assert fast == scan_one(_wire_py, frame, max_text)  # the twins agree
    if fast is not None:
        assert fast == expected(frame, max_text)
    elif (
        not request.groupId
        and set(request.properties) <= {"receiveUserId"}
        and len(request.properties.get("receiveUserId", "")) <= MAX_RECEIVER_DIGITS
    ):
        # Only what the fast path does not know (another field, a receiver over 18
        # digits) may fall through; a plain message never does.
        assert expected(frame, max_text) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40) | requests.map(lambda r: r.SerializeToString()), st.data())
def test_any_bytes_accepted_are_what_protobuf_reads(wire: ModuleType, frame: bytes, data: st.DataObject) -> None:
    if frame:  # flip, cut or splice a byte: malformed input must be rejected or read exactly
        at = data.draw(st.integers(0, len(frame) - 1))
        frame = frame[:at] + bytes([data.draw(st.integers(0, 255))]) + frame[at + data.draw(st.integers(0, 2)):]
    fast = scan_one(wire, frame)
    assert fast == scan_one(_wire_py, frame)
    if fast is not None:
        assert fast == expected(frame)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=300).map(str.encode), st.one_of(st.just(0), UINT64)), max_size=5), UINT64,
       INT64, st.binary(max_size=30))
def test_pushes_are_what_protobuf_serializes(
    wire: ModuleType, texts_and_ids: list[tuple[bytes, int]], first_id: int, stamp: int, prefix: bytes
) -> None:
    assume(first_id + len(texts_and_ids) < 2**64)
    texts, client_msg_ids = [text for text, _ in texts_and_ids], [c for _, c in texts_and_ids]
    bodies = wire.push_bodies(prefix, texts, first_id, stamp, client_msg_ids)
    assert bodies == [
        prefix + Response(resMsg=text.decode(), msgId=first_id + k, timestamp=stamp, clientMsgId=c).SerializeToString()
        for k, (text, c) in enumerate(texts_and_ids)
    ]


def test_pushes_want_one_client_msg_id_per_text(wire: ModuleType) -> None:
    with pytest.raises(ValueError, match="one clientMsgId per text"):
        wire.push_bodies(b"", [b"a", b"b"], 1, 1, [0])


@settings(max_examples=200, deadline=None)
@given(st.lists(UINT64, max_size=5), UINT64, st.binary(max_size=200))
def test_receipts_are_what_protobuf_serializes(wire: ModuleType, client_msg_ids: list[int], first_id: int, head: bytes) -> None:
    assume(first_id + len(client_msg_ids) < 2**64)
    assert wire.encode_receipts(head, client_msg_ids, first_id) == b"".join(
        encode_frame(head + Response(msgId=first_id + k, clientMsgId=c).SerializeToString())
        for k, c in enumerate(client_msg_ids)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(UINT64, max_size=5), st.integers(1, 2**63), st.integers(1, 2**63), st.integers(0, 2**63 - 1))
def test_receipts_standing_for_the_senders_copies_carry_seq_and_timestamp(
    wire: ModuleType, client_msg_ids: list[int], first_id: int, first_seq: int, timestamp_ms: int
) -> None:
    head = Response(cmd=SEND_RECEIPT, code=9000).SerializeToString()
    assert wire.encode_receipts(head, client_msg_ids, first_id, first_seq, timestamp_ms) == b"".join(
        encode_frame(head + Response(msgId=first_id + k, seq=first_seq + k, timestamp=timestamp_ms,
                                     clientMsgId=c).SerializeToString())
        for k, c in enumerate(client_msg_ids)
    )
    # No seq: no timestamp either (a receipt of a send whose copy comes as a push, or of one without).
    assert wire.encode_receipts(head, client_msg_ids, first_id, 0, timestamp_ms) == wire.encode_receipts(
        head, client_msg_ids, first_id)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), SEQS, st.binary(max_size=30))
def test_sequenced_frames_are_what_protobuf_serializes(wire: ModuleType, bodies: list[bytes], first_seq: int,
                                                       suffix: bytes) -> None:
    framed = wire.frame_sequenced(bodies, first_seq, suffix)
    assert framed == _wire_py.frame_sequenced(bodies, first_seq, suffix)  # the twins agree
    assert framed == encode_frames(
        [body + Response(seq=first_seq + k).SerializeToString() + suffix for k, body in enumerate(bodies)]
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=5), UINT64, SEQS, st.integers(1, 10**MAX_RECEIVER_DIGITS - 1))
def test_sequenced_pushes_parse_as_the_receivers_pushes(
    wire: ModuleType, texts: list[str], first_id: int, first_seq: int, receiver: int
) -> None:
    assume(first_id + len(texts) < 2**64)
    bodies = wire.push_bodies(Sender.of(1002, "lisi").prefix, [text.encode() for text in texts], first_id, 1_700_000_000_000,
                              [0] * len(texts))
    pushes = [Response.FromString(payload) for payload in
              FrameDecoder().feed(wire.frame_sequenced(bodies, first_seq, receiver_entry(receiver)))]
    assert [(p.cmd, p.resMsg, p.msgId, p.seq, p.properties[RECEIVE_USER_ID], p.properties[SEND_USER_ID]) for p in pushes] == [
        (MESSAGE, text, first_id + k, first_seq + k, str(receiver), "1002") for k, text in enumerate(texts)
    ]


def test_no_pushes_frame_to_nothing(wire: ModuleType) -> None:
    assert wire.frame_sequenced([], 2**63, receiver_entry(7)) == b""
