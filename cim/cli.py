"""Command lines: ``cim up|server|route|client``, and ``cim-server``, ``cim-route``, ``cim-client``.

Every option falls back to an environment variable ``CIM_<OPTION>`` (for example
``--redis`` -> ``CIM_REDIS``, ``--heartbeat-interval`` -> ``CIM_HEARTBEAT_INTERVAL``),
then to the default in ``cim.config.Config``. An option with an alias (``--store`` and
its shorthand ``--redis``) takes either flag and either variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cim.auth.tokens import MISSING_SECRET
from cim.config import AUTH_MODES, BALANCERS, EMBEDDED, MIN_SECRET_BYTES, Config

_DEFAULTS = Config()
UP_WS_PORT = 8090  # cim up's WebSocket port when none is given (or the next free one)


def _option(
    parser: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any], help: str, dest: str | None = None,
    aliases: Sequence[str] = (), secret: bool = False, **kw: Any,
) -> None:
    """``secret``: --help says whether a default is set, never what it is."""
    flags = [flag, *aliases]
    dest = dest or flag.lstrip("-").replace("-", "_")
    envs = ["CIM_" + f.lstrip("-").replace("-", "_").upper() for f in flags]
    default = getattr(_DEFAULTS, dest, None)
    env = next((e for e in envs if e in os.environ), None)
    if env is not None:
        default = kind(os.environ[env])
    shown = ("set" if default is not None else "none") if secret else default
    parser.add_argument(
        *flags, dest=dest, type=kind, default=default, help=f"{help} [env {' or '.join(envs)}; default {shown}]", **kw
    )


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"on or off, not {value!r}")
    return value == "on"


def _backend_options(p: argparse.ArgumentParser) -> None:
    _option(p, "--store", str, "where accounts, logins, offline messages and the bus live: memory:// (this "
            "process), redis://HOST:PORT/DB, rediss://..., unix://PATH", aliases=["--redis"], metavar="URL")
    _option(p, "--discovery", str, "where cim-servers are listed: memory:// (this process), "
            "zookeeper://HOST:PORT[,HOST:PORT...] or just the ZooKeeper hosts", aliases=["--zk"], metavar="URL")
    _option(p, "--zk-root", str, "ZooKeeper path cim-servers register under")
    _option(p, "--zk-session-timeout", float, "ZooKeeper session timeout, seconds")
    _option(p, "--key-prefix", str, "prefix of every Redis key and channel")
    _option(p, "--data-dir", str, "embedded store only: keep accounts and inboxes in DIR (SQLite) so they survive "
            "a restart (default: in memory, lost on restart)", metavar="DIR")
    _option(p, "--inbox-max-messages", int, "messages kept per user's inbox; older ones are dropped")
    _option(p, "--inbox-max-age", float, "seconds a message is kept in an inbox")
    _option(p, "--dedup-window", int, "(sender, clientMsgId) pairs remembered per receiver: a resend among them "
            "gets its first receipt and is not delivered again")
    _option(p, "--inbox-check-interval", float, "seconds between a node's checks of its users' inboxes for "
            "messages whose doorbell was lost (a shared store only)")
    _option(p, "--group-max-members", int, "members of a named group, its owner included")
    _option(p, "--presence-debounce-seconds", float, "a user away less than this long is not reported offline "
            "to presence watchers (a reconnect is no event)", metavar="S")
    _option(p, "--max-delay-seconds", int, "the longest delay of a delayed message (delaySeconds); longer ones get 3000")
    _option(p, "--delivered-receipts", _on_off, "on: senders who ask get DELIVERED when a receiver's device acks "
            "(costs a read and a parse of every acked message); READ receipts need no switch", metavar="on|off")
    _option(p, "--max-devices", int, "devices one user may have logged in at once (deviceId at login; CIM's client "
            "is device \"\"); one more is refused with 5000")
    _option(p, "--device-policy", str, "a login of a user who is logged in already: multi (another device, up to "
            "--max-devices), replace (ends the others: OFFLINE 9000 'logged in on another device'), refuse (5000, "
            "CIM's rule)", metavar="multi|replace|refuse")
    _option(p, "--log-level", str, "log level")


def _server_options(p: argparse.ArgumentParser, port_flag: str = "--port", http_flag: str = "--http-port") -> None:
    _option(p, "--host", str, "address the client port binds")
    _option(p, port_flag, int, "client TCP port", dest="port")
    _option(p, http_flag, int, "health/metrics HTTP port", dest="http_port")
    _option(p, "--ws-port", int, "WebSocket port (path /ws; one binary message is one protobuf frame); 0: none; "
            f"cim up without it: {UP_WS_PORT} or the next free port")
    _option(p, "--advertise-host", str,
            "host registered for clients to connect to (default: the bind host, or 127.0.0.1 for a wildcard)")
    _option(p, "--heartbeat-interval", float, "seconds; a connection silent for 3 intervals is closed")
    _option(p, "--login-timeout", float, "seconds a new connection has to send its login frame")
    _option(p, "--max-frame-size", int, "largest frame accepted, bytes")
    _option(p, "--max-message-bytes", int, "largest chat message, bytes")
    _option(p, "--max-connections", int, "client connections per process (0: as many as the open-files limit allows)")
    _option(p, "--backlog", int, "listen backlog (the kernel caps it at net.core.somaxconn)")
    _option(p, "--write-buffer-high", int, "bytes buffered for a client before it counts as a slow consumer")
    _option(p, "--slow-consumer-timeout", float, "seconds a slow consumer may stay over the high mark before it is cut off")
    _option(p, "--receipt-interval", float, "seconds between writes of receipts to a client sending faster than that "
            "(each receipt at most this late); 0: every read's receipts at once")
    _option(p, "--max-messages-per-second", int, "chat messages per connection and second, bursts of twice that; "
            "the rest get a 4029 receipt (0: off)")
    _option(p, "--max-bytes-per-second", int, "bytes read per connection and second, bursts of twice that; over it "
            "reading pauses (0: off)")
    _option(p, "--max-connections-per-ip", int, "connections from one IP address (0: off)")
    _option(p, "--abuse-limit", int, "limit hits within 10 s that close the connection (0: off)")


def _route_options(p: argparse.ArgumentParser, host_flag: str = "--route-host", port_flag: str = "--route-port") -> None:
    _option(p, host_flag, str, "address the route binds", dest="route_host")
    _option(p, port_flag, int, "route HTTP port", dest="route_port")
    _option(p, "--balance", str, "server choice", choices=BALANCERS)
    _option(p, "--login-claim-ttl", float, "seconds a route login holds the user before the client connects")
    _option(p, "--max-route-requests-per-second", int, "route requests per IP address and second, bursts of twice "
            "that; the rest get HTTP 429 (0: off)")


def _login_limit_option(p: argparse.ArgumentParser) -> None:
    # One flag for both roles (and for both at once under ``cim up``).
    _option(p, "--max-logins-per-minute", int, "logins per IP address and minute, TCP logins on a cim-server and "
            "/login on a route, each counted where it arrives (0: off)")


def _auth_options(p: argparse.ArgumentParser, route: bool) -> None:
    _option(p, "--auth", str, "token: passwords, and tokens for logins and calls acting for a user; none: "
            "CIM's behaviour, anyone may log in or act as anyone (trusted networks only)", choices=AUTH_MODES)
    _option(p, "--secret", str, "signs and checks tokens: the same on every route and cim-server, at least "
            f"{MIN_SECRET_BYTES} bytes (cim up makes one per run if none is given)", secret=True)
    if route:
        _option(p, "--token-ttl", float, "seconds a token from /login is valid")
        _option(p, "--admin-key", str, "the operator's bearer key: /offLine of any user, GET /servers "
                f"(at least {MIN_SECRET_BYTES} bytes; none: no operator calls)", secret=True)


def _first_free_port(host: str, port: int) -> int:
    """``port``, or the next one above it that ``host`` can bind now."""
    for candidate in range(port, min(port + 100, 65536)):
        with socket.socket() as probe:
            try:
                probe.bind((host, candidate))
            except OSError:
                continue
            return candidate
    raise ValueError(f"no free WebSocket port in {port}-{port + 99}: give --ws-port")


def _config(args: argparse.Namespace) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in vars(args).items() if k in fields})


def _announce(config: Config, secret_made: bool = False) -> None:
    info = config.server_info
    route_host = "127.0.0.1" if config.route_host in ("0.0.0.0", "::") else config.route_host
    print(
        f"cim is up: route http://{route_host}:{config.route_port}  "
        f"cim-server {info.host}:{info.tcp_port}  health http://{info.host}:{info.http_port}/health"
        f"{f'  websocket {info.ws_url}' if info.ws_url else ''}\n"
        f"connect a client:  cim-client --route http://{route_host}:{config.route_port} --register NAME"
        f"{f'  or open http://{route_host}:{config.route_port}/app/' if info.ws_url else ''}",
        flush=True,
    )
    if config.store == EMBEDDED:
        print(
            f"accounts and messages are kept in {config.data_dir} (SQLite): they survive a restart"
            if config.data_dir
            else "accounts and messages are kept in memory: a restart loses them (give --data-dir DIR to keep them)",
            flush=True,
        )
    if secret_made:
        print(
            "tokens are signed with a random secret made for this run: they stop working when it ends; "
            "give --secret (or CIM_SECRET) to keep them, or to mint tokens in your own backend",
            flush=True,
        )


def _client_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--route", default=os.environ.get("CIM_ROUTE", "http://127.0.0.1:8083"), help="route URL [env CIM_ROUTE]")
    p.add_argument("--user-id", type=int, default=None, help="log in as this user id")
    p.add_argument("--user-name", default=None, help="the account's user name")
    p.add_argument("--register", metavar="NAME", default=None,
                   help="create the account NAME with the password (or look it up: a taken name needs its password), "
                        "then log in as it")
    p.add_argument("--password-file", metavar="FILE", type=Path, default=None,
                   help="read the password from the first line of FILE; else $CIM_PASSWORD, else asked for on a "
                        "terminal (a route under --auth none needs none)")
    p.add_argument("--device-id", metavar="ID", default="",
                   help="name this device (the user may be logged in on several: :devices lists them); "
                        "none: CIM's client, one login per user")
    p.add_argument("--heartbeat-interval", type=float, default=float(os.environ.get("CIM_HEARTBEAT_INTERVAL", 30)))
    p.add_argument("--reconnect-attempts", type=int, default=int(os.environ.get("CIM_RECONNECT_ATTEMPTS", 10)))


def _run_client(args: argparse.Namespace) -> int:
    import uvloop

    from cim.client import Client, ClientError, register
    from cim.client.console import read_password, run_console

    user_name = args.register or args.user_name
    if user_name is None or (args.register is None and args.user_id is None):
        print("give --register NAME, or --user-id ID --user-name NAME", file=sys.stderr)
        return 2
    try:
        password = read_password(user_name, args.password_file)
    except OSError as err:
        print(f"cannot read the password file: {err}", file=sys.stderr)
        return 2

    async def main() -> int:
        user_id = args.user_id
        try:
            if args.register:
                user_id = await register(args.route, args.register, password)
                print(f"* registered {user_name} as user {user_id}", flush=True)
        except (ClientError, OSError) as err:
            print(f"* registration failed: {err}", flush=True)
            return 1
        client = Client(
            args.route, user_id, user_name, password=password, device_id=args.device_id,
            heartbeat_interval=args.heartbeat_interval, reconnect_attempts=args.reconnect_attempts,
        )
        return await run_console(client)

    return uvloop.run(main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cim", description="cim: instant messaging (CIM in Python)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="route + one cim-server in one process (embedded backends by default)")
    _server_options(up)
    if "CIM_WS_PORT" not in os.environ:
        up.set_defaults(ws_port=None)  # --help says 0; cim up picks UP_WS_PORT or the next free one
    _route_options(up)
    _login_limit_option(up)
    _auth_options(up, route=True)
    _backend_options(up)
    server = sub.add_parser("server", help="a cim-server node")
    _server_options(server)
    _option(server, "--workers", int, "worker processes sharing the client port (needs --redis and --zk)")
    _login_limit_option(server)
    _auth_options(server, route=False)
    _backend_options(server)
    route = sub.add_parser("route", help="the route service")
    _route_options(route, "--host", "--port")
    _login_limit_option(route)
    _auth_options(route, route=True)
    _backend_options(route)
    client = sub.add_parser("client", help="the console client")
    _client_parser(client)
    return parser


def cim_main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "client":
        sys.exit(_run_client(args))
    try:
        if args.command == "up" and args.ws_port is None:  # cim up opens a WebSocket port unless told
            args.ws_port = _first_free_port(args.host, UP_WS_PORT)
        config = _config(args)
    except ValueError as err:
        sys.exit(f"cim {args.command}: {err}")
    secret_made = args.command == "up" and config.auth == "token" and config.secret is None
    if secret_made:
        # One process holds the route and the server: a secret of its own is shared by both.
        config.secret = secrets.token_urlsafe(32)
    elif config.auth == "token" and config.secret is None:
        # Separate processes: a secret made here would match no other route or server.
        sys.exit(f"cim {args.command}: {MISSING_SECRET}")
    if config.workers > 1:
        from cim.supervisors import Multiprocess

        try:
            supervisor = Multiprocess(config)
        except ValueError as err:
            sys.exit(f"cim-server: {err}")
        supervisor.run()
        return
    from cim.run import run

    roles = {"up": {"server", "route"}, "server": {"server"}, "route": {"route"}}[args.command]
    run(config, roles, functools.partial(_announce, secret_made=secret_made) if args.command == "up" else None)


def server_main() -> None:
    cim_main(["server", *sys.argv[1:]])


def route_main() -> None:
    cim_main(["route", *sys.argv[1:]])


def client_main() -> None:
    cim_main(["client", *sys.argv[1:]])
