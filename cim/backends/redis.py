"""Redis store (``redis://``, ``rediss://``, ``unix://``): accounts, presence, inbox, bus.

Keys (prefix configurable, default ``cim``):
    {p}-account-id                 INCR counter: user ids unique across routes
    {p}-account:{userId}           userName
    {p}-account-name:{userName}    userId
    {p}-account-password:{userId}  argon2 hash of the password (none under --auth none)
    {p}-route:{userId}             server id; with a TTL while only claimed by the route
    {p}-node-users:{serverId}      SET of users confirmed on that server (cleanup on death)
    {p}-offline:{userId}           LIST of serialized pushes, oldest first
    {p}-node-number                INCR counter for message-id node numbers
Online users are found with SCAN over ``{p}-route:*``, never KEYS.

Bus: each node subscribes to ``{p}-node:{serverId}`` and ``{p}-broadcast``; a
private message is one PUBLISH to the receiver's node, a group message one PUBLISH
to the broadcast channel. Only this class knows that, so sharded pub/sub or
Streams can replace it behind the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from cim.backends.base import Accounts, Bus, DeliveryHandler, Inbox, Presence, Store

if TYPE_CHECKING:
    from cim.backends.memory import MemoryHub
    from cim.config import Config

log = logging.getLogger("cim.backends.redis")

# KEYS[1] route key, KEYS[2] node-users key of ARGV[1]; ARGV[1] server id, ARGV[2] user id.
# A route's claim (a key with a TTL) may be confirmed by any node: with SO_REUSEPORT
# the kernel, not the route, picks which worker accepts. A confirmed login elsewhere
# (no TTL) blocks.
_CONFIRM = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and redis.call('PTTL', KEYS[1]) < 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS[1] route key; ARGV[1] user id, ARGV[2] required server id or '', ARGV[3] node-users prefix.
_LOGOUT = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
if ARGV[2] ~= '' and current ~= ARGV[2] then return false end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[3] .. current, ARGV[1])
return current
"""

# KEYS[1] node-users key; ARGV[1] server id, ARGV[2] route prefix. One batch of members.
_CLEAR_SERVER_BATCH = """
local gone = {}
local members = redis.call('SPOP', KEYS[1], 500)
for _, user in ipairs(members) do
  local key = ARGV[2] .. user
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    table.insert(gone, user)
  end
end
return gone
"""

