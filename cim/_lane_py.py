"""Pure-Python twin of ``cim/_lane.pyx``: the node's hot path from a stored message to its pushes.

* ``push_live`` writes live messages, stored in a user's inbox from ``first_seq`` on,
  to each of the user's streams that is up to date, framed once (``Session.push``: every
  private message, every group message to each receiver); a stream behind or catching
  up is offered them (``cim.server.streams.offer``).
* ``push_each`` pushes one append's runs, stored in many users' inboxes (a group message),
  to those of them on this node, each at once (``Deliveries.deliver_each``).
* ``PrivateLane`` stores and pushes private messages to a user on this node. With no
  clientMsgId (CIM's client writes each in a read of its own) there is nothing to answer
  and nothing to deduplicate: ``take`` settles such a read whole, with no event
  (``cim.server.lane``), and ``deliver`` is the dispatcher's way for the same messages
  when they come as an event. With clientMsgIds (the SDK), ``deliver_answered`` also keeps
  the sender's copy, deduplicates and answers (``cim.delivery``). Either way the receiver's
  push is written at once, as a group message's are, unless frames wait ahead of it on that
  connection: a receiver gets one push a turn from a sender, and queueing it for the end of
  the turn cost five Python calls a read for no fewer writes (p2p: CIM's window 1 0.86× →
  0.93× of the ceiling, the SDK's 0.745× → 0.79×, bench/RESULTS.md).

The compiled twin has the same names and behaviour; one test suite runs against both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from cim.backends import Stored
from cim.backends.base import Inbox
from cim.messages import MessageIds
from cim.server.peer import Peer
from cim.server.quotas import PeerQuota
from cim.server.resends import answer_resends
from cim.server.streams import GapHandler, Owner, Stream, offer
from cim.status import Status
from cim.wire import frame_sequenced, push_bodies

__all__ = ["PrivateLane", "push_each", "push_live"]


def push_live(streams: list[Stream], bodies: list[bytes], first_seq: int, receiver_entry: bytes, at_once: bool,
              answered: Peer | None, gap: GapHandler) -> bool:
    """Live messages, stored in one user's inbox from ``first_seq`` on: framed once (each
    push ends with ``receiver_entry``), written to each stream that is up to date (see
    ``Peer.push``), offered to the rest (a gap goes to ``gap``). ``answered``: the connection
    that sent them (they are the sender's copy); up to date, it is written nothing and True is
    returned: its receipts are to stand for the push. Else it is offered the push like any stream."""
    frame = None
    taken = False
    for stream in streams:
        if not stream.catching_up and stream.sent + 1 == first_seq:  # the common case, inline
            if stream.peer is answered:
                taken = True
            else:
                if frame is None:
                    frame = frame_sequenced(bodies, first_seq, receiver_entry)
                peer = stream.peer
                if at_once and (write := peer.write_now) is not None:
                    write(frame)  # what push would do, with no call of its own (Peer.write_now)
                else:
                    peer.push(frame, at_once)
            stream.sent = first_seq + len(bodies) - 1
        else:
            offer(stream, bodies, first_seq, receiver_entry, at_once, gap)
    return taken


def push_each(by_user: Mapping[int, Owner], user_ids: list[int], stored: list[Stored]) -> int:
    """What one append stored for each of ``user_ids`` (``stored``, in that order) pushed
    at once to those of them with a session in ``by_user``; a run with duplicates rings its
    user's streams as well (the first push of those may never have been written: the
    sender's node died). Returns how many messages were pushed.

    At once: one push per connection per turn is the common case, and uvloop writes on
    ``transport.write``, so waiting for the end of the turn would buy nothing."""
    if len(stored) != len(user_ids):
        raise ValueError(f"{len(user_ids)} receivers, {len(stored)} appends")
    count = 0
    for user_id, each in zip(user_ids, stored, strict=True):
        session = by_user.get(user_id)
        if session is None:
            continue
        if bodies := each.bodies:
            push_live(session.streams, bodies, each.first_seq, session.receiver_entry, True, None, session.gap)
            count += len(bodies)
        if each.duplicates:
            session.ring()
    return count


def push_runs(by_user: Mapping[int, Owner], user_ids: list[int], bodies: list[bytes], first_seqs: list[int]) -> int:
    """One run of messages stored in the inbox of each of ``user_ids``, the k-th user's from
    ``first_seqs[k]`` on (a doorbell from the bus, ``cim.server.intake``), pushed at once to
    those of them with a session in ``by_user``. Returns how many users were pushed to."""
    if len(first_seqs) != len(user_ids):
        raise ValueError(f"{len(user_ids)} receivers, {len(first_seqs)} seqs")
    here = 0
    for user_id, first_seq in zip(user_ids, first_seqs, strict=True):
        session = by_user.get(user_id)
        if session is not None:
            push_live(session.streams, bodies, first_seq, session.receiver_entry, True, None, session.gap)
            here += 1
    return here


class PrivateLane:
    """Private messages to a user here: stored, pushed and (when asked) answered in one step."""

    def __init__(self, by_user: Mapping[int, Owner], by_peer: Mapping[Peer, Owner], inbox: Inbox | None,
                 ids: MessageIds, metrics: Counter[str]) -> None:
        self._by_user = by_user
        self._by_peer = by_peer
        self._inbox = inbox  # in this process (``in_process``), or None: every read goes the general way
        self._take_ids = ids.take
        self._metrics = metrics

    def take(self, peer: Peer, quota: PeerQuota | None, receiver: int, texts: list[bytes], client_msg_ids: list[int],
             now: float, size: int) -> bool:
        """A read of ``size`` bytes (at loop time ``now``) that was nothing but ``texts`` to
        ``receiver``, all with ``client_msg_ids`` or none (every id 0), settled if it can be;
        False, with nothing taken, sends it the general way. (An inbox failing after the quota
        took the read, a disk error, has it charged twice.)"""
        target = self._by_user.get(receiver)
        session = self._by_peer.get(peer)
        if target is None or session is None or self._inbox is None:
            return False
        if quota is not None and not quota.fits(len(texts), now, size):
            return False
        return self.settle(peer, session, target, texts, client_msg_ids)

    def settle(self, peer: Peer, session: Owner, target: Owner, texts: list[bytes], client_msg_ids: list[int]) -> bool:
        """Messages from ``session``, read on ``peer``, to ``target`` (both here), all with
        clientMsgIds or none: ``deliver_answered`` or ``deliver``. The lane's ``take`` and the
        dispatcher's way for the same messages as an event decide alike here."""
        if client_msg_ids[0]:
            return self.deliver_answered(peer, session, target, texts, client_msg_ids)
        return self.deliver(session, target, texts, client_msg_ids)

    def deliver(self, session: Owner, target: Owner, texts: list[bytes], client_msg_ids: list[int]) -> bool:
        """Messages from ``session`` to ``target`` (both here) with no clientMsgId (every one 0):
        stored in the receiver's inbox and pushed to its connections; False, with nothing
        stored, when the inbox failed (the general way tries again, and answers)."""
        inbox = self._inbox
        if inbox is None:
            return False
        count = len(texts)
        first_id, now_ms = self._take_ids(count)
        bodies = push_bodies(session.sender.prefix + target.to_user_field, texts, first_id, now_ms, client_msg_ids)
        try:
            first_seq = inbox.append_plain_now(target.user_id, session.user_id, bodies, first_id)
        except Exception:  # a disk error
            return False
        metrics = self._metrics
        metrics["messages_in"] += count
        metrics["messages_out"] += count
        push_live(target.streams, bodies, first_seq, target.receiver_entry, True, None, target.gap)
        return True

    def deliver_answered(self, peer: Peer, session: Owner, target: Owner, texts: list[bytes],
                         client_msg_ids: list[int]) -> bool:
        """Messages with clientMsgIds (every one set) from ``session``, read on ``peer``, to
        ``target`` (both here): stored in the receiver's inbox and, as the sender's copy, in the
        sender's; pushed to both users' connections; answered on ``peer``, where the receipts
        stand for the copy's push when ``peer`` is up to date (they carry its seqs). A run with
        resends goes to ``answer_resends``. False, with nothing stored, when the inbox failed."""
        inbox = self._inbox
        if inbox is None:
            return False
        count = len(texts)
        first_id, now_ms = self._take_ids(count)
        bodies = push_bodies(session.sender.prefix + target.to_user_field, texts, first_id, now_ms, client_msg_ids)
        owners = [target, session] if target is not session else [target]  # + the sender's copy
        try:
            if len(owners) == 1:
                stored = [inbox.append_now(target.user_id, session.user_id, bodies, first_id, client_msg_ids)]
            else:
                stored = inbox.append_each_now([target.user_id, session.user_id], session.user_id, bodies, first_id,
                                               client_msg_ids)
        except Exception:  # a disk error
            return False
        metrics = self._metrics
        metrics["messages_in"] += count
        if stored[0].duplicates or stored[-1].duplicates:
            metrics["messages_out"] += answer_resends(peer, owners, stored, client_msg_ids, first_id, metrics)
            return True
        push_live(target.streams, stored[0].bodies, stored[0].first_seq, target.receiver_entry, True, None, target.gap)
        own_seq = 0
        if len(owners) > 1:
            copy = stored[1]
            if push_live(session.streams, copy.bodies, copy.first_seq, session.receiver_entry, False, peer, session.gap):
                own_seq = copy.first_seq
        peer.send_receipts(client_msg_ids, first_id, Status.SUCCESS, own_seq, now_ms)
        metrics["messages_out"] += count * len(owners)
        return True
