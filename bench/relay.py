"""The ceiling: a minimal uvloop relay with no application logic.

It speaks just enough of the protocol for the same load generator to drive it: the
login frame names the connection (one protobuf parse per connection), a PING is
answered with CIM's pong, a DELIVERY_ACK is dropped (the relay keeps nothing to
acknowledge), and every other frame is written on unchanged:

* ``p2p``: to the partner connection (user ``id ^ 1``: pairs 2k, 2k+1);
* ``fanout``: to every other connection.

Frames for one destination from one read are joined into one write, using the
compiled frame codec, so the ceiling does the least work a relay can do. cim's
results are reported as a ratio of this.

``python -m bench.relay --port P --mode p2p|fanout``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

import uvloop

from cim.frame import FrameDecoder, encode_frames
from cim.limits import raise_nofile_limit
from cim.proto import DELIVERY_ACK, PING, Request
from cim.protocols.connection import PONG
from cim.wire_fields import TAG_REQUEST_CMD

PING_TAIL = bytes((TAG_REQUEST_CMD, PING))  # cmd = PING is the last field of a serialized ping


class Relay:
    """The relay's state: its mode and the connections by user id."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.by_user: dict[int, RelayProtocol] = {}


class RelayProtocol(asyncio.Protocol):
    """One client connection: forwards its frames, answers its pings."""

    __slots__ = ("relay", "transport", "decoder", "user_id", "ack_head")
    transport: asyncio.Transport

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.decoder = FrameDecoder()
        self.user_id = -1
        self.ack_head = b""  # how this user's acks start: requestId, cmd (ackSeq, field 17, comes last)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport writes (uvloop's does not subclass asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        frames = self.decoder.feed(data)
        if self.user_id < 0 and frames:
            self.user_id = Request.FromString(frames.pop(0)).requestId
            self.relay.by_user[self.user_id] = self
            self.ack_head = Request(requestId=self.user_id, cmd=DELIVERY_ACK).SerializeToString()
        forward = []
        pongs = 0
        for frame in frames:
            if frame.endswith(PING_TAIL):
                pongs += 1
            elif not frame.startswith(self.ack_head):  # a message: its text (field 1) comes first
                forward.append(frame)
        if pongs:
            self.transport.write(PONG * pongs)
        if not forward:
            return
        out = encode_frames(forward)
        if self.relay.mode == "p2p":
            partner = self.relay.by_user.get(self.user_id ^ 1)
            if partner is not None:
                partner.transport.write(out)
        else:
            for other in self.relay.by_user.values():
                if other is not self:
                    other.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay.by_user.get(self.user_id) is self:
            del self.relay.by_user[self.user_id]


async def serve(host: str, port: int, mode: str, workers: int) -> None:
    relay = Relay(mode)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RelayProtocol(relay), host, port, backlog=4096, reuse_port=workers > 1)
    print(f"relay listening on {host}:{port} ({mode})", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["p2p", "fanout"], default="p2p")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (idle runs)")
    args = parser.parse_args()
    if args.workers > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_run, args=(args.host, args.port, args.mode, args.workers)) for _ in range(args.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    else:
        _run(args.host, args.port, args.mode, 1)


def _run(host: str, port: int, mode: str, workers: int) -> None:
    raise_nofile_limit()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(host, port, mode, workers))


if __name__ == "__main__":
    main()
