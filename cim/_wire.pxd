# The compiled wire functions other compiled modules call in C (cim._lane frames every push).

cpdef bytes frame_sequenced(list bodies, unsigned long long first_seq, bytes suffix)
