"""The console's contacts' presence: "user X is online/offline" lines (``cim.presence``).

A contact is a user this console exchanged a private message with this session, or one of its
named groups' members it met: a group's sender, the members of a group it made, or listed with
``:g members``. The first meeting subscribes to their presence. A server that does not know presence (CIM's)
never answers, and the console says nothing about it: only the lines a server sends are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from cim.client.route import ClientError
from cim.client.sdk import Client


class ContactPresence:
    """Subscribes to each new contact once and prints their comings and goings."""

    def __init__(self, client: Client, write: Callable[[str], None]) -> None:
        self.client = client
        self.write = write
        self.contacts: set[int] = {client.user_id}  # oneself is no contact
        self._subscribing: set[asyncio.Task[None]] = set()
        client.on_presence = self.changed

    def changed(self, user_id: int, online: bool) -> None:
        self.write(f"user {user_id} is {'online' if online else 'offline'}")

    def met(self, *user_ids: int) -> None:
        """Watch these users from now on (each once)."""
        new = [user_id for user_id in dict.fromkeys(user_ids) if user_id not in self.contacts]
        if not new:
            return
        self.contacts.update(new)
        task = asyncio.create_task(self._subscribe(new))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _subscribe(self, user_ids: list[int]) -> None:
        # Not connected, a server without presence, or past the watch limit: no lines, the conversation goes on.
        with contextlib.suppress(ClientError, ConnectionError, TimeoutError):
            await self.client.subscribe_presence(user_ids)

    def close(self) -> None:
        for task in self._subscribing:
            task.cancel()
