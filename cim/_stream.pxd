# The compiled twin's types, for the compiled hot path (cim._lane) to read as structs.

cdef class Stream:
    cdef public object peer
    cdef public str device_id
    cdef public long long sent, missed, acked, cursor_written, login_seq, replayed
    cdef public bint catching_up, syncs, receipts


cdef class SessionCore:
    cdef public object user_id, sender, gap
    cdef public bytes receiver_entry, to_user_field
    cdef public list streams
