# cython: language_level=3
# Base-128 varint helpers shared by the compiled modules (cim/_frame.pyx, cim/_wire.pyx).

cdef inline Py_ssize_t varint_size(unsigned long long n) noexcept:
    cdef Py_ssize_t size = 1
    while n > 0x7F:
        n >>= 7
        size += 1
    return size


cdef inline Py_ssize_t write_varint(char* out, unsigned long long n) noexcept:
    cdef Py_ssize_t i = 0
    while n > 0x7F:
        out[i] = <char>((n & 0x7F) | 0x80)
        n >>= 7
        i += 1
    out[i] = <char>n
    return i + 1
