"""The route's business logic, independent of HTTP: what each endpoint does."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass

from cim.auth import AuthError, Passwords, Tokens
from cim.backends import Backends, DeviceLogin
from cim.config import Config
from cim.delivery import Messenger
from cim.destinations import EVERYONE, Destination, ToUser, later
from cim.groups import GroupRules
from cim.history import History, HistoryPage, HistoryQuery
from cim.messages import MessageIds, Sender
from cim.presence import changes_payload, current_states
from cim.receipts import Receipts
from cim.server_info import ServerInfo
from cim.status import CimError, Status
from route.balance import make_balancer

log = logging.getLogger("cim.route")

BEARER = "bearer "
SERVER_GONE_GRACE = 2.0  # seconds between a server leaving the registry and its users being logged out
# What an ended device is told (OFFLINE 9000: for good, so it does not reconnect and take its place back).
ENDED_DEVICE = "ended from another device"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a route call: a user (their token) or the operator (the admin key)."""

    user_id: int = 0
    operator: bool = False


@dataclass(frozen=True, slots=True)
class LoginGrant:
    """A route login: the server the user connects to, and their token (None under ``--auth none``)."""

    server: ServerInfo
    token: str | None


class RouteService:
    """What each route endpoint does, on the backends (accounts, presence, discovery)."""

    def __init__(self, config: Config, backends: Backends) -> None:
        self.config = config
        self.backends = backends
        self.accounts = backends.accounts
        self.presence = backends.presence
        self.tokens = Tokens.from_config(config)  # None: --auth none, nothing is checked
        self.passwords = Passwords()
        self.balancer = make_balancer(config.balance)
        self.servers: list[ServerInfo] = []
        self.messenger: Messenger | None = None
        self.receipts = Receipts(backends)  # no sessions here: every receipt goes through the bus
        self._groups: GroupRules | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        ids = MessageIds(await self.presence.allocate_node_number())
        self.messenger = Messenger(self.backends, ids, max_delay_seconds=self.config.max_delay_seconds)
        self._groups = GroupRules(self.backends, self.messenger)
        await self.backends.discovery.watch(self._on_servers)

    async def stop(self) -> None:
        # A cleanup still in its grace is dropped: another route (or the server's successor,
        # which clears its predecessor's logins at start) does it.
        for task in list(self._cleanups):
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    def _on_servers(self, servers: list[ServerInfo]) -> None:
        gone = set(self.servers) - set(servers)
        self.servers = list(servers)
        log.info("cim-servers: %s", ", ".join(s.id for s in servers) or "none")
        for server in gone:
            # A server that left without logging its users out (SIGKILL, lost
            # ZooKeeper session) must not lock them out: clear what it held.
            task = asyncio.create_task(self._clear(server))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    async def _clear(self, server: ServerInfo) -> None:
        # A moment first: a worker restarted by its supervisor comes back under the same id,
        # clears its predecessor's logins itself, and may already hold users who
        # reconnected to it; clearing those would log them out while connected.
        await asyncio.sleep(SERVER_GONE_GRACE)
        if server in self.servers:
            return  # back already (a new ZooKeeper session, a restarted worker): its users are its own
        users = await self.presence.clear_server(server.id)
        if users:
            log.warning("cim-server %s is gone: logged out %d users", server.id, len(users))
            await self.backends.bus.broadcast(changes_payload(server.id, [], users))  # their watchers: offline

    @property
    def groups(self) -> GroupRules:
        """The named-group endpoints' operations (``cim.groups``), once started."""
        assert self._groups is not None
        return self._groups

    # -- who is calling ----------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header proves, or 4001. Token auth only:
        under ``--auth none`` (``tokens`` None) nobody is asked."""
        assert self.tokens is not None
        if authorization is None or not authorization.lower().startswith(BEARER):
            raise CimError(Status.UNAUTHORIZED, "missing header Authorization: Bearer <token from /login>")
        credential = authorization[len(BEARER) :].strip()
        admin_key = self.config.admin_key
        # compare_digest: how long a wrong key took to refuse says nothing about the right one.
        if admin_key is not None and hmac.compare_digest(credential.encode(), admin_key.encode()):
            return Caller(operator=True)
        try:
            return Caller(user_id=self.tokens.verify(credential))
        except AuthError as err:
            raise CimError(Status.UNAUTHORIZED, err.reason) from None

    @staticmethod
    def authorize(caller: Caller, user_id: int | None, operator_allowed: bool) -> None:
        """Refuse (4003) a call acting for ``user_id`` (None: for nobody, an operator
        call) that ``caller`` may not make."""
        if caller.operator:
            if not operator_allowed:
                raise CimError(Status.FORBIDDEN, "the admin key cannot act for a user here: use the user's token")
        elif user_id is None:
            raise CimError(Status.FORBIDDEN, "an operator call: needs the admin key")
        elif caller.user_id != user_id:
            raise CimError(Status.FORBIDDEN, f"the token of user {caller.user_id} cannot act for user {user_id}")

    def _require_password(self, password: str | None) -> str:
        if password is None:
            raise CimError(Status.VALIDATION_FAIL, "password: required (this route runs with --auth token)")
        return password

    async def _password_matches(self, user_id: int, password: str) -> bool:
        stored = await self.accounts.password_hash(user_id)
        if stored is None:  # no such account, or one made under --auth none: no password opens it
            return False
        if not await self.passwords.verify(stored, password):
            return False
        if self.passwords.needs_rehash(stored):
            await self.accounts.set_password_hash(user_id, await self.passwords.hash(password))
        return True

    # -- endpoints ---------------------------------------------------------------

    async def register(self, user_name: str, password: str | None) -> int:
        """The new account's id, or a taken name's with its password (else 3000); under
        ``--auth none`` CIM's behaviour: no password, a taken name answers its id."""
        if self.tokens is None:
            user_id, _ = await self.accounts.register(user_name, None)
            return user_id
        password = self._require_password(password)
        # A taken name is checked against its password without hashing a new one first:
        # hashing is the costly part, and a stranger should not get it for free.
        taken = await self.accounts.user_id(user_name)
        if taken is None:
            user_id, created = await self.accounts.register(user_name, await self.passwords.hash(password))
            if created:
                return user_id
        else:
            user_id = taken
        if not await self._password_matches(user_id, password):
            raise CimError(Status.VALIDATION_FAIL, "userName is taken")
        return user_id

    async def login(self, user_id: int, user_name: str, password: str | None, device_id: str = "",
                    authorization: str | None = None) -> LoginGrant:
        """A server for the user's device and a token. Under token auth the caller proves who they
        are with the password, or with the user's own token as the bearer: a client
        reconnecting costs no password hash (tens of ms of CPU: a node's users all reconnecting
        at once would stall the route). That token is handed back, not renewed: it still expires,
        and then only the password logs in."""
        # CIM's order: the account first (9100), then the one-login rule (5000). Only a caller
        # with the password (or the user's token) gets that far, so nobody else can claim (lock out) a user.
        token = self._login_token(user_id, authorization)
        await self._check_account(user_id, user_name, password, proven=token is not None)
        # Only --device-policy refuse keeps CIM's one login per user here; the server the
        # client connects to applies the device limit and the other policies (cim.server.devices).
        # A login without a deviceId (CIM's client) keeps it too, as CIM answers it.
        if (self.config.device_policy == "refuse" or not device_id) and await self.presence.servers(user_id):
            raise CimError(Status.REPEAT_LOGIN)
        server = await self._pick_reachable(user_id)
        await self.presence.reserve_login(user_id, server.id, self.config.login_claim_ttl, device_id)
        return LoginGrant(server, None if self.tokens is None else token or self.tokens.mint(user_id))

    def _login_token(self, user_id: int, authorization: str | None) -> str | None:
        """The bearer token a login proves the user with (4001 / 4003 for one that does not; a
        password beside it is not looked at, so a login with a bearer never costs a hash:
        ``route.limits`` counts none of them); None for a password login, or under ``--auth none``."""
        if self.tokens is None or authorization is None:
            return None
        caller = self.authenticate(authorization)
        if caller.user_id != user_id:  # the operator's key, too: it acts for users, it does not log in as one
            raise CimError(Status.FORBIDDEN, f"a login for user {user_id} needs their password or their own token")
        return authorization[len(BEARER) :].strip()

    async def renew_token(self, user_id: int, user_name: str, password: str | None) -> str:
        """A new token for a user who proves who they are, with no claim: a client that is
        connected (a login would be 5000) gets one when its token expires."""
        if self.tokens is None:
            raise CimError(Status.VALIDATION_FAIL, "no tokens under --auth none")
        await self._check_account(user_id, user_name, password)
        return self.tokens.mint(user_id)

    async def _check_account(self, user_id: int, user_name: str, password: str | None, proven: bool = False) -> None:
        """9100 unless the id, name and (under token auth, unless ``proven`` otherwise) password belong together."""
        checked = None if self.tokens is None or proven else self._require_password(password)
        if await self.accounts.user_name(user_id) != user_name:
            raise CimError(Status.ACCOUNT_NOT_MATCH)
        if checked is not None and not await self._password_matches(user_id, checked):
            raise CimError(Status.ACCOUNT_NOT_MATCH)

    async def _pick_reachable(self, user_id: int) -> ServerInfo:
        candidates = list(self.servers)
        while candidates:
            server = self.balancer.pick(user_id, candidates)
            if await self._accepts(server):
                return server
            log.warning("cim-server %s does not accept connections; picking another", server.id)
            candidates.remove(server)
        raise CimError(Status.SERVER_NOT_AVAILABLE)

    async def _accepts(self, server: ServerInfo) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(server.host, server.tcp_port), self.config.server_check_timeout
            )
        except (TimeoutError, OSError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _sender(self, user_id: int) -> Sender:
        assert self.messenger is not None
        return Sender.of(user_id, await self.messenger.require_user(user_id, "userId"))

    async def send_private(self, user_id: int, receiver_id: int, text: str, delay_seconds: int = 0) -> Status:
        """``delay_seconds`` (not 0): scheduled, sent then (9000 now, or 3000 out of range)."""
        return await self._send(user_id, later(ToUser(receiver_id), delay_seconds), text)

    async def send_group(self, user_id: int, text: str, delay_seconds: int = 0) -> None:
        await self._send(user_id, later(EVERYONE, delay_seconds), text)

    async def _send(self, user_id: int, destination: Destination, text: str) -> Status:
        assert self.messenger is not None
        sent = await self.messenger.send(await self._sender(user_id), destination, [text.encode()], [0])
        return sent.status

    async def online_users(self) -> list[tuple[int, str]]:
        user_ids = await self.presence.online_user_ids()
        names = await self.accounts.user_names(user_ids)
        return sorted((u, n or "") for u, n in zip(user_ids, names, strict=True))

    async def log_out_and_kick(self, user_id: int) -> None:
        """Log the user out and close their connection, wherever it is."""
        assert self.messenger is not None
        for server in set((await self.presence.logout(user_id)).values()):
            await self.messenger.kick(user_id, server)

    async def devices(self, user_id: int) -> dict[str, DeviceLogin]:
        """``/devices``: the user's logged-in devices (confirmed by a server; a claim is no device yet), by id."""
        assert self.messenger is not None
        await self.messenger.require_user(user_id, "userId")
        return dict(sorted((await self.presence.devices(user_id)).items()))

    async def end_device(self, user_id: int, device_id: str) -> None:
        """``/devices/end``: log one device out and end its connection, on whatever node holds it (the
        kick Delivery names the device, so the user's other devices stay); 3000 for a device not logged in."""
        assert self.messenger is not None
        if device_id not in await self.devices(user_id):
            raise CimError(Status.VALIDATION_FAIL, f"deviceId: user {user_id} has no device {device_id!r} logged in "
                                                   "(/devices lists them)")
        for server in set((await self.presence.logout(user_id, device_id=device_id)).values()):
            await self.messenger.kick(user_id, server, [device_id], ENDED_DEVICE)

    async def mark_read(self, user_id: int, seq: int) -> None:
        """``/read``: the user has read their inbox up to ``seq``; its senders who asked get READ."""
        await self.receipts.read({user_id: seq})

    async def presence_states(self, user_id: int, user_ids: list[int]) -> dict[int, bool]:
        """``/presence``: each user's state now (``cim.presence``); 3000 for unknown users or too many."""
        assert self.messenger is not None
        await self.messenger.require_user(user_id, "userId")
        return await current_states(self.backends, list(dict.fromkeys(user_ids)))

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """``/history``: a page of the user's own inbox (``cim.history``); 3000 for an unknown user."""
        assert self.messenger is not None
        await self.messenger.require_user(query.user_id, "userId")
        return await History(self.backends).page(query)

    async def fetch_offline(self, user_id: int) -> int:
        assert self.messenger is not None
        return await self.messenger.deliver_offline(user_id)
