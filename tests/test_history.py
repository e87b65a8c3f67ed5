"""History (issue 11, item 4): pages of a user's own inbox, a conversation's or all of it, searched by
keyword; over every store (memory with both inbox cores, Redis, SQLite), through the route's
``/history``, in-band (raw HISTORY frames and the SDK) and the console's ``:history`` and ``:q``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cim.backends.base import Inbox
from cim.client import Client
from cim.client.route import ClientError
from cim.history import MAX_LIMIT, SCAN_BUDGET, HistoryQuery, scan
from cim.messages import Sender, group_prefix, to_user_field
from cim.proto import HISTORY, MESSAGE, Response
from cim.run import Running
from cim.status import CimError
from cim.wire import push_bodies
from tests.conftest import PASSWORD, RawClient, mint_token, online, register_user, route_url
from tests.test_console_commands import output
from tests.test_inbox import OpenInbox, open_inbox  # noqa: F401 (the fixture: every backend)
from tests.test_sdk_delivery import ConsoleProcess

ME, PEER, OTHER = 1, 2, 3
NOW_MS = 1_767_000_000_000


def pushes(sender_id: int, texts: list[str], first_msg_id: int, *, to: int = 0, group_id: str = "") -> list[bytes]:
    """Stored bodies as the server makes them; ``to``: the user's copy of what they sent to ``to``
    (``toUserId``); neither ``to`` nor a group: a private message without one, as CIM's group's are."""
    prefix = Sender.of(sender_id, f"user{sender_id}").prefix
    if group_id:
        prefix = group_prefix(prefix, group_id)
    if to:
        prefix += to_user_field(to)
    return push_bodies(prefix, [text.encode() for text in texts], first_msg_id, NOW_MS, [0] * len(texts))


async def keep(inbox: Inbox, sender_id: int, texts: list[str], *, to: int = 0, group_id: str = "") -> None:
    """Append to ME's inbox: from ``sender_id`` (ME with ``to``: a copy of what ME sent)."""
    latest = (await inbox.latest([ME]))[0]
    bodies = pushes(sender_id, texts, 1000 + latest, to=to, group_id=group_id)
    await inbox.append(ME, sender_id, bodies, 1000 + latest, [0] * len(bodies))


def texts(page_messages: list[Response]) -> list[str]:
    return [push.resMsg for push in page_messages]


async def every_page_back(inbox: Inbox, **query: object) -> list[list[Response]]:
    """The pages of a query from the latest back to the start, following next_seq."""
    pages, before_seq = [], 0
    while True:
        page = await scan(inbox, HistoryQuery(ME, before_seq=before_seq, **query))  # type: ignore[arg-type]
        pages.append(page.messages)
        if not page.has_more:
            return pages
        assert 0 < page.next_seq <= (page.messages[0].seq if page.messages else page.next_seq)
        before_seq = page.next_seq


# -- stores -------------------------------------------------------------------------------------------


async def test_read_back_gives_the_newest_before_a_seq_oldest_first(open_inbox: OpenInbox) -> None:  # noqa: F811
    inbox = await open_inbox()
    assert (await inbox.read_back(ME, 0, 10)).entries == []
    await keep(inbox, PEER, [f"m{k}" for k in range(1, 8)])
    page = await inbox.read_back(ME, 0, 3)
    assert [seq for seq, _ in page.entries] == [5, 6, 7] and page.latest == 7 and not page.truncated
    assert [seq for seq, _ in (await inbox.read_back(ME, 5, 3)).entries] == [2, 3, 4]
    assert [seq for seq, _ in (await inbox.read_back(ME, 3, 10)).entries] == [1, 2]
    assert [seq for seq, _ in (await inbox.read_back(ME, 99, 2)).entries] == [6, 7]  # past the latest: from it
    assert (await inbox.read_back(ME, 1, 10)).entries == []
    assert Response.FromString((await inbox.read_back(ME, 2, 1)).entries[0][1]).resMsg == "m1"


