"""The asyncio client SDK: what the console client and any other UI are built on.

    async with Client("http://127.0.0.1:8083", user_id, "alice", password=password, on_message=print,
                      state_file="alice.seq") as client:
        await client.send_group("hello all")
        await client.send_private(1002, "hello bob")
        team = await client.groups.create("team", [1002, 1003])   # a named group, through the route
        await client.send_group("hello team", group_id=team)

``connect`` logs in through the route (with the password; the answer carries a
token), opens the TCP connection to the server the route picked and sends the
login frame with the token. The route calls made for the user send the token as
their bearer; one refused as unauthorized (4001: the token expired) logs in again
for a new token and is made once more. A lost connection is re-established (route
login again, jittered exponential backoff, capped) up to ``reconnect_attempts`` times.

Delivery (``cim.client.delivery``, sans-I/O, does the bookkeeping; this module moves
its bytes and runs its timer):

* **Receiving.** After every login the client asks the server for every inbox
  message after ``last_seq`` (SYNC). ``on_message`` gets each message exactly once
  and in seq order, across reconnects: duplicates are dropped and a gap is refilled
  by another sync. ``last_seq`` (the highest seq handed to ``on_message``, none
  missing below it) is acked to the server every 100 ms or 64 messages and on
  ``close``; each time it is also handed to ``on_seq`` and written to ``state_file``
  (atomically: a temporary file, then ``os.replace``), so a restarted client passing
  it back (``last_seq=`` or the same ``state_file``) resumes where it was: at most the
  messages of the last 100 ms before a crash come again. A client with no seq of its
  own (``last_seq=None``, no state file) resumes from the seq its device last acked,
  which the server keeps and tells at login (``LOGIN_ANSWER.ackedSeq``): what came
  while it was away, as CIM's offline messages; ``last_seq=0`` gets every message the
  server's inbox still keeps (by default up to 10,000 per user, 30 days). A server whose inbox is behind ``last_seq`` (an
  embedded one restarted without ``--data-dir``) makes the client start again from 0,
  and a sync that retention truncated skips what was dropped (both said in ``on_status``).
  ``/fetchOfflineMsgs`` (CIM's way to get stored messages) is no longer called: the
  sync gets them, and the server would push them again (``client.session.fetch_offline()``
  still makes the call for an app that wants it; the SDK drops the repeats by seq).
* **Sending.** ``send_private`` / ``send_group`` give each message a clientMsgId
  unique across restarts (microseconds since the epoch, increasing) and keep it
  until its receipt. If the connection drops, the unanswered messages are written
  again after the reconnect, with the same clientMsgIds and in their original order,
  before any newer one; the server's dedup window makes a message that had arrived
  get its original receipt (same ``msg_id``) and not arrive twice. Sends made while
  reconnecting wait for the connection. What the caller can rely on: the await
  returns the ``Receipt`` when the server stored the message (9000, or 7000: the
  receiver is offline) and raises ``ClientError`` with the code when it refused it;
  ``SendTimeout`` (a ``TimeoutError``) when no receipt came within ``send_timeout``
  seconds of the call (reconnecting included), and ``Stopped`` (a ``ConnectionError``)
  when the client stopped first (closed, ended by the server, out of reconnect
  attempts). After either of those two the message may or may
  not have been stored and is not resent; to find out, send it again with the
  error's ``client_msg_id`` (``send_private(..., client_msg_id=err.client_msg_id)``):
  within the dedup window the receipt is the original's and the receiver gets it
  at most once. A caller that stops awaiting (cancels) does not withdraw the message.
  A send before ``connect`` or after ``close`` raises ``ConnectionError`` at once.
* **Receipts.** A client made with ``on_message_status`` logs in asking for receipts of
  what it sends: ``on_message_status(msg_id, receiver_id, status)``, status "DELIVERED" (a
  device of the receiver acked the message) or "READ" (the receiver marked it read:
  ``mark_read(seq)``, cumulative over their inbox, or the route's ``/read``). Receipts that
  come while this user is offline are not kept for them. ``mark_read`` while not connected
  sends nothing (mark it again later).
* **Heartbeat.** A PING goes out whenever nothing was written for a heartbeat
  interval; a connection silent for 3 intervals counts as lost. The interval is
  ``heartbeat_interval`` until the server's login answer names its own; then half
  of that, if it is shorter, so a server with a short interval does not cut the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cim.client.delivery import Delivery, Step
from cim.client.history import HistoryCalls, HistoryPage
from cim.client.presence import PresenceCalls
from cim.client.route import ClientError, DeviceCalls, RouteClient, RouteSession, ServerAddress, register
from cim.client.transport import Transport, open_transport, transport_kind
from cim.protocols.client import (
    ClientConnection,
    ClientEvent,
    HistoryAnswer,
    LoginAnswer,
    Offline,
    PresenceReport,
    ProtocolError,
    Pushed,
    Receipt,
    ServerError,
)
from cim.status import Status

__all__ = ["Client", "ClientError", "HistoryPage", "Message", "Receipt", "SendTimeout", "ServerAddress", "Stopped",
           "register"]

log = logging.getLogger("cim.client")

# What ``on_message`` gets: a pushed message (the SDK's name for it).
Message = Pushed

# Codes a reconnect waits out rather than gives up on: the old session may not be
# cleared yet (5000), no server is up yet (7100), many clients behind one address
# reconnect at once and the route's per-address login limit holds some back (4029),
# or the server could not reach its store for a moment (4000: a Redis restart).
RETRYABLE = {Status.REPEAT_LOGIN.code, Status.SERVER_NOT_AVAILABLE.code, Status.RATE_LIMITED.code, Status.FAIL.code}

MessageCallback = Callable[[Message], Any]
StatusCallback = Callable[[str], Any]
SeqCallback = Callable[[int], Any]
MessageStatusCallback = Callable[[int, int, str], Any]  # (msg_id, receiver_id, "DELIVERED" or "READ")

T = TypeVar("T")


class SendTimeout(TimeoutError):
    """No receipt came within the send timeout: the message may or may not have been
    stored, and is no longer resent. Sending it again with ``client_msg_id`` is safe
    (within the server's dedup window it is recognised, not delivered twice)."""

    def __init__(self, client_msg_id: int) -> None:
        super().__init__(f"no receipt within the send timeout (clientMsgId {client_msg_id})")
        self.client_msg_id = client_msg_id


class Stopped(ConnectionError):
    """The client stopped before the server answered a send: as ``SendTimeout``, the
    message may or may not have been stored (retry with ``client_msg_id``)."""

    def __init__(self, client_msg_id: int, why: str) -> None:
        super().__init__(f"{why} before the server answered (clientMsgId {client_msg_id})")
        self.client_msg_id = client_msg_id


def settle(future: asyncio.Future[T] | None, result: T, error: BaseException | None = None) -> None:
    """Resolve ``future`` with ``error`` if given, else ``result``; nothing if it has been resolved (or is None)."""
    if future is None or future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def call_app(callback: Callable[..., Any] | None, *values: object) -> None:
    """Call one of the app's callbacks with ``values``; one that raises is logged and delivery goes on (the
    core counts the values as handed over either way: a failing callback must not stall the connection)."""
    if callback is None:
        return
    try:
        callback(*values)
    except Exception:
        log.exception("the app's %s failed on %r", getattr(callback, "__name__", "callback"), values)


def backoff(attempt: int, base: float, cap: float) -> float:
    """The wait before reconnect attempt ``attempt`` (from 0): exponential from ``base``, capped, jittered by ±50%."""
    return min(cap, base * 2.0**attempt) * random.uniform(0.5, 1.5)


async def close_writer(writer: Transport) -> None:
    """Close the connection and wait until it is (a reset one counts as closed)."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


class Waiters:
    """The app's awaits on its sends, by clientMsgId."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._futures: dict[int, asyncio.Future[Receipt]] = {}

    def wait(self, client_msg_id: int) -> asyncio.Future[Receipt]:
        future = self._futures[client_msg_id] = self._loop.create_future()
        return future

    def answer(self, step: Step) -> None:
        """Resolve the sends ``step`` answered; fail those that timed out."""
        for receipt in step.answered:
            settle(self._futures.pop(receipt.client_msg_id, None), receipt)
        for client_msg_id in step.expired:
            self._fail(client_msg_id, SendTimeout(client_msg_id))

    def stopped(self, client_msg_ids: list[int], why: str) -> None:
        """Fail these sends: the client stopped (``why``) before their receipts."""
        for client_msg_id in client_msg_ids:
            self._fail(client_msg_id, Stopped(client_msg_id, why))

    def _fail(self, client_msg_id: int, error: BaseException) -> None:
        future = self._futures.pop(client_msg_id, None)
        if future is not None and not future.done():
            future.set_exception(error)


class SeqStore:
    """Where the last seq is kept for a restart: handed to ``on_seq`` and/or written to ``state_file``."""

    def __init__(self, on_seq: SeqCallback | None, state_file: str | os.PathLike[str] | None) -> None:
        self.on_seq = on_seq
        self.state_file = None if state_file is None else Path(state_file)

    def load(self, default: int | None) -> int | None:
        """The seq the state file keeps; ``default`` when there is none (ValueError for a file that holds no seq)."""
        if self.state_file is None or not self.state_file.exists():
            return default
        return int(self.state_file.read_text())

    def save(self, seq: int) -> None:
        """Hand ``seq`` over and replace the file's atomically (a reader sees the old seq or the new one, never
        half); failures are logged: delivery goes on (a restart then resumes from an older seq: repeats, no loss)."""
        call_app(self.on_seq, seq)
        if self.state_file is not None:
            temporary = self.state_file.with_name(self.state_file.name + ".tmp")
            try:
                temporary.write_text(f"{seq}\n")
                os.replace(temporary, self.state_file)
            except OSError:
                log.exception("cannot write the state file %s", self.state_file)


class Alarm:
    """One loop timer, kept at the earliest deadline asked for; ``callback`` gets the deadline it was set for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[float], None]) -> None:
        self._loop = loop
        self._callback = callback
        # uvloop answers call_at with a deadline already past with a plain Handle (no ``when()``),
        # so the deadline set is kept here.
        self._timer: asyncio.Handle | None = None
        self._deadline = 0.0

    def set(self, deadline: float | None) -> None:
        """Ring at ``deadline`` (None: not at all) unless already set to ring earlier."""
        if self._timer is not None:
            if deadline is not None and self._deadline <= deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._deadline = deadline
            self._timer = self._loop.call_at(deadline, self._ring, deadline)

    def cancel(self) -> None:
        self.set(None)

    def _ring(self, deadline: float) -> None:
        self._timer = None
        self._callback(deadline)


class Client(HistoryCalls, PresenceCalls, DeviceCalls):
    """One user's session with cim, kept up (route login with ``password``, the TCP connection, heartbeats,
    reconnects), with acknowledged delivery: see the module.

    Messages go to ``on_message``, connection events (as text) to ``on_status``, each acked ``last_seq`` to ``on_seq`` and
    ``state_file``; the client resumes from ``state_file`` if it exists, else from ``last_seq``. ``delivery`` is the sans-I/O
    state (``delivery.last_seq``, ``delivery.heartbeat_interval`` in effect: read only). ``device_id`` names the device to the
    server (it keeps an acked seq per device). ``on_message_status`` asks for the receipts of what this client sends and gets
    them (see the module). ``done`` resolves when the client stops: closed, ended by the server, refused, or out of reconnect
    attempts. A shared ``route`` (many users in one process) is not closed here.
    """

    def __init__(
        self,
        route_url: str,
        user_id: int,
        user_name: str,
        *,
        password: str = "",
        on_message: MessageCallback | None = None,
        on_status: StatusCallback | None = None,
        heartbeat_interval: float = 30.0,
        reconnect_attempts: int = 10,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        send_timeout: float = 10.0,
        route: RouteClient | None = None,
        last_seq: int | None = None,
        on_seq: SeqCallback | None = None,
        state_file: str | os.PathLike[str] | None = None,
        device_id: str = "",
        on_message_status: MessageStatusCallback | None = None, transport: str = "tcp",  # "ws": the login's wsUrl
    ) -> None:
        self.user_id, self.user_name, self.transport = user_id, user_name, transport_kind(transport)
        self.on_message, self.on_message_status, self.on_status = on_message, on_message_status, on_status
        self.reconnect_attempts, self.backoff_base, self.backoff_max = reconnect_attempts, backoff_base, backoff_max
        self.send_timeout = send_timeout
        self.store = SeqStore(on_seq, state_file)
        self.server: ServerAddress | None = None
        self.connected, self.reconnects = False, 0
        self._owns_route = route is None
        self.route = route or RouteClient(route_url)
        self.session = RouteSession(self.route, user_id, user_name, password, device_id)
        self.groups = self.session.groups  # named groups: create, add_members, ..., mine, dissolve
        self.delivery = Delivery(user_id, user_name, last_seq=self.store.load(last_seq), heartbeat_interval=heartbeat_interval,
                                 send_timeout=send_timeout, device_id=device_id, receipts=on_message_status is not None)
        self._loop = asyncio.get_running_loop()
        self._writer: Transport | None = None  # TCP or WebSocket: frames as bytes either way
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters = Waiters(self._loop)
        self._login_answer: asyncio.Future[None] | None = None
        self._alarm = Alarm(self._loop, self._on_alarm)  # the core's next deadline: acks, send timeouts, heartbeat
        self._started = False  # connected once: from then on sends wait out reconnects
        self._closing = False
        self._ended_by_server = False  # an OFFLINE frame with 9000: do not reconnect
        self.done: asyncio.Future[None] = self._loop.create_future()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _status(self, text: str) -> None:
        log.info("%s", text)
        if self.on_status is not None:
            self.on_status(text)

    # -- connection ------------------------------------------------------------

    async def connect(self) -> None:
        """Route login, TCP or WebSocket connect, login frame; returns once the server accepted the login; else ClientError."""
        self.server = await self.session.login()
        self._writer = await open_transport(self.transport, self.server)
        self._ended_by_server = False
        self._login_answer = self._loop.create_future()
        self._writer.write(self.delivery.connect(self.session.token, self._loop.time()))
        self.connected = True
        self._tasks = [asyncio.create_task(self._read_loop(self._writer, self.delivery.connection), name="cim-client-read")]
        self._alarm.set(self.delivery.deadline())
        try:
            await asyncio.wait_for(asyncio.shield(self._login_answer), self.send_timeout)
        except BaseException:
            self._closing = True
            self._teardown()
            self._closing = False
            raise
        self._started = True
        self._status(f"connected to {self.server.host}:{self.server.port} as {self.user_name}({self.user_id})")

    async def _read_loop(self, transport: Transport, connection: ClientConnection | None) -> None:
        try:
            while connection is not None and not connection.closed and (data := await transport.read()):
                self._apply(self.delivery.receive(data, self._loop.time()))
        except ConnectionError as err:
            self._status(f"connection error: {err}")
        finally:
            settle(self._login_answer, None, ConnectionError("the server closed the connection during login"))
            if not self._closing:
                self._loop.call_soon(self._connection_lost)

    def _apply(self, step: Step) -> None:
        """Carry out what the delivery core asked for, in its order."""
        for notice in step.notices:
            self._status(notice)
        for message in step.messages:
            call_app(self.on_message, message)
        for status in step.statuses:
            call_app(self.on_message_status, *status)
        # A transport closed under us (uvloop raises on a write to it) writes nothing: the
        # sends in ``step.data`` are kept in the outbox and resent after the reconnect.
        if step.data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(bytes(step.data))
        self._waiters.answer(step)
        if step.persist is not None:
            self.store.save(step.persist)
        for event in step.events:
            self._on_event(event)
        if step.lost is not None:
            self._status(step.lost)
            self.delivery.disconnected()  # the read loop ends on the close, and the reconnect follows
            if self._writer is not None:
                self._writer.close()
        self._alarm.set(self.delivery.deadline())

    def _on_event(self, event: ClientEvent) -> None:
        match event:
            case LoginAnswer():
                settle(self._login_answer, None)
                self._watch_again()
            case ServerError(code=code, message=message):
                self._status(f"server error {code}: {message}")
                settle(self._login_answer, None, ClientError(code, message))
            case Offline():
                self._status(f"server closed the session: {event.reason}")
                self._ended_by_server = not event.reconnect
            case ProtocolError():
                self._status(f"connection error: {event.reason}")
            case HistoryAnswer() | PresenceReport():
                self._answered(event)

    def _on_alarm(self, deadline: float) -> None:
        # The loop may run a timer up to its clock resolution early: it counts as on time.
        self._apply(self.delivery.tick(max(self._loop.time(), deadline)))

    def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _teardown(self) -> None:
        """Drop the current connection; the unanswered sends stay, to be written again."""
        self.connected = False
        self._cancel_tasks()
        if self._writer is not None:
            self._writer.close()
        self.delivery.disconnected()
        self._alarm.set(self.delivery.deadline())

    def _stop(self, error: BaseException | None, why: str) -> None:
        """The client is done: every unanswered send fails, ``done`` resolves."""
        self._waiters.stopped(self.delivery.outbox.drain(), why)
        settle(self.done, None, error)

    def _connection_lost(self) -> None:
        if self._closing or not self.connected:
            return
        self._teardown()
        if self._ended_by_server:
            self._stop(None, "the server ended the session")
            return
        self._status("connection lost; reconnecting")
        self._tasks = [asyncio.create_task(self._reconnect(), name="cim-client-reconnect")]

    async def _reconnect(self) -> None:
        for attempt in range(self.reconnect_attempts):
            await asyncio.sleep(backoff(attempt, self.backoff_base, self.backoff_max))
            try:
                await self.connect()
            except ClientError as err:
                if err.code not in RETRYABLE:
                    self._stop(err, f"the reconnect was refused ({err})")
                    return
                self._status(f"reconnect attempt {attempt + 1} refused ({err}); retrying")
            except (OSError, httpx.HTTPError) as err:
                self._status(f"reconnect attempt {attempt + 1} failed ({err!r}); retrying")
            else:
                self.reconnects += 1
                return
        self._stop(ConnectionError(f"gave up after {self.reconnect_attempts} reconnect attempts"), "gave up reconnecting")

    async def close(self) -> None:
        """Quit cleanly: ack what was received, log out (through the route without a ``device_id``) and close
        the connection; sends still unanswered fail with ``Stopped``."""
        self._closing = True
        self._cancel_tasks()
        self._alarm.cancel()
        step = self.delivery.close(self._loop.time())
        if step.persist is not None:
            self.store.save(step.persist)
        self._waiters.stopped(step.expired, "the client closed")
        # Only a session this client holds is logged out: a client whose login was
        # refused must not log out the user's real session.
        if self._writer is not None and self.connected:
            with contextlib.suppress(ConnectionError):
                self._writer.write(bytes(step.data))
                await self._writer.drain()
            with contextlib.suppress(httpx.HTTPError, ClientError):
                await self.session.leave()
        if self._writer is not None:
            await close_writer(self._writer)
        self.connected = False
        if self._owns_route:
            await self.route.aclose()
        settle(self.done, None)

    # -- API -------------------------------------------------------------------

    async def _send(self, text: str, receiver_id: int | None, client_msg_id: int | None, group_id: str = "",
                    delay_seconds: int = 0) -> Receipt:
        if not self._started or self._closing or self.done.done():
            raise ConnectionError("not connected")
        client_msg_id, step = self.delivery.send(text, receiver_id, group_id, self._loop.time(), client_msg_id, delay_seconds)
        future = self._waiters.wait(client_msg_id)
        self._apply(step)
        receipt = await future
        if not receipt.accepted:
            raise ClientError(receipt.code, receipt.message)
        return receipt

    async def send_private(self, receiver_id: int, text: str, *, client_msg_id: int | None = None,
                           delay_seconds: int = 0) -> Receipt:
        """Send to one user (7000: offline, stored for them); ``client_msg_id`` retries a ``SendTimeout``/``Stopped``.
        ``delay_seconds`` (not 0): delivered that much later; the receipt (9000, its msgId) says it is scheduled."""
        return await self._send(text, receiver_id, client_msg_id, delay_seconds=delay_seconds)

    async def send_group(self, text: str, *, group_id: str = "", client_msg_id: int | None = None,
                         delay_seconds: int = 0) -> Receipt:
        """Send to the members of the named group ``group_id`` (this user must be one), or without one to
        every online user (online when it is delivered); the rest as for ``send_private``."""
        return await self._send(text, None, client_msg_id, group_id, delay_seconds)

    def mark_read(self, seq: int) -> None:
        """The user has read every message up to ``seq`` (a ``Message.seq``): see the module, Receipts."""
        self._apply(self.delivery.mark_read(seq, self._loop.time()))

    async def online_users(self) -> list[tuple[int, str]]:
        return await self.route.online_users()
