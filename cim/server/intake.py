"""Role: deliveries to this node's users, from the bus and from this node's own sends.

Every message is in its receivers' inboxes before a Delivery rings for it
(``cim.delivery``). A Delivery names its receivers with the seq each one's inbox
gave the first message (pushes), or without pushes (read the inboxes: a catch-up),
or replays stored messages (``/fetchOfflineMsgs``), or kicks, or carries receipts
(MESSAGE_STATUS, ``cim.receipts``) for senders here. A receiver who is not here any
more loses nothing: the messages stay in the inbox for their next sync.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from cim.backends import Stored
from cim.frame import encode_frame
from cim.proto import Delivery
from cim.server.devices import on_kick
from cim.server.lane import push_each, push_runs
from cim.server.metrics import Latencies
from cim.server.sessions import Session, SessionTable
from cim.wire import frame_sequenced


class Deliveries:
    """Pushes stored messages to local sessions; the Messenger's way around the bus."""

    def __init__(
        self, node_id: str, sessions: SessionTable, metrics: Counter[str], latencies: Latencies,
    ) -> None:
        self.node_id = node_id
        self.sessions = sessions
        self.metrics = metrics
        self.latencies = latencies
        # Presence broadcasts (cim.server.presence), set by the node.
        self.presence_changes: Callable[[Delivery], None] | None = None

    def local_user_ids(self) -> list[int]:
        return list(self.sessions.by_user)

    def is_here(self, user_id: int) -> bool:
        return user_id in self.sessions.by_user

    def deliver_local(self, user_id: int, stored: Stored) -> bool:
        """Push what was stored to the user if they are here; False if not."""
        session = self.sessions.by_user.get(user_id)
        if session is None:
            return False
        if stored.bodies:
            session.push(stored.bodies, stored.first_seq)
            self.metrics["messages_out"] += len(stored.bodies)
        if stored.duplicates:
            session.ring()  # their first push may never have been written (the sender's node died)
        return True

    def push_statuses(self, user_id: int, bodies: list[bytes]) -> bool:
        """MESSAGE_STATUS bodies to the user's connections that logged in asking for them;
        False if the user is not here."""
        session = self.sessions.by_user.get(user_id)
        if session is None:
            return False
        frames = b"".join(encode_frame(body + session.receiver_entry) for body in bodies)
        for stream in session.streams:
            if stream.receipts:
                stream.peer.push(frames)
        return True

    def deliver_each(self, user_ids: list[int], stored: list[Stored]) -> None:
        """What one append stored for each of ``user_ids``, pushed to those here (``push_each``)."""
        count = push_each(self.sessions.by_user, user_ids, stored)
        self.metrics["messages_out"] += count
        if count:
            self.latencies.delivered(next(each.bodies for each in stored if each.bodies))

    def on_delivery(self, payload: bytes) -> None:
        """A Delivery from the bus (runs on the loop)."""
        delivery = Delivery.FromString(payload)
        by_user = self.sessions.by_user
        if delivery.kick:
            on_kick(self.sessions, delivery)
            return
        if delivery.presenceServer:
            if self.presence_changes is not None:
                self.presence_changes(delivery)
            return
        if delivery.statuses:
            for user_id, status in zip(delivery.receiverIds, delivery.statuses, strict=True):
                self.push_statuses(user_id, [status])
            return
        bodies = list(delivery.messages)  # once: the repeated field copies on every access
        if delivery.replay:
            for user_id in delivery.receiverIds:
                if (session := by_user.get(user_id)) is not None:
                    replay(session, bodies, delivery.firstSeqs[0])
            return
        if not bodies:  # ring only: the messages are in the inboxes
            for user_id in delivery.receiverIds:
                if (session := by_user.get(user_id)) is not None:
                    session.ring()
            return
        pushed = push_runs(by_user, list(delivery.receiverIds), bodies, list(delivery.firstSeqs))
        self.metrics["messages_out"] += pushed * len(bodies)
        if pushed:
            self.latencies.delivered(bodies)


def replay(session: Session, bodies: list[bytes], first_seq: int) -> None:
    """``/fetchOfflineMsgs``: stored messages for the session's streams that never sync,
    those before their login they have not had (later ones came live)."""
    for stream in session.streams:
        low = max(stream.replayed + 1, first_seq)
        high = min(stream.login_seq, first_seq + len(bodies) - 1)
        if stream.syncs or low > high:
            continue
        stream.peer.push(frame_sequenced(bodies[low - first_seq : high - first_seq + 1], low, session.receiver_entry))
        stream.replayed = high
