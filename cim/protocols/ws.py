"""The WebSocket transport: ``TcpPeer`` with WebSocket messages instead of length-prefixed frames.

One binary message is one protobuf ``Request`` (client to server) or ``Response`` (server
to client), with no varint prefix. The WebSocket protocol itself (the HTTP handshake,
framing, masking, ping/pong, the closing handshake) is websockets' sans-I/O
``ServerProtocol``; what the messages mean is ``ServerConnection``'s, exactly as over TCP:
the same state machine, login, limits, acks and sync, reached through the same node. This
class only translates between the two: messages in, framed output split into messages out.

Closing: an OFFLINE or refusal ends with a close frame (1000 logged out for good, 1001 may
reconnect, 1013 server full, 1008 anything refused), then the server waits up to
``CLOSE_TIMEOUT`` for the client's close frame before it drops the socket. A refusal before
the handshake (a full server, too many connections from the address, no upgrade request
within the login timeout) is an HTTP 503 or 429 answer with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from cim.frame import FrameDecoder
from cim.protocols.connection import Event, ProtocolViolation, State
from cim.protocols.tcp import TcpPeer
from cim.server.peer import PeerHost
from cim.server_info import WS_PATH
from cim.status import Status

CLOSE_TIMEOUT = 5.0  # seconds a client has to answer the server's close frame (or to send its upgrade request once refused)
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_LATER = 1000, 1001, 1008, 1013
MAX_CLOSE_REASON = 123  # bytes: a control frame's payload is at most 125, two of them the code

# ServerConnection's output is whole frames only, so one decoder (with no limit of its
# own: the frames are ours) splits every peer's output and is always left empty.
_OUTPUT = FrameDecoder(2**32 - 1)
# websockets logs every opened and closed connection at INFO: 100k lines for 100k clients.
_PROTOCOL_LOG = logging.getLogger("cim.server.websockets")
_PROTOCOL_LOG.setLevel(logging.WARNING)


def ws_messages(framed: bytes) -> bytes:
    """Length-prefixed frames as unmasked WebSocket binary messages, in one buffer."""
    return b"".join([Frame(Opcode.BINARY, payload).serialize(mask=False) for payload in _OUTPUT.feed(framed)])


def _close_reason(reason: str) -> str:
    return reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


class WsPeer(TcpPeer):
    """One client's WebSocket connection: a ``Peer`` like ``TcpPeer``, its bytes carried in messages."""

    __slots__ = ("ws", "_fragments", "_fragmented_text", "_close_code", "_close_reason", "_http_status",
                 "_close_written", "_close_timer")

    def __init__(self, host: PeerHost) -> None:
        super().__init__(host)
        # No permessage-deflate: its zlib state costs hundreds of KB per connection.
        self.ws = ServerProtocol(max_size=host.settings.max_frame_size, logger=_PROTOCOL_LOG)
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._fragmented_text = False
        self._close_code = CLOSE_POLICY  # what the close frame says once the connection ends
        self._close_reason = ""
        self._http_status = HTTPStatus.SERVICE_UNAVAILABLE  # a refusal before the handshake
        self._close_written = False  # nothing may follow a close frame on the wire
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        host = self.host
        self.last_seen = now = host.loop.time()  # a WebSocket ping is traffic too
        host.metrics["bytes_in"] += len(data)
        ws = self.ws
        ws.receive_data(data)
        events = self._messages(ws.events_received())
        if ws.close_sent is not None and ws.close_rcvd is None and ws.parser_exc is not None:
            # websockets failed the connection (an oversized message, a protocol error): the
            # messages before it are served, the client gets an error frame before the close.
            events += self.conn.reject_input(f"bad WebSocket message: {ws.close_sent.reason}", fatal=True)
        if events:
            if isinstance(events[-1], ProtocolViolation):  # this read closed the connection: say why
                self._close_code, self._close_reason = CLOSE_POLICY, events[-1].reason
            if self.events is not None:
                self.events.feed(events, now, len(data))
        # The library's own answers (handshake, pong, close) go out with the turn's writes.
        if not self._queued:
            self._queue_flush()

    def _messages(self, received: list[HttpRequest | HttpResponse | Frame]) -> list[Event]:
        """The events of the complete messages received, in order; a text message is refused alone."""
        conn = self.conn
        events: list[Event] = []
        payloads: list[bytes] = []
        for item in received:
            if isinstance(item, HttpRequest):
                self._handshake(item)
                continue
            if isinstance(item, HttpResponse):
                continue  # a client's event, never a server's: for the type checker
            opcode = item.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
                if not item.fin:
                    self._fragments, self._fragmented_text = [bytes(item.data)], opcode is Opcode.TEXT
                    continue
                text, payload = opcode is Opcode.TEXT, bytes(item.data)
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(item.data))
                if not item.fin:
                    continue
                text, payload = self._fragmented_text, b"".join(self._fragments)
                self._fragments = None
            else:
                continue  # ping (websockets queued the pong), pong, close (websockets answers it)
            if text:
                events += conn.receive_messages(payloads)
                payloads = []
                events += conn.reject_input("text message: send each Request as a binary message", fatal=False)
            else:
                payloads.append(payload)
        if payloads:
            events += conn.receive_messages(payloads)
        return events

    def _handshake(self, request: HttpRequest) -> None:
        ws = self.ws
        path = request.path.partition("?")[0]
        if self.conn.state is State.CLOSED:  # refused before its request came
            response = ws.reject(self._http_status, f"{self._close_reason}\n")
        elif path != WS_PATH:
            response = ws.reject(HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {path}: it is {WS_PATH}\n")
        else:
            response = ws.accept(request)  # a request that is no valid upgrade: 400 or 426, from websockets
        ws.send_response(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        super().connection_lost(exc)

    # -- Peer ------------------------------------------------------------------------

    def refuse(self, status: Status, reason: str) -> None:
        if status is Status.RATE_LIMITED:
            self._http_status = HTTPStatus.TOO_MANY_REQUESTS
        self._closing(CLOSE_TRY_LATER if status is Status.FAIL else CLOSE_POLICY, reason)
        super().refuse(status, reason)

    def end(self, reason: str, reconnect: bool) -> None:
        self._closing(CLOSE_GOING_AWAY if reconnect else CLOSE_NORMAL, reason)
        super().end(reason, reconnect)

    def _closing(self, code: int, reason: str) -> None:
        if self.conn.state is not State.CLOSED:  # the first reason to close is the one told
            self._close_code, self._close_reason = code, reason

    def flush(self) -> None:
        self._queued = False
        self.write_now = None  # until the end: this may close the connection
        transport = self.transport
        if transport is None:
            return
        ws, conn = self.ws, self.conn
        data = conn.data_to_send()  # before the handshake only a refusal, which the HTTP answer carries
        out = [ws_messages(data)] if data and ws.state is not WsState.CONNECTING and not self._close_written else []
        if conn.state is State.CLOSED and ws.state is WsState.OPEN:
            ws.send_close(self._close_code, _close_reason(self._close_reason))
        eof = False
        for chunk in ws.data_to_send():
            if chunk:
                out.append(chunk)
            else:
                eof = True  # websockets' signal: close the TCP connection
        if ws.close_sent is not None:
            self._close_written = self.closed = True
        if out:
            transport.write(b"".join(out))
            if self.paused_at is not None:
                self._cut_if_swamped(transport)
        if eof:
            self.closed = True
            transport.close()
        elif (ws.close_expected() or conn.state is State.CLOSED) and self._close_timer is None:
            self._close_timer = self.host.loop.call_later(CLOSE_TIMEOUT, self._drop)
        self._open_writes()

    def _drop(self) -> None:
        """The client did not finish the closing handshake (or never sent its upgrade request) in time."""
        self._close_timer = None
        self.abort("WebSocket closing handshake timed out")

    def _direct_writer(self, transport: asyncio.Transport) -> Callable[[bytes], None]:
        """Framed bytes go to the client as binary messages (``Peer.write_now`` is this while open)."""
        return lambda data: transport.write(ws_messages(data))
