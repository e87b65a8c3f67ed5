"""``GET /metrics`` in Prometheus's format, parsed by prometheus_client's own parser after
real traffic: a cim-server and a route in this process, and ``--workers 2`` summed."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cim.backends.memory import MemoryHub
from cim.client import Client, RouteClient, register
from cim.messages import Sender
from cim.proto import BaseCommand, Delivery, Response
from cim.run import Running, start
from cim.testing.services import CimProcess, free_port, free_ports_in_a_row
from cim.wire import push_bodies
from tests.conftest import PASSWORD, RawClient, eventually, new_secret, online, register_user, route_url, stack_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/metrics")
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (a KeyError if there is none)."""
    return samples[name, frozenset(labels.items())]


def node_port(running: Running) -> int:
    assert running.node_http is not None
    return running.node_http.port


async def send(client: RawClient, text: str, msg_id: int, to: int | None = None) -> Response:
    """Send one message and return its receipt (skipping pushes to the sender)."""
    client.send(reqMsg=text, cmd=BaseCommand.MESSAGE, clientMsgId=msg_id,
                properties={"receiveUserId": str(to)} if to else None)
    while (frame := await client.next()).cmd != BaseCommand.SEND_RECEIPT:
        pass
    return frame


async def test_server_series_count_what_was_done(stack: Running) -> None:
    alice, a = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    carol = await register_user(stack, "carol")  # never online: a message to her is stored (7000)
    codes = [(await send(a, f"hi {i}", i + 1, to=bob)).code for i in range(3)]  # local: the hot path
    codes += [(await send(a, f"all {i}", 10 + i)).code for i in range(2)]  # to everyone: over the bus
    codes += [(await send(a, "stored", 20, to=carol)).code, (await send(a, "lost", 21, to=999_999)).code]
    assert codes == [9000] * 5 + [7000, 3000]
    assert [(await b.next()).resMsg for _ in range(5)] == ["hi 0", "hi 1", "hi 2", "all 0", "all 1"]
    assert stack.node is not None
    stranger = await RawClient.connect(stack.node.port)
    stranger.send(reqMsg="no login first", cmd=BaseCommand.MESSAGE)  # a protocol violation: error, then close
    await stranger.closed()

    samples = await scrape(node_port(stack))
    assert value(samples, "cim_logins_total") == 2
    assert value(samples, "cim_sessions") == 2
    assert value(samples, "cim_connections") == 2
    assert value(samples, "cim_connections_opened_total") >= 3  # the route's reachability probes connect too
    assert value(samples, "cim_protocol_errors_total") == 1
    assert value(samples, "cim_messages_in_total") == 7
    # To bob 5 (the group messages reach everyone but alice); to alice her copies of the 6 stored (cim.delivery).
    assert value(samples, "cim_messages_out_total") == 5 + 6
    assert value(samples, "cim_bytes_in_total") > 0
    assert {code: value(samples, "cim_receipts_total", code=code) for code in ("9000", "7000", "3000")} == {
        "9000": 5, "7000": 1, "3000": 1,
    }
    assert value(samples, "cim_messages_backend_total") == 4
    # Each run through the backends is timed (the local ones are answered in their read's callback).
    assert value(samples, "cim_send_receipt_seconds_count") == 4
    assert value(samples, "cim_send_receipt_seconds_bucket", le="+Inf") == 4
    assert value(samples, "cim_delivery_seconds_count") == 2  # one delivery per group message
    assert value(samples, "cim_max_connections") > 0

    a.close()
    await eventually(lambda: stack.node is not None and stack.node.metrics["logouts"] == 1)  # after the close
    samples = await scrape(node_port(stack))
    assert (value(samples, "cim_logouts_total"), value(samples, "cim_sessions")) == (1, 1)


async def test_delivery_time_is_of_fresh_pushes_only(stack: Running) -> None:
    alice, _ = await online(stack, "alice")
    bob, b = await online(stack, "bob")
    assert stack.node is not None
    now_ms, prefix = int(time.time() * 1000), Sender.of(alice, "alice").prefix
    stored = push_bodies(prefix, [b"stored an hour ago"], 1, now_ms - 3_600_000, [0])
    fresh = push_bodies(prefix, [b"fresh"], 2, now_ms, [0])
    session = stack.node.sessions.by_user[bob]
    session.streams[0].login_seq = 1  # it was there before bob logged in: /fetchOfflineMsgs hands it back
    for delivery in (Delivery(messages=stored, receiverIds=[bob], firstSeqs=[1], replay=True),
                     Delivery(messages=fresh, receiverIds=[bob], firstSeqs=[1])):
        stack.node.deliveries.on_delivery(delivery.SerializeToString())
    assert [(await b.next()).resMsg for _ in range(2)] == ["stored an hour ago", "fresh"]
    samples = await scrape(node_port(stack))
    assert value(samples, "cim_delivery_seconds_count") == 1  # handing back stored messages is not delivery time
    assert value(samples, "cim_delivery_seconds_bucket", le="10.0") == 1


