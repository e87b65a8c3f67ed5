"""The private lane (``cim.server.lane``): a read of plain messages with no clientMsgId
to a user on this node, stored and pushed with no event; messages with clientMsgIds
stored with the sender's copy, pushed and answered in one step.

Sans-I/O first, against both twins of ``PrivateLane``, with a real session table, memory
inbox, message ids and quotas, and peers that record what they are sent; then the
connection's half (``ServerConnection.plain_read`` makes of a read exactly what
``receive_data`` would); then CIM-style and SDK-style clients on real 127.0.0.1 sockets.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from types import ModuleType
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cim.backends import Stored
from cim.backends.memory import MemoryInbox
from cim.cli import _config, build_parser
from cim.config import Config
from cim.destinations import ToUser
from cim.frame import FrameDecoder, encode_frame
from cim.messages import MessageIds
from cim.proto import MESSAGE, PING, SEND_RECEIPT, BaseCommand, Request, Response
from cim.protocols.client import ClientConnection
from cim.protocols.connection import ChatMessages, Ping, ServerConnection
from cim.server.quotas import PeerQuota, Quotas
from cim.server.sessions import SessionTable
from cim.status import Status
from cim.wire_fields import RECEIVE_USER_ID, SEND_USER_ID
from tests.conftest import online
from tests.test_limits_abuse import messages, running_stack
from tests.test_sessions import RecordingPeer

ALICE, BOB = 7, 8


class AnsweredPeer(RecordingPeer):
    """A RecordingPeer that keeps its receipts too."""

    def __init__(self, user_id: int) -> None:
        super().__init__(user_id)
        self.receipts: list[tuple[Any, ...]] = []

    def send_receipts(self, client_msg_ids: list[int], first_id: int, status: Status = Status.SUCCESS,
                      first_seq: int = 0, timestamp_ms: int = 0) -> None:
        self.receipts.append((list(client_msg_ids), first_id, status, first_seq, timestamp_ms))

    def send_receipt(self, client_msg_id: int, status: Status, text: str, msg_id: int = 0) -> None:
        self.receipts.append((client_msg_id, status, msg_id))


class Here:
    """Alice and Bob logged in on one node, each with a live stream, and the lane's parts."""

    def __init__(self, lane: ModuleType, inbox: MemoryInbox | None = None, **config: Any) -> None:
        self.gaps: list[int] = []
        self.table = SessionTable(gap=lambda stream: self.gaps.append(stream.peer.user_id))
        self.alice, self.bob = AnsweredPeer(ALICE), AnsweredPeer(BOB)
        for peer, name in ((self.alice, "alice"), (self.bob, "bob")):
            self.table.admit(peer)
            self.table.bind(peer, peer.user_id, name, "").catching_up = False
        self.config = Config(**config)
        self.inbox = inbox if inbox is not None else MemoryInbox(self.config)
        self.metrics: Counter[str] = Counter()
        self.lane = lane.PrivateLane(self.table.by_user, self.table.by_peer, self.inbox, MessageIds(1), self.metrics)

    def quota(self, peer: RecordingPeer) -> PeerQuota:
        quota = Quotas(self.config, Counter(), lambda: 0.0).for_peer(peer)
        assert quota is not None
        return quota

    def pushed_to(self, peer: RecordingPeer) -> list[Response]:
        decoder = FrameDecoder()
        return [Response.FromString(f) for frame, _ in peer.pushed for f in decoder.feed(frame)]


async def test_a_read_to_a_user_here_is_stored_and_pushed_in_seq_order(lane: ModuleType) -> None:
    here = Here(lane)
    assert here.lane.take(here.alice, None, BOB, [b"hi", b"there"], [0, 0], 1.0, 30)
    pushes = here.pushed_to(here.bob)
    assert [(p.resMsg, p.seq, p.properties[RECEIVE_USER_ID], p.properties[SEND_USER_ID]) for p in pushes] == [
        ("hi", 1, str(BOB), str(ALICE)), ("there", 2, str(BOB), str(ALICE))]
    assert pushes[1].msgId == pushes[0].msgId + 1 and pushes[0].timestamp > 0 and pushes[0].clientMsgId == 0
    page = await here.inbox.read(BOB, 0, 10)
    assert [(seq, Response.FromString(body).resMsg) for seq, body in page.entries] == [(1, "hi"), (2, "there")]
    assert here.alice.pushed == []  # nothing goes back to the sender: no receipt was asked for, and no copy
    assert here.metrics == Counter(messages_in=2, messages_out=2)
    assert here.lane.take(here.alice, None, BOB, [b"again"], [0], 1.0, 10)
    assert [p.seq for p in here.pushed_to(here.bob)] == [1, 2, 3]


