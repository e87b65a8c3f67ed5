"""The SDK's delivery core (cim.client.delivery), sans-I/O: bytes in and out, a made-up clock.

``Server`` plays the cim-server's part of the contract on plain bytes (an inbox of
seqs, SYNC answered from it, receipts deduplicated by clientMsgId), so the tests
read like the wire: what the client wrote, what the app was handed.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cim.client.delivery import ACK_EVERY, ACK_INTERVAL, Delivery, Outbox, Step
from cim.client.sdk import SeqStore
from cim.frame import FrameDecoder, encode_frame
from cim.proto import DELIVERY_ACK, LOGIN_ANSWER, MESSAGE, OFFLINE, PING, SEND_RECEIPT, SYNC, Request, Response

ALICE = 7


def frame(properties: dict[str, str] | None = None, **fields: Any) -> bytes:
    """A framed Response to alice."""
    response = Response(**fields)
    response.properties.update(properties or {"receiveUserId": str(ALICE)})
    return encode_frame(response.SerializeToString())


def push(seq: int, text: str | None = None) -> bytes:
    return frame({"sendUserId": "8", "sendUserName": "bob", "receiveUserId": str(ALICE)},
                 cmd=MESSAGE, resMsg=text or f"m{seq}", seq=seq, msgId=1000 + seq)


def login_answer(latest: int, heartbeat: int = 30) -> bytes:
    return frame(cmd=LOGIN_ANSWER, code=9000, seq=latest, heartbeatSeconds=heartbeat)


def sync_done(latest: int, truncated: bool = False) -> bytes:
    return frame(cmd=SYNC, code=9000, seq=latest, truncated=truncated)


def receipt(client_msg_id: int, msg_id: int, code: int = 9000) -> bytes:
    return frame(cmd=SEND_RECEIPT, code=code, resMsg="ok", msgId=msg_id, clientMsgId=client_msg_id)


def requests(step: Step) -> list[Request]:
    return [Request.FromString(f) for f in FrameDecoder().feed(bytes(step.data))]


def described(step: Step) -> list[tuple[str, Any]]:
    """What the client wrote, readably: ("sync", 5), ("ack", 5), ("msg", clientMsgId), ("ping", 0), ...."""
    names = {SYNC: "sync", DELIVERY_ACK: "ack", MESSAGE: "msg", PING: "ping", OFFLINE: "offline"}
    out: list[tuple[str, Any]] = []
    for request in requests(step):
        if request.cmd == MESSAGE:
            out.append(("msg", request.clientMsgId))
        elif request.cmd in (SYNC, DELIVERY_ACK):
            out.append((names[request.cmd], request.ackSeq))
        else:
            out.append((names.get(request.cmd, "login"), 0))
    return out


def seqs(step: Step) -> list[int]:
    return [m.seq for m in step.messages]


def client(last_seq: int | None = 0, **options: Any) -> Delivery:
    return Delivery(ALICE, "alice", last_seq=last_seq, **options)


def logged_in(delivery: Delivery, latest: int, now: float = 0.0, heartbeat: int = 30) -> Step:
    """Connect and have the server accept the login: the step answering the LoginAnswer."""
    login = Request.FromString(FrameDecoder().feed(delivery.connect("t0k", now))[0])
    assert (login.requestId, login.reqMsg, login.token) == (ALICE, "alice", "t0k")
    return delivery.receive(login_answer(latest, heartbeat), now)


# -- incoming: sync, duplicates, gaps ------------------------------------------------


def test_after_the_login_answer_the_client_syncs_from_its_seq() -> None:
    delivery = client(last_seq=5)
    step = logged_in(delivery, latest=9)
    assert described(step)[0] == ("sync", 5)
    step = delivery.receive(b"".join(push(s) for s in range(6, 10)) + sync_done(9), 0.01)
    assert seqs(step) == [6, 7, 8, 9] and delivery.last_seq == 9
    assert not delivery.cursor.syncing


def test_a_client_with_no_seq_of_its_own_resumes_at_its_devices_cursor() -> None:
    delivery = client(last_seq=None)
    login = FrameDecoder().feed(delivery.connect("t0k", 0.0))
    assert len(login) == 1
    answer = frame(cmd=LOGIN_ANSWER, code=9000, seq=9, heartbeatSeconds=30, ackedSeq=6)
    assert described(delivery.receive(answer, 0.0))[0] == ("sync", 6)  # what the device acked before: not again
    step = delivery.receive(b"".join(push(s) for s in range(7, 10)) + sync_done(9), 0.01)
    assert seqs(step) == [7, 8, 9]
    delivery.disconnected()
    delivery.connect("t0k", 1.0)
    again = frame(cmd=LOGIN_ANSWER, code=9000, seq=9, heartbeatSeconds=30, ackedSeq=2)
    assert described(delivery.receive(again, 1.0))[0] == ("sync", 9)  # from then on, its own seq counts


def test_duplicates_are_dropped_and_the_app_gets_each_seq_once_in_order() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    step = delivery.receive(push(1) + push(2) + push(1) + push(2) + push(3), 0.0)
    assert seqs(step) == [1, 2, 3]
    assert seqs(delivery.receive(push(3) + push(2), 0.0)) == []


def test_a_gap_asks_for_a_sync_once_and_the_sync_refills_it() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    delivery.receive(sync_done(0), 0.0)
    step = delivery.receive(push(1) + push(4) + push(5), 0.0)
    assert seqs(step) == [1] and described(step) == [("sync", 1)]  # one sync for the two pushes past the gap
    assert described(delivery.receive(push(6), 0.0)) == []  # still outstanding: not asked again
    step = delivery.receive(b"".join(push(s) for s in range(2, 7)) + sync_done(6) + push(7), 0.0)
    assert seqs(step) == [2, 3, 4, 5, 6, 7] and delivery.last_seq == 7
    assert described(delivery.receive(push(9), 0.0)) == [("sync", 7)]  # a new gap: a new sync


def test_a_sync_that_leaves_a_gap_is_asked_again() -> None:
    delivery = client()
    logged_in(delivery, latest=3)
    step = delivery.receive(push(1) + push(3) + sync_done(3), 0.0)
    assert seqs(step) == [1] and described(step) == [("sync", 1)]


def test_pushes_without_seq_are_handed_over_as_they_come() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    step = delivery.receive(push(0, "a") + push(0, "a") + push(1) + push(0, "b"), 0.0)
    assert [m.text for m in step.messages] == ["a", "a", "m1", "b"] and delivery.last_seq == 1


def test_a_truncated_sync_skips_what_retention_dropped_and_says_so() -> None:
    delivery = client(last_seq=5)
    logged_in(delivery, latest=20)
    step = delivery.receive(b"".join(push(s) for s in range(12, 21)) + sync_done(20, truncated=True), 0.0)
    assert seqs(step) == [] and step.notices == ["messages 6..11 were dropped by the server's retention"]
    assert described(step) == [("sync", 11)]
    step = delivery.receive(b"".join(push(s) for s in range(12, 21)) + sync_done(20), 0.0)
    assert seqs(step) == list(range(12, 21))


def test_a_server_whose_inbox_is_behind_the_client_resets_it() -> None:
    delivery = client(last_seq=50)
    step = logged_in(delivery, latest=3)  # cim up restarted in memory: seqs start again from 1
    assert step.persist == 0 and "syncing from the start" in step.notices[0]
    assert described(step) == [("sync", 0)]
    assert seqs(delivery.receive(push(1) + push(2) + push(3) + sync_done(3), 0.0)) == [1, 2, 3]


# -- acks and persistence -------------------------------------------------------------


def test_acks_are_batched_by_time() -> None:
    delivery = client()
    logged_in(delivery, latest=0, now=10.0)
    step = delivery.receive(push(1) + push(2), 10.0)
    assert described(step) == [] and step.persist is None
    assert delivery.deadline() == pytest.approx(10.0 + ACK_INTERVAL)
    assert described(delivery.tick(10.05)) == []
    delivery.receive(push(3), 10.08)  # does not push the deadline back
    step = delivery.tick(10.0 + ACK_INTERVAL)
    assert described(step) == [("ack", 3)] and step.persist == 3
    assert delivery.cursor.ack_due is None and described(delivery.tick(11.0)) == []  # nothing new: no ack


def test_acks_are_batched_by_count() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    step = delivery.receive(b"".join(push(s) for s in range(1, ACK_EVERY)), 0.0)
    assert described(step) == []
    step = delivery.receive(push(ACK_EVERY) + push(ACK_EVERY + 1), 0.0)  # the 64th is in this read: acked at once
    assert described(step) == [("ack", ACK_EVERY + 1)] and step.persist == ACK_EVERY + 1


def test_close_acks_what_was_received_then_says_offline() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    delivery.receive(push(1), 0.0)
    step = delivery.close(0.01)
    assert described(step) == [("ack", 1), ("offline", 0)] and step.persist == 1


def test_a_batch_due_while_disconnected_is_persisted_then_acked_at_the_next_login() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    delivery.receive(push(1) + push(2), 0.0)
    delivery.disconnected()
    step = delivery.tick(1.0)
    assert step.data == b"" and step.persist == 2
    assert described(logged_in(delivery, latest=2, now=2.0)) == [("sync", 2), ("ack", 2)]


def test_a_restarted_client_resumes_from_its_stored_seq(tmp_path: Path) -> None:
    stored: list[int] = []
    store = SeqStore(stored.append, tmp_path / "alice.seq")
    first = client(last_seq=store.load(0))
    logged_in(first, latest=3)
    first.receive(push(1) + push(2) + push(3) + sync_done(3), 0.0)
    step = first.close(0.0)
    assert step.persist == 3
    store.save(step.persist)
    assert stored == [3] and (tmp_path / "alice.seq").read_text() == "3\n"
    assert [p.name for p in tmp_path.iterdir()] == ["alice.seq"]  # the temporary file was renamed over it

    second = client(last_seq=SeqStore(None, tmp_path / "alice.seq").load(0))
    step = logged_in(second, latest=4)
    assert described(step) == [("sync", 3), ("ack", 3)]  # resumed; the server's cursor is told too
    assert seqs(second.receive(push(3) + push(4) + sync_done(4), 0.0)) == [4]


def test_a_state_file_that_is_not_there_yet_gives_the_default(tmp_path: Path) -> None:
    assert SeqStore(None, tmp_path / "new.seq").load(7) == 7
    assert SeqStore(None, None).load(7) == 7


# -- outgoing: ids, receipts, resends ---------------------------------------------------


def test_client_msg_ids_are_microseconds_and_increase_even_on_a_stuck_clock() -> None:
    outbox = Outbox(clock_us=lambda: 1_700_000_000_000_000)
    assert [outbox.new_id() for _ in range(3)] == [1_700_000_000_000_000, 1_700_000_000_000_001, 1_700_000_000_000_002]
    restarted = Outbox()  # the real clock: later than any id above
    assert restarted.new_id() > 1_700_000_000_000_002


def test_a_send_waits_for_the_login_and_resolves_with_its_receipt() -> None:
    delivery = client()
    delivery.connect("", 0.0)
    client_msg_id, step = delivery.send("hi", 8, "", 0.0)
    assert step.data == b""  # not logged in yet
    step = delivery.receive(login_answer(0), 0.0)
    assert described(step) == [("sync", 0), ("msg", client_msg_id)]
    [message] = [r for r in requests(step) if r.cmd == MESSAGE]
    assert (message.reqMsg, dict(message.properties)) == ("hi", {"receiveUserId": "8"})
    step = delivery.receive(receipt(client_msg_id, 500) + receipt(client_msg_id, 500) + receipt(12345, 1), 0.0)
    assert [(r.client_msg_id, r.msg_id, r.accepted) for r in step.answered] == [(client_msg_id, 500, True)]
    assert len(delivery.outbox) == 0


def test_a_failure_receipt_answers_the_send_too() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    client_msg_id, _ = delivery.send("to nobody", 424242, "", 0.0)
    step = delivery.receive(receipt(client_msg_id, 0, code=3000), 0.0)
    assert [(r.code, r.accepted) for r in step.answered] == [(3000, False)]


def test_unanswered_sends_are_resent_after_a_reconnect_in_order_before_new_ones() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    a, _ = delivery.send("a", 8, "", 0.0)
    b, _ = delivery.send("b", 8, "", 0.0)
    c, _ = delivery.send("c", 8, "", 0.0)
    delivery.receive(receipt(b, 501), 0.0)  # b was answered: it is not resent
    delivery.disconnected()
    d, step = delivery.send("d", 8, "", 0.1)  # while disconnected: waits
    assert step.data == b""
    delivery.connect("", 0.2)
    e, step = delivery.send("e", 8, "", 0.2)  # connected, not logged in yet: waits too
    assert step.data == b""
    step = delivery.receive(login_answer(0), 0.3)
    assert described(step) == [("sync", 0), ("msg", a), ("msg", c), ("msg", d), ("msg", e)]
    assert [r.reqMsg for r in requests(step) if r.cmd == MESSAGE] == ["a", "c", "d", "e"]
    f, step = delivery.send("f", 8, "", 0.3)
    assert described(step) == [("msg", f)]
    assert a < b < c < d < e < f


def test_a_send_unanswered_for_the_send_timeout_expires_and_is_not_resent() -> None:
    delivery = client(send_timeout=5.0)
    logged_in(delivery, latest=0)
    late, _ = delivery.send("late", 8, "", 0.0)
    kept, _ = delivery.send("kept", 8, "", 3.0)
    assert delivery.outbox.deadline() == 5.0
    assert delivery.tick(4.9).expired == []
    assert delivery.tick(5.0).expired == [late]
    assert delivery.receive(receipt(late, 1), 5.1).answered == []  # too late: nobody waits for it
    delivery.disconnected()
    step = logged_in(delivery, latest=0, now=6.0)
    assert described(step) == [("sync", 0), ("msg", kept)]


def own_copy(seq: int, client_msg_id: int, to: int = 8) -> bytes:
    """The user's copy of a private message they sent to ``to`` (cim.delivery): from alice to alice."""
    return frame({"sendUserId": str(ALICE), "sendUserName": "alice", "receiveUserId": str(ALICE)},
                 cmd=MESSAGE, resMsg=f"m{seq}", seq=seq, msgId=1000 + seq, clientMsgId=client_msg_id, toUserId=to)


