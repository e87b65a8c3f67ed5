# The compiled memory inbox's types that other compiled modules read field by field
# (cim._lane pushes each receiver's Stored with no attribute lookups).

cdef class Stored:
    cdef public object first_seq
    cdef public list bodies
    cdef public object duplicates  # a dict, or the shared read-only NO_DUPLICATES
