"""Redis store (``redis://``, ``rediss://``, ``unix://``): accounts, presence, inbox, groups, delays, bus.

Keys (prefix configurable, default ``cim``):
    {p}-account-id                 INCR counter: user ids unique across routes
    {p}-account:{userId}           userName
    {p}-account-name:{userName}    userId
    {p}-account-password:{userId}  argon2 hash of the password (none under --auth none)
    {p}-route:{userId}             server id; with a TTL while only claimed by the route
    {p}-node-users:{serverId}      SET of users confirmed on that server (cleanup on death)
    {p}-node-number                INCR counter for message-id node numbers
Online users are found with SCAN over ``{p}-route:*``, never KEYS. A user's inbox keys
start with the hash tag ``{p:u:userId}`` (literal braces, e.g. ``{cim:u:42}:inbox``):
    {p:u:userId}:inbox             LIST of the user's kept messages, oldest first: store time + body
    {p:u:userId}:seq               the user's latest seq (INCRBY; never goes back)
    {p:u:userId}:dedup             HASH senderId:clientMsgId -> firstMsgId:k: the latest dedup pairs
    {p:u:userId}:dedup-old         HASH: the generation of pairs before those
    {p:u:userId}:cursors           HASH deviceId -> the last seq the device acknowledged
    {p:u:userId}:groups            SET of the numbers of the user's named groups (an index, see below)
Named groups, numbered by ``{p}-group-id`` (INCR: never reused), each under the hash tag ``{p:g:N}``
(group id ``gN``):
    {p:g:N}:info                   HASH name, owner
    {p:g:N}:members                SET of member ids (the owner always among them)
Delayed messages, under the one hash tag ``{p:delays}`` (every script over them is in one slot):
    {p:delays}:due                 ZSET entry id -> due time (ms since the epoch; a claim moves it ahead)
    {p:delays}:payloads            HASH entry id -> payload
    {p:delays}:next                INCR counter of entry ids
A change to a group is one script over its two keys (one Cluster slot): atomic, so the size limit
holds whatever routes change it at once. The members' ``:groups`` indexes are in their own slots and
follow in a pipeline; ``groups_of`` checks what an index names against the group, so an index a
crash left behind names no group the user is not in.

Inbox: a list and a counter rather than a Stream. A seq must be gap-free per user, which
Stream ids are not (they are time-based, or else ours to number anyway); a list read
from seq s is one LRANGE at offset s - (counter - LLEN + 1), and appends and retention
are RPUSH / LTRIM, the cheapest writes Redis has (LTRIM in batches: reads never look
past the count cap, so the list may hold up to 1/16 more for a while). Each append,
read or cursor move on a user is one Lua script over that user's keys (EVALSHA: one
round trip, atomic; EVAL once after a restart emptied Redis's script cache), and
the keys share the hash tag ``{p:u:ID}``, so every script touches one Redis Cluster
slot. A group send is one pipeline of such calls. Age retention uses the 8-byte store
time in front of each entry (Redis's clock: all nodes agree): appends and reads drop
what is older than the max age. Dedup pairs go in generations, as in the memory
inbox: once ``:dedup`` holds a window of pairs it becomes ``:dedup-old`` (the older
one dropped whole, UNLINK: freed off Redis's main thread), so the last window of
pairs is always remembered and no pair is forgotten one by one. Needs Redis 6+.

Bus: each node subscribes to ``{p}-node:{serverId}`` and ``{p}-broadcast``; a
private message is one PUBLISH to the receiver's node, a group message one PUBLISH
to the broadcast channel. Only this class knows that, so sharded pub/sub or
Streams can replace it behind the same interface.

Connections: the hot calls (every inbox call, presence, account lookups, publishes)
go through one auto-pipelined connection per store (``cim.backends.redis_batch``):
what all of a node's senders issue in one event-loop turn is one write, each caller
awaiting its own reply; a reply still means Redis did it. Registration (a MULTI)
keeps redis-py's pool; the bus subscriber has a connection of its own.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.typing import EncodableT

from cim.backends.base import (
    CLAIM_MS,
    Accounts,
    Bus,
    Delays,
    DeliveryHandler,
    DeviceLogin,
    GroupFull,
    GroupInfo,
    Groups,
    Inbox,
    Page,
    Presence,
    Store,
    Stored,
    format_group_id,
    parse_group_id,
)
from cim.backends.redis_batch import Batcher, Script, Subscriber, results

if TYPE_CHECKING:
    from cim.backends.memory import MemoryHub
    from cim.config import Config

log = logging.getLogger("cim.backends.redis")

# Redis's clock in ms, so every node agrees on times the scripts write.
_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
"""