async def test_a_read_that_cannot_go_this_way_takes_nothing(lane: ModuleType) -> None:
    here = Here(lane)
    stranger = RecordingPeer(9)
    here.table.admit(stranger)  # connected, not logged in
    assert not here.lane.take(here.alice, None, 404, [b"x"], [0], 1.0, 10)  # the receiver is not on this node
    assert not here.lane.take(stranger, None, BOB, [b"x"], [0], 1.0, 10)
    elsewhere = lane.PrivateLane(here.table.by_user, here.table.by_peer, None, MessageIds(1), here.metrics)
    assert not elsewhere.take(here.alice, None, BOB, [b"x"], [0], 1.0, 10)  # the inbox is not in this process
    assert here.bob.pushed == [] and here.metrics == Counter()
    assert (await here.inbox.read(BOB, 0, 10)).latest == 0


def test_the_quota_is_charged_as_the_screen_would_charge_it(lane: ModuleType) -> None:
    here = Here(lane, max_messages_per_second=5, max_bytes_per_second=1000)
    taken, screened = here.quota(here.alice), here.quota(RecordingPeer(ALICE))
    texts = [b"a", b"b", b"c"]
    assert here.lane.take(here.alice, taken, BOB, texts, [0] * len(texts), 0.5, 100)
    event = ChatMessages(list(texts), ToUser(BOB), [0, 0, 0])
    assert screened.screen([event], 0.5, 100) == [event]
    for kind in ("_messages", "_bytes"):
        assert (getattr(taken, kind).tokens, getattr(taken, kind).updated) == (
            getattr(screened, kind).tokens, getattr(screened, kind).updated)
    # Over the rate: nothing is taken (the screen then refuses what is over, with receipts).
    before = [(bucket.tokens, bucket.updated) for bucket in (taken._messages, taken._bytes) if bucket is not None]
    assert not here.lane.take(here.alice, taken, BOB, [b"m"] * 20, [0] * 20, 0.5, 100)
    assert [(bucket.tokens, bucket.updated) for bucket in (taken._messages, taken._bytes) if bucket is not None] == before
    assert len(here.pushed_to(here.bob)) == 3


def test_an_inbox_failure_pushes_nothing_and_leaves_the_read_to_the_general_way(lane: ModuleType) -> None:
    class DiskFull(MemoryInbox):
        def append_plain_now(self, receiver_id: int, sender_id: int, bodies: list[bytes], first_msg_id: int) -> int:
            raise OSError("no space left on device")

    here = Here(lane, inbox=DiskFull())
    assert not here.lane.take(here.alice, None, BOB, [b"x"], [0], 1.0, 10)
    assert here.bob.pushed == [] and here.metrics == Counter()


# -- messages with clientMsgIds: the sender's copy, dedup, receipts ------------------

async def test_answered_messages_are_stored_twice_pushed_once_and_answered_with_the_copys_seqs(lane: ModuleType) -> None:
    here = Here(lane)
    session, target = here.table.by_peer[here.alice], here.table.by_user[BOB]
    assert here.lane.deliver_answered(here.alice, session, target, [b"hi", b"there"], [11, 12])
    pushes = here.pushed_to(here.bob)
    assert [(p.resMsg, p.seq, p.clientMsgId) for p in pushes] == [("hi", 1, 11), ("there", 2, 12)]
    assert here.alice.pushed == []  # up to date: its receipts stand for the copy's push
    ((ids, first_id, status, own_seq, timestamp_ms),) = here.alice.receipts
    assert (ids, first_id, status, own_seq, timestamp_ms) == ([11, 12], pushes[0].msgId, Status.SUCCESS, 1,
                                                              pushes[0].timestamp)
    copies = await here.inbox.read(ALICE, 0, 10)
    assert [(seq, Response.FromString(body).resMsg) for seq, body in copies.entries] == [(1, "hi"), (2, "there")]
    assert here.metrics == Counter(messages_in=2, messages_out=4)


