"""Message ids (``cim.messages.MessageIds``), against both twins: snowflake ids, unique and
increasing per node, taken in blocks that share one timestamp."""

from __future__ import annotations

import time
from types import ModuleType

import pytest

from cim import _ids_py


def parts(message_id: int) -> tuple[int, int, int]:
    """(milliseconds since the epoch, node number, sequence) of an id."""
    return ((message_id >> _ids_py.MS_SHIFT) + _ids_py.EPOCH_MS, (message_id >> _ids_py.SEQ_BITS)
            & ((1 << _ids_py.NODE_BITS) - 1), message_id & (_ids_py.BLOCK - 1))


def test_a_block_is_consecutive_ids_with_the_nodes_number_and_the_clocks_time(ids: ModuleType) -> None:
    before = time.time_ns() // 1_000_000
    first, ms = ids.MessageIds(5).take(3)
    assert before <= ms <= time.time_ns() // 1_000_000
    assert parts(first) == (ms, 5, 0)
    assert ids.MessageIds.MAX_BLOCK == _ids_py.BLOCK


def test_ids_only_increase_even_when_a_millisecond_is_used_up(ids: ModuleType) -> None:
    source = ids.MessageIds(1)
    counts = [1, 4096, 4096, 7, 4000, 100] * 50  # far more than a millisecond's 4096: later ones borrow ahead
    blocks = [(count, *source.take(count)) for count in counts]
    for (count, first, _), (_, next_first, next_ms) in zip(blocks, blocks[1:], strict=False):
        assert first + count <= next_first  # blocks never overlap, and only increase
        assert parts(next_first)[0] == next_ms  # an id says its block's timestamp
    assert blocks[-1][2] <= time.time_ns() // 1_000_000 + 1000  # borrowing runs ahead of the clock only briefly


def test_nodes_with_distinct_numbers_never_share_an_id(ids: ModuleType) -> None:
    one, other = ids.MessageIds(1), ids.MessageIds(2)
    assert {one.take(64)[0] + k for k in range(64)}.isdisjoint({other.take(64)[0] + k for k in range(64)})
    other.assign_node(1 + (1 << _ids_py.NODE_BITS))  # as many bits as ids carry: 1 again
    assert parts(other.take()[0])[1] == 1


@pytest.mark.parametrize("count", [0, -1, _ids_py.BLOCK + 1])
def test_a_block_is_1_to_max_block_ids(ids: ModuleType, count: int) -> None:
    with pytest.raises(ValueError, match="take 1 to 4096 ids at a time"):
        ids.MessageIds(1).take(count)
