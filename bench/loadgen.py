"""The load generator: the same code drives cim and the ceiling relay.

asyncio + uvloop + the compiled frame codec, in several processes (each under the
per-process open-files limit), connecting from several loopback source addresses
(127.0.0.x) so that 100k connections fit in the ephemeral port range. Frames are
pre-encoded: a send patches a timestamp (and, for the SDK protocol, a clientMsgId)
into a template.

Two client protocols (``Plan.protocol``):

* ``sdk``, what cim's SDK does: every message has its own clientMsgId (so the server
  answers each with a receipt and dedups nothing), and every receiver acknowledges
  what it got with a DELIVERY_ACK every ``ACK_EVERY`` messages;
* ``cim``, what CIM's own client does: no clientMsgId (no receipt for an accepted
  message) and no acks.

Over TCP or, with ``Plan.transport = "ws"``, over cim's WebSocket endpoint (``WsGenProtocol``:
the same frames, each payload one binary message).

Phases, with the parent in step through barriers so it measures the target's CPU
over exactly the run phase:  connect -> barrier -> barrier (go) -> run -> barrier -> report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any, cast

import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State as WsState
from websockets.uri import parse_uri

from cim.frame import FrameDecoder
from cim.proto import Request, Response
from cim.protocols.client import ClientConnection, LoginAnswer, Pong, Pushed, Receipt, parse_response
from cim.wire_fields import REQUEST_CLIENT_MSG_ID, VARINT

STAMP = b"0" * 19  # placeholder for time.time_ns() in a pre-encoded message
PROTOCOLS = ("sdk", "cim")
ACK_EVERY = 64  # sdk: a receiver acks after every this many messages
# sdk: clientMsgIds are drawn from [2**35, 2**42), where every varint is 6 bytes long, so a
# template's id is patched in place. Each sender starts at a random id below 2**41 (a
# bench reuses its accounts across runs, and the server dedups per sender and receiver)
# and uses fewer than 2**41 ids in a run.
CLIENT_MSG_ID_START = (2**35, 2**41)
CLIENT_MSG_ID_TAG = bytes((REQUEST_CLIENT_MSG_ID << 3 | VARINT, 1))  # its two-byte tag (field 16)
LOW_BYTES = [bytes((0x80 | low,)) for low in range(128)]  # a 6-byte varint's first byte, by the value's low 7 bits
FLOOD_BATCH = 256  # flood: messages per write (a server reads them as one run)
BARRIER_TIMEOUT = 1800.0
_OUTPUT = FrameDecoder(2**32 - 1)  # splits what a WebSocket user writes (whole frames only) into payloads


@dataclass
class Plan:
    """One generator process's share of a scenario (picklable)."""

    scenario: str  # "p2p" | "fanout" | "idle" | "flood" (p2p senders writing as fast as the target reads)
    host: str
    port: int
    users: list[tuple[int, str]]  # this process's users, in connect order
    source_ips: list[str]
    duration: float
    window: int = 8  # p2p: messages in flight per sender; fanout: messages in flight
    payload: int = 64  # message text bytes
    heartbeat: float = 60.0  # idle: seconds between pings per connection
    partner_of: dict[int, int] = field(default_factory=dict)  # p2p, flood: sender -> receiver
    rate: float = 0.0  # p2p: messages a second per sender, spread evenly; 0: a closed loop, window in flight
    tokens: dict[int, str] = field(default_factory=dict)  # user -> login token (none: the target checks none)
    fanout_sender: int | None = None  # fanout: the sending user (in process 0)
    group_id: str = ""  # fanout: the named group the sender writes to ("": CIM's everyone)
    connect_concurrency: int = 256
    sample_every: int = 1  # latency: sample one delivery in this many
    index: int = 0
    protocol: str = "sdk"  # one of PROTOCOLS
    ports: dict[int, int] = field(default_factory=dict)  # user -> the port it connects to (default: port)
    transport: str = "tcp"  # or "ws": each frame's payload one binary WebSocket message, to port's /ws