async def test_a_resend_gets_its_first_msgid_and_only_what_is_new_is_pushed(lane: ModuleType) -> None:
    here = Here(lane)
    session, target = here.table.by_peer[here.alice], here.table.by_user[BOB]
    assert here.lane.deliver_answered(here.alice, session, target, [b"hi"], [11])
    first_id = here.alice.receipts[0][1]
    here.alice.receipts.clear()
    assert here.lane.deliver_answered(here.alice, session, target, [b"hi", b"new"], [11, 13])
    assert [(p.resMsg, p.seq) for p in here.pushed_to(here.bob)] == [("hi", 1), ("new", 2)]
    assert here.alice.receipts[0] == (11, Status.SUCCESS, first_id)  # the first time's id
    assert here.alice.receipts[1][0] == 13 and here.alice.receipts[1][2] > first_id
    assert here.gaps == [BOB, ALICE]  # both inboxes held the resend: each live stream catches up
    assert (await here.inbox.read(BOB, 0, 10)).latest == 2 and (await here.inbox.read(ALICE, 0, 10)).latest == 2
    assert here.metrics == Counter(messages_in=3, messages_out=4, duplicates=1)


def test_the_receivers_push_is_written_at_once_unless_frames_wait_ahead_of_it(lane: ModuleType) -> None:
    here = Here(lane)
    written: list[bytes] = []
    here.bob.write_now = written.append  # nothing queued on Bob's connection: frames may go straight out
    assert here.lane.take(here.alice, None, BOB, [b"hi"], [0], 1.0, 10)
    session, target = here.table.by_peer[here.alice], here.table.by_user[BOB]
    assert here.lane.deliver_answered(here.alice, session, target, [b"there"], [11])
    decoder = FrameDecoder()
    assert [(r.resMsg, r.seq) for r in (Response.FromString(f) for w in written for f in decoder.feed(w))] == [
        ("hi", 1), ("there", 2)]
    assert here.bob.pushed == []
    here.bob.write_now = None  # frames wait on Bob's connection: the push goes behind them, still asked at once
    assert here.lane.take(here.alice, None, BOB, [b"later"], [0], 1.0, 10)
    ((frame, at_once),) = here.bob.pushed
    assert Response.FromString(FrameDecoder().feed(frame)[0]).seq == 3 and at_once


def test_a_message_to_oneself_is_pushed_to_the_sending_connection_once(lane: ModuleType) -> None:
    here = Here(lane)
    session = here.table.by_peer[here.alice]
    assert here.lane.deliver_answered(here.alice, session, session, [b"note"], [21])
    assert [(p.resMsg, p.seq) for p in here.pushed_to(here.alice)] == [("note", 1)]
    assert here.alice.receipts[0][3] == 0  # the push, not the receipt, brought seq 1
    assert here.metrics == Counter(messages_in=1, messages_out=1)


def test_a_sending_connection_behind_its_inbox_is_offered_the_copy_and_answered_without_seqs(lane: ModuleType) -> None:
    here = Here(lane)
    session, target = here.table.by_peer[here.alice], here.table.by_user[BOB]
    session.streams[0].catching_up = True  # a sync is reading Alice's inbox
    assert here.lane.deliver_answered(here.alice, session, target, [b"hi"], [11])
    assert here.alice.pushed == [] and session.streams[0].missed == 1  # the catch-up reads it
    assert here.alice.receipts[0][3] == 0


def test_an_answered_run_the_inbox_fails_is_left_to_the_general_way(lane: ModuleType) -> None:
    class DiskFull(MemoryInbox):
        def append_each_now(self, receiver_ids: list[int], sender_id: int, bodies: list[bytes], first_msg_id: int,
                            client_msg_ids: list[int]) -> list[Stored]:
            raise OSError("no space left on device")

    here = Here(lane, inbox=DiskFull())
    session, target = here.table.by_peer[here.alice], here.table.by_user[BOB]
    assert not here.lane.deliver_answered(here.alice, session, target, [b"x"], [11])
    assert here.bob.pushed == [] and here.alice.receipts == [] and here.metrics == Counter()


# -- the connection's half -----------------------------------------------------------

def logged_in() -> ServerConnection:
    conn = ServerConnection(max_frame_size=256, max_message_bytes=64)
    conn.receive_data(ClientConnection(ALICE, "alice").login())
    return conn


def request(text: str, receiver: str | None, client_msg_id: int = 0, cmd: BaseCommand = MESSAGE) -> bytes:
    message = Request(requestId=ALICE, reqMsg=text, cmd=cmd, clientMsgId=client_msg_id)
    if receiver is not None:
        message.properties[RECEIVE_USER_ID] = receiver
    return message.SerializeToString()


