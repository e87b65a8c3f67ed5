"""Acknowledged delivery on the client side, sans-I/O: what the SDK keeps across connections.

``Delivery`` is fed the bytes read, the app's sends and the clock (any monotonic
seconds), and answers each with a ``Step``: the bytes to write and what to hand the
app. It touches no socket, no event loop and no file, so tests drive it with plain
bytes and a made-up clock (tests/test_client_inbox.py); ``cim.client.sdk.Client`` moves
its bytes and runs its timer.

Outgoing (``Outbox``): every send gets a clientMsgId, microseconds since the epoch,
bumped past the previous one, so ids are unique across restarts of the client (the
clock going back by more than the restart takes is the exception) and the server's
dedup window recognises a resend. A send is kept until its receipt or its deadline;
after a reconnect the unanswered ones are written again, same ids, in their original
order, before any new one.

The sender's copy of a send (``cim.delivery``) comes to the device that sent it as its
receipt when the server can (the receipt carries the copy's seq and timestamp): the copy is
made here from the send and handed over like any push, in seq order.

Incoming (``Cursor``): ``last_seq`` is the highest seq handed to the app with none
missing below it (without one of its own, the login answer's ``acked_seq``: the
server's record of the device). After every login the client asks SYNC{last_seq}; a push at or below
it is a duplicate (dropped), one past a gap is dropped too and asks SYNC{last_seq}
again (one sync outstanding at a time: it refills the gap). A push with seq 0 (a
server without inboxes) is handed over as it comes. ``DELIVERY_ACK{last_seq}`` goes
out every ``ack_interval`` seconds or ``ack_every`` messages, whichever comes first,
and on close; each one also tells the caller to persist ``last_seq`` (``Step.persist``).

Heartbeat: a PING whenever nothing was written for an interval, the connection counts
as lost when nothing was read for 3; the interval is the client's own until the
server's ``LoginAnswer`` names one (then half of it, if that is more often).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cim.protocols.client import (
    ClientConnection,
    ClientEvent,
    LoginAnswer,
    Pong,
    Pushed,
    Receipt,
    StatusReport,
    SyncDone,
)

ACK_INTERVAL = 0.1  # seconds a received message waits at most for its DELIVERY_ACK
ACK_EVERY = 64  # messages that make an ack due at once
SETTLED_KEPT = 4096  # settled clientMsgIds remembered, to tell this client's sends among the user's own copies
READ_TIMEOUT_INTERVALS = 3  # heartbeat intervals of silence after which the connection counts as lost


def epoch_microseconds() -> int:
    """The wall clock in microseconds: the base of clientMsgIds."""
    return time.time_ns() // 1000


@dataclass(slots=True)
class Step:
    """What one input asks of the caller, to be done in this order: report
    ``notices``; hand ``messages`` and ``statuses`` (receipts of what was sent) to the app; write ``data`` (after the messages: an
    ack in it covers them); resolve the sends ``answered`` and fail those ``expired``
    (their send timeout passed unanswered: no longer resent); store ``persist`` as the
    last seq (not None: an ack batch went out, or the seq was reset); act on the
    session ``events`` (login answer, server error, offline, protocol error); drop the
    connection if ``lost`` says why."""

    data: bytearray = field(default_factory=bytearray)
    messages: list[Pushed] = field(default_factory=list)
    statuses: list[tuple[int, int, str]] = field(default_factory=list)  # receipts: (msg_id, receiver_id, status)
    answered: list[Receipt] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    persist: int | None = None
    events: list[ClientEvent] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    lost: str | None = None


@dataclass(slots=True)
class Pending:
    """One send waiting for its receipt."""

    client_msg_id: int
    text: str
    receiver_id: int | None  # None: to the group
    group_id: str
    deadline: float  # on the caller's clock: unanswered by then, it fails
    written: bool = False  # on the current connection
    delay_seconds: int = 0  # deliver this much later (the receipt comes now: scheduled)


class Outbox:
    """The sends not answered yet, in the order they were made."""

    def __init__(self, clock_us: Callable[[], int] = epoch_microseconds) -> None:
        self._clock_us = clock_us
        self._last_id = 0
        # Insertion ordered; since every deadline is "now + the one send timeout", the
        # first entry also has the earliest deadline.
        self._pending: dict[int, Pending] = {}
        # Answered or timed out: a send that timed out may have been stored all the same.
        self._settled: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def new_id(self) -> int:
        """A clientMsgId greater than every one before it."""
        self._last_id = max(self._clock_us(), self._last_id + 1)
        return self._last_id

    def add(self, text: str, receiver_id: int | None, group_id: str, deadline: float, client_msg_id: int | None,
            delay_seconds: int = 0) -> Pending:
        """Keep a new send; ``client_msg_id`` given: a retry of an earlier send (its
        receipt is the original's), which must not be pending still."""
        if client_msg_id is None:
            client_msg_id = self.new_id()
        elif client_msg_id in self._pending:
            raise ValueError(f"clientMsgId {client_msg_id} is being sent already")
        pending = Pending(client_msg_id, text, receiver_id, group_id, deadline, delay_seconds=delay_seconds)
        self._pending[client_msg_id] = pending
        return pending

    def to_write(self) -> list[Pending]:
        """The sends not written on the current connection yet, in order, now counted as written."""
        unwritten = [p for p in self._pending.values() if not p.written]
        for pending in unwritten:
            pending.written = True
        return unwritten

    def disconnected(self) -> None:
        """The connection is gone: every unanswered send is to be written again on the next."""
        for pending in self._pending.values():
            pending.written = False

    def answer(self, receipt: Receipt) -> bool:
        """Settle the send ``receipt`` answers; False if none waits for it (timed out, or answered already)."""
        if self._pending.pop(receipt.client_msg_id, None) is None:
            return False
        self._settle(receipt.client_msg_id)
        return True

    def _settle(self, client_msg_id: int) -> None:
        self._settled[client_msg_id] = None
        if len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)

    def pending(self, client_msg_id: int) -> Pending | None:
        """The unanswered send with this id, if any."""
        return self._pending.get(client_msg_id)

    def sent_here(self, client_msg_id: int) -> bool:
        """The id is of a send of this client's: pending, or among the last ``SETTLED_KEPT`` answered or timed out."""
        return client_msg_id in self._pending or client_msg_id in self._settled

    def deadline(self) -> float | None:
        """When the oldest send times out."""
        return next(iter(self._pending.values())).deadline if self._pending else None

    def expire(self, now: float) -> list[int]:
        """Drop the sends whose deadline has passed; their ids."""
        expired = []
        for client_msg_id, pending in self._pending.items():
            if pending.deadline > now:
                break
            expired.append(client_msg_id)
        for client_msg_id in expired:
            del self._pending[client_msg_id]
            self._settle(client_msg_id)
        return expired

    def drain(self) -> list[int]:
        """Drop every send (the client stops); their ids."""
        ids = list(self._pending)
        self._pending.clear()
        return ids