@dataclass
class Stats:
    connected: int = 0
    connect_seconds: float = 0.0
    sent: int = 0
    delivered: int = 0
    receipts: int = 0
    pongs: int = 0
    acks: int = 0
    errors: int = 0
    latencies_us: list[int] = field(default_factory=list)
    receipt_latencies_us: list[int] = field(default_factory=list)  # sdk: send to receipt, one message at a time
    cpu_seconds: float = 0.0


def varint6(value: int) -> bytes:
    """The varint of ``value`` in [2**35, 2**42): always 6 bytes."""
    return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21 & 0x7F | 0x80,
                  value >> 28 & 0x7F | 0x80, value >> 35))


@dataclass(slots=True)
class Template:
    """One sender's pre-encoded message frame, cut around what a send patches in:
    ``head`` + timestamp + ``middle`` [+ the clientMsgId's varint + ``tail``, a named group's groupId]."""

    head: bytes
    middle: bytes
    next_id: int = 0  # the next message's clientMsgId; 0: none (the cim protocol)
    high: bytes = b""  # the varint of next_id but its first byte (the low 7 bits), which alone changes most sends
    tail: bytes = b""  # what follows the clientMsgId: a named group's groupId field


class GenProtocol(asyncio.Protocol):
    """One generated user's connection. Its frames come from a ClientConnection, built
    once; its input is split into frames here, so the run phase can count them unparsed."""

    __slots__ = ("gen", "user_id", "frames", "transport", "decoder", "login_done", "received")

    def __init__(self, gen: Generator, user_id: int, user_name: str) -> None:
        self.gen = gen
        self.user_id = user_id
        self.frames = ClientConnection(user_id, user_name)
        self.decoder = FrameDecoder()
        self.login_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0  # messages received in the run phase (acks are due every ACK_EVERY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport, so it writes; uvloop's is not registered as an asyncio.Transport,
        # so it is declared one rather than checked.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.frames_received(self.decoder.feed(data))

    def frames_received(self, frames: list[bytes]) -> None:
        gen = self.gen
        if gen.running and gen.plan.scenario != "idle":
            # In the run phase a receiver gets only messages and a sender only
            # receipts: count frames, parse only the latency samples, so the
            # generator stays cheaper than the targets it measures.
            if self.user_id in gen.receivers:
                gen.on_messages(self, frames)
            else:
                gen.stats.receipts += len(frames)
                if gen.receipt_probe is not None and gen.receipt_probe[0] == self.user_id:
                    gen.receipt_arrived(frames[-1])
            return
        for frame in frames:
            event = parse_response(frame)
            if isinstance(event, Pong):
                gen.stats.pongs += 1
                if not self.login_done.done():
                    self.login_done.set_result(None)
            # A push is no error outside the run: one may still be on its way from the last
            # run, or come after the run's end.
            elif not isinstance(event, LoginAnswer | Receipt | Pushed):
                gen.stats.errors += 1
                if not self.login_done.done():
                    self.login_done.set_exception(ConnectionError(f"unexpected during login: {event}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.login_done.done():
            self.login_done.set_exception(ConnectionError("closed during login"))
        elif not self.gen.stopping:
            self.gen.stats.errors += 1


class WsWire:
    """A WebSocket connection made to look like the TCP transport the generator writes to:
    ``write`` takes frames and sends each one's payload as a binary message (websockets'
    sans-I/O ClientProtocol; what is written before the handshake's answer waits for it)."""

    __slots__ = ("transport", "ws", "_waiting")

    def __init__(self, transport: asyncio.Transport, url: str) -> None:
        self.transport = transport
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self._waiting: list[bytes] = []
        self.ws.send_request(self.ws.connect())
        self._send_protocol_data()

    def write(self, data: bytes) -> None:
        if self.ws.state is not WsState.OPEN:
            self._waiting.append(data)
            return
        for payload in _OUTPUT.feed(data):
            self.ws.send_binary(payload)
        self._send_protocol_data()

    def received(self, data: bytes) -> list[bytes]:
        """The payloads of the binary messages in ``data``, and the handshake's end."""
        ws = self.ws
        was_open = ws.state is WsState.OPEN
        ws.receive_data(data)
        payloads = [bytes(e.data) for e in ws.events_received() if isinstance(e, Frame) and e.opcode is Opcode.BINARY]
        self._send_protocol_data()  # pongs, a close's answer
        if not was_open and ws.state is WsState.OPEN:
            waiting, self._waiting = self._waiting, []
            for data in waiting:
                self.write(data)
        return payloads

    def _send_protocol_data(self) -> None:
        chunks = [c for c in self.ws.data_to_send() if c]
        if chunks:
            self.transport.write(b"".join(chunks))

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self) -> None:
        self.transport.close()


class WsGenProtocol(GenProtocol):
    """A generated user over WebSocket: the same frames, one binary message each."""

    __slots__ = ("wire",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        plan = self.gen.plan
        self.wire = WsWire(cast(asyncio.Transport, transport), f"ws://{plan.host}:{plan.ports.get(self.user_id, plan.port)}/ws")
        self.transport = cast(asyncio.Transport, self.wire)  # the generator writes frames to it as to TCP

    def data_received(self, data: bytes) -> None:
        self.frames_received(self.wire.received(data))


class Generator:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.stats = Stats()
        self.conns: dict[int, GenProtocol] = {}
        self.running = False
        self.stopping = False
        self.templates: dict[int, Template] = {}
        self.acks = plan.protocol == "sdk"
        # sdk: the one message whose receipt is awaited for the receipt latency (sender, clientMsgId, sent at, ns)
        self.receipt_probe: tuple[int, int, int] | None = None
        # Who receives in the run phase: p2p partners, everyone but the fanout sender.
        if plan.scenario in ("p2p", "flood"):
            self.receivers = set(plan.partner_of.values())
        else:
            self.receivers = {u for u, _ in plan.users} - {plan.fanout_sender}

    # -- frames ------------------------------------------------------------------

    def _template(self, sender: int, receiver: int | None) -> Template:
        text = STAMP + b" " + b"x" * max(0, self.plan.payload - len(STAMP) - 1)
        first_id = random.randrange(*CLIENT_MSG_ID_START) if self.plan.protocol == "sdk" else 0
        frame = self.conns[sender].frames.message(text.decode(), receiver, client_msg_id=first_id, group_id=self.plan.group_id)
        at = frame.index(STAMP)
        if not first_id:
            return Template(frame[:at], frame[at + len(STAMP) :])
        encoded = varint6(first_id)
        # The clientMsgId is the last field but a groupId's (fields 16 and 18: protobuf writes them in order).
        tail = Request(groupId=self.plan.group_id).SerializeToString()
        end = len(frame) - len(tail)
        assert frame[:end].endswith(CLIENT_MSG_ID_TAG + encoded) and frame.endswith(tail), "clientMsgId, then groupId, last"
        return Template(frame[:at], frame[at + len(STAMP) : end - len(encoded)], first_id, encoded[1:], tail)

    def send(self, sender: int, count: int = 1) -> None:
        """``count`` messages from ``sender`` in one write, stamped now (sdk: each with its own clientMsgId)."""
        template = self.templates[sender]
        sent_ns = time.time_ns()
        stamped = template.head + str(sent_ns).encode() + template.middle
        first = template.next_id
        if first:
            if self.receipt_probe is None and self.running:
                self.receipt_probe = (sender, first + count - 1, sent_ns)
            # The hot loop of a generator that must outrun its target: a table's byte and
            # the cached high bytes, the full varint only every 128 ids.
            high, tail = template.high, template.tail
            frames = []
            for i in range(first, first + count):
                low = i & 0x7F
                if not low:
                    high = varint6(i)[1:]
                frames.append(stamped + LOW_BYTES[low] + high + tail)
            template.next_id, template.high = first + count, high
            data = frames[0] if count == 1 else b"".join(frames)
        else:
            data = stamped * count
        self.conns[sender].transport.write(data)
        self.stats.sent += count

    def receipt_arrived(self, last: bytes) -> None:
        """A read of the probed sender's receipts, ``last`` its last: a sender's receipts come in
        the order of its clientMsgIds, so one for the probe's or a later id means the probe's came."""
        assert self.receipt_probe is not None
        _, client_msg_id, sent_ns = self.receipt_probe
        if Response.FromString(last).clientMsgId >= client_msg_id:
            self.stats.receipt_latencies_us.append((time.time_ns() - sent_ns) // 1000)
            self.receipt_probe = None

    def on_messages(self, conn: GenProtocol, frames: list[bytes]) -> None:
        stats = self.stats
        plan = self.plan
        before = stats.delivered
        stats.delivered += len(frames)
        sample = plan.sample_every
        sampled = before // sample != stats.delivered // sample
        received = conn.received + len(frames)
        ack = self.acks and conn.received // ACK_EVERY != received // ACK_EVERY
        conn.received = received
        if sampled or ack:  # one parse serves both, once in many frames
            last = Response.FromString(frames[-1])
            if sampled:
                stats.latencies_us.append((time.time_ns() - int(last.resMsg[:19])) // 1000)
            if ack:
                conn.transport.write(conn.frames.ack(last.seq))
                stats.acks += 1
        if plan.scenario == "p2p":
            if not plan.rate:  # a closed loop: each delivery is answered with the next send
                self.send(self.sender_of[conn.user_id], len(frames))
        elif plan.scenario == "fanout" and conn.user_id == self.probe and plan.fanout_sender is not None:
            self.send(plan.fanout_sender, len(frames))  # the probe, set with the sender, paces it

    # -- phases ------------------------------------------------------------------

    async def connect(self) -> None:
        plan = self.plan
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(plan.connect_concurrency)
        started = time.monotonic()
        protocol = WsGenProtocol if plan.transport == "ws" else GenProtocol

        async def one(i: int, user_id: int, name: str) -> None:
            async with semaphore:
                source = plan.source_ips[i % len(plan.source_ips)]
                _, conn = await loop.create_connection(
                    lambda: protocol(self, user_id, name), plan.host, plan.ports.get(user_id, plan.port),
                    local_addr=(source, 0),
                )
                # The pong says the login before it was accepted (after its LoginAnswer).
                conn.transport.write(conn.frames.login(token=plan.tokens.get(user_id, "")) + conn.frames.ping())
                await asyncio.wait_for(conn.login_done, 60)
                self.conns[user_id] = conn

        # In order when order matters (fanout: the probe must be the last receiver the
        # server iterates); concurrently otherwise.
        if plan.scenario == "fanout":
            for i, (user_id, name) in enumerate(plan.users):
                await one(i, user_id, name)
        else:
            await asyncio.gather(*(one(i, u, n) for i, (u, n) in enumerate(plan.users)))
        self.stats.connected = len(self.conns)
        self.stats.connect_seconds = time.monotonic() - started

    async def run(self) -> None:
        plan = self.plan
        self.running = True
        if plan.scenario in ("p2p", "flood"):
            self.sender_of = {receiver: sender for sender, receiver in plan.partner_of.items()}
            for sender, receiver in plan.partner_of.items():
                self.templates[sender] = self._template(sender, receiver)
            if plan.scenario == "flood":
                await self._flood()
            elif plan.rate:
                self.stats.sent = await self._spread(list(plan.partner_of), 1 / plan.rate, self.send, tick=0.005)
            else:
                for sender in plan.partner_of:
                    self.send(sender, plan.window)
                await asyncio.sleep(plan.duration)
        elif plan.scenario == "fanout":
            if plan.fanout_sender is not None:
                self.probe = plan.users[-1][0]
                self.templates[plan.fanout_sender] = self._template(plan.fanout_sender, None)
                self.send(plan.fanout_sender, plan.window)
            else:
                self.probe = -1
            await asyncio.sleep(plan.duration)
        else:
            self.stats.sent = await self._spread(list(self.conns), plan.heartbeat, self._ping, tick=0.05)
        self.running = False

    def _ping(self, user_id: int) -> None:
        conn = self.conns[user_id]
        conn.transport.write(conn.frames.ping())

    async def _spread(self, users: list[int], interval: float, act: Callable[[int], object], tick: float) -> int:
        """``act(user)`` once per ``interval`` for every user, spread evenly (checked every
        ``tick`` seconds), for the run's duration; how many acts there were."""
        random.shuffle(users)
        start = time.monotonic()
        step = interval / max(1, len(users))
        done = 0
        while (now := time.monotonic()) - start < self.plan.duration:
            due = int((now - start) / step) + 1
            while done < due:
                act(users[done % len(users)])
                done += 1
            await asyncio.sleep(tick)
        return done

    async def _flood(self) -> None:
        """Every sender writes ``FLOOD_BATCH`` messages whenever its socket has taken the
        last ones: as fast as the target reads, for the run's duration."""
        deadline = time.monotonic() + self.plan.duration
        while time.monotonic() < deadline:
            for sender in self.plan.partner_of:
                if not self.conns[sender].transport.get_write_buffer_size():
                    self.send(sender, FLOOD_BATCH)
            await asyncio.sleep(0.001)

    async def close(self) -> None:
        self.stopping = True
        for conn in self.conns.values():
            conn.transport.close()
        await asyncio.sleep(0.2)


def _process_main(plan: Plan, barrier: Barrier, results: Any) -> None:
    from cim.limits import raise_nofile_limit

    raise_nofile_limit()

    async def main() -> Stats:
        gen = Generator(plan)
        try:
            if plan.scenario == "fanout" and plan.fanout_sender is not None:
                barrier.wait(BARRIER_TIMEOUT)  # the others connect first: our probe is last
                await gen.connect()
            else:
                await gen.connect()
                if plan.scenario == "fanout":
                    barrier.wait(BARRIER_TIMEOUT)
            barrier.wait(BARRIER_TIMEOUT)  # all connected: the parent samples the target
            barrier.wait(BARRIER_TIMEOUT)  # go
            cpu0 = time.process_time()
            await gen.run()
            gen.stats.cpu_seconds = time.process_time() - cpu0
            barrier.wait(BARRIER_TIMEOUT)  # done: the parent samples again
        finally:
            await gen.close()
        return gen.stats

    try:
        stats = uvloop.run(main())
        results.put((plan.index, dataclasses.asdict(stats)))
    except BaseException as err:  # report, don't hang the parent
        barrier.abort()
        results.put((plan.index, {"error": repr(err)}))


class LoadGenerator:
    """Start the generator processes; ``step()`` moves them through the phases."""

    def __init__(self, plans: list[Plan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        fanout = plans[0].scenario == "fanout"
        self.barrier = ctx.Barrier(len(plans) + 1)
        self.results = ctx.Queue()
        self.fanout = fanout
        self.processes = [ctx.Process(target=_process_main, args=(p, self.barrier, self.results), daemon=True) for p in plans]
        for p in self.processes:
            p.start()
        if fanout:
            self.barrier.wait(BARRIER_TIMEOUT)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def step(self) -> None:
        try:
            self.barrier.wait(BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            errors = []
            while not self.results.empty():
                index, stats = self.results.get()
                errors.append(f"process {index}: {stats.get('error', 'stopped')}")
            raise RuntimeError("a load generator process failed: " + ("; ".join(errors) or "no report")) from None

    def collect(self) -> list[dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for _ in self.processes:
            index, stats = self.results.get(timeout=120)
            if "error" in stats:
                raise RuntimeError(f"generator process {index} failed: {stats['error']}")
            out[index] = stats
        for p in self.processes:
            p.join(30)
        return [out[i] for i in sorted(out)]


def source_ips(count: int) -> list[str]:
    """Loopback source addresses: each gets its own ephemeral port range toward the target."""
    return [f"127.0.0.{i}" for i in range(2, 2 + count)]
