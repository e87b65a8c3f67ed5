"""One Config object for every role, filled by the CLI (flags, then env vars, then defaults)."""

from __future__ import annotations

import logging
from dataclasses import InitVar, dataclass

from cim.frame import DEFAULT_MAX_FRAME_SIZE
from cim.server_info import ServerInfo

BALANCERS = ("consistent-hash", "loop", "random")
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

    # cim-server
    host: str = "0.0.0.0"
    advertise_host: str | None = None
    port: int = 9000
    http_port: int = 8081
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

    # route
    route_host: str = "0.0.0.0"
    route_port: int = 8083
    balance: str = "consistent-hash"
    login_claim_ttl: float = 30.0
    server_check_timeout: float = 1.0

    log_level: str = "info"

    def __post_init__(self, redis: str | None, zk: str | None) -> None:
        self.store = _shorthand("store", self.store, "redis", redis)
        self.discovery = _shorthand("discovery", self.discovery, "zk", zk)
        if self.balance not in BALANCERS:
            raise ValueError(f"balance must be one of {', '.join(BALANCERS)}, not {self.balance!r}")
        if self.heartbeat_interval <= 0 or self.login_timeout <= 0:
            raise ValueError("heartbeat interval and login timeout must be positive")

    @property
    def server_info(self) -> ServerInfo:
        """What this server registers: never ``gethostbyname(gethostname())``, which
        gives 127.0.1.1 on Debian. A wildcard bind advertises loopback unless told."""
        host = self.advertise_host or (self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
        return ServerInfo(host, self.port, self.http_port)

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
