"""Choosing a cim-server for a user: loop, random, consistent-hash."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from abc import ABC, abstractmethod

from cim.server_info import ServerInfo


class Balancer(ABC):
    """A policy for which live cim-server a user logs in to."""

    @abstractmethod
    def pick(self, user_id: int, servers: list[ServerInfo]) -> ServerInfo:
        """One of ``servers`` (non-empty, sorted) for ``user_id``."""


class LoopBalancer(Balancer):
    """Round robin over the live list."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, user_id: int, servers: list[ServerInfo]) -> ServerInfo:
        return servers[next(self._counter) % len(servers)]


class RandomBalancer(Balancer):
    """Any live server, uniformly at random."""

    def pick(self, user_id: int, servers: list[ServerInfo]) -> ServerInfo:
        return random.choice(servers)


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "big")


class ConsistentHashBalancer(Balancer):
    """A hash ring with virtual nodes: a user keeps their server while it lives,
    and a server joining or leaving moves only its share of users."""

    def __init__(self, virtual_nodes: int = 1000) -> None:
        self.virtual_nodes = virtual_nodes
        self._ring_for: tuple[ServerInfo, ...] = ()
        self._points: list[int] = []
        self._owners: list[ServerInfo] = []

    def _build(self, servers: list[ServerInfo]) -> None:
        ring = sorted((_hash(f"{s.id}#{i}"), s) for s in servers for i in range(self.virtual_nodes))
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self._ring_for = tuple(servers)

    def pick(self, user_id: int, servers: list[ServerInfo]) -> ServerInfo:
        if tuple(servers) != self._ring_for:
            self._build(servers)
        i = bisect.bisect(self._points, _hash(str(user_id))) % len(self._points)
        return self._owners[i]


def make_balancer(name: str) -> Balancer:
    return {"loop": LoopBalancer, "random": RandomBalancer, "consistent-hash": ConsistentHashBalancer}[name]()
