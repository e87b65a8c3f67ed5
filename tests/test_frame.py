"""The frame codec, both implementations, with no sockets (sans-I/O)."""

from __future__ import annotations

import importlib.util
import os
from itertools import pairwise
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cim.frame
from cim._frame_py import FrameError


def test_compiled_codec_is_chosen_when_built() -> None:
    if os.environ.get("CIM_NO_EXTENSIONS"):
        assert cim.frame.IMPLEMENTATION == "python"
        return
    assert importlib.util.find_spec("cim._frame") is not None, (
        "the Cython extension was not built; set CIM_NO_EXTENSIONS=1 to test without it"
    )
    assert cim.frame.IMPLEMENTATION == "cython"


@pytest.mark.parametrize(
    "length, prefix",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (65536, b"\x80\x80\x04"),
    ],
)
def test_prefix_matches_netty_varint32(codec: ModuleType, length: int, prefix: bytes) -> None:
    payload = b"x" * length
    assert codec.encode_frame(payload) == prefix + payload


def test_round_trip_one_chunk(codec: ModuleType) -> None:
    payloads = [b"", b"a", b"hello" * 40, bytes(range(256)) * 10]
    decoder = codec.FrameDecoder()
    assert decoder.feed(codec.encode_frames(payloads)) == payloads
    assert decoder.buffered == 0


def test_encode_frames_equals_concatenated_frames(codec: ModuleType) -> None:
    payloads = [b"a" * n for n in (0, 1, 127, 128, 5000)]
    assert codec.encode_frames(payloads) == b"".join(codec.encode_frame(p) for p in payloads)
    assert codec.encode_frames([]) == b""
    # Any buffer-protocol payload is accepted, not only bytes.
    assert codec.encode_frames([bytearray(b"ab"), memoryview(b"cd")]) == b"\x02ab\x02cd"


def test_byte_at_a_time(codec: ModuleType) -> None:
    payloads = [b"p" * n for n in (3, 200, 0, 70000 // 2)]
    stream = codec.encode_frames(payloads)
    decoder = codec.FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == payloads
    assert decoder.buffered == 0


def test_incomplete_frame_is_kept(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(b"\x05abc") == []
    assert decoder.buffered == 4
    assert decoder.feed(b"de\x01") == [b"abcde"]
    assert decoder.buffered == 1
    assert decoder.feed(b"z") == [b"z"]


def test_accepts_bytearray_and_memoryview(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(bytearray(b"\x02hi\x01")) == [b"hi"]
    assert decoder.feed(memoryview(b"!")) == [b"!"]


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=600), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=40),
)
def test_any_split_decodes_the_same(codec: ModuleType, payloads: list[bytes], cuts: list[int]) -> None:
    stream = codec.encode_frames(payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = codec.FrameDecoder()
    out: list[bytes] = []
    for a, b in pairwise(points):
        out += decoder.feed(stream[a:b])
    assert out == payloads
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), max_size=20))
def test_twins_encode_identically(payloads: list[bytes]) -> None:
    import cim._frame_py as py

    assert cim.frame.encode_frames(payloads) == py.encode_frames(payloads)
    for p in payloads:
        assert cim.frame.encode_frame(p) == py.encode_frame(p)


def test_six_byte_varint_fails_at_once(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    with pytest.raises(FrameError) as err:
        decoder.feed(b"\x80\x80\x80\x80\x80")
    assert err.value.reason == "varint-too-long"
    assert "5 bytes" in str(err.value)
    assert decoder.buffered == 0


def test_six_byte_varint_split_across_feeds(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    assert decoder.feed(b"\x01a\x80\x80") == [b"a"]
    with pytest.raises(FrameError) as err:
        decoder.feed(b"\x80\x80\x80\x01")
    assert err.value.reason == "varint-too-long"


def test_one_gib_prefix_fails_before_buffering(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder()
    one_gib = b"\x80\x80\x80\x80\x04"  # varint32 of 1 << 30
    assert cim.frame.encode_varint(1 << 30) == one_gib
    with pytest.raises(FrameError) as err:
        decoder.feed(one_gib + b"x" * 1000)
    assert err.value.reason == "frame-too-large"
    assert err.value.length == 1 << 30
    assert "1073741824" in str(err.value) and "65536" in str(err.value)
    assert decoder.buffered == 0


def test_max_frame_size_is_configurable_and_inclusive(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder(max_frame_size=10)
    assert decoder.feed(codec.encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameError) as err:
        decoder.feed(b"\x0b")  # 11: only the prefix is needed to refuse it
    assert err.value.length == 11


def test_frames_before_the_bad_prefix_are_not_lost_and_error_is_sticky(codec: ModuleType) -> None:
    decoder = codec.FrameDecoder(max_frame_size=100)
    good = codec.encode_frames([b"one", b"two"])
    with pytest.raises(FrameError) as err:
        decoder.feed(good + b"\xff\x7f")
    # The complete frames before the bad prefix travel with the error.
    assert err.value.frames == [b"one", b"two"]
    with pytest.raises(FrameError) as again:
        decoder.feed(b"\x01a")  # stays failed: the stream cannot be resynchronised
    assert again.value.reason == "frame-too-large" and again.value.frames == []
    assert decoder.buffered == 0


def test_negative_max_frame_size_is_refused(codec: ModuleType) -> None:
    with pytest.raises(ValueError):
        codec.FrameDecoder(max_frame_size=-1)
