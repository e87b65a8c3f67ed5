"""Backends behind small interfaces (``cim.backends.base``), opened by URL
(``cim.backends.registry.open_backends``): memory, redis, zookeeper.

Only the interfaces are imported here: ``base`` imports nothing from this package,
so ``from cim.backends import Backends`` forms no import cycle, and the backends
themselves (with redis and kazoo) load only with the registry.
"""

from __future__ import annotations

from cim.backends.base import (
    Accounts,
    Backends,
    Bus,
    Delays,
    DeviceLogin,
    Discovery,
    GroupFull,
    GroupInfo,
    Groups,
    Inbox,
    Page,
    Presence,
    Store,
    Stored,
    merged_duplicates,
)

__all__ = [
    "Accounts", "Backends", "Bus", "Delays", "DeviceLogin", "Discovery", "GroupFull", "GroupInfo", "Groups", "Inbox", "Page",
    "Presence", "Store", "Stored", "merged_duplicates",
]