class Cursor:
    """Which pushed messages the app has had: dedup, gap detection and ack batching by seq."""

    def __init__(self, last_seq: int, ack_interval: float = ACK_INTERVAL, ack_every: int = ACK_EVERY) -> None:
        self.last_seq = last_seq  # the highest seq handed over, none missing below it
        self.acked = last_seq  # the last seq flushed (acked to a server, or persisted offline)
        self.syncing = False  # a SYNC is outstanding
        self.ack_interval = ack_interval
        self.ack_every = ack_every
        self.ack_due: float | None = None  # when the time-based ack is due; None: nothing to ack
        self._unacked = 0
        # The seqs dropped past a gap while the current sync ran: the lowest is where a
        # truncated inbox (retention dropped what was asked for) really starts; the
        # highest must be covered before the sync counts as having refilled the gap.
        self._lowest_dropped: int | None = None
        self._highest_dropped = 0

    def accept(self, seq: int, now: float) -> bool | None:
        """Whether the push with ``seq`` goes to the app: True: yes, now; False: a
        duplicate; None: past a gap (dropped: a sync is to refill it)."""
        if seq == 0:
            return True
        if seq <= self.last_seq:
            return False
        if seq > self.last_seq + 1:
            if self._lowest_dropped is None or seq < self._lowest_dropped:
                self._lowest_dropped = seq
            self._highest_dropped = max(self._highest_dropped, seq)
            return None
        self.last_seq = seq
        self.progressed(now)
        return True

    def progressed(self, now: float) -> None:
        """``last_seq`` moved: an ack is due in ``ack_interval`` (or now, once ``ack_every`` piled up)."""
        self._unacked += 1
        if self.ack_due is None:
            self.ack_due = now + self.ack_interval
        if self._unacked >= self.ack_every:
            self.ack_due = now

    def start_sync(self) -> int:
        """A SYNC goes out: the seq it asks after."""
        self.syncing = True
        self._lowest_dropped = None
        self._highest_dropped = 0
        return self.last_seq

    def sync_done(self, done: SyncDone, now: float) -> tuple[bool, str | None]:
        """The server finished a sync: (whether to sync again: a gap is left, a notice
        for the app). After a truncated one, the messages retention dropped are skipped:
        the seq moves to just before the first one kept (the lowest dropped past the gap)."""
        self.syncing = False
        notice = None
        if done.truncated and self.last_seq < done.latest_seq:
            first_kept = self._lowest_dropped if self._lowest_dropped is not None else done.latest_seq + 1
            if first_kept > self.last_seq + 1:
                notice = f"messages {self.last_seq + 1}..{first_kept - 1} were dropped by the server's retention"
                self.last_seq = first_kept - 1
                self.progressed(now)
        return self.last_seq < max(done.latest_seq, self._highest_dropped), notice

    def reset(self) -> None:
        """The server's inbox is behind this cursor (it lost its inboxes): start again from 0."""
        self.last_seq = self.acked = 0
        self.ack_due = None
        self._unacked = 0

    def flush(self) -> int | None:
        """The seq to ack and persist now, if it moved since the last flush."""
        self.ack_due = None
        self._unacked = 0
        if self.last_seq == self.acked:
            return None
        self.acked = self.last_seq
        return self.acked


