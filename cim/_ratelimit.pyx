# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``cim._ratelimit_py``: the token bucket in C doubles, and the check
of one read against a connection's two buckets in one call.

Same names and behaviour as the pure-Python twin (read its docstring for the why);
one test suite runs against both. The arithmetic is the twin's, step for step, in
doubles (as Python's floats are), so both decide alike to the last bit.
"""

from cpython.list cimport PyList_Append, PyList_GET_ITEM, PyList_GET_SIZE

from cim._ratelimit_py import check_positive
from cim.protocols.connection import ChatMessages, Login

# The event classes as C globals, compared by identity: no Python lookup per event.
cdef object _CHAT_MESSAGES = ChatMessages
cdef object _LOGIN = Login


cdef class TokenBucket:
    """``rate`` tokens a second up to ``burst`` (starting full): over any span of ``t``
    seconds at most ``burst + rate * t`` tokens are taken."""

    cdef public double rate, burst, tokens, updated

    def __init__(self, rate, burst, double now=0.0):
        check_positive(rate, burst)  # the twin's check and message, on the numbers as passed
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    cdef inline double _level(self, double now) noexcept:
        # The tokens _refill would find, nothing stored: settle_read may yet take
        # nothing, and a refill split in two rounds may round differently from one.
        cdef double tokens = self.tokens
        if now > self.updated:
            tokens += (now - self.updated) * self.rate
            if tokens > self.burst:
                tokens = self.burst
        return tokens

    cdef inline void _settle(self, double tokens, double now) noexcept:
        # Store what _level found at now, less what was taken.
        self.tokens = tokens
        if now > self.updated:
            self.updated = now

    cdef inline double _refill(self, double now) noexcept:
        cdef double tokens = self._level(now)
        self._settle(tokens, now)
        return tokens

    def take(self, double now, double cost=1.0):
        """Take ``cost`` tokens if there are that many; False (nothing taken) otherwise."""
        if self._refill(now) >= cost:
            self.tokens -= cost
            return True
        return False

    def take_up_to(self, double now, Py_ssize_t count):
        """Take one token for each of the first of ``count`` items that fit: how many did."""
        cdef double tokens = self._refill(now)
        cdef Py_ssize_t allowed = count if tokens >= count else <Py_ssize_t>tokens if tokens > 0 else 0
        self.tokens = tokens - allowed
        return allowed

    def charge(self, double now, double cost):
        """Take ``cost`` tokens whatever is left, going into debt for what has already
        happened: the seconds until the debt is paid off, 0.0 if none."""
        cdef double tokens = self._refill(now) - cost
        self.tokens = tokens
        return -tokens / self.rate if tokens < 0 else 0.0

    def wait(self, double now, double cost=1.0):
        """Seconds until ``cost`` tokens are there (0.0: now)."""
        cdef double missing = cost - self._refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def full(self, double now):
        """Refilled to ``burst``: no different from a new bucket."""
        return self._refill(now) >= self.burst


def settle_read(TokenBucket messages, TokenBucket bytes_, list events not None, double now, Py_ssize_t size):
    """The usual case of ``PeerQuota.screen``, all or nothing (see the twin): ``settle_runs``
    of the read's runs of messages, False with nothing taken for a read with a login."""
    cdef list run_sizes = []
    cdef Py_ssize_t index
    cdef object event, kind
    for index in range(PyList_GET_SIZE(events)):
        event = <object>PyList_GET_ITEM(events, index)
        kind = type(event)
        if kind is _CHAT_MESSAGES:
            PyList_Append(run_sizes, len(event.texts))
        elif kind is _LOGIN:
            return False
    return _settle_runs(messages, bytes_, run_sizes, now, size)


def settle_runs(TokenBucket messages, TokenBucket bytes_, list run_sizes not None, double now, Py_ssize_t size):
    """A read of ``size`` bytes with runs of messages of these sizes, all or nothing (see the twin)."""
    return _settle_runs(messages, bytes_, run_sizes, now, size)


cdef bint _settle_runs(TokenBucket messages, TokenBucket bytes_, list run_sizes, double now, Py_ssize_t size) except -1:
    cdef double byte_tokens = 0.0, tokens = 0.0
    cdef Py_ssize_t index, count
    cdef bint runs = messages is not None and PyList_GET_SIZE(run_sizes) > 0
    if bytes_ is not None:
        byte_tokens = bytes_._level(now) - size
        if byte_tokens < 0:
            return False
    if runs:
        tokens = messages._level(now)
        for index in range(PyList_GET_SIZE(run_sizes)):
            count = <object>PyList_GET_ITEM(run_sizes, index)
            if not tokens >= count:  # take_up_to's test, so that a NaN decides alike
                return False
            tokens -= count
    if bytes_ is not None:
        bytes_._settle(byte_tokens, now)
    if runs:
        messages._settle(tokens, now)
    return True