def test_own_copies_say_whether_this_client_sent_them() -> None:
    delivery = client(send_timeout=5.0)
    logged_in(delivery, latest=0)
    pending, _ = delivery.send("pending", 8, "", 0.0)
    answered, _ = delivery.send("answered", 8, "", 0.0)
    timed_out, _ = delivery.send("timed out", 8, "", 0.0)
    delivery.receive(receipt(answered, 1002), 0.1)
    assert delivery.tick(5.0).expired == [pending, timed_out]  # both were stored all the same
    step = delivery.receive(own_copy(1, pending) + own_copy(2, answered) + own_copy(3, timed_out)
                            + own_copy(4, 99) + push(5), 5.1)  # 99: a send of alice's other device
    assert [(m.seq, m.outgoing, m.to_user_id, m.from_this_device) for m in step.messages] == [
        (1, True, 8, True), (2, True, 8, True), (3, True, 8, True), (4, True, 8, False), (5, False, 0, False)]
    # A message of another user with one of this client's clientMsgIds by chance is no copy of its.
    chance = frame({"sendUserId": "8", "sendUserName": "bob", "receiveUserId": str(ALICE)},
                   cmd=MESSAGE, resMsg="bob's", seq=6, msgId=1006, clientMsgId=answered)
    [message] = delivery.receive(chance, 5.2).messages
    assert (message.outgoing, message.from_this_device) == (False, False)


