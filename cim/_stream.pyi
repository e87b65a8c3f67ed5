from cim._stream_py import GapHandler
from cim.messages import Sender
from cim.server.peer import Peer

class Stream:
    peer: Peer
    device_id: str
    sent: int
    catching_up: bool
    missed: int
    acked: int
    cursor_written: int
    syncs: bool
    login_seq: int
    replayed: int
    receipts: bool
    def __init__(self, peer: Peer, device_id: str, sent: int = 0, catching_up: bool = True, missed: int = 0,
                 acked: int = 0, cursor_written: int = 0, syncs: bool = False, login_seq: int = 0, replayed: int = 0,
                 receipts: bool = False) -> None: ...
    @property
    def cursor(self) -> int: ...

class SessionCore:
    user_id: int
    sender: Sender
    receiver_entry: bytes
    to_user_field: bytes
    gap: GapHandler
    streams: list[Stream]
    def __init__(self, user_id: int, sender: Sender, receiver_entry: bytes, to_user_field: bytes,
                 gap: GapHandler) -> None: ...
