# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``cim._lane_py``: live pushes to a user's streams and the private lane.

Same names and behaviour (read the twin's docstring for the why); one test suite runs
against both. The objects it reads (sessions, streams, peers) stay Python objects: what
the compiled twin saves is the interpreter's work between them, a frame and a few dozen
bytecodes a step, on the path every private message takes.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

from cim._inbox cimport Stored
from cim._stream cimport SessionCore, Stream
from cim._wire cimport frame_sequenced

from cim.server.resends import answer_resends
from cim.server.streams import offer
from cim.status import Status
from cim.wire import push_bodies

# The metrics' names as C globals: no constant lookup per message.
cdef str _MESSAGES_IN = "messages_in"
cdef str _MESSAGES_OUT = "messages_out"
cdef object _SUCCESS = Status.SUCCESS


cpdef bint push_live(list streams, list bodies, long long first_seq, bytes receiver_entry, bint at_once,
                     object answered, object gap) except -1:
    # The compiled Stream and SessionCore (cim._stream, chosen with this twin): struct fields.
    cdef object frame = None, peer, write
    cdef Stream stream
    cdef bint taken = False
    cdef Py_ssize_t index
    cdef long long last = first_seq + PyList_GET_SIZE(bodies) - 1
    for index in range(PyList_GET_SIZE(streams)):
        stream = <Stream?><object>PyList_GET_ITEM(streams, index)
        if not stream.catching_up and stream.sent + 1 == first_seq:  # the common case, inline
            peer = stream.peer
            if peer is answered:
                taken = True
            else:
                if frame is None:
                    frame = frame_sequenced(bodies, first_seq, receiver_entry)
                write = peer.write_now if at_once else None
                if write is not None:
                    write(frame)  # what push would do, with no call of its own (Peer.write_now)
                else:
                    peer.push(frame, at_once)
            stream.sent = last
        else:
            offer(stream, bodies, first_seq, receiver_entry, at_once, gap)
    return taken


cpdef Py_ssize_t push_each(dict by_user, list user_ids, list stored) except -1:
    # The compiled Stored (the compiled inbox's: chosen with this twin), its fields read as a struct's.
    cdef Py_ssize_t index, count = 0, size = PyList_GET_SIZE(user_ids)
    cdef object found
    cdef SessionCore session
    cdef Stored each
    cdef list bodies
    if PyList_GET_SIZE(stored) != size:
        raise ValueError(f"{size} receivers, {PyList_GET_SIZE(stored)} appends")
    for index in range(size):
        found = by_user.get(<object>PyList_GET_ITEM(user_ids, index))
        if found is None:
            continue
        session = <SessionCore?>found
        each = <Stored?><object>PyList_GET_ITEM(stored, index)
        bodies = each.bodies
        if PyList_GET_SIZE(bodies):
            push_live(session.streams, bodies, each.first_seq, session.receiver_entry, True, None, session.gap)
            count += PyList_GET_SIZE(bodies)
        if each.duplicates:
            found.ring()
    return count


cpdef Py_ssize_t push_runs(dict by_user, list user_ids, list bodies, list first_seqs) except -1:
    cdef Py_ssize_t index, here = 0, size = PyList_GET_SIZE(user_ids)
    cdef object found
    cdef SessionCore session
    if PyList_GET_SIZE(first_seqs) != size:
        raise ValueError(f"{size} receivers, {PyList_GET_SIZE(first_seqs)} seqs")
    for index in range(size):
        found = by_user.get(<object>PyList_GET_ITEM(user_ids, index))
        if found is not None:
            session = <SessionCore?>found
            push_live(session.streams, bodies, <object>PyList_GET_ITEM(first_seqs, index), session.receiver_entry, True,
                      None, session.gap)
            here += 1
    return here


cdef class PrivateLane:
    """Private messages to a user here: stored, pushed and (when asked) answered in one step."""

    cdef dict _by_user, _by_peer
    cdef object _inbox, _take_ids, _metrics

    def __init__(self, dict by_user, dict by_peer, inbox, ids, metrics):  # the session table's dicts themselves
        self._by_user = by_user
        self._by_peer = by_peer
        self._inbox = inbox
        self._take_ids = ids.take
        self._metrics = metrics

    def take(self, peer, quota, receiver, list texts, list client_msg_ids, now, size):
        """See the twin."""
        target = self._by_user.get(receiver)
        session = self._by_peer.get(peer)
        if target is None or session is None or self._inbox is None:
            return False
        if quota is not None and not quota.fits(PyList_GET_SIZE(texts), now, size):
            return False
        return self.settle(peer, session, target, texts, client_msg_ids)

    cpdef bint settle(self, peer, session, target, list texts, list client_msg_ids) except -1:
        """See the twin."""
        if <object>PyList_GET_ITEM(client_msg_ids, 0):
            return self.deliver_answered(peer, session, target, texts, client_msg_ids)
        return self._deliver(session, target, texts, client_msg_ids)

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
        push_live(target.streams, bodies, first_seq, target.receiver_entry, True, None, target.gap)
        return True

    def deliver_answered(self, peer, session, target, list texts, list client_msg_ids):
        """See the twin."""
        inbox = self._inbox
        if inbox is None:
            return False
        cdef Py_ssize_t count = PyList_GET_SIZE(texts)
        first_id, now_ms = self._take_ids(count)
        bodies = push_bodies(session.sender.prefix + target.to_user_field, texts, first_id, now_ms, client_msg_ids)
        cdef list owners = [target, session] if target is not session else [target]  # + the sender's copy
        cdef list stored
        try:
            if PyList_GET_SIZE(owners) == 1:
                stored = [inbox.append_now(target.user_id, session.user_id, bodies, first_id, client_msg_ids)]
            else:
                stored = inbox.append_each_now([target.user_id, session.user_id], session.user_id, bodies, first_id,
                                               client_msg_ids)
        except Exception:  # a disk error
            return False
        metrics = self._metrics
        metrics[_MESSAGES_IN] += count
        if stored[0].duplicates or stored[PyList_GET_SIZE(stored) - 1].duplicates:
            metrics[_MESSAGES_OUT] += answer_resends(peer, owners, stored, client_msg_ids, first_id, metrics)
            return True
        receiver = stored[0]
        push_live(target.streams, receiver.bodies, receiver.first_seq, target.receiver_entry, True, None, target.gap)
        own_seq = 0
        if PyList_GET_SIZE(owners) > 1:
            copy = stored[1]
            if push_live(session.streams, copy.bodies, copy.first_seq, session.receiver_entry, False, peer, session.gap):
                own_seq = copy.first_seq
        peer.send_receipts(client_msg_ids, first_id, _SUCCESS, own_seq, now_ms)
        metrics[_MESSAGES_OUT] += count * PyList_GET_SIZE(owners)
        return True
