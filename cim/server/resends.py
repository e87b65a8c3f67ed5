"""Role: answer a run of private messages that holds resends: a clientMsgId the sender
used before (``cim.delivery``'s dedup window).

A resend is not stored or pushed again; its receipt carries the msgId it got the first
time. What is new in the run is pushed, and an owner whose inbox held a resend is rung:
the first push of that message may never have been written (the reason for the resend),
so its live streams catch up from the inbox.
"""

from __future__ import annotations

from collections import Counter

from cim.backends import Stored
from cim.delivery import Sent
from cim.server.peer import Peer
from cim.server.streams import Owner
from cim.status import Status

__all__ = ["answer_duplicates", "answer_resends"]


def answer_duplicates(peer: Peer, client_msg_ids: list[int], sent: Sent, metrics: Counter[str]) -> None:
    """Receipts for a run with resends of messages stored before: not stored again,
    answered with the id they got the first time."""
    metrics["duplicates"] += len(sent.duplicates)
    for k, client_msg_id in enumerate(client_msg_ids):
        peer.send_receipt(client_msg_id, sent.status, sent.status.message, sent.duplicates.get(k, sent.first_id + k))


def answer_resends(peer: Peer, owners: list[Owner], stored: list[Stored], client_msg_ids: list[int], first_id: int,
                   metrics: Counter[str]) -> int:
    """A run appended to each owner's inbox (the receiver; the sender, for the sender's copy)
    that held resends: answered on ``peer``, what is new pushed to each owner; how many
    messages were pushed."""
    answer_duplicates(peer, client_msg_ids, Sent(Status.SUCCESS, first_id, stored[0].duplicates), metrics)
    pushed = 0
    for owner, each in zip(owners, stored, strict=True):
        if each.bodies:
            owner.push(each.bodies, each.first_seq)
            pushed += len(each.bodies)
        if each.duplicates:
            owner.ring()
    return pushed
