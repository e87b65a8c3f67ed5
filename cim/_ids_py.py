"""Pure-Python twin of ``cim/_ids.pyx``: message ids, taken for every run of messages sent.

Snowflake ids (Twitter's layout): 41 bits of milliseconds since 2024-01-01, 10 bits of
node number, 12 bits of per-millisecond sequence. The compiled twin has the same names
and behaviour, and reads the same clock (``time.time_ns`` is ``clock_gettime(CLOCK_REALTIME)``);
one test suite runs against both (tests/test_ids.py).
"""

from __future__ import annotations

from time import time_ns

__all__ = ["BLOCK", "EPOCH_MS", "MS_SHIFT", "NODE_BITS", "SEQ_BITS", "MessageIds"]

EPOCH_MS = 1_704_067_200_000
NODE_BITS = 10
SEQ_BITS = 12
MS_SHIFT = NODE_BITS + SEQ_BITS
BLOCK = 1 << SEQ_BITS  # ids per millisecond


class MessageIds:
    """Snowflake ids: unique across nodes with distinct node numbers, increasing per node.

    Taken in blocks: a run of messages gets consecutive ids with one timestamp, so
    the wire encoders can number them without a call per message.
    """

    MAX_BLOCK = BLOCK

    def __init__(self, node_number: int) -> None:
        self.assign_node(node_number)
        self._last_ms = 0
        self._seq = 0

    def assign_node(self, node_number: int) -> None:
        """Set the node number (a node learns it from the store once it starts)."""
        self._node_bits = (node_number & ((1 << NODE_BITS) - 1)) << SEQ_BITS  # as ids carry it: shifted once, not per take

    def take(self, count: int = 1) -> tuple[int, int]:
        """``count`` consecutive ids: (the first, their timestamp in ms)."""
        if not 0 < count <= BLOCK:
            raise ValueError(f"take 1 to {BLOCK} ids at a time, not {count}")
        now = time_ns() // 1_000_000
        seq = self._seq
        if now > self._last_ms:
            self._last_ms = ms = now
            seq = 0
        elif seq + count > BLOCK:  # this millisecond is used up: borrow the next
            self._last_ms = ms = self._last_ms + 1
            seq = 0
        else:
            ms = self._last_ms
        self._seq = seq + count
        return ((ms - EPOCH_MS) << MS_SHIFT) | self._node_bits | seq, ms