# Presence scripts, each on one user's two keys (one Cluster slot): KEYS[1] the devices hash
# (device id -> "server|since ms"), KEYS[2] the claims hash (device id -> "server|expiry ms").
_PRESENCE_LIB = _NOW_MS + """
local function server_of(value)
  return string.match(value, '^(.*)|[^|]*$')
end
local function expiry_of(value)
  return tonumber(string.match(value, '|([^|]*)$'))
end
"""

# ARGV[1] server, ARGV[2] device, ARGV[3] ttl ms.
_RESERVE = _PRESENCE_LIB + """
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. '|' .. (now_ms() + tonumber(ARGV[3])))
-- The hash lives as long as its longest claim: a short claim must not cut another device's short.
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
"""

# ARGV[1] server, ARGV[2] device, ARGV[3] max other devices. Returns false (the user is at the
# limit) or the devices before, flat: {device, server, ...}.
_CONFIRM = _PRESENCE_LIB + """
local all = redis.call('HGETALL', KEYS[1])
local others = 0
local before = {}
for i = 1, #all, 2 do
  if all[i] ~= ARGV[2] then others = others + 1 end
  table.insert(before, all[i])
  table.insert(before, server_of(all[i + 1]))
end
if others >= tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1] .. '|' .. now_ms())
redis.call('HDEL', KEYS[2], ARGV[2])
return before
"""

# ARGV[1] device or '' with ARGV[3] '0' (every device), ARGV[2] server or '' (any). Returns
# {the confirmed devices cleared, flat {device, server, ...}; the servers the user still has}.
_LOGOUT = _PRESENCE_LIB + """
local cleared, still = {}, {}
for k = 1, 2 do
  local all = redis.call('HGETALL', KEYS[k])
  for i = 1, #all, 2 do
    local server = server_of(all[i + 1])
    if (ARGV[3] == '0' or all[i] == ARGV[1]) and (ARGV[2] == '' or server == ARGV[2]) then
      redis.call('HDEL', KEYS[k], all[i])
      if k == 1 then
        table.insert(cleared, all[i])
        table.insert(cleared, server)
      end
    elseif k == 1 then
      table.insert(still, server)
    end
  end
end
return {cleared, still}
"""

# Every server holding a confirmed device or a live claim (with repeats).
_SERVERS = _PRESENCE_LIB + """
local found = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do table.insert(found, server_of(value)) end
local now = now_ms()
for _, value in ipairs(redis.call('HVALS', KEYS[2])) do
  if expiry_of(value) > now then table.insert(found, server_of(value)) end
end
return found
"""

# Inbox scripts (RedisInbox). An entry of an inbox list is an 8-byte big-endian store
# time in ms (Redis's clock, so every node agrees) and the body. The list holds the user's
# latest messages, the seq counter numbers them: the list's head has seq counter - LLEN + 1.
_INBOX_LIB = _NOW_MS + """
local function stamp(entry)
  return (struct.unpack('>I8', entry))
end
-- Lua's unpack has a stack limit: long argument lists go in chunks.
local function call_chunked(command, key, items)
  local reply
  for i = 1, #items, 4000 do
    reply = redis.call(command, key, unpack(items, i, math.min(i + 3999, #items)))
  end
  return reply
end
-- Drop the entries stored before cutoff (ms): the oldest come first, so a binary search finds them.
local function expire(key, cutoff)
  local head = redis.call('LINDEX', key, 0)
  if not head or stamp(head) >= cutoff then return end
  local hi = redis.call('LLEN', key) - 1
  if stamp(redis.call('LINDEX', key, hi)) < cutoff then
    redis.call('DEL', key)
    return
  end
  local lo = 0  -- lo is expired, hi is kept
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if stamp(redis.call('LINDEX', key, mid)) < cutoff then lo = mid else hi = mid end
  end
  redis.call('LTRIM', key, hi, -1)
end
"""