async def test_a_conversation_pages_back_gap_free_in_both_directions(open_inbox: OpenInbox) -> None:  # noqa: F811
    inbox = await open_inbox()
    for k in range(30):
        await keep(inbox, PEER, [f"from peer {k}"])
        await keep(inbox, ME, [f"to peer {k}"], to=PEER)  # the copy of what ME sent
        await keep(inbox, OTHER, [f"from other {k}"])
        await keep(inbox, ME, [f"to other {k}"], to=OTHER)
    await keep(inbox, PEER, ["in a group"], group_id="g1")

    pages = await every_page_back(inbox, peer_id=PEER, limit=7)
    assert [len(p) for p in pages] == [7] * 8 + [4]
    seen = [push for page in reversed(pages) for push in page]
    assert texts(seen) == [t for k in range(30) for t in (f"from peer {k}", f"to peer {k}")]
    assert all(a.seq < b.seq for a, b in zip(seen, seen[1:], strict=False))
    first = seen[0]
    assert (first.seq, first.responseId, first.properties["receiveUserId"]) == (1, PEER, str(ME))
    assert (seen[1].responseId, seen[1].toUserId, seen[1].properties["receiveUserId"]) == (ME, PEER, str(ME))

    everything = [push for page in reversed(await every_page_back(inbox, limit=MAX_LIMIT)) for push in page]
    assert [push.seq for push in everything] == list(range(1, 122))


async def test_group_history_and_keyword_search_ignore_case(open_inbox: OpenInbox) -> None:  # noqa: F811
    inbox = await open_inbox()
    await keep(inbox, PEER, ["Lunch at noon?", "no"], group_id="g1")
    await keep(inbox, PEER, ["lunch, just us"])
    await keep(inbox, OTHER, ["LUNCH!"], group_id="g2")
    await keep(inbox, ME, ["lunch is good"], to=PEER)
    page = await scan(inbox, HistoryQuery(ME, group_id="g1"))
    assert texts(page.messages) == ["Lunch at noon?", "no"] and not page.has_more and page.next_seq == 0
    assert {push.groupId for push in page.messages} == {"g1"}
    found = await scan(inbox, HistoryQuery(ME, keyword="lUnCh"))
    assert texts(found.messages) == ["Lunch at noon?", "lunch, just us", "LUNCH!", "lunch is good"]
    assert texts((await scan(inbox, HistoryQuery(ME, peer_id=PEER, keyword="LUNCH"))).messages) == [
        "lunch, just us", "lunch is good"]
    assert (await scan(inbox, HistoryQuery(ME, keyword="dinner"))).messages == []


async def test_a_search_reads_a_bounded_number_of_entries_per_call(open_inbox: OpenInbox) -> None:  # noqa: F811
    inbox = await open_inbox()
    await keep(inbox, PEER, ["the needle"])
    for _ in range(5):
        await keep(inbox, OTHER, ["hay"] * 1000)
    calls, before_seq = [], 0
    while True:
        page = await scan(inbox, HistoryQuery(ME, keyword="needle", before_seq=before_seq))
        calls.append(page)
        if not page.has_more:
            break
        before_seq = page.next_seq
    assert [texts(c.messages) for c in calls] == [[], [], ["the needle"]]
    assert [c.next_seq for c in calls] == [5001 - SCAN_BUDGET + 1, 5001 - 2 * SCAN_BUDGET + 1, 0]


async def test_paging_forward_after_a_seq(open_inbox: OpenInbox) -> None:  # noqa: F811
    inbox = await open_inbox()
    await keep(inbox, PEER, [f"m{k}" for k in range(1, 11)])
    page = await scan(inbox, HistoryQuery(ME, after_seq=3, limit=4))
    assert [p.seq for p in page.messages] == [4, 5, 6, 7] and page.has_more and page.next_seq == 7
    page = await scan(inbox, HistoryQuery(ME, after_seq=7, limit=4))
    assert [p.seq for p in page.messages] == [8, 9, 10] and not page.has_more and page.next_seq == 0