def copy_receipt(client_msg_id: int, msg_id: int, seq: int, timestamp_ms: int = 1_700_000_000_123) -> bytes:
    """A receipt that stands for the sender's copy on the connection that sent it (cim.server.dispatch)."""
    return frame(cmd=SEND_RECEIPT, code=9000, resMsg="ok", msgId=msg_id, clientMsgId=client_msg_id, seq=seq,
                 timestamp=timestamp_ms)


def test_a_receipt_with_a_seq_hands_over_the_copy_made_from_the_send() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    to_bob, _ = delivery.send("to bob", 8, "", 0.0)
    to_team, _ = delivery.send("to the team", None, "team", 0.0)
    step = delivery.receive(push(1) + copy_receipt(to_bob, 501, 2) + push(3) + copy_receipt(to_team, 502, 4), 0.1)
    assert [(m.seq, m.text, m.sender_id, m.outgoing, m.to_user_id, m.group_id, m.msg_id, m.from_this_device)
            for m in step.messages] == [(1, "m1", 8, False, 0, "", 1001, False),
                                        (2, "to bob", ALICE, True, 8, "", 501, True),
                                        (3, "m3", 8, False, 0, "", 1003, False),
                                        (4, "to the team", ALICE, True, 0, "team", 502, True)]
    assert step.messages[1].timestamp_ms == 1_700_000_000_123
    assert [(r.client_msg_id, r.msg_id, r.seq) for r in step.answered] == [(to_bob, 501, 2), (to_team, 502, 4)]
    assert delivery.last_seq == 4 and len(delivery.outbox) == 0


