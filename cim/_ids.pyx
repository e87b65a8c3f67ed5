# cython: language_level=3, cdivision=True
"""Compiled twin of ``cim._ids_py``: message ids in C integers, taken for every run sent.

Same names and behaviour (read the twin's docstring for the layout); one test suite runs
against both. The clock is the twin's: ``time.time_ns`` is ``clock_gettime(CLOCK_REALTIME)``.
"""

from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from cim._ids_py import BLOCK, EPOCH_MS, MS_SHIFT, NODE_BITS, SEQ_BITS

cdef long long _BLOCK = BLOCK
cdef long long _EPOCH_MS = EPOCH_MS
cdef int _MS_SHIFT = MS_SHIFT
cdef long long _NODE_MASK = (1 << NODE_BITS) - 1
cdef int _SEQ_BITS = SEQ_BITS


cdef class MessageIds:
    """See the twin."""

    MAX_BLOCK = BLOCK

    cdef long long _node_bits, _last_ms, _seq

    def __init__(self, node_number):
        self.assign_node(node_number)
        self._last_ms = 0
        self._seq = 0

    def assign_node(self, node_number):
        """Set the node number (a node learns it from the store once it starts)."""
        self._node_bits = (node_number & _NODE_MASK) << _SEQ_BITS

    def take(self, long long count=1):
        """``count`` consecutive ids: (the first, their timestamp in ms)."""
        cdef timespec now_ts
        cdef long long now, ms, seq
        if not 0 < count <= _BLOCK:
            raise ValueError(f"take 1 to {_BLOCK} ids at a time, not {count}")
        clock_gettime(CLOCK_REALTIME, &now_ts)
        now = now_ts.tv_sec * 1000 + now_ts.tv_nsec // 1_000_000
        seq = self._seq
        if now > self._last_ms:
            self._last_ms = ms = now
            seq = 0
        elif seq + count > _BLOCK:  # this millisecond is used up: borrow the next
            self._last_ms = ms = self._last_ms + 1
            seq = 0
        else:
            ms = self._last_ms
        self._seq = seq + count
        return ((ms - _EPOCH_MS) << _MS_SHIFT) | self._node_bits | seq, ms
