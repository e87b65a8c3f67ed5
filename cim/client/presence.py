"""The SDK's presence calls (``Client.subscribe_presence``, ``Client.on_presence``): see ``cim.presence``.

A mixin of ``cim.client.sdk.Client``, like ``cim.client.history``: a SUBSCRIBE_PRESENCE goes out with
an id of its own, the read loop hands each ``PresenceReport`` to ``_presence_reported``: an answer to
the await that asked, an event (a watched user came or went) to ``on_presence(user_id, online)``.
The server forgets a connection's watches when it closes, so the client keeps the users it watches and
subscribes to them again after every reconnect: their states then come to ``on_presence`` as events (any
may have changed meanwhile, unheard).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from functools import cached_property

from cim.client.delivery import Delivery, Step
from cim.client.route import ClientError
from cim.protocols.client import ClientConnection, HistoryAnswer, PresenceReport
from cim.status import Status

log = logging.getLogger("cim.client")

PresenceCallback = Callable[[int, bool], object]


class PresenceCalls:
    """``subscribe_presence`` and ``unsubscribe_presence``, for ``Client``: the attributes below are the client's."""

    delivery: Delivery
    send_timeout: float
    _apply: Callable[[Step], None]  # writes a step's data on the connection, whatever its transport
    _history_answered: Callable[[HistoryAnswer], None]  # cim.client.history's
    on_presence: PresenceCallback | None = None  # (user id, online): a watched user came or went (debounced)

    @cached_property
    def _presence_waiters(self) -> dict[int, asyncio.Future[PresenceReport]]:
        return {}

    @cached_property
    def _presence_ids(self) -> itertools.count[int]:
        return itertools.count(1)

    @cached_property
    def _watched(self) -> set[int]:
        """The users this client watches, for its next connection."""
        return set()

    async def subscribe_presence(self, user_ids: list[int]) -> dict[int, bool]:
        """Watch these users (at most 1000 per connection): their states now (True: online); later changes
        go to ``on_presence``. ``ClientError`` 3000 for unknown users or too many, ``ConnectionError`` when
        not connected, ``TimeoutError`` when no answer came within ``send_timeout``."""
        connection = self._presence_connection()
        request_id = next(self._presence_ids)
        future = self._presence_waiters[request_id] = asyncio.get_running_loop().create_future()
        self._apply(Step(data=bytearray(connection.subscribe_presence(request_id, user_ids))))
        try:
            answer = await asyncio.wait_for(future, self.send_timeout)
        except TimeoutError:
            raise TimeoutError(f"no presence answer within {self.send_timeout} s") from None
        finally:
            self._presence_waiters.pop(request_id, None)
        if answer.code != Status.SUCCESS.code:
            raise ClientError(answer.code, answer.message)
        self._watched.update(user_ids)
        states: dict[int, bool] = answer.states
        return states

    def unsubscribe_presence(self, user_ids: list[int]) -> None:
        """Stop watching these users (no answer)."""
        self._watched.difference_update(user_ids)
        self._apply(Step(data=bytearray(self._presence_connection().subscribe_presence(0, user_ids, unsubscribe=True))))

    def _watch_again(self) -> None:
        """Logged in (again): subscribe to the watched users on this connection; the answer, with no
        request id, comes as events."""
        if self._watched:
            self._apply(Step(data=bytearray(self._presence_connection().subscribe_presence(0, sorted(self._watched)))))

    def _presence_connection(self) -> ClientConnection:
        connection = self.delivery.connection
        if connection is None or not self.delivery.logged_in:
            raise ConnectionError("not connected")
        return connection

    def _answered(self, event: HistoryAnswer | PresenceReport) -> None:
        """An answer (or presence event) from the read loop, to the mixin it is for."""
        if isinstance(event, HistoryAnswer):
            self._history_answered(event)
        else:
            self._presence_reported(event)

    def _presence_reported(self, report: PresenceReport) -> None:
        """A report from the read loop: an answer to its await (none: it timed out), or an event."""
        if report.request_id:
            future = self._presence_waiters.get(report.request_id)
            if future is not None and not future.done():
                future.set_result(report)
            return
        if self.on_presence is not None:
            for user_id, online in report.states.items():
                try:
                    self.on_presence(user_id, online)
                except Exception:  # the app's bug must not stall the connection
                    log.exception("the app's on_presence failed on user %d", user_id)
