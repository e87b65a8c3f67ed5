"""Server choice: consistent hashing spreads users evenly and keeps them in place."""

from __future__ import annotations

from collections import Counter

from cim.server_info import ServerInfo
from route.balance import ConsistentHashBalancer, LoopBalancer, RandomBalancer, make_balancer

SERVERS = [ServerInfo("10.0.0.1", 9000, 8081), ServerInfo("10.0.0.2", 9000, 8081), ServerInfo("10.0.0.3", 9000, 8081)]


def test_consistent_hash_gives_each_of_3_servers_a_third_of_10000_users() -> None:
    balancer = ConsistentHashBalancer()
    shares = Counter(balancer.pick(user_id, SERVERS) for user_id in range(1, 10_001))
    assert set(shares) == set(SERVERS)
    for server, count in shares.items():
        assert abs(count / 10_000 - 1 / 3) <= 0.05, (server, count)


def test_consistent_hash_moves_only_the_lost_servers_users() -> None:
    balancer = ConsistentHashBalancer()
    before = {u: balancer.pick(u, SERVERS) for u in range(1, 5001)}
    survivors = SERVERS[:2]
    after = {u: balancer.pick(u, survivors) for u in range(1, 5001)}
    moved = [u for u in before if before[u] != after[u]]
    assert all(before[u] == SERVERS[2] for u in moved)  # nobody else moves
    assert all(balancer.pick(u, SERVERS) == before[u] for u in range(1, 5001))  # and back again


def test_loop_and_random() -> None:
    loop = LoopBalancer()
    assert [loop.pick(1, SERVERS) for _ in range(6)] == SERVERS * 2
    chosen = Counter(RandomBalancer().pick(1, SERVERS) for _ in range(3000))
    assert set(chosen) == set(SERVERS) and min(chosen.values()) > 800
    assert isinstance(make_balancer("consistent-hash"), ConsistentHashBalancer)
