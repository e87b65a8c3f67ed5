"""Role: presence on a node: announce its users' comings and goings, push debounced events to watchers.

``came`` / ``went`` are the single points where a user's first device on this node logged in
(``cim.server.logins``) and its last one here is gone (``lost``, from the node's cleanup); they
are announced to every node in one bus broadcast per loop turn (``cim.presence.changes_payload``).
What the bus brings back, from every node and from the route clearing a dead node, feeds the
``Debouncer``, whose events go as PRESENCE frames to this node's connections that watch the user
(SUBSCRIBE_PRESENCE).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from cim.backends import Backends
from cim.frame import encode_frame
from cim.messages import receiver_entry
from cim.presence import MAX_WATCHED, Debouncer, changes_payload, current_states, presence_body
from cim.proto import Delivery
from cim.protocols.connection import PresenceSubscription
from cim.server.peer import Peer
from cim.server.sessions import SessionTable
from cim.server.tasks import BackgroundTasks
from cim.status import CimError, Status

log = logging.getLogger("cim.server")


class PresenceWatch:
    """This node's watchers, its debouncer, and its users' transitions not yet announced."""

    def __init__(self, node_id: str, backends: Backends, debounce: float, metrics: Counter[str],
                 tasks: BackgroundTasks) -> None:
        self.node_id = node_id
        self.backends = backends
        self.metrics = metrics
        self.tasks = tasks
        self.debouncer = Debouncer(debounce)
        self.tick = min(0.5, max(debounce / 5, 0.05))  # seconds between checks for offline events due
        self.watchers: dict[int, set[Peer]] = {}  # watched user -> the connections watching them
        self.watching: dict[Peer, set[int]] = {}  # connection -> the users it watches
        self._came: list[int] = []
        self._went: list[int] = []

    def came(self, user_id: int) -> None:
        """The user's first device on this node logged in."""
        self._announce(self._came, user_id)

    def went(self, user_id: int) -> None:
        """The user's last device on this node is gone."""
        self._announce(self._went, user_id)

    def _announce(self, changes: list[int], user_id: int) -> None:
        if not self._came and not self._went:
            asyncio.get_running_loop().call_soon(self._publish)
        changes.append(user_id)

    def _publish(self) -> None:
        came, went, self._came, self._went = self._came, self._went, [], []
        self.tasks.spawn(self.backends.bus.broadcast(changes_payload(self.node_id, came, went)))

    def on_changes(self, delivery: Delivery) -> None:
        """Raw transitions from the bus (any node's, this one's included): debounced, pushed."""
        now = asyncio.get_running_loop().time()
        events: list[tuple[int, bool]] = []
        for change in delivery.presenceChanges:
            if change > 0:
                events += self.debouncer.came(change, delivery.presenceServer)
            else:
                self.debouncer.went(-change, delivery.presenceServer, now)
        self._push(events)

    async def run(self) -> None:
        """Report the offline events whose debounce window has passed, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            self._push(self.debouncer.due(loop.time()))

    def _push(self, events: list[tuple[int, bool]]) -> None:
        for user_id, online in events:
            peers = self.watchers.get(user_id)
            if not peers:
                continue
            body = presence_body({user_id: online})
            for peer in peers:
                self._answer(peer, body)
            self.metrics["presence_events"] += len(peers)

    async def subscribe(self, peer: Peer, event: PresenceSubscription) -> None:
        """Watch (or stop watching) the users; answered with their current states, or an error."""
        user_ids = list(dict.fromkeys(event.user_ids))
        if event.unsubscribe:
            self._unwatch(peer, user_ids)
            return
        try:
            if len(self.watching.get(peer, set()) | set(user_ids)) > MAX_WATCHED:
                raise CimError(Status.VALIDATION_FAIL, f"a connection watches {MAX_WATCHED} users at most")
            states = await current_states(self.backends, user_ids, self.debouncer.known_online)
        except CimError as err:
            self._answer(peer, presence_body({}, event.request_id, err.status, err.message))
            return
        if peer.closed:
            return
        self.watching.setdefault(peer, set()).update(user_ids)
        for user_id in user_ids:
            self.watchers.setdefault(user_id, set()).add(peer)
        self._answer(peer, presence_body(states, event.request_id))

    @staticmethod
    def _answer(peer: Peer, body: bytes) -> None:
        peer.push(encode_frame(body + receiver_entry(peer.user_id)))

    def lost(self, peer: Peer, sessions: SessionTable) -> None:
        """A connection closed (its session still has it): it watches nobody any more, and
        if it was its user's last device here, the user went."""
        self._unwatch(peer, list(self.watching.pop(peer, ())))
        session = sessions.of(peer)
        if session is not None and len(session.streams) == 1:
            self.went(session.user_id)

    def _unwatch(self, peer: Peer, user_ids: list[int]) -> None:
        watched = self.watching.get(peer, set())
        for user_id in user_ids:
            watched.discard(user_id)
            peers = self.watchers.get(user_id)
            if peers is not None:
                peers.discard(peer)
                if not peers:
                    del self.watchers[user_id]
