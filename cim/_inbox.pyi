from collections.abc import Mapping

from cim._inbox_py import EachMessage, Pairs

class Stored:
    first_seq: int
    bodies: list[bytes]
    duplicates: Mapping[int, int]
    def __init__(self, first_seq: int, bodies: list[bytes], duplicates: Mapping[int, int] = ...) -> None: ...

def merged_duplicates(stored: list[Stored]) -> dict[int, int]: ...

class Limits:
    window: int
    max_messages: int
    trim_at: int
    age_ticks: int
    def __init__(self, window: int, max_messages: int, age_ticks: int) -> None: ...

class Slot:
    base: int
    tick: int
    pairs: int
    bodies: list[bytes]
    mark_ticks: list[int]
    mark_seqs: list[int]
    recent: Pairs
    older: Pairs
    def __init__(self) -> None: ...
    def trim(self, max_messages: int, oldest_tick: int) -> int: ...
    def next_generation(self) -> None: ...

def keep(slot: Slot, bodies: list[bytes], tick: int, limits: Limits) -> int: ...
def keep_in(slots: dict[int, Slot], receiver_id: int, bodies: list[bytes], tick: int, limits: Limits) -> int: ...
def append_run(slot: Slot, sender_id: int, bodies: list[bytes], first_msg_id: int, client_msg_ids: list[int],
               tick: int, limits: Limits) -> int: ...
def append_runs(slots: dict[int, Slot], receiver_ids: list[int], sender_id: int, bodies: list[bytes],
                first_msg_id: int, client_msg_ids: list[int], tick: int, limits: Limits,
                each_message: EachMessage) -> list[Stored]: ...
