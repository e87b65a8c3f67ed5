# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``cim._wire_py``: the message hot path at the protobuf wire level.

Same names and behaviour as the pure-Python twin (read its docstring for the why);
one test suite runs against both.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp, memcpy

from cim._varint cimport varint_size, write_varint

from cim._frame_py import MAX_VARINT_BYTES
from cim.proto import MESSAGE
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
    TAG_RESPONSE_CLIENT_MSG_ID,
    TAG_RESPONSE_MSG_ID,
    TAG_RESPONSE_RES_MSG,
    TAG_RESPONSE_SEQ,
    TAG_RESPONSE_TIMESTAMP,
)

# cim.wire_fields' table copied into C globals once, at import: the loops below
# compare and write C values, with no Python lookup per message.
cdef Py_ssize_t _MAX_RUN = MAX_RUN
cdef Py_ssize_t _MAX_VARINT_BYTES = MAX_VARINT_BYTES
cdef Py_ssize_t _MAX_RECEIVER_DIGITS = MAX_RECEIVER_DIGITS
cdef unsigned long long _MESSAGE = MESSAGE
cdef bytes _RECEIVE_USER_ID_BYTES = RECEIVE_USER_ID.encode()  # owns the bytes _RECEIVE_USER_ID points to
cdef const char* _RECEIVE_USER_ID = _RECEIVE_USER_ID_BYTES
cdef Py_ssize_t _RECEIVE_USER_ID_LEN = len(_RECEIVE_USER_ID_BYTES)
cdef unsigned char _TAG_ENTRY_KEY = TAG_ENTRY_KEY
cdef unsigned char _TAG_ENTRY_VALUE = TAG_ENTRY_VALUE
cdef unsigned char _TAG_REQUEST_CLIENT_MSG_ID_FIRST = TAG_REQUEST_CLIENT_MSG_ID_BYTES[0]
cdef unsigned char _TAG_REQUEST_CLIENT_MSG_ID_SECOND = TAG_REQUEST_CLIENT_MSG_ID_BYTES[1]
cdef unsigned char _TAG_REQUEST_CMD = TAG_REQUEST_CMD
cdef unsigned char _TAG_REQUEST_PROPERTIES = TAG_REQUEST_PROPERTIES
cdef unsigned char _TAG_REQUEST_REQ_MSG = TAG_REQUEST_REQ_MSG
cdef unsigned char _TAG_REQUEST_REQUEST_ID = TAG_REQUEST_REQUEST_ID
cdef unsigned char _TAG_RESPONSE_RES_MSG = TAG_RESPONSE_RES_MSG
cdef unsigned int _TAG_RESPONSE_CLIENT_MSG_ID = TAG_RESPONSE_CLIENT_MSG_ID
cdef unsigned int _TAG_RESPONSE_MSG_ID = TAG_RESPONSE_MSG_ID
cdef unsigned int _TAG_RESPONSE_SEQ = TAG_RESPONSE_SEQ
cdef unsigned int _TAG_RESPONSE_TIMESTAMP = TAG_RESPONSE_TIMESTAMP


cdef inline Py_ssize_t _field_size(unsigned int tag, unsigned long long value) noexcept:
    """Bytes a varint field takes; 0 for 0, which protobuf leaves out."""
    return varint_size(tag) + varint_size(value) if value else 0


cdef inline Py_ssize_t _write_field(char* dst, unsigned int tag, unsigned long long value) noexcept:
    """Write a varint field (nothing for 0); returns the bytes written."""
    if not value:
        return 0
    cdef Py_ssize_t n = write_varint(dst, tag)
    return n + write_varint(dst + n, value)


cdef inline Py_ssize_t _read_varint(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end,
                                    unsigned long long* value) noexcept:
    """The position after the varint at ``pos`` (stored in ``value``); -1 when truncated or not a uint64."""
    cdef unsigned long long result = 0
    cdef int shift = 0
    cdef unsigned char byte
    while pos < end:
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            return -1
        result |= (<unsigned long long>(byte & 0x7F)) << shift
        if byte < 0x80:
            value[0] = result
            return pos
        shift += 7
    return -1