class Delivery:
    """One user's client session across connections, sans-I/O: the ``Outbox``, the
    ``Cursor``, the heartbeat, and a fresh ``ClientConnection`` per TCP connection.

    Call ``connect`` for each new connection (write what it returns), ``receive``
    with the bytes read, ``send`` for each app send, ``tick`` when ``deadline`` comes,
    ``disconnected`` when the connection is gone and ``close`` to quit."""

    def __init__(
        self,
        user_id: int,
        user_name: str,
        *,
        last_seq: int | None = None,
        heartbeat_interval: float = 30.0,
        send_timeout: float = 10.0,
        device_id: str = "",
        receipts: bool = False,
        ack_interval: float = ACK_INTERVAL,
        ack_every: int = ACK_EVERY,
        clock_us: Callable[[], int] = epoch_microseconds,
    ) -> None:
        self.user_id = user_id
        self.user_name = user_name
        self.device_id = device_id
        self.receipts = receipts  # logins ask for StatusReports (DELIVERED / READ of what this user sends)
        self.send_timeout = send_timeout
        self.own_heartbeat = heartbeat_interval
        self.heartbeat_interval = heartbeat_interval  # in effect: the server's LoginAnswer may shorten it
        self.outbox = Outbox(clock_us)
        self.cursor = Cursor(last_seq or 0, ack_interval, ack_every)
        self._resume_at_device_cursor = last_seq is None  # no seq of its own: the server's record of the device
        self.connection: ClientConnection | None = None
        self.logged_in = False
        self._server_acked = 0  # the last seq acked on a connection
        self._last_write = self._last_read = 0.0

    @property
    def last_seq(self) -> int:
        return self.cursor.last_seq

    # -- connection ------------------------------------------------------------

    def connect(self, token: str, now: float) -> bytes:
        """A new TCP connection: the login frame to write first. The sync, the unacked
        seq and the resends follow once the server's ``LoginAnswer`` accepts it."""
        self.disconnected()
        self.connection = ClientConnection(self.user_id, self.user_name)
        self._last_write = self._last_read = now
        return self.connection.login(token=token, device_id=self.device_id, wants_receipts=self.receipts)

    def disconnected(self) -> None:
        """The connection is gone: nothing is written until the next ``connect``."""
        self.connection = None
        self.logged_in = False
        self.heartbeat_interval = self.own_heartbeat
        self.cursor.syncing = False
        self.outbox.disconnected()

    def close(self, now: float) -> Step:
        """Quit: the last ack and an OFFLINE (if logged in); the unanswered sends fail (``expired``)."""
        step = Step()
        self._flush(step, now)
        if self.connection is not None and self.logged_in:
            self._write(step, self.connection.offline(), now)
        step.expired = self.outbox.drain()
        self.disconnected()
        return step

    # -- inputs ----------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Step:
        """Bytes read from the current connection."""
        step = Step()
        if self.connection is None:
            return step
        self._last_read = now
        for event in self.connection.receive_data(data):
            if isinstance(event, Pushed):
                self._pushed(step, event, now)
            elif isinstance(event, Receipt):
                if event.seq:
                    self._own_copy(step, event, now)
                if self.outbox.answer(event):
                    step.answered.append(event)
            elif isinstance(event, SyncDone):
                again, notice = self.cursor.sync_done(event, now)
                if notice is not None:
                    step.notices.append(notice)
                if again:
                    self._sync(step, now)
            elif isinstance(event, LoginAnswer):
                self._logged_in(step, event, now)
            elif isinstance(event, StatusReport):
                step.statuses += [(msg_id, event.receiver_id, event.status) for msg_id in event.msg_ids]
            elif not isinstance(event, Pong):
                step.events.append(event)
        self._due(step, now)
        return step

    def send(self, text: str, receiver_id: int | None, group_id: str, now: float, client_msg_id: int | None = None,
             delay_seconds: int = 0) -> tuple[int, Step]:
        """An app send: its clientMsgId, and the step that writes it (nothing until logged in)."""
        pending = self.outbox.add(text, receiver_id, group_id, now + self.send_timeout, client_msg_id, delay_seconds)
        step = Step()
        if self.logged_in:
            self._write_pending(step, now)
        return pending.client_msg_id, step

    def mark_read(self, seq: int, now: float) -> Step:
        """The user has read up to ``seq``: a MARK_READ, if logged in (else nothing: the app
        marks it again, it is cumulative)."""
        step = Step()
        if self.connection is not None and self.logged_in:
            self._write(step, self.connection.mark_read(seq), now)
        return step

    def tick(self, now: float) -> Step:
        """The clock reached (or passed) ``deadline``: acks, send timeouts, heartbeat."""
        step = Step()
        if self.connection is not None and now - self._last_read >= READ_TIMEOUT_INTERVALS * self.heartbeat_interval:
            step.lost = f"no answer from the server for {READ_TIMEOUT_INTERVALS} heartbeat intervals"
            return step
        self._due(step, now)
        step.expired = self.outbox.expire(now)
        if self.connection is not None and now - self._last_write >= self.heartbeat_interval:
            self._write(step, self.connection.ping(), now)
        return step

    def deadline(self) -> float | None:
        """When ``tick`` is next due (None: nothing pending)."""
        due = [d for d in (self.cursor.ack_due, self.outbox.deadline()) if d is not None]
        if self.connection is not None:
            due.append(self._last_write + self.heartbeat_interval)
            due.append(self._last_read + READ_TIMEOUT_INTERVALS * self.heartbeat_interval)
        return min(due) if due else None

    # -- internals -------------------------------------------------------------

    def _pushed(self, step: Step, message: Pushed, now: float) -> None:
        accepted = self.cursor.accept(message.seq, now)
        if accepted:
            if message.outgoing and message.client_msg_id and self.outbox.sent_here(message.client_msg_id):
                message = replace(message, from_this_device=True)
            step.messages.append(message)
        elif accepted is None and not self.cursor.syncing and self.logged_in:
            self._sync(step, now)

    def _own_copy(self, step: Step, receipt: Receipt, now: float) -> None:
        """A receipt that stands for this device's copy of its send (the server pushes no copy
        here then): the copy, made from the send, goes through the cursor as its push would."""
        pending = self.outbox.pending(receipt.client_msg_id)
        if pending is None:  # timed out meanwhile, its text gone: a sync brings the copy from the inbox
            if not self.cursor.syncing and self.logged_in:
                self._sync(step, now)
            return
        copy = Pushed(self.user_id, self.user_name, self.user_id, pending.text, receipt.msg_id, receipt.seq,
                      receipt.timestamp_ms, pending.group_id, to_user_id=pending.receiver_id or 0,
                      client_msg_id=receipt.client_msg_id)
        self._pushed(step, copy, now)

    def _logged_in(self, step: Step, answer: LoginAnswer, now: float) -> None:
        self.logged_in = True
        if self._resume_at_device_cursor:
            self._resume_at_device_cursor = False
            self.cursor.last_seq = self.cursor.acked = self._server_acked = answer.acked_seq
        if answer.heartbeat_seconds > 0:
            self.heartbeat_interval = min(self.own_heartbeat, answer.heartbeat_seconds / 2)
        if answer.latest_seq < self.cursor.last_seq:
            step.notices.append(f"the server's inbox is at seq {answer.latest_seq}, behind this client's "
                                f"{self.cursor.last_seq} (its inboxes were lost): syncing from the start")
            self.cursor.reset()
            self._server_acked = 0
            step.persist = 0
        step.events.append(answer)
        self._sync(step, now)
        if self._server_acked < self.cursor.acked:  # flushed while offline, or resumed: the server's cursor is behind
            self._ack(step, self.cursor.acked, now)
        self._write_pending(step, now)

    def _sync(self, step: Step, now: float) -> None:
        assert self.connection is not None
        self._write(step, self.connection.sync(self.cursor.start_sync()), now)

    def _write_pending(self, step: Step, now: float) -> None:
        assert self.connection is not None
        for pending in self.outbox.to_write():
            frame = self.connection.message(pending.text, pending.receiver_id, pending.client_msg_id, pending.group_id,
                                            pending.delay_seconds)
            self._write(step, frame, now)

    def _due(self, step: Step, now: float) -> None:
        if self.cursor.ack_due is not None and now >= self.cursor.ack_due:
            self._flush(step, now)

    def _flush(self, step: Step, now: float) -> None:
        seq = self.cursor.flush()
        if seq is None:
            return
        step.persist = seq
        if self.logged_in:
            self._ack(step, seq, now)

    def _ack(self, step: Step, seq: int, now: float) -> None:
        assert self.connection is not None
        self._write(step, self.connection.ack(seq), now)
        self._server_acked = seq

    def _write(self, step: Step, frame: bytes, now: float) -> None:
        step.data += frame
        self._last_write = now
