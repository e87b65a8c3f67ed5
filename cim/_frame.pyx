# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled varint32 length-prefixed frame codec (the hot path).

Same names and behaviour as the pure-Python twin ``cim._frame_py``; the error type
and the encoder helpers are shared with it so both raise and produce the same things.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from libc.string cimport memcpy

from cim._varint cimport varint_size, write_varint

from cim._frame_py import DEFAULT_MAX_FRAME_SIZE, FrameError, _frame_too_large, _varint_too_long

cdef enum:
    MAX_VARINT_BYTES = 5  # a continuation bit on the 5th byte means a 6th follows


def encode_frame(payload):
    """One frame: varint32 length prefix + payload."""
    cdef bytes data = payload if type(payload) is bytes else bytes(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, varint_size(n) + n)
    cdef char* dst = PyBytes_AS_STRING(out)
    cdef Py_ssize_t header = write_varint(dst, n)
    memcpy(dst + header, PyBytes_AS_STRING(data), n)
    return out


def encode_frames(payloads):
    """Many frames in one buffer, for writing them with a single syscall."""
    cdef list items = [p if type(p) is bytes else bytes(p) for p in payloads]
    cdef Py_ssize_t total = 0, n, pos = 0
    cdef bytes item
    for item in items:
        n = PyBytes_GET_SIZE(item)
        total += varint_size(n) + n
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* dst = PyBytes_AS_STRING(out)
    for item in items:
        n = PyBytes_GET_SIZE(item)
        pos += write_varint(dst + pos, n)
        memcpy(dst + pos, PyBytes_AS_STRING(item), n)
        pos += n
    return out


cdef class FrameDecoder:
    """Splits a byte stream into frame payloads; see ``cim._frame_py.FrameDecoder``."""

    cdef bytearray _buf
    cdef readonly Py_ssize_t max_frame_size
    cdef object _error

    def __init__(self, Py_ssize_t max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be non-negative")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error = None

    @property
    def buffered(self):
        """Bytes held back waiting for the rest of a frame."""
        return PyByteArray_GET_SIZE(self._buf)

    def feed(self, data):
        if self._error is not None:
            raise self._error.again()
        cdef bytes chunk
        cdef const unsigned char* buf
        cdef Py_ssize_t end
        cdef bint buffered = PyByteArray_GET_SIZE(self._buf) > 0
        if buffered:
            self._buf += data
            buf = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
            end = PyByteArray_GET_SIZE(self._buf)
        else:
            chunk = data if type(data) is bytes else bytes(data)
            buf = <const unsigned char*>PyBytes_AS_STRING(chunk)
            end = PyBytes_GET_SIZE(chunk)

        cdef list frames = []
        cdef Py_ssize_t pos = 0, header, start
        cdef unsigned long long length
        cdef unsigned char byte
        cdef int shift
        cdef bint complete
        while pos < end:
            length = buf[pos]
            header = 1
            complete = True
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if pos + header >= end:
                        complete = False  # prefix incomplete: wait for more bytes
                        break
                    byte = buf[pos + header]
                    header += 1
                    length |= (<unsigned long long>(byte & 0x7F)) << shift
                    if not byte & 0x80:
                        break
                    if header >= MAX_VARINT_BYTES:
                        self._fail(_varint_too_long(), frames)
                    shift += 7
                if not complete:
                    break
            if length > <unsigned long long>self.max_frame_size:
                self._fail(_frame_too_large(length, self.max_frame_size), frames)
            start = pos + header
            if start + <Py_ssize_t>length > end:
                break
            PyList_Append(frames, PyBytes_FromStringAndSize(<const char*>buf + start, <Py_ssize_t>length))
            pos = start + <Py_ssize_t>length

        if buffered:
            del self._buf[:pos]
        elif pos < end:
            self._buf += chunk[pos:]
        return frames

    cdef int _fail(self, error, list frames) except -1:
        self._buf.clear()
        self._error = error
        error.frames = frames
        raise error