cdef inline Py_ssize_t _read_chunk(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end,
                                   Py_ssize_t* start, Py_ssize_t* length) noexcept:
    """The position after a length-delimited field's bytes (``start``, ``length``); -1 if truncated."""
    cdef unsigned long long n
    pos = _read_varint(buf, pos, end, &n)
    if pos < 0 or n > <unsigned long long>(end - pos):
        return -1
    start[0] = pos
    length[0] = <Py_ssize_t>n
    return pos + <Py_ssize_t>n


cdef long long _entry_receiver(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """See ``_wire_py._receiver``: 0 for an empty value, -1 when not plain."""
    cdef Py_ssize_t key_start = 0, key_len = 0, value_start = 0, value_len = 0, start, length, i
    cdef unsigned char tag, digit
    cdef long long receiver = 0
    while pos < end:
        tag = buf[pos]
        if tag != _TAG_ENTRY_KEY and tag != _TAG_ENTRY_VALUE:
            return -1
        pos = _read_chunk(buf, pos + 1, end, &start, &length)
        if pos < 0:
            return -1
        if tag == _TAG_ENTRY_KEY:
            key_start, key_len = start, length
        else:
            value_start, value_len = start, length
    if key_len != _RECEIVE_USER_ID_LEN or memcmp(buf + key_start, _RECEIVE_USER_ID, _RECEIVE_USER_ID_LEN) != 0:
        return -1
    if value_len > _MAX_RECEIVER_DIGITS:
        return -1
    for i in range(value_len):
        digit = buf[value_start + i]
        if digit < 48 or digit > 57:
            return -1
        receiver = receiver * 10 + (digit - 48)
    if value_len and receiver == 0:  # "0" names no user
        return -1
    return receiver


cdef bint _valid_utf8(const char* text, Py_ssize_t length):
    cdef Py_ssize_t i = 0
    cdef unsigned long long word, high_bits = 0
    while i + 8 <= length:  # eight bytes at a time: any byte's high bit set means not ASCII
        memcpy(&word, text + i, 8)
        high_bits |= word
        i += 8
    while i < length:
        high_bits |= <unsigned char>text[i]
        i += 1
    if not high_bits & 0x8080808080808080ULL:
        return True  # ASCII: the common case, no decoding needed
    try:
        PyUnicode_DecodeUTF8(text, length, NULL)
    except UnicodeDecodeError:
        return False
    return True


cdef bint _plain_chat(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t max_text,
                      long long* receiver, Py_ssize_t* text_start, Py_ssize_t* text_len,
                      unsigned long long* client_msg_id):
    """See ``_wire_py._plain_chat``, for the frame at ``buf[pos:end]``: fills the out-parameters
    (``text_start`` from ``buf``) and returns True for a plain chat message."""
    cdef Py_ssize_t start, length
    cdef unsigned long long cmd = 0, unused
    cdef unsigned char tag
    cdef long long entry
    receiver[0] = 0
    text_len[0] = 0
    client_msg_id[0] = 0
    while pos < end:
        tag = buf[pos]
        if tag == _TAG_REQUEST_CLIENT_MSG_ID_FIRST:  # a two-byte tag: the second must match too
            if pos + 1 >= end or buf[pos + 1] != _TAG_REQUEST_CLIENT_MSG_ID_SECOND:
                return False
            pos = _read_varint(buf, pos + 2, end, client_msg_id)
        elif tag == _TAG_REQUEST_REQUEST_ID:  # the connection already knows who sends
            pos = _read_varint(buf, pos + 1, end, &unused)
        elif tag == _TAG_REQUEST_CMD:
            pos = _read_varint(buf, pos + 1, end, &cmd)
        elif tag == _TAG_REQUEST_REQ_MSG:
            pos = _read_chunk(buf, pos + 1, end, text_start, text_len)
        elif tag == _TAG_REQUEST_PROPERTIES:  # a map entry
            pos = _read_chunk(buf, pos + 1, end, &start, &length)
            if pos >= 0:
                entry = _entry_receiver(buf, start, start + length)
                if entry < 0:
                    return False
                receiver[0] = entry
        else:
            return False
        if pos < 0:
            return False
    if cmd != _MESSAGE or text_len[0] == 0 or text_len[0] > max_text:
        return False
    return _valid_utf8(<const char*>buf + text_start[0], text_len[0])


def scan_chat_run(list frames, Py_ssize_t start, Py_ssize_t max_text):
    cdef list texts = [], client_msg_ids = []
    cdef long long destination = -1, receiver
    cdef Py_ssize_t end = start, limit = min(len(frames), start + _MAX_RUN), text_start, text_len
    cdef unsigned long long client_msg_id
    cdef bytes frame
    while end < limit:
        frame = frames[end]
        if not _plain_chat(<const unsigned char*>PyBytes_AS_STRING(frame), 0, PyBytes_GET_SIZE(frame), max_text,
                           &receiver, &text_start, &text_len, &client_msg_id):
            break
        if destination >= 0 and receiver != destination:
            break
        destination = receiver
        PyList_Append(texts, PyBytes_FromStringAndSize(PyBytes_AS_STRING(frame) + text_start, text_len))
        PyList_Append(client_msg_ids, client_msg_id)
        end += 1
    return end, (destination if destination > 0 else 0), texts, client_msg_ids


def scan_plain_read(bytes data not None, Py_ssize_t max_frame, Py_ssize_t max_text):
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = 0, end = PyBytes_GET_SIZE(data), start, text_start, text_len
    cdef unsigned long long length, client_msg_id
    cdef long long receiver, destination = 0
    cdef bint answered = False  # the first message has a clientMsgId: so must every one
    cdef list texts = [], client_msg_ids = []
    while pos < end:
        start = _read_varint(buf, pos, end, &length)
        if start < 0 or start - pos > _MAX_VARINT_BYTES or length == 0 or length > <unsigned long long>max_frame \
                or length > <unsigned long long>(end - start):
            return None
        pos = start + <Py_ssize_t>length
        if not _plain_chat(buf, start, pos, max_text, &receiver, &text_start, &text_len, &client_msg_id):
            return None
        if receiver <= 0 or (destination and receiver != destination) or PyList_GET_SIZE(texts) == _MAX_RUN:
            return None
        if not destination:
            answered = client_msg_id != 0
        elif answered != (client_msg_id != 0):
            return None
        destination = receiver
        PyList_Append(texts, PyBytes_FromStringAndSize(<const char*>buf + text_start, text_len))
        PyList_Append(client_msg_ids, client_msg_id)
    if not PyList_GET_SIZE(texts):
        return None
    return destination, texts, client_msg_ids


def push_bodies(bytes prefix, list texts, unsigned long long first_id, long long timestamp_ms, list client_msg_ids):
    cdef Py_ssize_t prefix_len = PyBytes_GET_SIZE(prefix), text_len, size, pos, k = 0
    cdef unsigned long long msg_id, client_msg_id, stamp = <unsigned long long>timestamp_ms
    cdef Py_ssize_t stamp_size = _field_size(_TAG_RESPONSE_TIMESTAMP, stamp)
    cdef list bodies = []
    cdef bytes text, body
    cdef char* dst
    if len(client_msg_ids) != len(texts):
        raise ValueError("one clientMsgId per text")
    for text in texts:
        msg_id = first_id + k
        client_msg_id = client_msg_ids[k]
        k += 1
        text_len = PyBytes_GET_SIZE(text)
        size = prefix_len + stamp_size + _field_size(_TAG_RESPONSE_MSG_ID, msg_id)
        if client_msg_id:
            size += _field_size(_TAG_RESPONSE_CLIENT_MSG_ID, client_msg_id)
        if text_len:
            size += 1 + varint_size(text_len) + text_len
        body = PyBytes_FromStringAndSize(NULL, size)
        dst = PyBytes_AS_STRING(body)
        memcpy(dst, PyBytes_AS_STRING(prefix), prefix_len)
        pos = prefix_len
        if text_len:
            dst[pos] = _TAG_RESPONSE_RES_MSG
            pos += 1 + write_varint(dst + pos + 1, text_len)
            memcpy(dst + pos, PyBytes_AS_STRING(text), text_len)
            pos += text_len
        pos += _write_field(dst + pos, _TAG_RESPONSE_MSG_ID, msg_id)
        pos += _write_field(dst + pos, _TAG_RESPONSE_TIMESTAMP, stamp)
        if client_msg_id:
            _write_field(dst + pos, _TAG_RESPONSE_CLIENT_MSG_ID, client_msg_id)
        PyList_Append(bodies, body)
    return bodies


cpdef bytes frame_sequenced(list bodies, unsigned long long first_seq, bytes suffix):
    cdef Py_ssize_t suffix_len = PyBytes_GET_SIZE(suffix), total = 0, pos = 0, k = 0, n
    cdef unsigned long long seq
    cdef bytes body
    for body in bodies:
        n = PyBytes_GET_SIZE(body) + _field_size(_TAG_RESPONSE_SEQ, first_seq + k) + suffix_len
        total += varint_size(n) + n
        k += 1
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* dst = PyBytes_AS_STRING(out)
    k = 0
    for body in bodies:
        seq = first_seq + k
        k += 1
        n = PyBytes_GET_SIZE(body)
        pos += write_varint(dst + pos, n + _field_size(_TAG_RESPONSE_SEQ, seq) + suffix_len)
        memcpy(dst + pos, PyBytes_AS_STRING(body), n)
        pos += n
        pos += _write_field(dst + pos, _TAG_RESPONSE_SEQ, seq)
        memcpy(dst + pos, PyBytes_AS_STRING(suffix), suffix_len)
        pos += suffix_len
    return out


cdef inline Py_ssize_t _receipt_size(Py_ssize_t head_len, unsigned long long msg_id, unsigned long long seq,
                                     unsigned long long timestamp_ms, unsigned long long client_msg_id) noexcept:
    return (head_len + _field_size(_TAG_RESPONSE_MSG_ID, msg_id) + _field_size(_TAG_RESPONSE_SEQ, seq)
            + _field_size(_TAG_RESPONSE_TIMESTAMP, timestamp_ms) + _field_size(_TAG_RESPONSE_CLIENT_MSG_ID, client_msg_id))


def encode_receipts(bytes head, list client_msg_ids, unsigned long long first_id, unsigned long long first_seq=0,
                    unsigned long long timestamp_ms=0):
    cdef Py_ssize_t head_len = PyBytes_GET_SIZE(head), total = 0, pos = 0, size, k
    cdef Py_ssize_t count = len(client_msg_ids)
    cdef unsigned long long msg_id, client_msg_id, seq
    if not first_seq:
        timestamp_ms = 0  # the timestamp comes with the seqs: the receipts stand for the sender's copies
    for k in range(count):
        size = _receipt_size(head_len, first_id + k, first_seq + k if first_seq else 0, timestamp_ms, client_msg_ids[k])
        total += varint_size(size) + size
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* dst = PyBytes_AS_STRING(out)
    for k in range(count):
        msg_id = first_id + k
        seq = first_seq + k if first_seq else 0
        client_msg_id = client_msg_ids[k]
        pos += write_varint(dst + pos, _receipt_size(head_len, msg_id, seq, timestamp_ms, client_msg_id))
        memcpy(dst + pos, PyBytes_AS_STRING(head), head_len)
        pos += head_len
        pos += _write_field(dst + pos, _TAG_RESPONSE_MSG_ID, msg_id)
        pos += _write_field(dst + pos, _TAG_RESPONSE_SEQ, seq)
        pos += _write_field(dst + pos, _TAG_RESPONSE_TIMESTAMP, timestamp_ms)
        pos += _write_field(dst + pos, _TAG_RESPONSE_CLIENT_MSG_ID, client_msg_id)
    return out
