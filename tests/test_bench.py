"""Bench smoke: every scenario runs for seconds and writes well-formed JSON. Not a speed test.
The system scenarios run cim in the suite's auth mode (``--auth``). Also the generator's
clientMsgId encoding and the ceiling relay's handling of acks."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import CLIENT_MSG_ID_TAG, Generator, GenProtocol, Plan, varint6
from bench.relay import Relay, RelayProtocol
from cim.frame import FrameDecoder
from cim.proto import Request
from cim.protocols.client import ClientConnection
from tests.conftest import auth_mode


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    system = args[0] not in ("codec", "hotpath", "groupstore")  # in-process scenarios: no targets started
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out),
         *(["--workdir", str(tmp_path), "--auth", auth_mode()] if system else [])],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["scenario"] == args[0]
    if system:
        assert result["params"]["auth"] == auth_mode()
    assert {"cores", "python", "uvloop", "codec"} <= set(result["machine"])
    return result


def test_codec(tmp_path: Path) -> None:
    result = bench(tmp_path, "codec", "--frames", "2000", "--repeat", "1")
    built = importlib.util.find_spec("cim._frame") is not None
    assert set(result["implementations"]) == ({"python", "cython"} if built else {"python"})
    if built:
        assert result["ratio"]["decode_frames_per_s"] > 0


def test_client_msg_ids_are_six_byte_varints_as_protobuf_writes_them() -> None:
    for value in (2**35, 2**35 + 1, 2**41 + 12345, 2**42 - 1, *(random.randrange(2**35, 2**42) for _ in range(100))):
        frame = Request(clientMsgId=value).SerializeToString()
        assert frame == CLIENT_MSG_ID_TAG + varint6(value)
        assert len(varint6(value)) == 6


async def test_sdk_messages_each_have_the_next_client_msg_id() -> None:
    received = asyncio.Queue[bytes]()

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.put_nowait(data)

    server = await asyncio.start_server(collect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gen = Generator(Plan("p2p", "127.0.0.1", port, [(5, "u"), (6, "v")], ["127.0.0.1"], 1.0, partner_of={5: 6}))
    try:
        _, gen.conns[5] = await asyncio.get_running_loop().create_connection(lambda: GenProtocol(gen, 5, "u"),
                                                                             "127.0.0.1", port)
        template = gen.templates[5] = gen._template(5, 6)
        start = template.next_id | 0x7F  # the last id before the varint's upper bytes change
        template.next_id, template.high = start, varint6(start)[1:]
        counts = [1, 3, 300, 1]
        for count in counts:
            gen.send(5, count)
        decoder, frames = FrameDecoder(), list[bytes]()
        while len(frames) < sum(counts):
            frames += decoder.feed(await asyncio.wait_for(received.get(), 5))
        requests = [Request.FromString(frame) for frame in frames]
        assert [r.clientMsgId for r in requests] == list(range(start, start + sum(counts)))
        assert {(r.requestId, r.properties["receiveUserId"], len(r.reqMsg)) for r in requests} == {(5, "6", 64)}
        gen.conns[5].login_done.cancel()  # no login here: its closing is no failed login
        gen.conns[5].transport.close()
    finally:
        server.close()


async def test_the_relay_drops_acks_and_forwards_messages() -> None:
    relay = Relay("p2p")
    server = await asyncio.get_running_loop().create_server(lambda: RelayProtocol(relay), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        (reader, receiver_out), (_, sender_out) = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        receiver, sender = ClientConnection(0, "r"), ClientConnection(1, "s")  # a pair: 0 and 1
        receiver_out.write(receiver.login())
        sender_out.write(sender.login())
        await asyncio.sleep(0.1)  # both logged in before anything is relayed
        first, second = sender.message("m0", 0), sender.message("m1", 0)
        sender_out.write(sender.ack(3) + first + sender.ack(0) + second)
        decoder, frames = FrameDecoder(), list[bytes]()
        while len(frames) < 2:
            frames += decoder.feed(await asyncio.wait_for(reader.read(65536), 5))
        assert frames == FrameDecoder().feed(first + second)  # the messages as sent, nothing for the acks
        for writer in (receiver_out, sender_out):
            writer.close()
    finally:
        server.close()


@pytest.mark.parametrize(("protocol", "window"), [("sdk", "2"), ("cim", "1")])
def test_p2p(tmp_path: Path, protocol: str, window: str) -> None:
    result = bench(tmp_path, "p2p", "--pairs", "4", "--window", window, "--protocol", protocol, "--duration", "1",
                   "--limits", "on")
    for side in ("cim", "ceiling"):
        assert result[side]["msgs_per_s"] > 0 and result[side]["errors"] == 0
        assert result[side]["p99_ms"] >= result[side]["p50_ms"] > 0
        assert (result[side]["acks_per_s"] > 0) == (protocol == "sdk")
    # sdk: cim answers every message with a receipt; cim: none for accepted messages. The relay never does.
    assert (result["cim"]["receipts_per_s"] > 0) == (protocol == "sdk")
    assert result["ceiling"]["receipts_per_s"] == 0
    assert result["ratio"]["msgs_per_s"] > 0
    assert (result["params"]["pairs"], result["params"]["limits"], result["params"]["protocol"]) == (4, "on", protocol)


def test_redis_p2p(tmp_path: Path) -> None:
    result = bench(tmp_path, "redis-p2p", "--pairs", "4", "--duration", "1", "--xadd-requests", "20000")
    assert result["cim"]["msgs_per_s"] > 0 and result["cim"]["errors"] == 0
    assert result["cim"]["receipts_per_s"] > 0 and result["cim"]["acks_per_s"] > 0
    assert result["cim"]["redis_cpu_pct"] > 0
    assert result["redis"]["xadd_per_s"] > 0 and result["ratio"]["msgs_per_xadd"] > 0
    assert (result["params"]["nodes"], result["params"]["protocol"]) == (2, "sdk")


def test_fanout_sweep_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "fanout.png"
    result = bench(tmp_path, "fanout", "--receivers", "5,20", "--duration", "1", "--plot", str(plot))
    assert [row["G"] for row in result["cim"]] == [5, 20]
    assert all(row["deliveries_per_s"] > 0 for row in result["cim"] + result["ceiling"])
    assert [set(row) for row in result["ratio"]] == [{"G", "deliveries"}] * 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("protocol", ["sdk", "cim"])
def test_fanout_to_a_named_group(tmp_path: Path, protocol: str) -> None:
    # Only the group's members get pushes, and only if its sends are accepted: deliveries prove both.
    result = bench(tmp_path, "fanout", "--receivers", "20", "--to", "named", "--protocol", protocol, "--duration", "1")
    assert result["params"]["to"] == "named"
    assert result["cim"]["deliveries_per_s"] > 0 and result["ceiling"]["deliveries_per_s"] > 0  # one G: one row


def test_flood(tmp_path: Path) -> None:
    result = bench(tmp_path, "flood", "--pairs", "2", "--rate", "20", "--duration", "1")
    for phase in ("quiet", "flooded"):
        assert result[phase]["pair_msgs_per_s"] > 0 and result[phase]["pair_errors"] == 0
        assert result[phase]["p99_ms"] >= result[phase]["p50_ms"] > 0
    assert result["quiet"]["flood_offered_per_s"] == 0
    flooded = result["flooded"]
    assert flooded["flood_offered_per_s"] > flooded["flood_delivered_per_s"] > 0  # held to its limit, not shut out
    assert set(result["ratio"]) == {"p50_ms", "p99_ms"}


@pytest.mark.parametrize("connections", [60])
def test_idle(tmp_path: Path, connections: int) -> None:
    result = bench(tmp_path, "idle", "--connections", str(connections), "--heartbeat", "1", "--duration", "2")
    for side in ("cim", "ceiling"):
        assert result[side]["connections"] == connections
        assert result[side]["pings_per_s"] > 0
    assert set(result["ratio"]) == {"heartbeat_cpu", "memory_per_conn"}


def test_hotpath(tmp_path: Path) -> None:
    result = bench(tmp_path, "hotpath", "--pairs", "4", "--turns", "20", "--repeat", "1")
    # Every message was pushed (the scenario checks it), at some cost per message in each protocol.
    assert set(result["us_per_message"]) == {"sdk", "cim"}
    assert all(cost > 0 for cost in result["us_per_message"].values())


def test_groupstore(tmp_path: Path) -> None:
    result = bench(tmp_path, "groupstore", "--members", "3,20", "--runs", "5", "--repeat", "1")
    # Every member read back every message stored (the scenario checks it), in both layouts.
    assert [(r["members"], r["layout"]) for r in result["results"]] == [
        (3, "diffusion"), (3, "timeline"), (20, "diffusion"), (20, "timeline")]
    assert all(r["store_us_per_message"] > 0 and r["sync_us_per_member_read"] > 0 for r in result["results"])


def test_ws(tmp_path: Path) -> None:
    result = bench(tmp_path, "ws", "--connections", "40", "--heartbeat", "1", "--idle-duration", "2", "--pairs", "4",
                   "--window", "2", "--duration", "1")
    for transport in ("tcp", "ws"):
        assert result["idle"][transport]["connections"] == 40 and result["idle"][transport]["pings_per_s"] > 0
    assert set(result["idle"]["ratio"]) == {"memory_per_conn", "heartbeat_cpu"}
    for side in ("tcp", "ws", "ceiling"):
        assert result["p2p"][side]["msgs_per_s"] > 0 and result["p2p"][side]["errors"] == 0
    assert result["p2p"]["ws"]["receipts_per_s"] > 0 and result["p2p"]["ws"]["acks_per_s"] > 0  # the sdk protocol, over WS
    assert result["p2p"]["ratio"]["ws_over_tcp"] > 0
