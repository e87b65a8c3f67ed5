"""Automatic pipelining for the Redis store, and a lean pub/sub subscriber.

``Batcher``: every command issued during one turn of the event loop, by any caller
(the appends, route lookups and publishes of all the node's senders), is written to
Redis as one pipeline (not a transaction) on one connection at the start of the next
turn; each caller awaits the future of its own reply. This is what ioredis and go-redis
call auto-pipelining. Per command it costs a ``hiredis.pack_command``, a future and a
list append, where redis-py's client costs a pool acquire and release, a write and a
read of its own and a timeout context: most of a cim node's time on the Redis backend.

What it keeps:

* A reply is the reply: a caller's future resolves only once Redis answered its
  command (an append acknowledged by Redis, never "written to the socket").
* FIFO: commands go out in the order they were issued and Redis answers one
  connection in order, so a caller's consecutive commands (awaited or not) run in
  order, and commands issued without an await in between are contiguous.
* Errors per command: an error reply fails that command's future only (as the
  ``redis.exceptions`` class redis-py would raise: ``NoScriptError``, ...).
* A lost connection fails the commands written on it and not yet answered with
  ``redis.exceptions.ConnectionError`` (they may or may not have run: never retried
  here, so an append is never applied twice behind its caller's back); commands not
  yet written wait for the next connection, opened on demand by the next turn that
  has commands. Redis silent for the client's ``socket_timeout`` (redis-py's 5 s by
  default) while commands wait counts as lost: they fail with ``TimeoutError``.
* Every command and script is still one command on one key slot (the callers' keys
  decide that): pipelining joins writes, not commands, so Redis Cluster safety is
  unchanged.

Connections are opened by redis-py from the client's pool settings (TCP, TLS, unix
socket, AUTH/HELLO, SELECT, client name: whatever the URL says), then taken over:
the transport is handed to a protocol of this module, which parses replies with
hiredis straight from ``data_received`` (no reader task, no per-command await inside).
Only non-blocking commands belong here (no BLPOP, no MULTI spanning awaits, no SUBSCRIBE).

``Subscriber``: a SUBSCRIBE connection calling a handler for each message, straight
from ``data_received`` (redis-py's PubSub costs a task wake-up, a timeout context and
a dict per message); it re-subscribes after a lost connection and PINGs a quiet one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("cim.backends.redis")

_NOT_ENOUGH = object()  # hiredis: no complete reply in the buffer yet
_pack = hiredis.pack_command
_Push = hiredis.PushNotification


class Script:
    """A Lua script run by its SHA1 (EVALSHA), its text sent (EVAL) when Redis lacks it."""

    __slots__ = ("text", "sha")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


def _error(reply: hiredis.ReplyError) -> RedisError:
    """The exception redis-py raises for an error reply (NOSCRIPT -> NoScriptError, ...)."""
    error: RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


class _Taken(asyncio.Protocol):
    """A connection taken over from redis-py (``open_transport`` fills these in)."""

    transport: asyncio.Transport | None = None
    keep: Any = None  # the StreamWriter redis-py made, which closes the transport when collected
    timeout: float | None = None  # the client's socket_timeout: how long a reply may take

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


async def open_transport(client: aioredis.Redis, protocol: _Taken) -> asyncio.Transport:
    """A connection opened and set up by redis-py with ``client``'s settings (TCP, TLS or
    unix socket, AUTH/HELLO, SELECT, ...), its transport handed over to ``protocol``."""
    pool = client.connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)
    protocol.timeout = getattr(connection, "socket_timeout", None)
    await connection.connect()  # type: ignore[no-untyped-call]
    reader, writer = getattr(connection, "_reader", None), getattr(connection, "_writer", None)
    if not isinstance(writer, asyncio.StreamWriter) or not isinstance(reader, asyncio.StreamReader):
        with contextlib.suppress(Exception):
            await connection.disconnect()
        raise RuntimeError(f"cannot take over a connection of {type(connection).__name__} (redis-py changed?)")
    transport = writer.transport
    # redis-py read its handshake's replies and nothing else: nothing can be buffered.
    leftover = bytes(getattr(reader, "_buffer", b""))
    connection._reader = connection._writer = None  # redis-py lets go: closing is ours now
    protocol.keep = writer
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if leftover:
        protocol.data_received(leftover)
    if transport.is_closing():
        raise RedisConnectionError("Redis closed the connection during its setup")
    with contextlib.suppress(Exception):
        transport.resume_reading()  # type: ignore[attr-defined]
    return transport  # type: ignore[return-value]


class _Replies(_Taken):
    """One taken-over connection: writes packed commands, answers their futures in order.

    Redis must answer within ``timeout`` (redis-py's socket_timeout, 5 s by default) of
    the last reply while commands wait: else the connection is dropped, failing them
    with TimeoutError, as redis-py's read timeout would (a stopped Redis, a dead peer).
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiting: deque[asyncio.Future[Any]] = deque()  # written, not answered, oldest first
        self.reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self.lost = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.heard = 0.0  # loop time of the last reply (or of the first command after none waited)
        self._watch: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the watch was meant to run

    def send(self, packed: list[bytes], futures: list[asyncio.Future[Any]]) -> None:
        transport = self.transport
        assert transport is not None
        if not self.waiting:
            self.heard = self.loop.time()
        self.waiting.extend(futures)
        transport.write(packed[0] if len(packed) == 1 else b"".join(packed))
        if self._watch is None and self.timeout:
            self._arm(self.timeout)

    def _arm(self, delay: float) -> None:
        self._due = self.loop.time() + delay
        self._watch = self.loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._watch = None
        if not self.waiting or self.lost or self.timeout is None:
            return
        now = self.loop.time()
        if now - self._due > self.timeout / 2:
            # This process did not run for a while (SIGSTOP, a stalled loop): the replies may
            # be waiting in the socket. Timers run before I/O: read first, judge after.
            self._arm(min(0.1, self.timeout))
            return
        quiet = now - self.heard
        if quiet < self.timeout:
            self._arm(self.timeout - quiet)
            return
        log.error("Redis did not answer for %.1f s; dropping the connection", quiet)
        self.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout} s"))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        self.heard = self.loop.time()
        try:
            while (reply := reader.gets()) is not _NOT_ENOUGH:
                if type(reply) is _Push:  # RESP3 out-of-band data (redis-py speaks RESP3): not a reply
                    continue
                future = waiting.popleft()
                if future.done():  # its caller was cancelled
                    continue
                if type(reply) is hiredis.ReplyError:
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as err:  # garbage, or a reply nobody asked for
            log.error("Redis connection out of step, closing it: %r", err)
            self.fail(RedisConnectionError(f"Redis protocol error: {err!r}"))
            if self.transport is not None:
                self.transport.abort()

    def fail(self, err: Exception) -> None:
        """Fail every command written and not answered."""
        self.lost = True
        waiting = self.waiting
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_exception(type(err)(*err.args))  # one each: a raise writes its traceback on it

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc!r}" if exc else "Redis closed the connection"))
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if not self.closed.done():
            self.closed.set_result(None)


