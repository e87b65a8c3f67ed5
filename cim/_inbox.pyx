# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``cim._inbox_py``: the memory inbox's ``Slot`` and the appends of
every embedded send (read the twin's docstring for the why).

Same names and behaviour; one test suite runs against both. ``Seen`` keeps its pairs
in a C array it grows itself (the twin's are two ``array('Q')``), and an append reads
the run's clientMsgIds as C integers: no int object is made for a pair's msgId.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport uint64_t

from cim._inbox_py import NO_DUPLICATES
from cim._inbox_py import Slot as _PureSlot
from cim._inbox_py import Stored as _PureStored

# The twin's trim, in Python: it runs once per many appends (a slack past the cap, a new tick).
_trim = _PureSlot.trim


@cython.final
@cython.no_gc  # not tracked by the collector: a list of bytes and a dict of ints make no cycle
cdef class Stored:
    """See the twin (a dataclass): the same fields, equality and repr (declared in ``_inbox.pxd``)."""

    def __init__(self, first_seq, list bodies, duplicates=NO_DUPLICATES):
        self.first_seq = first_seq
        self.bodies = bodies
        self.duplicates = duplicates

    def __eq__(self, other):
        if type(other) is not Stored and type(other) is not _PureStored:  # a twin's equals by value too
            return NotImplemented
        return (self.first_seq, self.bodies, self.duplicates) == (other.first_seq, other.bodies, other.duplicates)

    __hash__ = None

    def __repr__(self):
        return f"Stored(first_seq={self.first_seq!r}, bodies={self.bodies!r}, duplicates={self.duplicates!r})"


def merged_duplicates(list stored):
    """See the twin."""
    cdef dict merged = {}
    cdef Stored each
    for each in stored:
        if each.duplicates is not NO_DUPLICATES and each.duplicates:
            merged.update(each.duplicates)
    return merged


ctypedef struct Pair:
    uint64_t client_msg_id
    uint64_t msg_id


@cython.final
@cython.no_gc  # a dict of ints makes no cycle
cdef class Seen:
    """See the twin (its two arrays are one array of pairs here: one block to grow, one line to write)."""

    cdef Pair* pairs  # by rising client_msg_id
    cdef Py_ssize_t count, capacity
    cdef dict stragglers  # None until one comes

    def __dealloc__(self):
        PyMem_Free(self.pairs)

    def __len__(self):
        return self.count + (len(self.stragglers) if self.stragglers is not None else 0)

    cdef Py_ssize_t _index(self, uint64_t client_msg_id):
        """Where the id is in ``pairs``, -1 if it is not (binary search)."""
        cdef Py_ssize_t low = 0, high = self.count, middle
        while low < high:
            middle = (low + high) >> 1
            if self.pairs[middle].client_msg_id < client_msg_id:
                low = middle + 1
            else:
                high = middle
        return low if low < self.count and self.pairs[low].client_msg_id == client_msg_id else -1

    cdef bint has(self, uint64_t client_msg_id) except -1:
        if self.count == 0 or client_msg_id > self.pairs[self.count - 1].client_msg_id:
            return False  # above every id here: a straggler is below the last one too
        if self._index(client_msg_id) >= 0:
            return True
        return self.stragglers is not None and client_msg_id in self.stragglers

    cdef int record(self, uint64_t client_msg_id, uint64_t msg_id) except -1:
        cdef Py_ssize_t capacity
        cdef Pair* grown
        if self.count and client_msg_id <= self.pairs[self.count - 1].client_msg_id:
            if self.stragglers is None:
                self.stragglers = {}
            self.stragglers[client_msg_id] = msg_id
            return 0
        if self.count == self.capacity:
            capacity = max(16, 2 * self.capacity)
            grown = <Pair*>PyMem_Realloc(self.pairs, capacity * sizeof(Pair))
            if grown == NULL:
                raise MemoryError()
            self.pairs, self.capacity = grown, capacity
        self.pairs[self.count].client_msg_id = client_msg_id
        self.pairs[self.count].msg_id = msg_id
        self.count += 1
        return 0

    def get(self, uint64_t client_msg_id):
        """The msgId the pair got, None if it is not here (the look message by message: not the hot path)."""
        if not self.has(client_msg_id):
            return None
        cdef Py_ssize_t k = self._index(client_msg_id)
        return self.pairs[k].msg_id if k >= 0 else self.stragglers[client_msg_id]

    def add(self, uint64_t client_msg_id, uint64_t msg_id):
        """Record a pair that is not here."""
        self.record(client_msg_id, msg_id)


cdef class Limits:
    """What the appends keep: the dedup window, the count cap (and where a trim is due) and the max age in ticks."""

    cdef public long long window, max_messages, trim_at, age_ticks

    def __init__(self, long long window, long long max_messages, long long age_ticks):
        self.window = window
        self.max_messages = max_messages
        self.trim_at = max_messages + max(16, max_messages // 8)
        self.age_ticks = age_ticks


cdef class Slot:
    """One user's inbox: the bodies from seq ``base`` on, age marks, dedup records."""

    cdef public long long base, tick, pairs
    cdef public list bodies, mark_ticks, mark_seqs
    cdef public dict recent, older

    def __init__(self):
        self.base = 1
        self.bodies = []
        self.tick = -1
        self.mark_ticks = []
        self.mark_seqs = []
        self.recent = {}
        self.older = {}
        self.pairs = 0

    def trim(self, max_messages, oldest_tick):
        """Drop what is beyond the last ``max_messages`` or from before ``oldest_tick``;
        the first seq kept (latest + 1: none)."""
        return _trim(self, max_messages, oldest_tick)

    def next_generation(self):
        """The recent pairs (a window of them) become the older ones; the older are forgotten."""
        self.older, self.recent = self.recent, {}
        self.pairs = 0


cdef long long _keep(Slot slot, list bodies, long long tick, Limits limits) except -1:
    cdef long long first = slot.base + PyList_GET_SIZE(slot.bodies)
    slot.bodies.extend(bodies)
    if slot.tick != tick:  # a new tick's age mark, and the age retention when due
        slot.tick = tick
        slot.mark_ticks.append(tick)
        slot.mark_seqs.append(first)
        if slot.mark_ticks[0] < tick - limits.age_ticks:
            _trim(slot, limits.max_messages, tick - limits.age_ticks)
            return first
    if PyList_GET_SIZE(slot.bodies) > limits.trim_at:
        _trim(slot, limits.max_messages, tick - limits.age_ticks)
    return first


def keep(Slot slot, list bodies, long long tick, Limits limits):
    """Store ``bodies`` (not empty) in the slot, with the upkeep due; the seq of the first."""
    return _keep(slot, bodies, tick, limits)


def keep_in(dict slots, receiver_id, list bodies, long long tick, Limits limits):
    """``keep`` in the receiver's slot (made if it has none): messages with no clientMsgId,
    nothing to deduplicate. The seq of the first."""
    found = slots.get(receiver_id)
    cdef Slot slot
    if found is None:
        slot = Slot()
        slots[receiver_id] = slot
    else:
        slot = <Slot>found
    if not PyList_GET_SIZE(bodies):
        raise ValueError("nothing to keep")
    return _keep(slot, bodies, tick, limits)


cdef long long _append_run(Slot slot, object sender_id, list bodies, uint64_t first_msg_id, list client_msg_ids,
                           long long tick, Limits limits) except -1:
    cdef Py_ssize_t count = PyList_GET_SIZE(client_msg_ids), k
    cdef uint64_t client_msg_id, last = 0
    cdef Seen recent, older = None
    if count == 0:
        raise ValueError("an empty run")
    if not <object>PyList_GET_ITEM(client_msg_ids, 0):
        for k in range(1, count):
            if <object>PyList_GET_ITEM(client_msg_ids, k):
                return 0  # a clientMsgId 0 among others
        return _keep(slot, bodies, tick, limits)  # none at all (CIM's client): nothing to dedup
    recent = slot.recent.get(sender_id)
    if slot.older:
        older = slot.older.get(sender_id)
    for k in range(count):
        client_msg_id = <object>PyList_GET_ITEM(client_msg_ids, k)
        if client_msg_id <= last:
            return 0  # not rising: a 0 among others, an id twice, or a resend's order
        last = client_msg_id
        if (recent is not None and recent.has(client_msg_id)) or (older is not None and older.has(client_msg_id)):
            return 0
    if recent is None:
        recent = Seen.__new__(Seen)
        slot.recent[sender_id] = recent
    for k in range(count):
        recent.record(<object>PyList_GET_ITEM(client_msg_ids, k), first_msg_id + k)
    slot.pairs += count
    if slot.pairs >= limits.window:
        slot.older, slot.recent = slot.recent, {}
        slot.pairs = 0
    return _keep(slot, bodies, tick, limits)


def append_run(Slot slot, sender_id, list bodies, uint64_t first_msg_id, list client_msg_ids, long long tick,
               Limits limits):
    """Store a run (not empty) for one receiver if it needs no message-by-message look,
    recording its pairs; the seq of its first message, or 0 with nothing changed."""
    return _append_run(slot, sender_id, bodies, first_msg_id, client_msg_ids, tick, limits)


def append_runs(dict slots, list receiver_ids, sender_id, list bodies, uint64_t first_msg_id, list client_msg_ids,
                long long tick, Limits limits, each_message):
    """See the twin."""
    cdef list stored = []
    cdef Slot slot
    cdef Stored whole
    cdef long long first
    for receiver_id in receiver_ids:
        found = slots.get(receiver_id)
        if found is None:
            slot = Slot()
            slots[receiver_id] = slot
        else:
            slot = <Slot>found
        first = _append_run(slot, sender_id, bodies, first_msg_id, client_msg_ids, tick, limits)
        if first:
            whole = Stored.__new__(Stored)  # no __init__ call: one of these per receiver
            whole.first_seq = first
            whole.bodies = bodies
            whole.duplicates = NO_DUPLICATES
            stored.append(whole)
        else:
            stored.append(each_message(slot, sender_id, bodies, client_msg_ids, first_msg_id, tick))
    return stored
