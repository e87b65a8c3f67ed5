"""The console's contacts' presence: "user X is online/offline" lines (``cim.presence``).

A contact is a user this console exchanged a private message with this session; the first
message either way subscribes to their presence. A server that does not know presence (CIM's)
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

    def met(self, user_id: int) -> None:
        """A private message to or from ``user_id``: watch them from now on (once)."""
        if user_id in self.contacts:
            return
        self.contacts.add(user_id)
        task = asyncio.create_task(self._subscribe(user_id))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _subscribe(self, user_id: int) -> None:
        # Not connected, or a server without presence: no lines, the conversation goes on.
        with contextlib.suppress(ClientError, ConnectionError, TimeoutError):
            await self.client.subscribe_presence([user_id])

    def close(self) -> None:
        for task in self._subscribing:
            task.cancel()
