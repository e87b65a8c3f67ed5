"""Role: the seam between transports and the node: ``Peer`` (what a connection offers) and
``PeerHost`` (what a transport may ask of the node).

A transport (TCP today, WebSocket next) implements ``Peer``: it moves bytes and
owns its own write buffering. The node never touches a transport's internals; a
transport reaches the node only through ``PeerHost``. Neither side imports the
other's module: both depend on this one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cim.protocols.connection import Event
from cim.status import Status


class Peer(Protocol):
    """One client connection of a session (a device), whatever carries its bytes."""

    @property
    def user_id(self) -> int:
        """The user the login frame named (0 before it)."""

    @property
    def ip(self) -> str:
        """The client's IP address, as the per-IP limits count it ("" when unknown)."""

    @property
    def connected_at(self) -> float:
        """Loop time the connection was made."""

    @property
    def last_seen(self) -> float:
        """Loop time anything was last received."""

    @property
    def closed(self) -> bool:
        """The connection is closed or closing: nothing more is written to it."""

    @property
    def paused_at(self) -> float | None:
        """Loop time the write buffer went over the high mark, None while under it."""

    def push(self, frame: bytes, at_once: bool = False) -> None:
        """Send framed pushes: coalesced with whatever else this peer gets this loop
        turn, or with ``at_once`` written now unless pushes are already queued (then
        behind them, so nothing is overtaken)."""

    @property
    def write_now(self) -> Callable[[bytes], None] | None:
        """What ``push(frame, at_once=True)`` calls when it writes at once, for the hot path
        (``cim.server.lane``) to call itself; None while it would not (frames are queued
        ahead, the connection is closed, the write buffer is over its mark)."""

    def send_pong(self) -> None: ...

    def send_receipts(self, client_msg_ids: list[int], first_id: int, status: Status = Status.SUCCESS,
                      first_seq: int = 0, timestamp_ms: int = 0) -> None:
        """Receipts for messages sent in a row: the k-th got message id ``first_id + k``; with
        ``first_seq``, they stand for the sender's copies (seqs ``first_seq``...): no push of them follows."""

    def send_receipt(self, client_msg_id: int, status: Status, text: str, msg_id: int = 0) -> None:
        """The fate of one message: not sent, and why; or a resend, with its first id."""

    def send_login_answer(self, latest_seq: int, heartbeat_seconds: int, acked_seq: int) -> None:
        """The login was accepted: where the user's inbox and the device stand, how often to ping."""

    def send_sync_done(self, latest_seq: int, truncated: bool) -> None:
        """A SYNC was served: everything up to ``latest_seq`` was written before this."""

    def send_error(self, status: Status, reason: str) -> None:
        """An error frame; the connection goes on (a limit was hit)."""

    def pause_reading(self, seconds: float) -> None:
        """Read nothing more for ``seconds`` (over a bytes rate); what was read is served."""

    def refuse(self, status: Status, reason: str) -> None:
        """An error frame, then close (a refused login, a full server)."""

    def end(self, reason: str, reconnect: bool) -> None:
        """An OFFLINE frame saying why and whether to come back, then close."""

    def abort(self, reason: str) -> None:
        """Drop the connection now, unsent data and all (a reader that cannot keep up)."""

    def flush(self) -> None:
        """Write what is queued, in one write; close if the protocol ended."""


class EventSink(Protocol):
    """Takes a peer's events, in the order they arrived (see ``cim.server.ordering``)."""

    @property
    def idle(self) -> bool:
        """Nothing received earlier is still being handled."""

    def feed(self, events: list[Event], now: float, size: int) -> None:
        """The events of one read of ``size`` bytes at loop time ``now`` (what the
        connection's quota is charged; a read that was exactly a ping is not)."""

    def take_plain(self, receiver: int, texts: list[bytes], client_msg_ids: list[int], now: float, size: int) -> bool:
        """A read that was nothing but ``texts`` to ``receiver``, all with ``client_msg_ids``
        or none (``ServerConnection.plain_read``), made while ``idle``: settled at once, or False
        with nothing taken, and its events are fed as any read's (``cim.server.lane``)."""


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """The limits a transport enforces by itself."""

    max_frame_size: int
    max_message_bytes: int
    write_buffer_high: int
    receipt_interval: float  # seconds: a connection's receipts are written at most this often (0: as they come)


class PeerHost(Protocol):
    """What a transport may ask of the node it runs in."""

    settings: PeerSettings
    metrics: Counter[str]
    loop: asyncio.AbstractEventLoop

    def admit(self, peer: Peer) -> EventSink | None:
        """A new connection: where its events go, or None when refused (the peer has
        been told why and closes)."""

    def lost(self, peer: Peer) -> None:
        """The connection is gone, for whatever reason: called once."""

    def flush_at_end_of_turn(self, peer: Peer) -> None:
        """Call ``peer.flush()`` once the loop turn's work is done."""

    def at_receipt_tick(self, flush: Callable[[float], None]) -> None:
        """Call ``flush(loop time)`` at the next receipt tick, at most ``settings.receipt_interval`` from now."""

    def writing_paused(self, peer: Peer) -> None:
        """The peer's write buffer went over the high mark (a slow reader)."""

    def writing_resumed(self, peer: Peer) -> None: ...