# KEYS[1] offline list: LRANGE + DEL in one step, so two fetches never both get a message.
_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"""


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client whose pool is bounded and *waits* for a free connection: a burst of
    thousands of logins queues instead of failing with MaxConnectionsError.
    redis-py picks the hiredis parser by itself when hiredis is installed."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return aioredis.Redis(connection_pool=pool)


def _text(reply: bytes | str | None) -> str | None:
    """A name or server id from a reply: the clients answer bytes (payloads are binary,
    so no ``decode_responses``); a Lua ``false`` arrives as None."""
    return reply.decode() if isinstance(reply, bytes) else reply


class _RedisKeys:
    """A client and the key prefix every part of the store names its keys with."""

    def __init__(self, client: aioredis.Redis, prefix: str = "cim") -> None:
        self._r = client
        self._p = prefix

    def _key(self, kind: str, value: object = None) -> str:
        return f"{self._p}-{kind}" if value is None else f"{self._p}-{kind}:{value}"


class RedisAccounts(_RedisKeys, Accounts):
    """``account-name:{name}`` -> id, ``account:{id}`` -> name and ``account-password:{id}``
    -> hash, ids from ``account-id``."""

    async def register(self, user_name: str, password_hash: str | None) -> tuple[int, bool]:
        existing = await self.user_id(user_name)
        if existing is not None:
            return existing, False
        name_key = self._key("account-name", user_name)
        user_id = int(await self._r.incr(self._key("account-id")))
        # Two routes registering one name at once: the first SET NX wins, the other
        # answers with the winner's id (the spare id is simply never used).
        if not await self._r.set(name_key, user_id, nx=True):
            return await self.register(user_name, password_hash)  # reads the winner's id
        async with self._r.pipeline(transaction=True) as account:  # name and hash land together
            account.set(self._key("account", user_id), user_name)
            if password_hash is not None:
                account.set(self._key("account-password", user_id), password_hash)
            await account.execute()
        return user_id, True

    async def user_id(self, user_name: str) -> int | None:
        user_id = await self._r.get(self._key("account-name", user_name))
        return None if user_id is None else int(user_id)

    async def password_hash(self, user_id: int) -> str | None:
        return _text(await self._r.get(self._key("account-password", user_id)))

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._r.set(self._key("account-password", user_id), password_hash)

    async def user_name(self, user_id: int) -> str | None:
        return _text(await self._r.get(self._key("account", user_id)))

    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        if not user_ids:
            return []
        names = await self._r.mget([self._key("account", u) for u in user_ids])
        return [_text(n) for n in names]


class RedisPresence(_RedisKeys, Presence):
    """``route:{id}`` per user (with a TTL while only claimed), ``node-users:{server}`` per server."""

    def __init__(self, client: aioredis.Redis, prefix: str = "cim") -> None:
        super().__init__(client, prefix)
        self._confirm = client.register_script(_CONFIRM)
        self._logout = client.register_script(_LOGOUT)
        self._clear_batch = client.register_script(_CLEAR_SERVER_BATCH)

    async def reserve_login(self, user_id: int, server_id: str, ttl: float) -> bool:
        return bool(await self._r.set(self._key("route", user_id), server_id, nx=True, px=max(1, int(ttl * 1000))))

    async def confirm_login(self, user_id: int, server_id: str) -> bool:
        keys = [self._key("route", user_id), self._key("node-users", server_id)]
        return bool(await self._confirm(keys=keys, args=[server_id, user_id]))

    async def logout(self, user_id: int, server_id: str | None = None) -> str | None:
        was = await self._logout(
            keys=[self._key("route", user_id)], args=[user_id, server_id or "", self._key("node-users") + ":"]
        )
        return _text(was)

    async def route(self, user_id: int) -> str | None:
        return _text(await self._r.get(self._key("route", user_id)))

    async def online_user_ids(self) -> list[int]:
        prefix = self._key("route") + ":"
        return [int(key[len(prefix) :]) async for key in self._r.scan_iter(match=prefix + "*", count=1000)]

    async def clear_server(self, server_id: str) -> list[int]:
        gone: list[int] = []
        key = self._key("node-users", server_id)
        while True:
            batch = await self._clear_batch(keys=[key], args=[server_id, self._key("route") + ":"])
            gone += [int(u) for u in batch]
            if not await self._r.exists(key):
                return gone

    async def allocate_node_number(self) -> int:
        return int(await self._r.incr(self._key("node-number"))) - 1


class RedisInbox(_RedisKeys, Inbox):
    """``offline:{id}``: a LIST per user, oldest first."""

    def __init__(self, client: aioredis.Redis, prefix: str = "cim") -> None:
        super().__init__(client, prefix)
        self._take = client.register_script(_TAKE)

    async def append(self, user_id: int, payloads: list[bytes]) -> None:
        if payloads:
            await self._r.rpush(self._key("offline", user_id), *payloads)

    async def restore(self, user_id: int, payloads: list[bytes]) -> None:
        if payloads:
            # LPUSH pushes one by one to the head: reversed keeps the batch's order.
            await self._r.lpush(self._key("offline", user_id), *reversed(payloads))

    async def take(self, user_id: int) -> list[bytes]:
        return list(await self._take(keys=[self._key("offline", user_id)]))


class RedisBus(_RedisKeys, Bus):
    """Pub/sub on ``node:{server}`` and ``broadcast``; owns its client (closed with it)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "cim") -> None:
        super().__init__(client, prefix)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def subscribe(self, node_id: str, handler: DeliveryHandler) -> None:
        self._pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._key("node", node_id), self._key("broadcast"))
        self._reader = asyncio.create_task(self._read(handler), name=f"cim-bus-{node_id}")

    async def _read(self, handler: DeliveryHandler) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                # redis-py re-subscribes on reconnect; keep reading after a blip.
                log.exception("bus connection failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if message is not None and message["type"] == "message":
                try:
                    handler(message["data"])
                except Exception:
                    log.exception("bus handler failed")

    async def publish(self, node_id: str, payload: bytes) -> None:
        await self._r.publish(self._key("node", node_id), payload)

    async def broadcast(self, payload: bytes) -> None:
        await self._r.publish(self._key("broadcast"), payload)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._r.aclose(close_connection_pool=True)


class RedisStore(Store):
    """``redis://``, ``rediss://``, ``unix://`` (any URL redis-py takes): the four parts
    on one Redis. Accounts, presence and inbox share one pool, which the store owns."""

    def __init__(self, client: aioredis.Redis, bus_client: aioredis.Redis, prefix: str = "cim") -> None:
        super().__init__(
            RedisAccounts(client, prefix), RedisPresence(client, prefix), RedisInbox(client, prefix),
            RedisBus(bus_client, prefix),
        )
        self._client = client

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> RedisStore:
        client = connect(url)
        try:
            await client.ping()  # an unreachable Redis fails the start, not the first login
        except BaseException:
            await client.aclose(close_connection_pool=True)
            raise
        # The bus has a pool of its own: its subscriber holds a connection for good.
        return cls(client, connect(url), config.key_prefix)

    async def close(self) -> None:
        await super().close()
        await self._client.aclose(close_connection_pool=True)
