# cython: language_level=3
"""Compiled twin of ``cim._stream_py``: ``Stream`` and ``SessionCore`` as extension types
(fields declared in ``_stream.pxd``), the same names, defaults and behaviour; one test
suite runs against both."""

cimport cython


@cython.final
cdef class Stream:
    """See the twin (a dataclass: the same fields and defaults, compared by identity)."""

    def __init__(self, peer, str device_id, long long sent=0, bint catching_up=True, long long missed=0,
                 long long acked=0, long long cursor_written=0, bint syncs=False, long long login_seq=0,
                 long long replayed=0, bint receipts=False):
        self.peer = peer
        self.device_id = device_id
        self.sent = sent
        self.catching_up = catching_up
        self.missed = missed
        self.acked = acked
        self.cursor_written = cursor_written
        self.syncs = syncs
        self.login_seq = login_seq
        self.replayed = replayed
        self.receipts = receipts

    @property
    def cursor(self):
        """See the twin."""
        return self.acked if self.acked or self.syncs else self.sent

    def __repr__(self):
        return (f"Stream(peer={self.peer!r}, device_id={self.device_id!r}, sent={self.sent}, "
                f"catching_up={self.catching_up}, acked={self.acked})")


cdef class SessionCore:
    """See the twin (``cim.server.sessions.Session`` subclasses it)."""

    def __init__(self, user_id, sender, bytes receiver_entry, bytes to_user_field, gap):
        self.user_id = user_id
        self.sender = sender
        self.receiver_entry = receiver_entry
        self.to_user_field = to_user_field
        self.gap = gap
        self.streams = []