# KEYS[1] inbox, KEYS[2] seq, KEYS[3] dedup hash (the latest pairs), KEYS[4] the generation
# before. ARGV[1] sender, ARGV[2] max messages, ARGV[3] max age ms, ARGV[4] dedup window,
# ARGV[5] the first msgId, ARGV[6] the clientMsgIds (8 bytes each, big-endian), ARGV[7..]
# the bodies. A dedup field is "sender:" + the 8 clientMsgId bytes, its value "firstMsgId:k"
# (the k-th of that append: Lua's numbers are doubles, so msgIds are never added up here).
# Returns {seq of the first body stored (0: none), then input index and value of each duplicate}.
_APPEND = _INBOX_LIB + """
local n = #ARGV - 6
local none = string.rep('\\0', 8)
local now = now_ms()
local fields, wanted = {}, {}
for k = 1, n do
  local id = string.sub(ARGV[6], 8 * k - 7, 8 * k)
  if id ~= none then
    local field = ARGV[1] .. ':' .. id
    fields[k] = field
    wanted[#wanted + 1] = field
  end
end
local known = {}
-- The pairs of this generation, then the misses in the one before.
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  local missing = {}
  for i = 1, #wanted, 4000 do
    local last = math.min(i + 3999, #wanted)
    local found = redis.call('HMGET', key, unpack(wanted, i, last))
    for j = i, last do
      local value = found[j - i + 1]
      if value then known[wanted[j]] = value else missing[#missing + 1] = wanted[j] end
    end
  end
  wanted = missing
  if #wanted == 0 then break end
end
local reply, kept, pairs = {0}, {}, {}
local prefix = struct.pack('>I8', now)
for k = 1, n do
  local field = fields[k]
  if field and known[field] then
    reply[#reply + 1] = k - 1
    reply[#reply + 1] = known[field]
  else
    if field then
      local value = ARGV[5] .. ':' .. (k - 1)
      known[field] = value  -- a pair twice in this call is a duplicate too
      pairs[#pairs + 1] = field
      pairs[#pairs + 1] = value
    end
    kept[#kept + 1] = prefix .. ARGV[6 + k]
  end
end
if #pairs > 0 then
  call_chunked('HSET', KEYS[3], pairs)
  if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then
    redis.call('UNLINK', KEYS[4])
    redis.call('RENAME', KEYS[3], KEYS[4])
  end
end
if #kept > 0 then
  local length = call_chunked('RPUSH', KEYS[1], kept)
  reply[1] = redis.call('INCRBY', KEYS[2], #kept) - #kept + 1
  local max = tonumber(ARGV[2])
  if length > max + math.max(16, math.floor(max / 16)) then
    redis.call('LTRIM', KEYS[1], -max, -1)
  end
end
expire(KEYS[1], now - tonumber(ARGV[3]))
return reply
"""

# KEYS[1] inbox, KEYS[2] seq. ARGV[1] after seq, ARGV[2] limit, ARGV[3] max messages,
# ARGV[4] max age ms. Returns {latest, truncated (0/1), seq of the first entry, entries}.
_READ = _INBOX_LIB + """
expire(KEYS[1], now_ms() - tonumber(ARGV[4]))
local latest = tonumber(redis.call('GET', KEYS[2]) or '0')
local head = latest - redis.call('LLEN', KEYS[1]) + 1
local first = math.max(head, latest - tonumber(ARGV[3]) + 1)
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local start = math.max(after + 1, first)
local entries = {}
if start <= latest and limit > 0 then
  entries = redis.call('LRANGE', KEYS[1], start - head, start - head + limit - 1)
end
return {latest, first > after + 1 and 1 or 0, start, entries}
"""

