"""Role: deliveries to this node's users, from the bus and from this node's own sends.

A Delivery names its receivers (private messages, stored messages being handed
back, a kick) or is a broadcast (CIM's group chat: every local user but the
sender). A receiver who is no longer here gets the messages stored, so nothing is
lost between a route lookup and the write.
"""

from __future__ import annotations

from collections import Counter

from cim.backends import Backends
from cim.proto import Delivery
from cim.server.metrics import Latencies
from cim.server.sessions import SessionTable
from cim.server.tasks import BackgroundTasks


class Deliveries:
    """Pushes messages to local sessions; the Messenger's way around the bus."""

    def __init__(
        self, node_id: str, sessions: SessionTable, backends: Backends, metrics: Counter[str], tasks: BackgroundTasks,
        latencies: Latencies,
    ) -> None:
        self.node_id = node_id
        self.sessions = sessions
        self.backends = backends
        self.metrics = metrics
        self.tasks = tasks
        self.latencies = latencies

    def deliver_local(self, user_id: int, bodies: list[bytes]) -> bool:
        """Push to the user if they are here; False if not (the caller decides what then)."""
        session = self.sessions.by_user.get(user_id)
        if session is None:
            return False
        session.push(bodies)
        self.metrics["messages_out"] += len(bodies)
        return True

    def on_delivery(self, payload: bytes) -> None:
        """A Delivery from the bus (runs on the loop)."""
        delivery = Delivery.FromString(payload)
        by_user = self.sessions.by_user
        if delivery.kick:
            for user_id in delivery.receiverIds:
                session = by_user.get(user_id)
                if session is not None:
                    for peer in list(session.peers):
                        peer.end("logged out", reconnect=False)
            return
        bodies = list(delivery.messages)  # once: the repeated field copies on every access
        if delivery.broadcast:
            if self._broadcast(bodies, delivery.excludeUserId) and bodies:
                self.latencies.delivered(bodies)
            return
        delivered = False
        for user_id in delivery.receiverIds:
            if self.deliver_local(user_id, bodies):
                delivered = True
            elif delivery.storeIfAbsent:
                inbox = self.backends.inbox
                self.tasks.spawn((inbox.restore if delivery.restore else inbox.append)(user_id, bodies))
        # Stored messages handed back are old by design: only fresh ones time the way here.
        if delivered and bodies and not delivery.restore:
            self.latencies.delivered(bodies)

    def _broadcast(self, bodies: list[bytes], exclude: int) -> int:
        """Push to every local user but ``exclude``; returns how many got it."""
        # at_once: one push per connection per turn is the common case, and uvloop
        # writes on transport.write, so waiting for the end of the turn buys nothing.
        pushed = 0
        for user_id, session in list(self.sessions.by_user.items()):
            if user_id != exclude:
                session.push(bodies, at_once=True)
                pushed += 1
        self.metrics["messages_out"] += pushed * len(bodies)
        return pushed
