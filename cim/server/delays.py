"""Role: deliver delayed messages when they come due.

Every node polls the store's schedule (``cim.backends.base.Delays``) a few times a
second and sends what is due through the normal path (``Messenger.deliver_due``).
Every node, not one elected: a take claims each entry for one caller atomically, so
polling nodes never deliver a message twice, and no election has to notice a node that
died. Stopping cancels the loop; an entry claimed and not yet sent comes due again
after its claim (``CLAIM_MS``), and its inbox dedup keeps it from arriving twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from cim.delivery import DUE_BATCH, Messenger

log = logging.getLogger("cim.server")

POLL_SECONDS = 0.25  # how late a delayed message may be, at most, past its due time (plus the sends)


class DelayPoller:
    """The node's loop over due delayed messages."""

    def __init__(self, messenger: Messenger, metrics: Counter[str]) -> None:
        self.messenger = messenger
        self.metrics = metrics

    async def poll(self) -> None:
        """Send everything due now: batch after batch while batches come full."""
        while (taken := await self.messenger.deliver_due()) > 0:
            self.metrics["delayed_due"] += taken
            if taken < DUE_BATCH:
                return

    async def run(self) -> None:
        """Poll every ``POLL_SECONDS`` until cancelled."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.poll()
            except Exception as err:  # the store is away: the next poll tries again
                self.metrics["errors"] += 1
                log.warning("delivering delayed messages failed: %r", err)