# KEYS[1] inbox, KEYS[2] seq. ARGV[1] before seq (0: past the latest), ARGV[2] limit, ARGV[3] max
# messages, ARGV[4] max age ms. Returns {latest, truncated (0/1), seq of the first entry, entries}:
# the newest entries below the before seq, one LRANGE (history pages back through it in chunks).
_READ_BACK = _INBOX_LIB + """
expire(KEYS[1], now_ms() - tonumber(ARGV[4]))
local latest = tonumber(redis.call('GET', KEYS[2]) or '0')
local head = latest - redis.call('LLEN', KEYS[1]) + 1
local first = math.max(head, latest - tonumber(ARGV[3]) + 1)
local before, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local stop = latest
if before > 0 then stop = math.min(before - 1, latest) end
local start = math.max(first, stop - limit + 1)
local entries = {}
if start <= stop then
  entries = redis.call('LRANGE', KEYS[1], start - head, stop - head)
end
return {latest, (start == first and first > 1) and 1 or 0, start, entries}
"""

# KEYS[1] cursors hash; ARGV[1] device id, ARGV[2] seq: a cursor only moves forward.
_RAISE_CURSOR = """
local seq = tonumber(ARGV[2])
if seq > tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
"""

# Group scripts: KEYS[1] the group's info hash, KEYS[2] its members set. A group that does not
# exist answers false (nil), so a change never brings a dissolved group back.
# ARGV[1] the size limit, ARGV[2..] the users (distinct). Returns {0, the users added...}, or
# {the size the group would have} past the limit, nobody added.
_GROUP_ADD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local reply = {0}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then reply[#reply + 1] = ARGV[i] end
end
local size = redis.call('SCARD', KEYS[2]) + #reply - 1
if size > tonumber(ARGV[1]) then return {size} end
for i = 2, #reply do redis.call('SADD', KEYS[2], reply[i]) end
return reply
"""

# ARGV: the users. Returns the ones that were members.
_GROUP_REMOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local removed = {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[2], ARGV[i]) == 1 then removed[#removed + 1] = ARGV[i] end
end
return removed
"""

# ARGV[1] the new name. Returns 1, or 0 for no such group.
_GROUP_RENAME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1])
return 1
"""

# Returns the members the group had.
_GROUP_DISSOLVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local members = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return members
"""

# KEYS: due, payloads, next; ARGV[1] due time, ARGV[2] payload. Returns the entry id.
_DELAYS_ADD = """
local id = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], ARGV[1], id)
redis.call('HSET', KEYS[2], id, ARGV[2])
return id
"""

