"""One Config object for every role, filled by the CLI (flags, then env vars, then defaults)."""

from __future__ import annotations

import logging
from dataclasses import InitVar, dataclass

from cim.frame import DEFAULT_MAX_FRAME_SIZE
from cim.server_info import ServerInfo

BALANCERS = ("consistent-hash", "loop", "random")
AUTH_MODES = ("token", "none")
DEVICE_POLICIES = ("multi", "replace", "refuse")
MIN_SECRET_BYTES = 32
EMBEDDED = "memory://"


@dataclass
class Config:
    """Every role's settings; ``redis=`` and ``zk=`` are shorthands for ``store=`` and ``discovery=``."""

    # Backends by URL (schemes in cim.backends.registry); memory:// lives in this process.
    store: str = EMBEDDED  # accounts, presence, inbox, bus
    discovery: str = EMBEDDED  # the live cim-server list
    redis: InitVar[str | None] = None  # a Redis URL: the store
    zk: InitVar[str | None] = None  # ZooKeeper hosts: discovery
    zk_root: str = "/cim"
    zk_session_timeout: float = 10.0
    key_prefix: str = "cim"
    data_dir: str | None = None  # embedded (memory://): keep accounts and inboxes on disk here

    # inboxes (cim.backends: every message for a user, numbered by seq)
    inbox_max_messages: int = 10_000  # kept per user; older ones are dropped
    inbox_max_age: float = 30 * 86400.0  # seconds a message is kept
    dedup_window: int = 10_000  # (sender, clientMsgId) pairs remembered per receiver
    inbox_check_interval: float = 5.0  # seconds between a node's checks of its users' inboxes (lost doorbells)
    group_max_members: int = 2000  # members of a named group, its owner included (cim.groups)
    max_delay_seconds: int = 7 * 86400  # the longest delay of a delayed message (cim.delivery)
    presence_debounce_seconds: float = 5.0  # a user away less than this is not reported offline (cim.presence)
    # DELIVERED receipts read and parse every acked message once (cim.receipts): off unless asked for.
    delivered_receipts: bool = False
    # several devices per user (cim.server.devices): how many, and what a further login does
    max_devices: int = 5
    device_policy: str = "multi"  # one of DEVICE_POLICIES

    # cim-server
    host: str = "0.0.0.0"
    advertise_host: str | None = None
    port: int = 9000
    http_port: int = 8081
    ws_port: int = 0  # the WebSocket port (cim.protocols.ws), 0: none
    workers: int = 1
    heartbeat_interval: float = 30.0
    login_timeout: float = 10.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_message_bytes: int = 4096
    shutdown_timeout: float = 5.0
    backlog: int = 4096
    max_connections: int = 0  # 0: as many as the open-files limit allows
    write_buffer_high: int = 256 * 1024
    slow_consumer_timeout: float = 10.0
    # A connection's receipts are written at most this often (seconds; 0: each read's at once): a
    # sender faster than that gets them together, each at most this late (cim.protocols.tcp).
    receipt_interval: float = 0.01

    # abuse limits (cim.server.quotas, route.limits); 0 turns each off
    max_messages_per_second: int = 200  # per connection, bursts of twice that
    max_bytes_per_second: int = 1024 * 1024  # per connection, bursts of twice that; over it reading pauses
    max_logins_per_minute: int = 600  # per IP: TCP logins on a cim-server, /login on a route
    max_connections_per_ip: int = 10_000  # per cim-server process
    max_route_requests_per_second: int = 1000  # per IP and route, bursts of twice that
    abuse_limit: int = 100  # limit hits within 10 s that close a connection

    # route
    route_host: str = "0.0.0.0"
    route_port: int = 8083
    balance: str = "consistent-hash"
    login_claim_ttl: float = 30.0
    server_check_timeout: float = 1.0

    # auth (cim.auth): who may log in and act for a user
    auth: str = "token"  # "none": CIM's behaviour, anyone can act as anyone
    secret: str | None = None  # signs tokens: the same on every route and cim-server
    token_ttl: float = 86400.0  # seconds a route's token is valid
    admin_key: str | None = None  # the operator's bearer key (None: no operator calls)

    log_level: str = "info"

    def __post_init__(self, redis: str | None, zk: str | None) -> None:
        self.store = _shorthand("store", self.store, "redis", redis)
        self.discovery = _shorthand("discovery", self.discovery, "zk", zk)
        if self.balance not in BALANCERS:
            raise ValueError(f"balance must be one of {', '.join(BALANCERS)}, not {self.balance!r}")
        if self.heartbeat_interval <= 0 or self.login_timeout <= 0:
            raise ValueError("heartbeat interval and login timeout must be positive")
        limits = ("max_messages_per_second", "max_bytes_per_second", "max_logins_per_minute",
                  "max_connections_per_ip", "max_route_requests_per_second", "abuse_limit")
        for name in limits:
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be 0 (off) or more, not {getattr(self, name)}")
        if self.device_policy not in DEVICE_POLICIES:
            raise ValueError(f"device policy must be one of {', '.join(DEVICE_POLICIES)}, not {self.device_policy!r}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        for name in ("inbox_max_messages", "inbox_max_age", "dedup_window", "inbox_check_interval", "group_max_members",
                     "max_delay_seconds", "max_devices"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if self.receipt_interval < 0:
            raise ValueError(f"receipt-interval must be 0 or more, not {self.receipt_interval}")
        if self.token_ttl <= 0:
            raise ValueError("token ttl must be positive")
        if self.presence_debounce_seconds < 0:
            raise ValueError(f"presence-debounce-seconds must be 0 or more, not {self.presence_debounce_seconds}")
        # RFC 7518 section 3.2: an HS256 key shorter than the hash is guessable offline
        # from any token it signed; the admin key is a password that never expires.
        for name, key in (("secret", self.secret), ("admin key", self.admin_key)):
            if key is not None and len(key.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"{name} must be at least {MIN_SECRET_BYTES} bytes; make one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )

    @property
    def server_info(self) -> ServerInfo:
        """What this server registers: never ``gethostbyname(gethostname())``, which
        gives 127.0.1.1 on Debian. A wildcard bind advertises loopback unless told."""
        host = self.advertise_host or (self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
        return ServerInfo(host, self.port, self.http_port, self.ws_port)

    def configure_logging(self) -> None:
        logging.basicConfig(
            level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
        )


def _shorthand(name: str, url: str, short_name: str, short: str | None) -> str:
    """``url``, or the shorthand's value if one was given, which must not contradict it."""
    if short is None:
        return url
    if url not in (EMBEDDED, short):
        raise ValueError(f"{short_name}={short!r} contradicts {name}={url!r}: give one")
    return short
