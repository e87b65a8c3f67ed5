"""The SDK's history calls (``Client.history``): in-band HISTORY requests, matched to their answers.

A mixin of ``cim.client.sdk.Client``: the request goes out on the client's connection with an id of
its own (``clientMsgId``), the client's read loop hands each ``HistoryAnswer`` to ``_history_answered``,
and the await returns the page. The server answers a connection's requests in order; a request whose
connection drops before the answer times out (``send_timeout``): ask again after the reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from cim.client.delivery import Delivery, Step
from cim.client.route import ClientError
from cim.protocols.client import HistoryAnswer, Pushed
from cim.status import Status


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of the user's own inbox, oldest first (see ``cim.history``): scroll back with
    ``before_seq=page.next_seq`` while ``has_more``. ``truncated``: retention had dropped older messages."""

    messages: list[Pushed]
    has_more: bool
    next_seq: int
    truncated: bool


class HistoryCalls:
    """``history``, for ``Client``: the attributes below are the client's."""

    delivery: Delivery
    send_timeout: float
    _apply: Callable[[Step], None]  # writes a step's data on the connection, whatever its transport

    @cached_property
    def _history_waiters(self) -> dict[int, asyncio.Future[HistoryAnswer]]:
        return {}

    @cached_property
    def _history_ids(self) -> itertools.count[int]:
        return itertools.count(1)

    async def history(self, *, peer_id: int = 0, group_id: str = "", before_seq: int = 0, after_seq: int = 0,
                      limit: int = 50, keyword: str = "") -> HistoryPage:
        """A page of this user's inbox: the conversation with ``peer_id`` or the group ``group_id`` (neither:
        all of it), the newest ``limit`` (1-200) before ``before_seq`` (0: from the latest) or the oldest after
        ``after_seq``, only messages containing ``keyword`` (case-insensitive) if given. ``ClientError`` 3000
        for a bad query (both ids, a group the user is not in, an unknown user), ``ConnectionError`` when not
        connected, ``TimeoutError`` when no answer came within ``send_timeout``."""
        connection = self.delivery.connection
        if connection is None or not self.delivery.logged_in:
            raise ConnectionError("not connected")
        request_id = next(self._history_ids)
        future = self._history_waiters[request_id] = asyncio.get_running_loop().create_future()
        self._apply(Step(data=bytearray(connection.history(request_id, peer_id, group_id, before_seq, after_seq, limit,
                                                           keyword))))
        try:
            answer = await asyncio.wait_for(future, self.send_timeout)
        except TimeoutError:
            raise TimeoutError(f"no history answer within {self.send_timeout} s") from None
        finally:
            self._history_waiters.pop(request_id, None)
        if answer.code != Status.SUCCESS.code:
            raise ClientError(answer.code, answer.message)
        return HistoryPage(list(answer.messages), answer.has_more, answer.next_seq, answer.truncated)

    def _history_answered(self, answer: HistoryAnswer) -> None:
        """An answer from the read loop: to the await that asked (none: it timed out already)."""
        future = self._history_waiters.get(answer.request_id)
        if future is not None and not future.done():
            future.set_result(answer)
