"""Presence: who is online, told to those who watch, debounced (sans-I/O).

A user is online while at least one device is connected, on any node. Each node announces
its users' *raw* transitions on the bus broadcast (``changes_payload``): a user's first
device on this node came (+id), its last device here went (-id); the route announces the
users of a node that died (SIGKILL, lost ZooKeeper session) when it clears them. Every node
feeds what it hears to a ``Debouncer``, which turns raw transitions into the events its
watchers get: online at once, offline only when the user stayed away ``debounce`` seconds
(a reconnect within the window is no event at all, whichever node it lands on).

Watching is explicit: a connection sends SUBSCRIBE_PRESENCE with the ids it cares about
(the SDK and the console send their contacts and group members); only such connections
ever get a PRESENCE frame, so CIM's client, which never subscribes, never sees one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cim.backends import Backends
from cim.proto import PRESENCE, Delivery, Response
from cim.status import CimError, Status

MAX_WATCHED = 1000  # user ids one connection may watch (and name in one SUBSCRIBE_PRESENCE)


def changes_payload(server_id: str, came: list[int], went: list[int]) -> bytes:
    """A bus broadcast of raw transitions on ``server_id``: users who came, users who went."""
    return Delivery(presenceServer=server_id, presenceChanges=[*came, *(-user_id for user_id in went)]).SerializeToString()


async def current_states(backends: Backends, user_ids: list[int],
                         known_online: Callable[[int], bool] = lambda user_id: False) -> dict[int, bool]:
    """Each user's state now (a debounced offline not yet reported counts as online, ``known_online``);
    3000 for an empty or too long list, or an id that is no registered user."""
    if not user_ids or len(user_ids) > MAX_WATCHED:
        raise CimError(Status.VALIDATION_FAIL, f"userIds: 1 to {MAX_WATCHED} user ids, not {len(user_ids)}")
    unknown = [user_id for user_id, name in zip(user_ids, await backends.accounts.user_names(user_ids), strict=True)
               if name is None]
    if unknown:
        raise CimError(Status.VALIDATION_FAIL, f"userIds: not registered users: {unknown[:10]}")
    return {user_id: known_online(user_id) or bool(await backends.presence.devices(user_id)) for user_id in user_ids}


def presence_body(states: dict[int, bool], request_id: int = 0, status: Status = Status.SUCCESS, why: str = "") -> bytes:
    """A PRESENCE frame's body without ``receiveUserId`` (the connection's entry is appended): an event
    (``request_id`` 0), or the answer to the SUBSCRIBE_PRESENCE with that clientMsgId."""
    return Response(cmd=PRESENCE, clientMsgId=request_id, code=status.code, resMsg=why or status.message,
                    presenceUserIds=list(states), presenceOnline=list(states.values())).SerializeToString()


@dataclass
class Debouncer:
    """Raw transitions and times in, the events watchers get out ((user, online) pairs)."""

    debounce: float  # seconds a user must stay away before they are reported offline
    servers: dict[int, set[str]] = field(default_factory=dict)  # user -> the nodes they are connected to
    shown: set[int] = field(default_factory=set)  # users reported online (or first heard of leaving)
    offline_due: dict[int, float] = field(default_factory=dict)  # user -> when to report them offline

    def came(self, user_id: int, server_id: str) -> list[tuple[int, bool]]:
        """A device of the user connected to ``server_id``: online now, unless they were
        reported online and only briefly away (the pending offline is dropped: no event)."""
        self.servers.setdefault(user_id, set()).add(server_id)
        was_shown = self.offline_due.pop(user_id, None) is not None or user_id in self.shown
        self.shown.add(user_id)
        return [] if was_shown else [(user_id, True)]

    def went(self, user_id: int, server_id: str, now: float) -> None:
        """The user's last device on ``server_id`` went. A user this node never heard come (it
        started later) was online as far as anyone watching was told: reported offline too."""
        servers = self.servers.get(user_id)
        if servers is not None:
            servers.discard(server_id)
            if servers:
                return  # still connected elsewhere
            del self.servers[user_id]
        self.shown.add(user_id)
        self.offline_due.setdefault(user_id, now + self.debounce)

    def due(self, now: float) -> list[tuple[int, bool]]:
        """The offline events whose window has passed."""
        events = [(user_id, False) for user_id, at in self.offline_due.items() if at <= now]
        for user_id, _ in events:
            del self.offline_due[user_id]
            self.shown.discard(user_id)
        return events

    def known_online(self, user_id: int) -> bool:
        """Watchers were told the user is online (a pending offline still is); False: ask the store,
        this node may have started after they came."""
        return user_id in self.shown