async def test_retention_bounds_history(open_inbox: OpenInbox) -> None:  # noqa: F811
    inbox = await open_inbox(inbox_max_messages=5)
    await keep(inbox, PEER, [f"m{k}" for k in range(1, 31)])
    page = await scan(inbox, HistoryQuery(ME, limit=3))
    assert [p.seq for p in page.messages] == [28, 29, 30] and page.has_more and not page.truncated
    page = await scan(inbox, HistoryQuery(ME, before_seq=28, limit=10))
    assert [p.seq for p in page.messages] == [26, 27] and not page.has_more and page.truncated
    forward = await scan(inbox, HistoryQuery(ME, after_seq=2))
    assert [p.seq for p in forward.messages] == [26, 27, 28, 29, 30] and forward.truncated


@pytest.mark.parametrize(("fields", "problem"), [
    ({"peer_id": PEER, "group_id": "g1"}, "peerId and groupId"),
    ({"before_seq": 5, "after_seq": 2}, "beforeSeq and afterSeq"),
    ({"limit": 0}, "limit 0: 1 to 200"),
    ({"limit": MAX_LIMIT + 1}, "limit 201: 1 to 200"),
    ({"peer_id": -1}, "peerId -1"),
    ({"before_seq": -1}, "beforeSeq/afterSeq"),
    ({"keyword": "k" * 101}, "keyword: at most 100"),
])
def test_a_bad_query_is_refused_naming_the_field(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(CimError) as refused:
        HistoryQuery(ME, **fields)  # type: ignore[arg-type]
    assert refused.value.status.code == 3000 and problem in refused.value.message


# -- route ----------------------------------------------------------------------------------------


def bearer(stack: Running, user_id: int) -> dict[str, str]:
    token = mint_token(stack, user_id)
    return {"Authorization": f"Bearer {token}"} if token else {}


async def test_route_history_pages_and_refuses_bad_input(stack: Running) -> None:
    alice_id, bob_id, carol_id = [await register_user(stack, name) for name in ("alice", "bob", "carol")]
    async with httpx.AsyncClient(base_url=route_url(stack)) as http:
        for k in range(5):
            sent = await http.post("/p2pRoute", headers=bearer(stack, bob_id),
                                   json={"userId": bob_id, "receiveUserId": alice_id, "msg": f"Hello {k}"})
            assert sent.json()["code"] == "7000"  # alice is offline: stored
        await http.post("/p2pRoute", headers=bearer(stack, carol_id),
                        json={"userId": carol_id, "receiveUserId": alice_id, "msg": "from carol"})
        group = await http.post("/group/create", headers=bearer(stack, carol_id),
                                json={"userId": carol_id, "name": "team", "members": [bob_id]})
        team = group.json()["dataBody"]["groupId"]

        async def history(**body: object) -> dict[str, object]:
            answer = await http.post("/history", headers=bearer(stack, alice_id), json={"userId": alice_id, **body})
            assert answer.status_code == 200
            result: dict[str, object] = answer.json()
            return result

        first = await history(peerId=bob_id, limit=3)
        assert first["code"] == "9000", first
        data = first["dataBody"]
        assert isinstance(data, dict) and data["hasMore"] is True and data["truncated"] is False
        assert [m["text"] for m in data["messages"]] == ["Hello 2", "Hello 3", "Hello 4"]
        message = data["messages"][0]
        assert message["seq"] == 3 and data["nextSeq"] == 3 and isinstance(message["msgId"], int) and message["msgId"] > 0
        assert (message["sendUserId"], message["sendUserName"], message["receiveUserId"]) == (bob_id, "bob", alice_id)
        assert message["groupId"] is None and message["notice"] is False and message["timestamp"] > 0
        rest = (await history(peerId=bob_id, limit=3, beforeSeq=3))["dataBody"]
        assert isinstance(rest, dict) and [m["text"] for m in rest["messages"]] == ["Hello 0", "Hello 1"]
        assert rest["hasMore"] is False and rest["nextSeq"] == 0
        found = (await history(keyword="CAROL"))["dataBody"]
        assert isinstance(found, dict) and [m["text"] for m in found["messages"]] == ["from carol"]

        refusals = [
            ({"peerId": bob_id, "groupId": team}, "peerId and groupId"),
            ({"limit": 0}, "limit"),
            ({"limit": 201}, "limit"),
            ({"beforeSeq": 3, "afterSeq": 1}, "beforeSeq and afterSeq"),
            ({"peerId": 999_999}, "peerId 999999 is not a registered user"),
            ({"groupId": team}, f"user {alice_id} is not a member"),
            ({"groupId": "g999"}, "no such group"),
        ]
        for body, problem in refusals:
            refused = await history(**body)
            assert refused["code"] == "3000" and problem in str(refused["message"]), (body, refused)
        if bearer(stack, alice_id):  # a user reads only their own history
            other = await http.post("/history", headers=bearer(stack, bob_id), json={"userId": alice_id})
            assert (other.status_code, other.json()["code"]) == (403, "4003")
            assert (await http.post("/history", json={"userId": alice_id})).status_code == 401
        else:  # --auth none: nothing proves who calls, so an unknown user is a bad argument
            unknown = (await http.post("/history", json={"userId": 999_999})).json()
            assert unknown["code"] == "3000" and "userId 999999 is not a registered user" in unknown["message"]


async def route_history(http: httpx.AsyncClient, stack: Running, user_id: int, **body: object) -> dict[str, Any]:
    """POST ``/history`` as ``user_id`` (with their token); the answer's JSON (business errors are HTTP 200)."""
    answer = await http.post("/history", headers=bearer(stack, user_id), json={"userId": user_id, **body})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def seqs_and_texts(data: dict[str, Any]) -> list[tuple[int, str]]:
    return [(m["seq"], m["text"]) for m in data["messages"]]


async def test_route_history_pages_forward_after_a_seq(stack: Running) -> None:
    alice_id, bob_id, carol_id = [await register_user(stack, name) for name in ("alice", "bob", "carol")]
    # alice's inbox (she is offline: every one stored): seq 1..8, carol's at 3 and 6.
    senders = [(bob_id, "b0"), (bob_id, "b1"), (carol_id, "c0"), (bob_id, "b2"), (bob_id, "b3"), (carol_id, "c1"),
               (bob_id, "b4"), (bob_id, "b5")]
    async with httpx.AsyncClient(base_url=route_url(stack)) as http:
        for sender_id, text in senders:
            sent = await http.post("/p2pRoute", headers=bearer(stack, sender_id),
                                   json={"userId": sender_id, "receiveUserId": alice_id, "msg": text})
            assert sent.json()["code"] == "7000"

        async def page(**body: object) -> dict[str, Any]:
            answer = await route_history(http, stack, alice_id, **body)
            assert answer["code"] == "9000", answer
            data: dict[str, Any] = answer["dataBody"]
            return data

        # The whole inbox, forward from seq 1 in pages of 3, each starting at the last one's nextSeq.
        first = await page(afterSeq=1, limit=3)
        assert seqs_and_texts(first) == [(2, "b1"), (3, "c0"), (4, "b2")]
        assert (first["hasMore"], first["nextSeq"], first["truncated"]) == (True, 4, False)
        second = await page(afterSeq=first["nextSeq"], limit=3)
        assert seqs_and_texts(second) == [(5, "b3"), (6, "c1"), (7, "b4")]
        assert (second["hasMore"], second["nextSeq"]) == (True, 7)
        last = await page(afterSeq=second["nextSeq"], limit=3)
        assert seqs_and_texts(last) == [(8, "b5")] and (last["hasMore"], last["nextSeq"]) == (False, 0)
        # Exactly the rest in one page: nothing more, though the page is full.
        exact = await page(afterSeq=5, limit=3)
        assert [m["seq"] for m in exact["messages"]] == [6, 7, 8] and (exact["hasMore"], exact["nextSeq"]) == (False, 0)
        for past in (8, 999):  # at or past the latest: an empty last page
            beyond = await page(afterSeq=past)
            assert (beyond["messages"], beyond["hasMore"], beyond["nextSeq"]) == ([], False, 0)

        # A conversation forward: bob's only, carol's skipped; nextSeq is the last shown.
        with_bob = await page(afterSeq=1, limit=3, peerId=bob_id)
        assert seqs_and_texts(with_bob) == [(2, "b1"), (4, "b2"), (5, "b3")]
        assert (with_bob["hasMore"], with_bob["nextSeq"]) == (True, 5)
        rest = await page(afterSeq=with_bob["nextSeq"], limit=3, peerId=bob_id)
        assert seqs_and_texts(rest) == [(7, "b4"), (8, "b5")] and (rest["hasMore"], rest["nextSeq"]) == (False, 0)
        assert all(m["sendUserId"] == bob_id for m in with_bob["messages"] + rest["messages"])
        assert seqs_and_texts(await page(afterSeq=3, keyword="C")) == [(6, "c1")]

        refusals: list[tuple[dict[str, object], str]] = [
            ({"afterSeq": 2, "beforeSeq": 6}, "beforeSeq and afterSeq: give one of them"),
            ({"afterSeq": 0}, "afterSeq"),
            ({"afterSeq": -1}, "afterSeq"),
            ({"afterSeq": "three"}, "afterSeq"),
            ({"afterSeq": 2**63}, "afterSeq"),
        ]
        for body, problem in refusals:
            refused = await route_history(http, stack, alice_id, **body)
            assert refused["code"] == "3000" and problem in str(refused["message"]), (body, refused)
            assert refused["dataBody"] is None


async def test_route_history_of_a_named_group_for_a_member(stack: Running) -> None:
    url = route_url(stack)
    alice_id, bob_id, carol_id = [await register_user(stack, name) for name in ("alice", "bob", "carol")]
    async with Client(url, alice_id, "alice", password=PASSWORD) as alice, \
            Client(url, bob_id, "bob", password=PASSWORD) as bob, httpx.AsyncClient(base_url=url) as http:
        team = await alice.groups.create("team", [bob_id])
        side = await alice.groups.create("side", [bob_id])  # another group alice is in: not in team's history
        await bob.send_group("Standup at 10", group_id=team)
        await bob.send_group("standup in side", group_id=side)
        await bob.send_private(alice_id, "a private standup")
        await alice.send_group("lunch?", group_id=team)  # alice's own copy of what she sent to the group
        await bob.send_group("standup moved to 11", group_id=team)

        answer = await route_history(http, stack, alice_id, groupId=team)
        assert answer["code"] == "9000", answer
        data = answer["dataBody"]
        assert (data["hasMore"], data["nextSeq"], data["truncated"]) == (False, 0, False)
        messages = data["messages"]
        assert {m["groupId"] for m in messages} == {team}
        assert [m["seq"] for m in messages] == sorted(m["seq"] for m in messages)
        shown = [(m["sendUserId"], m["text"]) for m in messages if not m["notice"]]
        assert shown == [(bob_id, "Standup at 10"), (alice_id, "lunch?"), (bob_id, "standup moved to 11")]
        assert all(m["receiveUserId"] == alice_id for m in messages)

        found = await route_history(http, stack, alice_id, groupId=team, keyword="STANDUP")
        assert found["code"] == "9000", found
        assert [m["text"] for m in found["dataBody"]["messages"]] == ["Standup at 10", "standup moved to 11"]
        newest = await route_history(http, stack, alice_id, groupId=team, keyword="standup", limit=1)
        assert [m["text"] for m in newest["dataBody"]["messages"]] == ["standup moved to 11"]
        older = await route_history(http, stack, alice_id, groupId=team, keyword="standup",
                                    beforeSeq=newest["dataBody"]["nextSeq"])
        assert [m["text"] for m in older["dataBody"]["messages"]] == ["Standup at 10"]
        assert not older["dataBody"]["hasMore"]

        # bob, a member too, reads the same conversation from his own inbox.
        bobs = await route_history(http, stack, bob_id, groupId=team, keyword="standup")
        assert [m["text"] for m in bobs["dataBody"]["messages"]] == ["Standup at 10", "standup moved to 11"]
        refused = await route_history(http, stack, carol_id, groupId=team)
        assert refused["code"] == "3000" and f"user {carol_id} is not a member" in refused["message"]


# -- in-band ------------------------------------------------------------------------------------


async def test_raw_history_frames_carry_the_page_and_receive_user_id(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    for k in range(3):
        bob.send(cmd=MESSAGE, reqMsg=f"hi {k}", properties={"receiveUserId": str(alice_id)})
        assert (await alice.next()).resMsg == f"hi {k}"
    alice.send(requestId=alice_id, cmd=HISTORY, peerId=bob_id, limit=2, clientMsgId=77)
    answer = await alice.next()
    assert (answer.cmd, answer.code, answer.clientMsgId, answer.hasMore, answer.nextSeq) == (HISTORY, 9000, 77, True, 2)
    assert answer.properties["receiveUserId"] == str(alice_id)
    shown = [Response.FromString(body) for body in answer.messages]
    assert [(p.seq, p.resMsg, p.responseId) for p in shown] == [(2, "hi 1", bob_id), (3, "hi 2", bob_id)]
    assert all(p.properties["receiveUserId"] == str(alice_id) for p in shown)
    alice.send(requestId=alice_id, cmd=HISTORY, limit=500, clientMsgId=78)
    refused = await alice.next()
    assert (refused.cmd, refused.code, refused.clientMsgId) == (HISTORY, 3000, 78) and "limit 500" in refused.resMsg
    assert refused.properties["receiveUserId"] == str(alice_id) and not refused.messages
    await expect_pong(alice, alice_id)  # the connection goes on


async def test_raw_history_frames_page_forward_after_a_seq(stack: Running) -> None:
    alice_id, alice = await online(stack, "alice")
    bob_id, bob = await online(stack, "bob")
    carol_id, carol = await online(stack, "carol")
    # alice's inbox: seq 1..6, carol's at 4.
    for sender, text in ((bob, "b0"), (bob, "b1"), (bob, "b2"), (carol, "c0"), (bob, "b3"), (bob, "b4")):
        sender.send(cmd=MESSAGE, reqMsg=text, properties={"receiveUserId": str(alice_id)})
        assert (await alice.next()).resMsg == text

    async def history(client_msg_id: int, *, after_seq: int, before_seq: int = 0, peer_id: int = 0, limit: int = 0) -> Response:
        alice.send(requestId=alice_id, cmd=HISTORY, clientMsgId=client_msg_id, afterSeq=after_seq, beforeSeq=before_seq,
                   peerId=peer_id, limit=limit)
        answer = await alice.next()
        assert (answer.cmd, answer.clientMsgId) == (HISTORY, client_msg_id)
        assert answer.properties["receiveUserId"] == str(alice_id)
        return answer

    def shown(answer: Response) -> list[tuple[int, str]]:
        return [(p.seq, p.resMsg) for p in map(Response.FromString, answer.messages)]

    first = await history(80, after_seq=1, limit=2)
    assert (first.code, first.hasMore, first.nextSeq, first.truncated) == (9000, True, 3, False)
    assert shown(first) == [(2, "b1"), (3, "b2")]
    second = await history(81, after_seq=first.nextSeq, limit=2)
    assert shown(second) == [(4, "c0"), (5, "b3")] and (second.hasMore, second.nextSeq) == (True, 5)
    last = await history(82, after_seq=second.nextSeq, limit=2)
    assert shown(last) == [(6, "b4")] and (last.hasMore, last.nextSeq) == (False, 0)
    beyond = await history(83, after_seq=6)
    assert (beyond.code, list(beyond.messages), beyond.hasMore, beyond.nextSeq) == (9000, [], False, 0)
    with_bob = await history(84, after_seq=2, peer_id=bob_id, limit=2)  # carol's skipped
    assert shown(with_bob) == [(3, "b2"), (5, "b3")] and (with_bob.hasMore, with_bob.nextSeq) == (True, 5)
    assert {Response.FromString(body).responseId for body in with_bob.messages} == {bob_id}
    with_carol = await history(85, after_seq=2, peer_id=carol_id)  # limit 0 (unset): the default, all of it
    assert shown(with_carol) == [(4, "c0")] and not with_carol.hasMore

    both = await history(86, after_seq=2, before_seq=5)
    assert both.code == 3000 and "beforeSeq and afterSeq: give one of them" in both.resMsg and not both.messages
    await expect_pong(alice, alice_id)  # the connection goes on
    for client in (alice, bob, carol):
        client.close()


async def expect_pong(client: RawClient, user_id: int) -> None:
    assert (await client.ping(user_id)).resMsg == "pong"


async def test_sdk_history_of_a_group_and_a_search(stack: Running) -> None:
    url = route_url(stack)
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    async with Client(url, alice_id, "alice", password=PASSWORD) as alice, \
            Client(url, bob_id, "bob", password=PASSWORD) as bob:
        team = await alice.groups.create("team", [bob_id])
        for text in ("Standup at 10", "lunch?", "standup moved"):
            await bob.send_group(text, group_id=team)
        await bob.send_private(alice_id, "a private standup")
        page = await alice.history(group_id=team, keyword="STANDUP")
        assert [(m.text, m.sender_id, m.group_id) for m in page.messages] == [
            ("Standup at 10", bob_id, team), ("standup moved", bob_id, team)]
        assert all(m.receiver_id == alice_id and m.seq > 0 for m in page.messages) and not page.has_more
        whole = await alice.history(limit=2)
        assert [m.text for m in whole.messages] == ["standup moved", "a private standup"] and whole.has_more
        older = await alice.history(limit=200, before_seq=whole.next_seq)
        assert [m.text for m in older.messages][-2:] == ["Standup at 10", "lunch?"] and older.messages[0].notice
        with pytest.raises(ClientError) as refused:
            await alice.history(peer_id=bob_id, group_id=team)
        assert refused.value.code == 3000
        with pytest.raises(ClientError, match="not a registered user"):
            await alice.history(peer_id=999_999)


# -- console -------------------------------------------------------------------------------------


async def test_console_history_and_search(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    async with Client(route_url(stack), bob_id, "bob", password=PASSWORD) as bob:
        for text in ("first", "Coffee later?", "third"):
            await bob.send_private(alice_id, text)
        console = await ConsoleProcess.start(route_url(stack), alice_id, "alice")
        try:
            await console.expect("type :all for commands")
            shown = await output(console, f":history {bob_id}")
            assert shown[0] == f"3 messages with user {bob_id}:"
            assert [line.split(": ", 1)[1] for line in shown[1:]] == ["first", "Coffee later?", "third"]
            assert all(line.startswith("  [") and f"bob({bob_id})" in line for line in shown[1:])
            assert (await output(console, ":history bob"))[0] == f"3 messages with user {bob_id}:"  # online: by name
            assert (await output(console, ":history"))[0] == "3 messages in your inbox:"
            found = await output(console, ":q COFFEE")
            assert found[0] == "1 messages containing 'COFFEE':" and found[1].endswith(": Coffee later?")
            assert await output(console, ":q tea") == ["no messages containing 'tea'"]
            assert await output(console, ":q") == ["usage: :q KEYWORD"]
            assert await output(console, ":history a b") == ["usage: :history [USER]"]
            assert await output(console, ":history nobody") == ["no online user named nobody: give their user id"]
            assert (await output(console, ":history 999999"))[0].startswith(":history failed: 3000: peerId 999999")
            listed = "\n".join(await output(console, ":all"))
            assert "  :history [USER]  " in listed and "  :q KEYWORD  " in listed
            await console.quit()
        finally:
            if console.process.returncode is None:
                console.process.kill()
                await console.process.wait()