# KEYS: due, payloads; ARGV[1] now, ARGV[2] limit, ARGV[3] the claim's end. The due entries, earliest
# first, each moved to the claim's end in the same script: no other node's take can get them.
# Returns {id, payload, id, payload, ...}.
_DELAYS_TAKE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local reply = {}
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    reply[#reply + 1] = id
    reply[#reply + 1] = payload
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return reply
"""

# KEYS: due, payloads; ARGV: the entry ids.
_DELAYS_DONE = """
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return 0
"""

STAMP_BYTES = 8  # the store time in front of every inbox entry


def _msg_id(value: bytes) -> int:
    """The msgId a dedup value ``firstMsgId:k`` names."""
    first, _, k = value.partition(b":")
    return int(first) + int(k)


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client whose pool is bounded and *waits* for a free connection: a burst of
    thousands of logins queues instead of failing with MaxConnectionsError.
    redis-py picks the hiredis parser by itself when hiredis is installed."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return aioredis.Redis(connection_pool=pool)


def _pairs(flat: list[bytes]) -> dict[str, str]:
    """A script's flat ``{key, value, ...}`` reply as a dict of text."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _text(reply: bytes | str | None) -> str | None:
    """A name or server id from a reply: the clients answer bytes (payloads are binary,
    so no ``decode_responses``); a Lua ``false`` arrives as None."""
    return reply.decode() if isinstance(reply, bytes) else reply


class _RedisKeys:
    """A client, its auto-pipelined connection and the key prefix every part of the
    store names its keys with. ``batcher``: shared with the store's other parts (one
    pipeline for all), else one of its own on ``client``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "cim", batcher: Batcher | None = None) -> None:
        self._r = client
        self._p = prefix
        self._b = batcher if batcher is not None else Batcher(client)
        self._owns_batcher = batcher is None

    def _key(self, kind: str, value: object = None) -> str:
        return f"{self._p}-{kind}" if value is None else f"{self._p}-{kind}:{value}"

    def _user_key(self, user_id: int, kind: str) -> str:
        """One user's key: the hash tag ``{p:u:ID}`` keeps all of them in one Cluster slot."""
        return f"{{{self._p}:u:{user_id}}}:{kind}"


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
        user_id = await self._b.call("GET", self._key("account-name", user_name))
        return None if user_id is None else int(user_id)

    async def password_hash(self, user_id: int) -> str | None:
        return _text(await self._b.call("GET", self._key("account-password", user_id)))

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._b.call("SET", self._key("account-password", user_id), password_hash)

    async def user_name(self, user_id: int) -> str | None:
        return _text(await self._b.call("GET", self._key("account", user_id)))

    async def user_names(self, user_ids: list[int]) -> list[str | None]:
        # One GET each in one pipeline, not MGET: the keys are in different Cluster slots.
        call = self._b.call
        futures = [call("GET", self._key("account", u)) for u in user_ids]
        return [_text(name) for name in await results(futures)]


class RedisPresence(_RedisKeys, Presence):
    """Per user ``{p:u:ID}:devices`` and ``{p:u:ID}:claims`` hashes (one Cluster slot, one script
    per change), and ``node-users:{server}``, the users who have a device there (for
    ``clear_server``; a user's membership is dropped with their last device there)."""

    _reserve = Script(_RESERVE)
    _confirm = Script(_CONFIRM)
    _logout = Script(_LOGOUT)
    _servers = Script(_SERVERS)

    def _keys(self, user_id: int) -> list[str]:
        return [self._user_key(user_id, "devices"), self._user_key(user_id, "claims")]

    async def reserve_login(self, user_id: int, server_id: str, ttl: float, device_id: str = "") -> None:
        await self._b.script(self._reserve, self._keys(user_id), [server_id, device_id, max(1, int(ttl * 1000))])

    async def confirm_login(self, user_id: int, server_id: str, device_id: str, max_devices: int) -> dict[str, str] | None:
        before = await self._b.script(self._confirm, self._keys(user_id), [server_id, device_id, max_devices])
        if before is None:
            return None
        await self._b.call("SADD", self._key("node-users", server_id), user_id)
        return _pairs(before)

    async def logout(self, user_id: int, server_id: str | None = None, device_id: str | None = None) -> dict[str, str]:
        args: list[EncodableT] = [device_id or "", server_id or "", "0" if device_id is None else "1"]
        cleared, still = await self._b.script(self._logout, self._keys(user_id), args)
        gone = _pairs(cleared)
        kept = {_text(server) for server in still}
        for server in set(gone.values()) - kept:
            await self._b.call("SREM", self._key("node-users", server), user_id)
        return gone

    async def servers(self, user_id: int) -> list[str]:
        found = await self._b.script(self._servers, self._keys(user_id), [])
        return list(dict.fromkeys(str(_text(server)) for server in found))

    async def devices(self, user_id: int) -> dict[str, DeviceLogin]:
        found = await self._b.call("HGETALL", self._user_key(user_id, "devices"))
        devices: dict[str, DeviceLogin] = {}
        for device_id, value in found.items():
            server, _, since = value.decode().rpartition("|")
            devices[device_id.decode()] = DeviceLogin(server, int(since))
        return devices

    async def online_user_ids(self) -> list[int]:
        head, tail = f"{{{self._p}:u:", "}:devices"  # as _user_key names them
        users: list[int] = []
        cursor: bytes | int = 0
        while True:
            cursor, keys = await self._b.call("SCAN", cursor, "MATCH", head + "*" + tail, "COUNT", 1000)
            users += [int(key.decode()[len(head) : -len(tail)]) for key in keys]
            if cursor in (b"0", 0):
                return list(dict.fromkeys(users))  # SCAN may return a key twice

    async def clear_server(self, server_id: str) -> list[int]:
        gone: list[int] = []
        key = self._key("node-users", server_id)
        while True:
            batch = [int(u) for u in await self._b.call("SPOP", key, 500)]
            cleared = await asyncio.gather(*(self.logout(user_id, server_id) for user_id in batch))
            gone += [user_id for user_id, devices in zip(batch, cleared, strict=True) if devices]
            if not batch:
                return gone

    async def allocate_node_number(self) -> int:
        return int(await self._b.call("INCR", self._key("node-number"))) - 1


class RedisInbox(_RedisKeys, Inbox):
    """``{p:u:ID}:inbox`` LIST, ``:seq`` counter, ``:dedup`` + ``:dedup-old`` HASHes,
    ``:cursors`` HASH per user; every call on one user is one script (one round trip)."""

    _append = Script(_APPEND)
    _read = Script(_READ)
    _read_back = Script(_READ_BACK)
    _raise_cursor = Script(_RAISE_CURSOR)

    def __init__(self, client: aioredis.Redis, config: Config, batcher: Batcher | None = None) -> None:
        super().__init__(client, config.key_prefix, batcher)
        self._max_messages = config.inbox_max_messages
        self._max_age_ms = max(1, round(config.inbox_max_age * 1000))
        self._window = config.dedup_window

    def _append_call(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                     client_msg_ids: list[int]) -> tuple[list[str], list[EncodableT]]:
        """The keys and arguments of the append script for one receiver."""
        keys = [self._user_key(receiver_id, kind) for kind in ("inbox", "seq", "dedup", "dedup-old")]
        # The clientMsgIds packed in one argument: every argument costs the script a Lua string.
        ids = struct.pack(f">{len(client_msg_ids)}Q", *client_msg_ids)
        args: list[EncodableT] = [sender_id, self._max_messages, self._max_age_ms, self._window, first_msg_id, ids, *bodies]
        return keys, args

    @staticmethod
    def _stored(bodies: list[bytes], reply: list[Any]) -> Stored:
        """The Stored an append script's reply describes."""
        duplicates = {int(reply[i]): _msg_id(reply[i + 1]) for i in range(1, len(reply), 2)}
        if not duplicates:
            return Stored(int(reply[0]), bodies)
        return Stored(int(reply[0]), [b for k, b in enumerate(bodies) if k not in duplicates], duplicates)

    async def append(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int,
                     client_msg_ids: list[int]) -> Stored:
        if not bodies:
            return Stored(0, bodies)
        keys, args = self._append_call(receiver_id, sender_id, bodies, first_msg_id, client_msg_ids)
        return self._stored(bodies, await self._b.script(self._append, keys, args))

    async def append_each(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                          client_msg_ids: list[int]) -> list[Stored]:
        if not bodies or not receiver_ids:
            return [Stored(0, bodies) for _ in receiver_ids]
        # One EVALSHA per receiver, all in one pipeline; a Redis that lost its script
        # cache (a restart) answers NOSCRIPT to those it did not run, which go again as EVAL.
        calls = [self._append_call(r, sender_id, bodies, first_msg_id, client_msg_ids) for r in receiver_ids]
        replies = await self._b.scripts(self._append, calls)
        return [self._stored(bodies, reply) for reply in replies]

    async def read(self, user_id: int, after_seq: int, limit: int) -> Page:
        keys = [self._user_key(user_id, "inbox"), self._user_key(user_id, "seq")]
        after_seq = max(0, after_seq)
        return self._page(await self._b.script(self._read, keys, [after_seq, limit, self._max_messages, self._max_age_ms]))

    async def read_back(self, user_id: int, before_seq: int, limit: int) -> Page:
        keys = [self._user_key(user_id, "inbox"), self._user_key(user_id, "seq")]
        args: list[EncodableT] = [max(0, before_seq), max(0, limit), self._max_messages, self._max_age_ms]
        return self._page(await self._b.script(self._read_back, keys, args))

    @staticmethod
    def _page(reply: list[Any]) -> Page:
        """The Page a read script's reply ``{latest, truncated, seq of the first entry, entries}`` describes."""
        latest, truncated, start, entries = reply
        return Page([(start + k, entry[STAMP_BYTES:]) for k, entry in enumerate(entries)], int(latest), bool(truncated))

    async def latest(self, user_ids: list[int]) -> list[int]:
        if not user_ids:
            return []
        # A pipeline, not MGET: the keys are in different Cluster slots.
        call = self._b.call
        futures = [call("GET", self._user_key(user_id, "seq")) for user_id in user_ids]
        return [int(seq or 0) for seq in await results(futures)]

    async def set_cursors(self, cursors: list[tuple[int, str, int]]) -> None:
        calls: list[tuple[list[str], list[EncodableT]]] = [
            ([self._user_key(user_id, "cursors")], [device_id, seq]) for user_id, device_id, seq in cursors
        ]
        if calls:
            await self._b.scripts(self._raise_cursor, calls)

    async def cursor(self, user_id: int, device_id: str) -> int:
        return int(await self._b.call("HGET", self._user_key(user_id, "cursors"), device_id) or 0)


class RedisGroups(_RedisKeys, Groups):
    """``{p:g:N}:info`` HASH and ``:members`` SET per group, ``{p:u:ID}:groups`` SET per user."""

    _add = Script(_GROUP_ADD)
    _remove = Script(_GROUP_REMOVE)
    _rename = Script(_GROUP_RENAME)
    _dissolve = Script(_GROUP_DISSOLVE)

    def __init__(self, client: aioredis.Redis, config: Config, batcher: Batcher | None = None) -> None:
        super().__init__(client, config.key_prefix, batcher)
        self._max = config.group_max_members

    def _group_keys(self, number: int) -> list[str]:
        return [f"{{{self._p}:g:{number}}}:info", f"{{{self._p}:g:{number}}}:members"]

    async def _index(self, number: int, user_ids: list[int], command: str) -> None:
        """SADD or SREM the group in each user's index: one pipeline."""
        call = self._b.call
        await results([call(command, self._user_key(u, "groups"), number) for u in user_ids])

    async def create(self, owner_id: int, name: str, member_ids: list[int]) -> str:
        members = sorted({owner_id, *member_ids})
        if len(members) > self._max:
            raise GroupFull("", len(members), self._max)
        number = int(await self._b.call("INCR", self._key("group-id")))
        info, members_key = self._group_keys(number)
        # No script: nobody knows the new id before this returns.
        await results([self._b.call("HSET", info, "name", name, "owner", owner_id), self._b.call("SADD", members_key, *members)])
        await self._index(number, members, "SADD")
        return format_group_id(number)

    async def info(self, group_id: str) -> GroupInfo | None:
        number = parse_group_id(group_id)
        if number is None:
            return None
        info, members = self._group_keys(number)
        (name, owner), users = await results([self._b.call("HMGET", info, "name", "owner"), self._b.call("SMEMBERS", members)])
        if owner is None:
            return None
        return GroupInfo(group_id, name.decode(), int(owner), sorted(int(u) for u in users))

    async def members(self, group_id: str) -> list[int] | None:
        number = parse_group_id(group_id)
        if number is None:
            return None
        users = await self._b.call("SMEMBERS", self._group_keys(number)[1])
        return [int(u) for u in users] or None  # a group always holds its owner: empty is none

    async def add(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        number = parse_group_id(group_id)
        if number is None:
            return None
        reply = await self._b.script(self._add, self._group_keys(number), [self._max, *sorted(set(user_ids))])
        if reply is None:
            return None
        if int(reply[0]):
            raise GroupFull(group_id, int(reply[0]), self._max)
        added = [int(u) for u in reply[1:]]
        await self._index(number, added, "SADD")
        return added

    async def remove(self, group_id: str, user_ids: list[int]) -> list[int] | None:
        number = parse_group_id(group_id)
        if number is None:
            return None
        reply = await self._b.script(self._remove, self._group_keys(number), sorted(set(user_ids)))
        if reply is None:
            return None
        removed = [int(u) for u in reply]
        await self._index(number, removed, "SREM")
        return removed

    async def rename(self, group_id: str, name: str) -> bool:
        number = parse_group_id(group_id)
        return number is not None and bool(await self._b.script(self._rename, self._group_keys(number), [name]))

    async def dissolve(self, group_id: str) -> list[int] | None:
        number = parse_group_id(group_id)
        if number is None:
            return None
        reply = await self._b.script(self._dissolve, self._group_keys(number), [])
        if reply is None:
            return None
        members = sorted(int(u) for u in reply)
        await self._index(number, members, "SREM")
        return members

    async def groups_of(self, user_id: int) -> list[str]:
        numbers = sorted(int(n) for n in await self._b.call("SMEMBERS", self._user_key(user_id, "groups")))
        call = self._b.call
        member = await results([call("SISMEMBER", self._group_keys(n)[1], user_id) for n in numbers])
        return [format_group_id(n) for n, yes in zip(numbers, member, strict=True) if yes]


class RedisDelays(_RedisKeys, Delays):
    """One ZSET by due time and one HASH of payloads for the whole store: a schedule is read by
    due time across all users, so it cannot be split by user; one script per call keeps it atomic."""

    _add = Script(_DELAYS_ADD)
    _take = Script(_DELAYS_TAKE)
    _done = Script(_DELAYS_DONE)

    def _keys(self, *kinds: str) -> list[str]:
        return [f"{{{self._p}:delays}}:{kind}" for kind in kinds]

    async def add(self, due_ms: int, payload: bytes) -> int:
        return int(await self._b.script(self._add, self._keys("due", "payloads", "next"), [due_ms, payload]))

    async def take_due(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        reply = await self._b.script(self._take, self._keys("due", "payloads"), [now_ms, limit, now_ms + CLAIM_MS])
        return [(int(reply[k]), bytes(reply[k + 1])) for k in range(0, len(reply), 2)]

    async def done(self, entry_ids: list[int]) -> None:
        if entry_ids:
            await self._b.script(self._done, self._keys("due", "payloads"), entry_ids)


class RedisBus(_RedisKeys, Bus):
    """Pub/sub on ``node:{server}`` and ``broadcast``; owns ``client`` (closed with it).
    Publishes go through ``batcher`` (the store's: one pipeline with the appends before
    them), else a connection of its own; the subscriber has a connection of its own."""

    def __init__(self, client: aioredis.Redis, prefix: str = "cim", batcher: Batcher | None = None) -> None:
        super().__init__(client, prefix, batcher)
        self._subscriber: Subscriber | None = None

    async def subscribe(self, node_id: str, handler: DeliveryHandler) -> None:
        channels = [self._key("node", node_id), self._key("broadcast")]
        self._subscriber = Subscriber(self._r, channels, handler, name=f"cim-bus-{node_id}")
        await self._subscriber.start()

    async def publish(self, node_id: str, payload: bytes) -> None:
        await self._b.call("PUBLISH", self._key("node", node_id), payload)

    async def broadcast(self, payload: bytes) -> None:
        await self._b.call("PUBLISH", self._key("broadcast"), payload)

    async def close(self) -> None:
        if self._subscriber is not None:
            await self._subscriber.close()
        if self._owns_batcher:
            await self._b.close()
        await self._r.aclose(close_connection_pool=True)


class RedisStore(Store):
    """``redis://``, ``rediss://``, ``unix://`` (any URL redis-py takes): the store's parts
    on one Redis. The six share one auto-pipelined connection (``Batcher``), and
    registration one redis-py pool; the store owns and closes both."""

    def __init__(self, client: aioredis.Redis, bus_client: aioredis.Redis, config: Config,
                 batcher: Batcher | None = None) -> None:
        prefix = config.key_prefix
        batcher = batcher if batcher is not None else Batcher(client)  # one pipeline for all six parts
        super().__init__(
            RedisAccounts(client, prefix, batcher), RedisPresence(client, prefix, batcher),
            RedisInbox(client, config, batcher), RedisGroups(client, config, batcher), RedisDelays(client, prefix, batcher),
            RedisBus(bus_client, prefix, batcher),
        )
        self._client = client
        self._batcher = batcher

    @classmethod
    async def open(cls, url: str, config: Config, hub: MemoryHub) -> RedisStore:
        client = connect(url)
        batcher = Batcher(client)
        try:
            await batcher.call("PING")  # an unreachable Redis fails the start, not the first login
        except BaseException:
            await batcher.close()
            await client.aclose(close_connection_pool=True)
            raise
        # The bus's subscriber has a connection (and settings) of its own.
        return cls(client, connect(url), config, batcher)

    async def close(self) -> None:
        await super().close()
        await self._batcher.close()
        await self._client.aclose(close_connection_pool=True)