frames = st.one_of(
    st.builds(request, st.sampled_from(["hi", "x" * 64, "x" * 65, "", "\N{GRINNING FACE}"]),
              st.sampled_from([str(BOB), "9", None, "", "0", "bob"]), st.sampled_from([0, 0, 0, 5])),
    st.just(request("ping", None, cmd=PING)),
    st.binary(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=6), st.integers(0, 3), st.booleans())
def test_plain_read_makes_of_a_read_what_receive_data_makes_of_it(payloads: list[bytes], cut: int, huge: bool) -> None:
    data = b"".join(encode_frame(p) for p in payloads)
    if huge:
        data += encode_frame(b"\x12" + b"\x7f" + b"x" * 300)  # over max_frame_size: the stream is lost
    data = data[: len(data) - cut]  # a partial frame at the end, sometimes
    run = logged_in().plain_read(data)
    conn = logged_in()
    events = conn.receive_data(data)
    if run is not None:
        receiver, texts, client_msg_ids = run
        assert events == [ChatMessages(texts, ToUser(receiver), client_msg_ids)] and not conn.outgoing
    else:  # and what plain_read leaves is never a whole read of such messages, with nothing else to say
        assert not (len(events) == 1 and isinstance(events[0], ChatMessages) and isinstance(events[0].destination, ToUser)
                    and events[0].destination.user_id > 0  # "0" names no user: protobuf's way refuses it
                    and not conn.outgoing and not conn._partial)


def test_plain_read_waits_for_a_frame_boundary_and_a_login() -> None:
    conn = logged_in()
    message = encode_frame(request("hi", str(BOB)))
    assert conn.plain_read(message) == (BOB, [b"hi"], [0])
    assert conn.receive_data(message[:3]) == []  # part of a frame is held: the next read is no whole read
    assert conn.plain_read(message[3:] + message) is None
    assert ServerConnection(256, 64).plain_read(message) is None  # no login yet
    assert conn.receive_data(message[3:] + encode_frame(request("ping", None, cmd=PING))) == [
        ChatMessages([b"hi"], ToUser(BOB), [0]), Ping()]


# -- on real sockets -----------------------------------------------------------------

async def test_cim_clients_messages_arrive_in_order_with_seqs_and_nothing_comes_back() -> None:
    async with running_stack() as running:
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        client = ClientConnection(alice, "alice")
        for n in range(200):  # a read each, mostly: CIM's client writes and flushes every message
            a.send_raw(client.message(f"m{n}", bob))
            await a.writer.drain()
        pushes = [await b.next() for _ in range(200)]
        assert [(p.resMsg, p.seq, p.clientMsgId) for p in pushes] == [(f"m{n}", n + 1, 0) for n in range(200)]
        assert (await a.ping(alice)).resMsg == "pong"  # the first frame alice gets: no receipts, no copies
        node = running.node
        assert node is not None and node.metrics["messages_in"] == node.metrics["messages_out"] == 200


async def test_a_cim_client_over_the_rate_gets_failure_receipts_and_the_rest_arrives() -> None:
    async with running_stack(max_messages_per_second=20) as running:  # bursts of 40
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        client = ClientConnection(alice, "alice")
        for n in range(100):
            a.send_raw(client.message(f"m{n}", bob))
            await a.writer.drain()
        a.send_ping(alice)
        refused = []  # everything before the pong: the refusals, a receipt each
        while (frame := await a.next()).cmd != PING:
            refused.append(frame)
        assert refused and {(r.code, r.clientMsgId, r.properties[RECEIVE_USER_ID]) for r in refused} == {
            (Status.RATE_LIMITED.code, 0, str(alice))}
        delivered = [await b.next() for _ in range(100 - len(refused))]
        texts = [p.resMsg for p in delivered]
        numbers = [int(text[1:]) for text in texts]
        assert numbers == sorted(set(numbers))  # in order, once each: the refused ones went nowhere
        assert [p.seq for p in delivered] == list(range(1, len(delivered) + 1))
        await asyncio.sleep(0.1)
        assert (await b.ping(bob)).resMsg == "pong"  # and nothing more came