async def test_limit_hits_and_their_receipts() -> None:
    running = await start(stack_config(max_messages_per_second=1), {"server", "route"}, MemoryHub())  # a burst of 2
    try:
        alice, a = await online(running, "alice")
        bob, _ = await online(running, "bob")
        for msg_id in range(1, 6):  # one write: one read, one run of 5
            a.send(reqMsg=f"flood {msg_id}", cmd=BaseCommand.MESSAGE, clientMsgId=msg_id,
                   properties={"receiveUserId": str(bob)})
        receipts = [await a.next() for _ in range(5)]
        assert [r.code for r in receipts] == [9000, 9000, 4029, 4029, 4029]
        samples = await scrape(node_port(running))
        assert value(samples, "cim_receipts_total", code="9000") == 2
        assert value(samples, "cim_receipts_total", code="4029") == 3
        assert value(samples, "cim_limit_hits_total", limit="messages") >= 1
    finally:
        await running.stop()


async def test_route_series_by_path_status_and_code(stack: Running) -> None:
    url = route_url(stack)
    async with RouteClient(url) as route:
        alice = await route.register("alice", PASSWORD)
        await route.register("bob", PASSWORD)
        await route.login(alice, "alice", PASSWORD)
    async with httpx.AsyncClient(base_url=url) as http:
        wrong = await http.post("/login", json={"userId": alice, "userName": "mallory", "password": PASSWORD})
        assert (wrong.json()["code"], wrong.headers["cim-code"]) == ("9100", "9100")
        assert (await http.get("/no/such/path")).status_code == 404
        assert (await http.get("/onlineUser")).json()["code"] == "9000"
    assert stack.route_http is not None
    samples = await scrape(stack.route_http.port)
    requests = "cim_route_requests_total"
    assert value(samples, requests, path="/registerAccount", status="200", code="9000") == 2
    assert value(samples, requests, path="/login", status="200", code="9000") == 1
    assert value(samples, requests, path="/login", status="200", code="9100") == 1
    assert value(samples, requests, path="/onlineUser", status="200", code="9000") == 1
    assert value(samples, requests, path="other", status="404", code="3000") == 1  # not one series per unknown path
    assert value(samples, "cim_route_logins_total", code="9000") == 1
    assert value(samples, "cim_route_logins_total", code="9100") == 1
    assert value(samples, "cim_route_request_duration_seconds_count", path="/registerAccount") == 2
    assert value(samples, "cim_route_request_duration_seconds_bucket", path="/login", le="+Inf") == 2


async def test_workers_serve_the_sum_of_all_workers(tmp_path: Path, redis_url: str, zk_hosts: str) -> None:
    prefix = "m" + tmp_path.name[-6:].replace("-", "")
    backend = ["--redis", redis_url, "--zk", zk_hosts, "--zk-root", f"/{prefix}", "--key-prefix", prefix]
    route_port, port, http_base = free_port(), free_port(), free_ports_in_a_row(2)
    env = {"CIM_SECRET": new_secret()}
    route = CimProcess(tmp_path, "route", ["route", "--host", "127.0.0.1", "--port", str(route_port), *backend], env)
    supervisor = CimProcess(tmp_path, "workers", ["server", "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
                                                  "--http-port", str(http_base), *backend], env)
    url, workers = f"http://127.0.0.1:{route_port}", (http_base, http_base + 1)
    clients: list[Client] = []
    try:
        route.wait_http(route_port)
        for worker in workers:
            supervisor.wait_http(worker)

        def sessions_of(worker: int) -> int:
            count: int = httpx.get(f"http://127.0.0.1:{worker}/stats").json().get("sessions", 0)
            return count

        # Users land on either worker (SO_REUSEPORT): log in until both hold some.
        while not all(sessions_of(w) for w in workers):
            name = f"user{len(clients)}"
            client = Client(url, await register(url, name, PASSWORD), name, password=PASSWORD, reconnect_attempts=0)
            await client.connect()
            clients.append(client)
            assert len(clients) < 40
        first, second = workers
        # The first worker's answer includes the second's logins, synced by the second every few seconds.
        await eventually(
            lambda: value(parse(httpx.get(f"http://127.0.0.1:{first}/metrics").text), "cim_logins_total") == len(clients)
        )
        assert value(await scrape(second), "cim_sessions") == len(clients)

        # A dead worker's sessions leave the sum, its counts stay in it.
        survivors = sessions_of(first)
        os.kill(httpx.get(f"http://127.0.0.1:{second}/stats").json()["pid"], signal.SIGKILL)

        def survivors_only() -> bool:
            samples = parse(httpx.get(f"http://127.0.0.1:{first}/metrics").text)
            return value(samples, "cim_sessions") == survivors and value(samples, "cim_logins_total") == len(clients)

        await eventually(survivors_only)
        assert supervisor.stop(signal.SIGTERM) == 0, supervisor.log()
        directory = re.search(r"workers' metrics in (\S+)", supervisor.log())
        assert directory is not None and not Path(directory[1]).exists()  # removed at the end
    finally:
        for client in clients:
            await client.close()
        supervisor.stop(signal.SIGKILL)
        route.stop()


async def test_the_dashboard_shows_only_exported_series(stack: Running) -> None:
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-cim.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {re.sub(r"_(total|bucket)$", "", name) for expr in exprs for name in re.findall(r"\bcim_\w+", expr)}
    assert stack.route_http is not None
    async with httpx.AsyncClient() as http:
        texts = [(await http.get(f"http://127.0.0.1:{port}/metrics")).text for port in (node_port(stack), stack.route_http.port)]
    exported = {family.name for text in texts for family in text_string_to_metric_families(text)}
    assert used and used <= exported, used - exported
