"""Role: accept or refuse a login: its token, its account, its device.

The token first: a connection without one for the user it names learns nothing
(not even whether they are connected) and claims nothing. Then the account, then
the device's record in the store under the device policy (``cim.server.devices``:
how many devices, what a further login ends), then the session, whose stream is
told where the device's inbox cursor and the inbox stand (``cim.server.catchup``).
"""

from __future__ import annotations

from collections import Counter

from cim.auth import AuthError, Tokens
from cim.backends import Backends
from cim.protocols.connection import Login, PresenceSubscription
from cim.server.catchup import Catchup
from cim.server.devices import DevicePolicy, device_id_problem
from cim.server.peer import Peer
from cim.server.presence import PresenceWatch
from cim.server.sessions import SessionTable
from cim.status import Status


def _token_refusal(tokens: Tokens | None, login: Login) -> str | None:
    """Why the login's token does not prove the user it names; None when it does, or
    when nothing is checked (``--auth none``)."""
    if tokens is None:
        return None
    try:
        tokens.verify_for(login.request.token, login.user_id)
    except AuthError as err:
        return f"login refused: {err.reason}"
    return None


class Logins:
    """Checks logins for one node and binds the accepted ones."""

    def __init__(self, node_id: str, sessions: SessionTable, backends: Backends, catchup: Catchup,
                 metrics: Counter[str], tokens: Tokens | None, presence: PresenceWatch, devices: DevicePolicy) -> None:
        self.node_id = node_id
        self.devices = devices
        self.presence = presence
        self.sessions = sessions
        self.backends = backends
        self.catchup = catchup
        self.metrics = metrics
        self.tokens = tokens  # None: --auth none, a login names its user unchecked (CIM)

    async def handle(self, peer: Peer, event: Login | PresenceSubscription) -> None:
        if isinstance(event, Login):
            await self.log_in(peer, event)
        else:
            await self.presence.subscribe(peer, event)

    async def log_in(self, peer: Peer, login: Login) -> None:
        """Bind the login's peer to its user's session, or refuse it (and close)."""
        if (denied := _token_refusal(self.tokens, login)) is not None:
            self.metrics["logins_unauthorized"] += 1
            peer.refuse(Status.UNAUTHORIZED, denied)
            return
        device_id = login.request.deviceId
        if (bad := device_id_problem(device_id)) is not None:
            peer.refuse(Status.VALIDATION_FAIL, bad)
            return
        if self.devices.refuses_here(login.user_id, device_id) or self.sessions.device_busy(login.user_id, device_id):
            peer.refuse(Status.REPEAT_LOGIN, "user already connected")
            return
        with self.sessions.logging_in(login.user_id, device_id):
            refusal = await self._check_login(peer, login)
        if refusal is not None:
            peer.refuse(*refusal)
        elif peer not in self.sessions.by_peer:  # it left while we asked the store: its record goes
            await self.devices.left(login.user_id, device_id)

    async def _check_login(self, peer: Peer, login: Login) -> tuple[Status, str] | None:
        """Accept the login (None) or say why not."""
        name = await self.backends.accounts.user_name(login.user_id)
        if name is None:
            return Status.VALIDATION_FAIL, f"userId {login.user_id} is not a registered user"
        if name != login.user_name:
            return Status.ACCOUNT_NOT_MATCH, Status.ACCOUNT_NOT_MATCH.message
        device_id = login.request.deviceId
        if (refused := await self.devices.confirm(login.user_id, device_id)) is not None:
            return Status.REPEAT_LOGIN, refused
        if peer.closed:  # the client left while we asked the store (log_in logs the device out)
            return None
        stream = self.sessions.bind(peer, login.user_id, login.user_name, device_id)
        stream.receipts = login.request.wantsReceipts
        if len(self.sessions.by_user[login.user_id].streams) == 1:  # the user's first device on this node
            self.presence.came(login.user_id)
        self.metrics["logins"] += 1
        await self.catchup.logged_in(peer, stream)
        return None
