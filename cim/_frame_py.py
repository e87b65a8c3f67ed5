"""Pure-Python varint32 length-prefixed frame codec.

Byte-identical to Netty's ``ProtobufVarint32LengthFieldPrepender`` /
``ProtobufVarint32FrameDecoder``. This is the reference twin of ``cim/_frame.pyx``:
both expose the same names and behaviour and are tested by one suite.

Sans-I/O: the decoder is fed bytes and returns payloads; it never touches a socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

DEFAULT_MAX_FRAME_SIZE = 64 * 1024
# A varint32 has at most 5 bytes; a continuation bit on the 5th means a 6th follows.
MAX_VARINT_BYTES = 5


class FrameError(ValueError):
    """The byte stream violates the framing: the connection cannot be resynchronised.

    ``reason`` is a short machine-readable tag (``"varint-too-long"``,
    ``"frame-too-large"``); ``length`` is the announced payload length when known;
    ``frames`` holds the complete payloads that preceded the bad prefix in the
    same ``feed`` call, so a caller can still serve them before closing.
    """

    def __init__(
        self, reason: str, message: str, length: int | None = None, frames: list[bytes] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.length = length
        self.frames: list[bytes] = frames if frames is not None else []

    def again(self) -> FrameError:
        """The same error for a later ``feed`` on a failed decoder (no frames)."""
        return FrameError(self.reason, str(self), self.length)


def _varint_too_long() -> FrameError:
    return FrameError("varint-too-long", "malformed length prefix: varint32 longer than 5 bytes")


def _frame_too_large(length: int, limit: int) -> FrameError:
    return FrameError(
        "frame-too-large", f"frame of {length} bytes exceeds the limit of {limit} bytes", length
    )


def encode_varint(value: int) -> bytes:
    """Encode a non-negative int as a base-128 varint."""
    if value < 0:
        raise ValueError("varint length must be non-negative")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    """One frame: varint32 length prefix + payload."""
    n = len(payload)
    if n < 0x80:
        return bytes((n,)) + payload
    return encode_varint(n) + payload


def encode_frames(payloads: Iterable[bytes]) -> bytes:
    """Many frames in one buffer, for writing them with a single syscall."""
    return b"".join([encode_frame(p) for p in payloads])


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    ``feed(chunk)`` accepts the stream cut at arbitrary points and returns the
    payloads completed by that chunk, in order; incomplete data is kept. A length
    prefix over ``max_frame_size`` or longer than 5 bytes raises ``FrameError`` as
    soon as the prefix is read, before any of its payload is buffered. After an
    error the decoder stays failed: every later ``feed`` raises the same error.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be non-negative")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error.again()
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        frames: list[bytes] = []
        end = len(buf)
        pos = 0
        limit = self.max_frame_size
        while pos < end:
            # Fast path: a one-byte prefix (payloads under 128 bytes).
            length = buf[pos]
            header = 1
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if pos + header >= end:
                        length = -1  # prefix incomplete: wait for more bytes
                        break
                    byte = buf[pos + header]
                    header += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    if header >= MAX_VARINT_BYTES:
                        self._fail(_varint_too_long(), frames)
                    shift += 7
                if length < 0:
                    break
            if length > limit:
                self._fail(_frame_too_large(length, limit), frames)
            start = pos + header
            stop = start + length
            if stop > end:
                break
            frames.append(bytes(buf[start:stop]))
            pos = stop
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += buf[pos:]
        return frames

    def _fail(self, error: FrameError, frames: list[bytes]) -> NoReturn:
        self._buf.clear()
        self._error = error
        error.frames = frames
        raise error
