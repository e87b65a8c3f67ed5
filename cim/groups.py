"""Named groups' rules: who may create, change, read and leave a group, and the notices a change sends.

The membership itself is the store's (``cim.backends.base.Groups``: memory, Redis, SQLite); sending to a
group is ``cim.delivery.Messenger.send_to_group``. Rules:

* The creator owns the group and is always a member: only the owner adds, removes, renames and
  dissolves; the owner cannot leave or be removed (dissolving is how the owner ends it).
* Only members read the member list (or send: the Messenger checks that).
* Every user named must be registered; a group holds at most ``Config.group_max_members``.
* Every change is a notice (``Response.notice``, with ``groupId`` and a sentence in ``resMsg``) from
  the user who made it, in the inbox of everyone who was or is a member: the removed learn they were
  removed, and the actor's other devices see it too.

Every refusal is ``CimError(VALIDATION_FAIL)`` (3000, HTTP 200) naming what is wrong: 4003 is the
token's refusal, which HTTP answers with 403 (``route.app``), and a rule is not about the token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cim.backends import Backends, GroupFull, GroupInfo
from cim.delivery import Messenger
from cim.messages import Sender
from cim.status import CimError, Status


def _refused(message: str) -> CimError:
    return CimError(Status.VALIDATION_FAIL, message)


def _no_such_group(group_id: str) -> CimError:
    return _refused(f"groupId {group_id!r}: no such group")


def _names(user_ids: list[int], names: dict[int, str]) -> str:
    return ", ".join(f"{names.get(u, '?')}({u})" for u in user_ids)


class GroupRules:
    """The group operations, each checked against the rules and announced by a notice."""

    def __init__(self, backends: Backends, messenger: Messenger) -> None:
        self.accounts = backends.accounts
        self.groups = backends.groups
        self.messenger = messenger

    async def _registered(self, user_id: int, member_ids: Sequence[int] = ()) -> dict[int, str]:
        """The names of the user acting and of the members named (one lookup); 3000 naming the
        field of the first that is not registered."""
        distinct = sorted({user_id, *member_ids})
        names = await self.accounts.user_names(distinct)
        for each, name in zip(distinct, names, strict=True):
            if name is None:
                raise _refused(f"{'userId' if each == user_id else 'members'}: user {each} is not a registered user")
        return {u: n for u, n in zip(distinct, names, strict=True) if n is not None}

    async def _group(self, group_id: str) -> GroupInfo:
        info = await self.groups.info(group_id)
        if info is None:
            raise _no_such_group(group_id)
        return info

    async def _owned(self, user_id: int, group_id: str, action: str) -> GroupInfo:
        info = await self._group(group_id)
        if info.owner_id != user_id:
            raise _refused(f"groupId {group_id!r}: only its owner (user {info.owner_id}) may {action}")
        return info

    async def _member_of(self, user_id: int, group_id: str) -> GroupInfo:
        info = await self._group(group_id)
        if user_id not in info.members:
            raise _refused(f"groupId {group_id!r}: user {user_id} is not a member")
        return info

    async def _notify(self, actor_id: int, names: dict[int, str], group_id: str, receivers: list[int], text: str) -> None:
        actor = Sender.of(actor_id, names[actor_id])
        await self.messenger.notify(actor, group_id, sorted(set(receivers)), text)

    def _full(self, err: GroupFull) -> CimError:
        return _refused(f"members: {err} (--group-max-members)")

    # -- operations ------------------------------------------------------------

    async def create(self, owner_id: int, name: str, member_ids: list[int]) -> str:
        """A new group owned by ``owner_id``, with the members named; its id."""
        names = await self._registered(owner_id, member_ids)
        try:
            group_id = await self.groups.create(owner_id, name, member_ids)
        except GroupFull as err:
            raise self._full(err) from None
        members = sorted(names)
        await self._notify(owner_id, names, group_id, members,
                           f"{names[owner_id]} created the group {name!r} ({group_id}) with {_names(members, names)}")
        return group_id

    async def add_members(self, user_id: int, group_id: str, member_ids: list[int]) -> list[int]:
        """The users added (those already members are left as they are)."""
        info = await self._owned(user_id, group_id, "add members")
        names = await self._registered(user_id, member_ids)
        try:
            added = await self.groups.add(group_id, member_ids)
        except GroupFull as err:
            raise self._full(err) from None
        if added is None:
            raise _no_such_group(group_id)
        if added:
            await self._notify(user_id, names, group_id, info.members + added,
                               f"{names[user_id]} added {_names(added, names)} to {info.name!r}")
        return added

    async def remove_members(self, user_id: int, group_id: str, member_ids: list[int]) -> list[int]:
        """The users removed (those who were not members are left out)."""
        info = await self._owned(user_id, group_id, "remove members")
        if user_id in member_ids:
            raise _refused(f"members: the owner (user {user_id}) cannot be removed; dissolve the group instead")
        names = await self._registered(user_id, member_ids)
        removed = await self.groups.remove(group_id, member_ids)
        if removed is None:
            raise _no_such_group(group_id)
        if removed:
            await self._notify(user_id, names, group_id, info.members,
                               f"{names[user_id]} removed {_names(removed, names)} from {info.name!r}")
        return removed

    async def leave(self, user_id: int, group_id: str) -> None:
        info = await self._member_of(user_id, group_id)
        if info.owner_id == user_id:
            raise _refused(f"groupId {group_id!r}: the owner cannot leave; dissolve the group instead")
        names = await self._registered(user_id)
        if await self.groups.remove(group_id, [user_id]):
            await self._notify(user_id, names, group_id, info.members, f"{names[user_id]} left {info.name!r}")

    async def members(self, user_id: int, group_id: str) -> tuple[GroupInfo, dict[int, str]]:
        """The group (members only) and its members' names."""
        info = await self._member_of(user_id, group_id)
        names = await self.accounts.user_names(info.members)
        return info, {u: n or "" for u, n in zip(info.members, names, strict=True)}

    async def groups_of(self, user_id: int) -> list[GroupInfo]:
        """The user's groups, by id (one dissolved meanwhile is left out)."""
        await self._registered(user_id)
        found = await asyncio.gather(*(self.groups.info(g) for g in await self.groups.groups_of(user_id)))
        return [info for info in found if info is not None]

    async def rename(self, user_id: int, group_id: str, name: str) -> None:
        info = await self._owned(user_id, group_id, "rename it")
        names = await self._registered(user_id)
        if await self.groups.rename(group_id, name):
            await self._notify(user_id, names, group_id, info.members,
                               f"{names[user_id]} renamed {info.name!r} to {name!r}")

    async def dissolve(self, user_id: int, group_id: str) -> None:
        info = await self._owned(user_id, group_id, "dissolve it")
        names = await self._registered(user_id)
        members = await self.groups.dissolve(group_id)
        if members:
            await self._notify(user_id, names, group_id, members, f"{names[user_id]} dissolved {info.name!r}")
