"""Hot path: the server's in-process cost per private message, without the kernel.

A real node and route on the embedded backends, its connections fed whole reads of
messages through transports that only count what is written: what is left is the
interpreter's and the extensions' share of a message (parse, inbox append, dedup,
seq framing, pushes, receipts, acks), which the socket benchmarks blur with wake-ups.
Pairs as in ``p2p``: each loop turn every sender's connection reads ``--run``
messages for its partner; in ``sdk`` mode each has a clientMsgId, so the sender's
copy is stored and pushed to the sender too (``cim.delivery``), and every connection
acks once per ``ACK_EVERY`` messages. The figure is per message sent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import uvloop

from bench.loadgen import ACK_EVERY, PROTOCOLS
from bench.report import machine, print_table, write_json
from cim.backends.memory import MemoryHub
from cim.config import Config
from cim.protocols.client import ClientConnection
from cim.protocols.tcp import TcpPeer
from cim.run import start
from cim.testing.services import free_port

CLIENT_MSG_ID_BASE = 1 << 36  # six-byte varints, as the SDK's microsecond ids are


class CountingTransport:
    """What a TcpPeer needs of a transport: writes are counted, nothing is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", self.port) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.writes += 1

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=100, help="sender/receiver pairs")
    parser.add_argument("--run", type=int, default=8, help="messages per read")
    parser.add_argument("--turns", type=int, default=1000, help="loop turns measured per repeat")
    parser.add_argument("--payload", type=int, default=64, help="message text bytes")
    parser.add_argument("--repeat", type=int, default=5, help="runs per protocol; the median is reported")


async def _measure(protocol: str, args: argparse.Namespace) -> list[float]:
    """Microseconds of CPU per message, one figure per repeat."""
    config = Config(host="127.0.0.1", port=free_port(), http_port=free_port(), route_host="127.0.0.1",
                    route_port=free_port(), auth="none",
                    log_level="error", max_messages_per_second=0, max_bytes_per_second=0)
    running = await start(config, {"server", "route"}, MemoryHub())
    node = running.node
    assert node is not None
    try:
        peers: list[TcpPeer] = []
        clients: list[ClientConnection] = []
        for index in range(2 * args.pairs):
            user_id, _ = await running.backends.store.accounts.register(f"hot{index}", None)
            peer = TcpPeer(node)
            peer.connection_made(CountingTransport(10_000 + index))  # type: ignore[arg-type]  # writes are all it needs
            client = ClientConnection(user_id, f"hot{index}")
            peer.data_received(client.login() + (client.sync(0) if protocol == "sdk" else b""))
            peers.append(peer)
            clients.append(client)
        while len(node.sessions) < 2 * args.pairs:  # logins go through the (in-process) store
            await asyncio.sleep(0.01)
        text = "x" * args.payload
        figures = []
        for repeat in range(args.repeat):
            first_turn = repeat * args.turns

            def read(pair: int, turn: int) -> bytes:
                sender, receiver = clients[2 * pair], clients[2 * pair + 1]
                base = CLIENT_MSG_ID_BASE + pair * (1 << 24) + turn * args.run if protocol == "sdk" else 0
                return b"".join(sender.message(text, receiver.user_id, client_msg_id=base + k if base else 0)
                                for k in range(args.run))

            reads = [[read(p, first_turn + t) for p in range(args.pairs)] for t in range(args.turns)]
            acks_every = max(1, ACK_EVERY // args.run)
            gc.collect()
            delivered = node.metrics["messages_out"]
            started = time.process_time()
            for turn, row in enumerate(reads):
                for pair, data in enumerate(row):
                    peers[2 * pair].data_received(data)
                if protocol == "sdk" and turn % acks_every == acks_every - 1:
                    seq = (first_turn + turn + 1) * args.run
                    for index in range(2 * args.pairs):  # receivers, and senders for their copies
                        peers[index].data_received(clients[index].ack(seq))
                await asyncio.sleep(0)  # the end of the turn: its flushes
            elapsed = time.process_time() - started
            count = args.turns * args.pairs * args.run
            pushes = 2 * count if protocol == "sdk" else count  # with the senders' copies
            if node.metrics["messages_out"] - delivered != pushes or node.metrics["protocol_errors"]:
                raise RuntimeError(f"{protocol}: {node.metrics['messages_out'] - delivered} of {pushes} messages pushed")
            figures.append(elapsed / count * 1e6)
        return figures
    finally:
        await running.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, float] = {}
    for protocol in PROTOCOLS:
        figures[protocol] = statistics.median(uvloop.run(_measure(protocol, args)))
    print_table(f"hotpath: {args.pairs} pairs, {args.run} messages per read, {args.turns} turns (median of {args.repeat})",
                ["protocol", "CPU us per message"], [[p, f"{figures[p]:.3f}"] for p in PROTOCOLS])
    params = {k: getattr(args, k) for k in ("pairs", "run", "turns", "payload", "repeat")}
    return {"scenario": "hotpath", "params": params, "machine": machine(), "us_per_message": figures}


def main(args: argparse.Namespace) -> None:
    write_json(args.json, run(args))
