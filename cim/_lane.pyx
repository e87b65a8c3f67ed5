# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``cim._lane_py``: live pushes to a user's streams and the one-read lane.

Same names and behaviour (read the twin's docstring for the why); one test suite runs
against both. The objects it reads (sessions, streams, peers) stay Python objects: what
the compiled twin saves is the interpreter's work between them, a frame and a few dozen
bytecodes a step, on the path every private message takes.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

from cim.server.streams import offer
from cim.wire import frame_sequenced, push_bodies

# The metrics' names as C globals: no constant lookup per message.
cdef str _MESSAGES_IN = "messages_in"
cdef str _MESSAGES_OUT = "messages_out"


cpdef bint push_live(list streams, list bodies, unsigned long long first_seq, bytes receiver_entry, bint at_once,
                     object answered, object gap) except -1:
    cdef object frame = None, stream, peer
    cdef bint taken = False
    cdef Py_ssize_t index
    cdef unsigned long long last = first_seq + PyList_GET_SIZE(bodies) - 1
    for index in range(PyList_GET_SIZE(streams)):
        stream = <object>PyList_GET_ITEM(streams, index)
        if not stream.catching_up and stream.sent + 1 == first_seq:  # the common case, inline
            peer = stream.peer
            if peer is answered:
                taken = True
            else:
                if frame is None:
                    frame = frame_sequenced(bodies, first_seq, receiver_entry)
                peer.push(frame, at_once)
            stream.sent = last
        else:
            offer(stream, bodies, first_seq, receiver_entry, at_once, gap)
    return taken


cdef class PlainLane:
    """Messages with no clientMsgId to a user here: one inbox append and the receiver's push."""

    cdef dict _by_user, _by_peer
    cdef object _inbox, _take_ids, _metrics

    def __init__(self, dict by_user, dict by_peer, inbox, ids, metrics):  # the session table's dicts themselves
        self._by_user = by_user
        self._by_peer = by_peer
        self._inbox = inbox
        self._take_ids = ids.take
        self._metrics = metrics

    def take(self, peer, quota, receiver, list texts, now, size):
        """See the twin."""
        target = self._by_user.get(receiver)
        session = self._by_peer.get(peer)
        if target is None or session is None or self._inbox is None:
            return False
        if quota is not None and not quota.fits(PyList_GET_SIZE(texts), now, size):
            return False
        return self._deliver(session, target, texts, [0] * PyList_GET_SIZE(texts))

    def deliver(self, session, target, list texts, list client_msg_ids):
        """See the twin."""
        return self._deliver(session, target, texts, client_msg_ids)

    cdef bint _deliver(self, session, target, list texts, list client_msg_ids) except -1:
        if self._inbox is None:
            return False
        cdef Py_ssize_t count = PyList_GET_SIZE(texts)
        first_id, now_ms = self._take_ids(count)
        bodies = push_bodies(session.sender.prefix + target.to_user_field, texts, first_id, now_ms, client_msg_ids)
        try:
            first_seq = self._inbox.append_plain_now(target.user_id, session.user_id, bodies, first_id)
        except Exception:  # a disk error
            return False
        metrics = self._metrics
        metrics[_MESSAGES_IN] += count
        metrics[_MESSAGES_OUT] += count
        push_live(target.streams, bodies, first_seq, target.receiver_entry, False, None, target.gap)
        return True
