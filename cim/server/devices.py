"""Role: several devices per user: the device policy at login, and ending devices anywhere.

A login names its device (``deviceId``; CIM's client sends none: device ""). The store
records user -> {device: server} (``Presence``) and refuses, atomically, a device past
``--max-devices``. What a further login of a logged-in user does is ``--device-policy``:

* ``multi``: another device, up to the limit; a second login of the SAME device ends
  that device's older connection (a reconnect that overtook its own timeout).
* ``replace``: the new login ends every other connection of the user.
* ``refuse``: CIM's rule, 5000 while the user is logged in.

An ended connection gets OFFLINE with 9000 and a reason ("logged in on another device"):
9000 is "for good", so a client does not reconnect and take the device back, which would
end the new one in turn, a loop. A device on another node is ended through the bus (a
kick Delivery naming the devices).
"""

from __future__ import annotations

import logging

from cim.backends import Backends
from cim.config import Config
from cim.delivery import kick
from cim.proto import Delivery
from cim.server.sessions import SessionTable

log = logging.getLogger("cim.server")

REPLACED = "logged in on another device"
MAX_DEVICE_ID = 64  # characters, as the route's /login allows


def device_id_problem(device_id: str) -> str | None:
    """Why a login frame's deviceId cannot be one ("" is CIM's client: allowed), or None."""
    if len(device_id) > MAX_DEVICE_ID or any(ord(c) < 0x20 or ord(c) == 0x7F for c in device_id):
        return f"deviceId: at most {MAX_DEVICE_ID} characters, no control characters"
    return None
UNLIMITED = 2**31


class DevicePolicy:
    """Confirms a device's login against the policy and ends what it replaces."""

    def __init__(self, config: Config, node_id: str, sessions: SessionTable, backends: Backends) -> None:
        self.policy = config.device_policy
        self.max_devices = config.max_devices
        self.node_id = node_id
        self.sessions = sessions
        self.backends = backends

    def refuses_here(self, user_id: int, device_id: str) -> bool:
        """``refuse``: the user is connected here already (or logging in); device "" (CIM's client)
        keeps CIM's rule under every policy: a second login of it is refused, the first goes on."""
        if self.policy == "refuse":
            return self.sessions.busy(user_id)
        session = self.sessions.by_user.get(user_id)
        return not device_id and session is not None and bool(session.streams_of(""))

    async def confirm(self, user_id: int, device_id: str) -> str | None:
        """Record the device's login here and end what it replaces; None, or why it is refused."""
        presence = self.backends.presence
        if self.policy == "refuse" or not device_id:
            logged_in = await presence.devices(user_id)
            if logged_in and (self.policy == "refuse" or device_id in logged_in):
                return "user is logged in on another device or server"
        # Other devices allowed: replace ends them all, so it sets no limit.
        limit = {"multi": self.max_devices, "refuse": 1}.get(self.policy, UNLIMITED)
        before = await presence.confirm_login(user_id, self.node_id, device_id, limit)
        if before is None:
            return (f"user has {self.max_devices} devices logged in (--max-devices {self.max_devices}): "
                    "log one of them out first")
        ended = before if self.policy == "replace" else {d: s for d, s in before.items() if d == device_id}
        await self.end(user_id, ended, REPLACED)
        return None

    async def end(self, user_id: int, devices: dict[str, str], reason: str) -> None:
        """End the connections of ``devices`` (device -> server): here directly, elsewhere by the bus."""
        by_server: dict[str, list[str]] = {}
        for device_id, server in devices.items():
            by_server.setdefault(server, []).append(device_id)
        for server, device_ids in by_server.items():
            if server == self.node_id:
                end_here(self.sessions, user_id, device_ids, reason)
            else:
                await self.backends.bus.publish(server, kick(user_id, device_ids, reason).SerializeToString())

    async def left(self, user_id: int, device_id: str) -> None:
        """A connection closed: the device is logged out here unless another connection of it is,
        or is logging in (a reconnect that overtook the close: its record, written by its confirm,
        must not go; the logout is sent before any store call of a login that starts after it)."""
        session = self.sessions.by_user.get(user_id)
        if (session is None or not session.streams_of(device_id)) and not self.sessions.device_busy(user_id, device_id):
            await self.backends.presence.logout(user_id, self.node_id, device_id)


def end_here(sessions: SessionTable, user_id: int, device_ids: list[str], reason: str) -> None:
    """End this node's connections of the user's ``device_ids`` (none: all)."""
    session = sessions.by_user.get(user_id)
    if session is None:
        return
    for stream in list(session.streams):
        if not device_ids or stream.device_id in device_ids:
            stream.peer.end(reason, reconnect=False)


def on_kick(sessions: SessionTable, delivery: Delivery) -> None:
    """A kick Delivery from the bus: ``messages`` are [reason, device...], or empty: every device
    (the route's /offLine)."""
    named = [body.decode() for body in delivery.messages]
    reason, device_ids = (named[0], named[1:]) if named else ("logged out", [])
    for user_id in delivery.receiverIds:
        end_here(sessions, user_id, device_ids, reason)