def test_a_copy_receipt_past_a_gap_or_for_a_forgotten_send_asks_for_a_sync() -> None:
    delivery = client(send_timeout=1.0)
    logged_in(delivery, latest=0)
    delivery.receive(sync_done(0), 0.0)
    early, _ = delivery.send("early", 8, "", 0.0)
    step = delivery.receive(copy_receipt(early, 501, 2), 0.1)  # seq 1 has not come: dropped, a sync refills
    assert step.messages == [] and described(step) == [("sync", 0)] and step.answered != []
    step = delivery.receive(push(1) + own_copy(2, early) + sync_done(2), 0.2)  # the sync: 1, and the copy as a push
    assert [(m.seq, m.from_this_device) for m in step.messages] == [(1, False), (2, True)]
    late, _ = delivery.send("late", 8, "", 0.3)
    assert delivery.tick(1.3).expired == [late]
    step = delivery.receive(copy_receipt(late, 502, 3), 1.4)  # its text is gone with it: from the inbox, by a sync
    assert step.messages == [] and described(step) == [("sync", 2)] and delivery.last_seq == 2


def test_a_retry_with_the_same_client_msg_id_is_allowed_once_the_first_has_ended() -> None:
    delivery = client(send_timeout=1.0)
    logged_in(delivery, latest=0)
    first, _ = delivery.send("x", 8, "", 0.0)
    with pytest.raises(ValueError, match="being sent already"):
        delivery.send("x", 8, "", 0.0, client_msg_id=first)
    assert delivery.tick(1.0).expired == [first]
    retry, step = delivery.send("x", 8, "", 1.0, client_msg_id=first)
    assert retry == first and described(step) == [("msg", first)]


