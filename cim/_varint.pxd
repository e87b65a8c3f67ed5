# cython: language_level=3
# Base-128 varint helpers shared by the compiled modules (cim/_frame.pyx, cim/_wire.pyx).

cimport cython


cdef extern from *:
    int __builtin_clzll(unsigned long long n) noexcept nogil


@cython.cdivision(True)
cdef inline Py_ssize_t varint_size(unsigned long long n) noexcept:
    # 7 bits a byte: one byte more for every 7 bits above the first 7, found from the highest
    # set bit (n | 1: 0 takes one byte too) with no loop. Every id, seq and length is sized.
    return 1 + (63 - __builtin_clzll(n | 1)) // 7


cdef inline Py_ssize_t write_varint(char* out, unsigned long long n) noexcept:
    cdef Py_ssize_t i = 0
    while n > 0x7F:
        out[i] = <char>((n & 0x7F) | 0x80)
        n >>= 7
        i += 1
    out[i] = <char>n
    return i + 1