class Batcher:
    """Automatic pipelining on one connection made from ``client``'s settings (see the module)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._replies: _Replies | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._packed: list[bytes] = []  # issued this turn, not written yet
        self._futures: list[asyncio.Future[Any]] = []
        self._scheduled = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first call: the connection's
        self.writes = 0  # pipelines written (for tests and curiosity)

    # -- issuing -------------------------------------------------------------------

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (str, bytes, int or float arguments); the future of its reply."""
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        packed = _pack(args)  # a bad argument fails here, before anything is queued
        loop = self._loop
        if loop is None:
            # Once: get_running_loop() costs a getpid() system call (a fork check) every time.
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._packed.append(packed)
        self._futures.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` (EVALSHA; EVAL, which caches it, where Redis answers NOSCRIPT)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.text, len(keys), *keys, *args)

    async def scripts(self, script: Script, calls: Iterable[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """``script`` once per (keys, args), all in one pipeline; the replies in order.
        The first error other than NOSCRIPT is raised once every call has been answered."""
        calls = list(calls)
        futures = [self.call("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await settled(futures)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            again = await settled([self.call("EVAL", script.text, len(calls[i][0]), *calls[i][0], *calls[i][1])
                                   for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return _raise_first(replies)

    # -- writing ---------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what this turn issued as one pipeline (or open a connection for it)."""
        self._scheduled = False
        if not self._packed:
            return
        replies = self._replies
        if replies is None or replies.lost or replies.transport is None or replies.transport.is_closing():
            self._replies = None
            if self._connecting is None and not self._closed:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        packed, futures = self._packed, self._futures
        self._packed, self._futures = [], []
        replies.send(packed, futures)
        self.writes += 1

    async def _connect(self) -> None:
        try:
            replies = _Replies()
            await open_transport(self._client, replies)
        except BaseException as err:
            # Nothing queued was written: fail it all, the next command tries again.
            futures = self._futures
            self._packed, self._futures = [], []
            failure = err if isinstance(err, RedisError) else RedisConnectionError(f"cannot connect to Redis: {err!r}")
            for future in futures:
                if not future.done():
                    future.set_exception(type(failure)(*failure.args))
            if not isinstance(err, Exception):
                raise
        else:
            if self._closed:
                if replies.transport is not None:
                    replies.transport.close()
                return
            self._replies = replies
            self._flush()
        finally:
            self._connecting = None

    async def close(self) -> None:
        """Close the connection: commands not answered fail with ConnectionError."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        futures, self._packed, self._futures = self._futures, [], []
        for future in futures:
            if not future.done():
                future.set_exception(RedisConnectionError("the Redis client is closed"))
        replies, self._replies = self._replies, None
        if replies is not None and replies.transport is not None:
            replies.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(replies.closed), 5)


async def settled(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Each future's result, or its exception as the value (every one retrieved)."""
    out: list[Any] = []
    for future in futures:
        try:
            out.append(await future)
        except Exception as err:
            out.append(err)
    return out


async def results(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Each future's result; once all are done, the first failure is raised."""
    return _raise_first(await settled(futures))


def _raise_first(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class _Messages(_Taken):
    """A subscribed connection: ``handler(data)`` for each message, on the loop."""

    def __init__(self, handler: Callable[[bytes], None], channels: int) -> None:
        self.handler = handler
        self.reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self.pending = channels  # subscriptions not yet confirmed
        self.loop = asyncio.get_running_loop()
        self.heard = self.loop.time()  # when Redis last sent anything
        self.subscribed: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        self.heard = self.loop.time()
        handler = self.handler
        try:
            while (reply := reader.gets()) is not _NOT_ENOUGH:
                if isinstance(reply, list) and len(reply) == 3:  # a RESP3 push, or a RESP2 array
                    kind = reply[0]
                    if kind == b"message":
                        try:
                            handler(reply[2])
                        except Exception:
                            log.exception("bus handler failed")
                        continue
                    if kind == b"subscribe":
                        self.pending -= 1
                        if self.pending <= 0 and not self.subscribed.done():
                            self.subscribed.set_result(None)
                        continue
                if type(reply) is hiredis.ReplyError and not self.subscribed.done():
                    self.subscribed.set_exception(_error(reply))
                # Else a PING's answer: heard, nothing to do.
        except hiredis.ProtocolError as err:
            log.error("Redis subscriber connection out of step, closing it: %r", err)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        failure = RedisConnectionError(f"Redis connection lost: {exc!r}" if exc else "Redis closed the connection")
        if not self.subscribed.done():
            self.subscribed.set_exception(failure)
            self.subscribed.exception()  # retrieved: nobody may be waiting any more
        if not self.closed.done():
            self.closed.set_result(None)


class Subscriber:
    """SUBSCRIBE to ``channels`` on a connection from ``client``'s settings, calling
    ``handler(data)`` for each message; a lost connection is opened and subscribed again
    (messages published meanwhile are lost: the bus is a doorbell). A connection quiet
    for ``HEALTH_SECONDS`` is PINGed and dropped if Redis does not answer within the
    client's socket_timeout (a dead peer says nothing)."""

    RETRY_SECONDS = 0.5
    HEALTH_SECONDS = 15.0

    def __init__(self, client: aioredis.Redis, channels: list[str], handler: Callable[[bytes], None],
                 name: str = "cim-bus") -> None:
        self._client = client
        self._channels = channels
        self._handler = handler
        self._name = name
        self._messages: _Messages | None = None
        self._task: asyncio.Task[None] | None = None
        self.subscriptions = 0  # connections subscribed so far (for tests and curiosity)

    async def start(self) -> None:
        """Subscribe (raises if Redis cannot be reached), then stay subscribed."""
        await self._subscribe()
        self._task = asyncio.create_task(self._keep(), name=self._name)

    async def _subscribe(self) -> None:
        messages = _Messages(self._handler, len(self._channels))
        transport = await open_transport(self._client, messages)
        try:
            subscribe: tuple[Any, ...] = ("SUBSCRIBE", *self._channels)
            transport.write(_pack(subscribe))
            await asyncio.wait_for(asyncio.shield(messages.subscribed), messages.timeout or None)
        except BaseException:
            transport.abort()
            raise
        self._messages = messages
        self.subscriptions += 1

    async def _keep(self) -> None:
        while True:
            if self._messages is not None:
                await self._watch(self._messages)
                self._messages = None
                log.warning("bus connection lost; subscribing again")
            try:
                await self._subscribe()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("bus connection failed, retrying: %r", err)
                await asyncio.sleep(self.RETRY_SECONDS)

    async def _watch(self, messages: _Messages) -> None:
        """Return once ``messages``' connection is gone (lost, or dropped for not answering)."""
        loop = asyncio.get_running_loop()
        closed = messages.closed
        while not closed.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), self.HEALTH_SECONDS)
                return
            if loop.time() - messages.heard < self.HEALTH_SECONDS or messages.transport is None:
                continue  # messages came meanwhile: alive
            asked = loop.time()
            messages.transport.write(_pack(("PING",)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), messages.timeout or 5.0)
                return
            if messages.heard < asked:
                log.warning("bus connection did not answer a PING; dropping it")
                messages.transport.abort()
                await asyncio.shield(closed)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        messages, self._messages = self._messages, None
        if messages is not None and messages.transport is not None:
            messages.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(messages.closed), 5)
