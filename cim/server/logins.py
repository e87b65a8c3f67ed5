"""Role: accept or refuse a login: its token, its account, one login per user.

The token first: a connection without one for the user it names learns nothing
(not even whether they are connected) and claims nothing. Then the account, then
the claim in the store (one login per user across nodes), then the session, whose
stream is told where the inbox stands (``cim.server.catchup``).
"""

from __future__ import annotations

from collections import Counter

from cim.auth import AuthError, Tokens
from cim.backends import Backends
from cim.protocols.connection import Login
from cim.server.catchup import Catchup
from cim.server.peer import Peer
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
                 metrics: Counter[str], tokens: Tokens | None) -> None:
        self.node_id = node_id
        self.sessions = sessions
        self.backends = backends
        self.catchup = catchup
        self.metrics = metrics
        self.tokens = tokens  # None: --auth none, a login names its user unchecked (CIM)

    async def log_in(self, peer: Peer, login: Login) -> None:
        """Bind the login's peer to its user's session, or refuse it (and close)."""
        if (denied := _token_refusal(self.tokens, login)) is not None:
            self.metrics["logins_unauthorized"] += 1
            peer.refuse(Status.UNAUTHORIZED, denied)
            return
        if self.sessions.busy(login.user_id):
            peer.refuse(Status.REPEAT_LOGIN, "user already connected")
            return
        with self.sessions.logging_in(login.user_id):
            refusal = await self._check_login(peer, login)
        if refusal is not None:
            peer.refuse(*refusal)

    async def _check_login(self, peer: Peer, login: Login) -> tuple[Status, str] | None:
        """Accept the login (None) or say why not."""
        name = await self.backends.accounts.user_name(login.user_id)
        if name is None:
            return Status.VALIDATION_FAIL, f"userId {login.user_id} is not a registered user"
        if name != login.user_name:
            return Status.ACCOUNT_NOT_MATCH, Status.ACCOUNT_NOT_MATCH.message
        presence = self.backends.presence
        if not await presence.confirm_login(login.user_id, self.node_id):
            return Status.REPEAT_LOGIN, "user is logged in on another server"
        if peer.closed:  # the client left while we asked the store
            await presence.logout(login.user_id, self.node_id)
            return None
        stream = self.sessions.bind(peer, login.user_id, login.user_name, login.request.deviceId)
        stream.receipts = login.request.wantsReceipts
        self.metrics["logins"] += 1
        await self.catchup.logged_in(peer, stream)
        return None