async def test_sdk_style_messages_a_read_each_are_answered_with_their_copys_seqs_and_a_resend_goes_once() -> None:
    async with running_stack() as running:
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        client = ClientConnection(alice, "alice")
        for n in range(100):  # a read each, mostly, with clientMsgIds: the lane answers them
            a.send_raw(client.message(f"m{n}", bob, client_msg_id=1000 + n))
            await a.writer.drain()
        receipts = [await a.next() for _ in range(100)]
        assert [(r.cmd, r.code, r.clientMsgId, r.seq, r.properties[RECEIVE_USER_ID]) for r in receipts] == [
            (SEND_RECEIPT, Status.SUCCESS.code, 1000 + n, n + 1, str(alice)) for n in range(100)]
        a.send_raw(client.message("m0", bob, client_msg_id=1000))  # a resend of the first
        again = await a.next()
        assert (again.code, again.clientMsgId, again.msgId) == (Status.SUCCESS.code, 1000, receipts[0].msgId)
        pushes = [await b.next() for _ in range(100)]
        assert [(p.resMsg, p.seq, p.clientMsgId, p.msgId) for p in pushes] == [
            (f"m{n}", n + 1, 1000 + n, receipts[n].msgId) for n in range(100)]
        assert (await b.ping(bob)).resMsg == "pong"  # the resend was not pushed again
        node = running.node
        assert node is not None and (node.metrics["messages_in"], node.metrics["duplicates"]) == (101, 1)


def receipt_ids(frames: list[Response]) -> list[tuple[BaseCommand, int]]:
    return [(r.cmd, r.clientMsgId) for r in frames]


async def test_a_pipelining_senders_receipts_wait_for_the_tick_unless_something_else_is_written_first() -> None:
    # An interval no test waits out: every receipt that comes here was taken along by another write.
    async with running_stack(receipt_interval=60.0) as running:
        alice, a = await online(running, "alice")
        bob, b = await online(running, "bob")
        a.send_raw(messages(alice, bob, range(1, 4)))  # one read of three: no receipts went lately, so at once
        assert receipt_ids([await a.next() for _ in range(3)]) == [(SEND_RECEIPT, n) for n in range(1, 4)]
        a.send_raw(messages(alice, bob, range(4, 7)))  # held: alice got receipts less than 60 s ago
        assert [p.clientMsgId for p in [await b.next() for _ in range(6)]] == list(range(1, 7))
        with pytest.raises(TimeoutError):  # stored and pushed, their receipts held
            await a.next(timeout=0.3)
        b.send_raw(ClientConnection(bob, "bob").message("hello", alice))  # a push to alice takes them along, first
        frames = [await a.next() for _ in range(4)]
        assert receipt_ids(frames[:3]) == [(SEND_RECEIPT, n) for n in range(4, 7)]
        assert (frames[3].cmd, frames[3].resMsg, frames[3].properties[RECEIVE_USER_ID]) == (MESSAGE, "hello", str(alice))
        a.send_raw(messages(alice, bob, range(7, 9)))  # held again, until alice's ping is answered
        assert [await b.next() for _ in range(2)]
        frames = [await a.ping(alice)] + [await a.next() for _ in range(2)]
        assert receipt_ids(frames) == [(SEND_RECEIPT, 7), (SEND_RECEIPT, 8), (PING, 0)]
        a.send_raw(messages(alice, bob, range(9, 10)))  # one message a read: a sender awaiting each receipt
        assert receipt_ids([await a.next()]) == [(SEND_RECEIPT, 9)]
        # Every receipt is a 9000 with the copy's seq: holding them changed only when they went.
        assert running.node is not None and running.node.metrics["messages_in"] == 10


async def test_held_receipts_go_out_at_the_tick() -> None:
    async with running_stack(receipt_interval=0.2) as running:
        alice, a = await online(running, "alice")
        bob, _ = await online(running, "bob")
        for first in range(1, 31, 3):  # ten reads of three, each as soon as the last one's receipts came
            a.send_raw(messages(alice, bob, range(first, first + 3)))
            receipts = [await a.next() for _ in range(3)]
            assert [(r.code, r.clientMsgId, r.seq) for r in receipts] == [
                (Status.SUCCESS.code, n, n) for n in range(first, first + 3)]


def test_the_receipt_interval_is_a_flag_and_never_negative() -> None:
    with patch.dict(os.environ, {"CIM_RECEIPT_INTERVAL": "0.05"}):
        assert _config(build_parser().parse_args(["server"])).receipt_interval == 0.05
    assert _config(build_parser().parse_args(["up", "--receipt-interval", "0"])).receipt_interval == 0.0
    with pytest.raises(ValueError, match="receipt-interval must be 0 or more, not -1"):
        Config(receipt_interval=-1)
