"""The SDK's byte transports: TCP, or WebSocket messages carrying the same frames.

The delivery core (``cim.client.delivery``) reads and writes length-prefixed frames. Over
TCP those are the stream's bytes as they are; over WebSocket (``transport="ws"``) each
frame's payload is one binary message, so ``WsTransport`` turns messages into frames and
frames into messages, and nothing above it knows which transport carries them. The
WebSocket side is websockets' sans-I/O ``ClientProtocol`` over asyncio streams, so a write
stays a plain synchronous call, as it is over TCP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from cim.client.route import ServerAddress
from cim.frame import FrameDecoder, encode_frame

TRANSPORTS = ("tcp", "ws")
READ_SIZE = 65536
# What the SDK writes is whole frames only: one decoder splits every client's output.
_OUTPUT = FrameDecoder(2**32 - 1)
_PROTOCOL_LOG = logging.getLogger("cim.client.websockets")
_PROTOCOL_LOG.setLevel(logging.WARNING)  # websockets logs each connection at INFO


class Transport(Protocol):
    """A connection to a cim-server as the SDK uses it: frames in and out, as bytes."""

    async def read(self) -> bytes:
        """Received bytes (whole frames or parts of them); b"" once the connection has ended."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    async def drain(self) -> None: ...

    async def wait_closed(self) -> None: ...


class TcpTransport:
    """The TCP stream: its bytes are the frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        return await self.reader.read(READ_SIZE)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()

    async def drain(self) -> None:
        await self.writer.drain()

    async def wait_closed(self) -> None:
        await self.writer.wait_closed()


class WsTransport(TcpTransport):
    """A WebSocket connection: each binary message is one frame's payload."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol) -> None:
        super().__init__(reader, writer)
        self.protocol = protocol
        self._fragments: list[bytes] = []  # a fragmented message so far (the server sends none, a proxy might)

    @classmethod
    async def open(cls, url: str) -> WsTransport:
        """Connect and complete the handshake; ConnectionError when the server refuses it."""
        uri = parse_uri(url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port, ssl=True if uri.secure else None)
        protocol = ClientProtocol(uri, max_size=None, logger=_PROTOCOL_LOG)  # the server's frames are its limit's
        transport = cls(reader, writer, protocol)
        protocol.send_request(protocol.connect())
        transport._send_protocol_data()
        while protocol.state is State.CONNECTING:
            data = await reader.read(READ_SIZE)
            if not data:
                protocol.receive_eof()
            else:
                protocol.receive_data(data)
            if protocol.handshake_exc is not None or not data:
                writer.close()
                raise ConnectionError(f"WebSocket handshake with {url} failed: {protocol.handshake_exc or 'closed'}")
        return transport

    async def read(self) -> bytes:
        protocol = self.protocol
        while True:
            framed = self._frames()  # first what came with the handshake's answer, if anything
            if framed:
                return framed
            data = await self.reader.read(READ_SIZE)
            if not data:
                protocol.receive_eof()
                return b""
            protocol.receive_data(data)
            self._send_protocol_data()  # pongs, the reply to a close frame

    def _frames(self) -> bytes:
        payloads = []
        for event in self.protocol.events_received():
            if not isinstance(event, Frame) or event.opcode not in (Opcode.BINARY, Opcode.CONT):
                continue  # the handshake's answer, control frames (websockets answers them), text (not cim's)
            self._fragments.append(bytes(event.data))
            if event.fin:
                payloads.append(b"".join(self._fragments))
                self._fragments = []
        return b"".join([encode_frame(payload) for payload in payloads])

    def write(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            return  # closing: the SDK resends what was unanswered after its reconnect
        for payload in _OUTPUT.feed(data):
            protocol.send_binary(payload)
        self._send_protocol_data()

    def _send_protocol_data(self) -> None:
        if self.writer.is_closing():
            return
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)
            else:  # websockets' end of stream
                self.writer.close()

    def is_closing(self) -> bool:
        return self.writer.is_closing() or self.protocol.state is not State.OPEN

    def close(self) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._send_protocol_data()
        self.writer.close()


def transport_kind(kind: str) -> str:
    """``kind`` if it names a transport; ValueError otherwise."""
    if kind not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {kind!r}")
    return kind


async def open_transport(kind: str, server: ServerAddress) -> Transport:
    """A connection to ``server`` over TCP or WebSocket (``kind`` one of TRANSPORTS)."""
    if kind == "tcp":
        return TcpTransport(*await asyncio.open_connection(server.host, server.port))
    if server.ws_url is None:
        raise ConnectionError(f"cim-server {server.host}:{server.port} has no WebSocket port (its --ws-port)")
    return await WsTransport.open(server.ws_url)