def test_close_fails_every_unanswered_send() -> None:
    delivery = client()
    logged_in(delivery, latest=0)
    a, _ = delivery.send("a", 8, "", 0.0)
    assert delivery.close(0.0).expired == [a] and len(delivery.outbox) == 0


# -- heartbeat ---------------------------------------------------------------------------


def test_the_client_pings_at_half_the_servers_heartbeat_and_counts_silence_as_lost() -> None:
    delivery = client(heartbeat_interval=30.0)
    logged_in(delivery, latest=0, now=0.0, heartbeat=2)
    assert delivery.heartbeat_interval == 1.0
    assert delivery.deadline() == 1.0
    assert described(delivery.tick(1.0)) == [("ping", 0)]
    assert delivery.deadline() == 2.0
    step = delivery.tick(3.0)
    assert step.lost is not None and "3 heartbeat intervals" in step.lost
    delivery.disconnected()
    assert delivery.heartbeat_interval == 30.0  # the next server says its own


def test_a_shorter_own_heartbeat_is_kept() -> None:
    delivery = client(heartbeat_interval=1.0)
    logged_in(delivery, latest=0, heartbeat=30)
    assert delivery.heartbeat_interval == 1.0


def test_reading_keeps_the_connection_and_writing_defers_the_ping() -> None:
    delivery = client(heartbeat_interval=1.0)
    logged_in(delivery, latest=0)
    delivery.receive(push(1), 2.5)
    delivery.send("x", 8, "", 2.6)
    step = delivery.tick(2.9)
    assert step.lost is None and described(step) == [("ack", 1)]  # the ack's time came; no ping: 0.3 s since a write


# -- a stateful model: the app sees each seq once, in order ---------------------------------


class Server:
    """The cim-server's side of the contract, over plain bytes: alice's inbox, her
    connection's queue of frames not read yet, the sends it stored (deduplicated)."""

    def __init__(self) -> None:
        self.latest = 0
        self.queue: list[bytes] = []  # frames written to the current connection, not read by the client yet
        self.connected = False
        self.stored: dict[int, int] = {}  # clientMsgId -> msgId
        self.arrivals: list[list[int]] = []  # per connection: the clientMsgIds of the messages read, in order
        self.acked = 0
        self.msg_ids = itertools.count(1)
        self.decoder = FrameDecoder()
        self.answer = b""

    def connect(self) -> None:
        self.connected = True
        self.answer = login_answer(self.latest, heartbeat=30)
        self.queue = [self.answer]
        self.arrivals.append([])
        self.decoder = FrameDecoder()

    def movable(self) -> int:
        """Where the frames a network may duplicate or reorder start: the login answer is always first."""
        return 1 if self.queue and self.queue[0] is self.answer else 0

    def append(self, count: int) -> None:
        for _ in range(count):
            self.latest += 1
            if self.connected:
                self.queue.append(push(self.latest))

    def read(self, data: bytes) -> None:
        """What the client wrote; answered in the queue, as a server would."""
        for request in (Request.FromString(f) for f in self.decoder.feed(data)):
            if request.cmd == SYNC:
                self.queue += [push(s) for s in range(request.ackSeq + 1, self.latest + 1)] + [sync_done(self.latest)]
            elif request.cmd == DELIVERY_ACK:
                assert request.ackSeq >= self.acked
                self.acked = request.ackSeq
            elif request.cmd == MESSAGE:
                self.arrivals[-1].append(request.clientMsgId)
                msg_id = self.stored.setdefault(request.clientMsgId, next(self.msg_ids))
                self.queue.append(receipt(request.clientMsgId, msg_id))


