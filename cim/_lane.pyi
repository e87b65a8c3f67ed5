from collections import Counter
from collections.abc import Mapping

from cim.backends import Stored
from cim.backends.base import Inbox
from cim.messages import MessageIds
from cim.server.peer import Peer
from cim.server.quotas import PeerQuota
from cim.server.streams import GapHandler, Owner, Stream

def push_live(streams: list[Stream], bodies: list[bytes], first_seq: int, receiver_entry: bytes, at_once: bool,
              answered: Peer | None, gap: GapHandler) -> bool: ...

def push_each(by_user: Mapping[int, Owner], user_ids: list[int], stored: list[Stored]) -> int: ...

class PrivateLane:
    def __init__(self, by_user: Mapping[int, Owner], by_peer: Mapping[Peer, Owner], inbox: Inbox | None,
                 ids: MessageIds, metrics: Counter[str]) -> None: ...
    def take(self, peer: Peer, quota: PeerQuota | None, receiver: int, texts: list[bytes], client_msg_ids: list[int],
             now: float, size: int) -> bool: ...
    def settle(self, peer: Peer, session: Owner, target: Owner, texts: list[bytes], client_msg_ids: list[int]) -> bool: ...
    def deliver(self, session: Owner, target: Owner, texts: list[bytes], client_msg_ids: list[int]) -> bool: ...
    def deliver_answered(self, peer: Peer, session: Owner, target: Owner, texts: list[bytes],
                         client_msg_ids: list[int]) -> bool: ...