class DeliveryMachine(RuleBasedStateMachine):
    """Random inbox appends, duplicated and reordered pushes, reads cut anywhere, sends,
    disconnects and time: the app sees every seq once and in order, every send is
    answered once, the server never stores a send twice, and resends keep their order."""

    def __init__(self) -> None:
        super().__init__()
        self.server = Server()
        self.delivery = Delivery(ALICE, "alice", send_timeout=1e9)
        self.now = 0.0
        self.seen: list[int] = []
        self.sent: list[int] = []
        self.answered: list[int] = []
        self.persisted = 0
        self.connect()

    def apply(self, step: Step) -> None:
        self.seen += seqs(step)
        self.answered += [r.client_msg_id for r in step.answered]
        if step.persist is not None:
            assert self.persisted <= step.persist <= self.delivery.last_seq
            self.persisted = step.persist
        if self.server.connected:
            self.server.read(bytes(step.data))

    @rule()
    def connect(self) -> None:
        if self.server.connected:
            self.disconnect()
        self.server.connect()
        self.server.read(self.delivery.connect("", self.now))

    @rule()
    def disconnect(self) -> None:
        self.server.connected = False
        self.server.queue.clear()  # written, never read: lost with the connection
        self.delivery.disconnected()

    @rule(count=st.integers(1, 5))
    def append(self, count: int) -> None:
        self.server.append(count)

    @precondition(lambda self: self.server.latest > 0 and self.server.connected)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        seq = data.draw(st.integers(1, self.server.latest))
        self.server.queue.insert(data.draw(st.integers(self.server.movable(), len(self.server.queue))), push(seq))

    @precondition(lambda self: len(self.server.queue) - self.server.movable() >= 2)
    @rule(data=st.data())
    def reorder(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(self.server.movable(), len(self.server.queue) - 2))
        queue = self.server.queue
        queue[i], queue[i + 1] = queue[i + 1], queue[i]

    @precondition(lambda self: bool(self.server.queue))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, len(self.server.queue)))
        chunk = b"".join(self.server.queue[:count])
        del self.server.queue[:count]
        cut = data.draw(st.integers(0, len(chunk)))
        for piece in (chunk[:cut], chunk[cut:]):
            if piece:
                self.apply(self.delivery.receive(piece, self.now))

    @rule()
    def send(self) -> None:
        client_msg_id, step = self.delivery.send(f"s{len(self.sent)}", 8, "", self.now)
        self.sent.append(client_msg_id)
        self.apply(step)

    @rule(seconds=st.sampled_from([0.01, ACK_INTERVAL, 1.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        step = self.delivery.tick(self.now)
        if step.lost is not None:
            self.disconnect()
        self.apply(step)

    @invariant()
    def each_seq_once_in_order(self) -> None:
        assert self.seen == list(range(1, len(self.seen) + 1))
        assert self.delivery.last_seq == len(self.seen)
        assert self.server.acked <= self.delivery.last_seq

    @invariant()
    def sends_are_answered_once_and_arrive_in_order(self) -> None:
        assert len(set(self.answered)) == len(self.answered) and set(self.answered) <= set(self.sent)
        for arrivals in self.server.arrivals:
            assert arrivals == sorted(set(arrivals))  # in send order on each connection, none twice

    def teardown(self) -> None:
        """A last connection, read to the end: everything arrives, every send is answered."""
        self.connect()
        while self.server.queue:
            chunk = b"".join(self.server.queue)
            self.server.queue.clear()
            self.apply(self.delivery.receive(chunk, self.now))
        assert self.seen == list(range(1, self.server.latest + 1))
        assert sorted(self.answered) == self.sent
        assert set(self.server.stored) == set(self.sent)


DeliveryMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_delivery_machine = DeliveryMachine.TestCase
