"""Named groups: the membership store on every backend, the route's /group API and its rules,
in-band sends to members (online, away, on two nodes), and the notices membership changes send.

Stores are opened through the registry as servers open them (``tests.test_inbox.open_store``):
``memory://``, real Redis, and ``memory://`` with a data dir (SQLite). Everything else runs a real
route and cim-server on loopback, in the suite's auth mode; the cluster test runs two cim-server
processes and a route on real Redis and ZooKeeper.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from cim.backends.base import GroupFull, Groups, Store
from cim.backends.memory import MemoryHub
from cim.client import Client, ClientError, Message, register
from cim.client.route import bearer
from cim.messages import Sender, group_prefix, receiver_entry
from cim.proto import MESSAGE, SEND_RECEIPT, SYNC, Response
from cim.run import Running, start
from cim.status import Status
from tests.conftest import (
    PASSWORD,
    Cluster,
    RawClient,
    eventually,
    mint_token,
    online,
    register_user,
    route_login,
    route_url,
    server_port,
    stack_config,
)
from tests.test_inbox import open_store

OWNER, BOB, CAROL, DAVE = 1, 2, 3, 4
INVALID = Status.VALIDATION_FAIL.code_str

# -- the store ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def open_groups(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Opens the param's store (keyword arguments: Config fields); its Groups."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    stores: list[Store] = []

    async def open_(**overrides: Any) -> Groups:
        stores.append(await open_store(request.param, tmp_path, redis_url, **overrides))
        return stores[-1].groups

    yield open_
    for store in stores:
        await store.close()


async def test_a_group_keeps_its_name_owner_and_members(open_groups: Callable[..., Any]) -> None:
    groups: Groups = await open_groups()
    group_id = await groups.create(OWNER, "team", [BOB, CAROL, BOB])
    assert group_id.startswith("g")
    info = await groups.info(group_id)
    assert info is not None
    assert (info.group_id, info.name, info.owner_id, info.members) == (group_id, "team", OWNER, [OWNER, BOB, CAROL])
    assert sorted(await groups.members(group_id) or []) == [OWNER, BOB, CAROL]
    assert await groups.groups_of(BOB) == [group_id]
    assert await groups.groups_of(DAVE) == []
    other = await groups.create(BOB, "pair", [])
    assert other != group_id and await groups.groups_of(BOB) == sorted([group_id, other], key=lambda g: int(g[1:]))


async def test_add_and_remove_answer_what_changed(open_groups: Callable[..., Any]) -> None:
    groups: Groups = await open_groups()
    group_id = await groups.create(OWNER, "team", [BOB])
    assert await groups.add(group_id, [BOB, CAROL, DAVE, CAROL]) == [CAROL, DAVE]
    assert await groups.add(group_id, [BOB]) == []
    assert await groups.remove(group_id, [DAVE, 99]) == [DAVE]
    assert await groups.remove(group_id, [DAVE]) == []
    info = await groups.info(group_id)
    assert info is not None and info.members == [OWNER, BOB, CAROL]
    assert await groups.groups_of(DAVE) == []
    assert await groups.rename(group_id, "crew")
    info = await groups.info(group_id)
    assert info is not None and info.name == "crew"


async def test_dissolve_ends_the_group_and_its_id_is_never_given_again(open_groups: Callable[..., Any]) -> None:
    groups: Groups = await open_groups()
    group_id = await groups.create(OWNER, "team", [BOB])
    assert await groups.dissolve(group_id) == [OWNER, BOB]
    assert await groups.info(group_id) is None and await groups.members(group_id) is None
    assert await groups.groups_of(BOB) == []
    # A dissolved group stays gone: no change brings it back.
    assert await groups.add(group_id, [CAROL]) is None
    assert await groups.remove(group_id, [BOB]) is None
    assert not await groups.rename(group_id, "again")
    assert await groups.dissolve(group_id) is None
    assert await groups.info(group_id) is None
    assert await groups.create(OWNER, "next", []) != group_id


@pytest.mark.parametrize("made_up", ["", "g", "g0", "g01", "x1", "1", "g-1", "g1 ", "g١", "g" + "9" * 30])
async def test_ids_no_store_hands_out_are_no_group(open_groups: Callable[..., Any], made_up: str) -> None:
    groups: Groups = await open_groups()
    await groups.create(OWNER, "team", [BOB])
    assert await groups.info(made_up) is None and await groups.members(made_up) is None
    assert await groups.add(made_up, [CAROL]) is None and await groups.remove(made_up, [BOB]) is None
    assert not await groups.rename(made_up, "x") and await groups.dissolve(made_up) is None


async def test_the_size_limit_counts_the_owner_and_changes_nothing_when_hit(open_groups: Callable[..., Any]) -> None:
    groups: Groups = await open_groups(group_max_members=3)
    with pytest.raises(GroupFull) as too_big:
        await groups.create(OWNER, "team", [BOB, CAROL, DAVE])
    assert (too_big.value.size, too_big.value.limit) == (4, 3)
    group_id = await groups.create(OWNER, "team", [BOB])
    with pytest.raises(GroupFull):
        await groups.add(group_id, [CAROL, DAVE])
    info = await groups.info(group_id)
    assert info is not None and info.members == [OWNER, BOB]
    assert await groups.groups_of(CAROL) == []
    assert await groups.add(group_id, [CAROL, BOB]) == [CAROL]  # exactly at the limit; a member again counts once


async def test_groups_survive_a_restart_with_a_data_dir(tmp_path: Path) -> None:
    first = await open_store("sqlite", tmp_path, None)
    group_id = await first.groups.create(OWNER, "team", [BOB])
    await first.close()
    again = await open_store("sqlite", tmp_path, None)
    try:
        info = await again.groups.info(group_id)
        assert info is not None and (info.name, info.members) == ("team", [OWNER, BOB])
        assert await again.groups.create(OWNER, "next", []) != group_id
    finally:
        await again.close()


# -- the route API -----------------------------------------------------------------------


class Api:
    """The /group calls of one stack, each user with a token minted with the stack's secret."""

    def __init__(self, running: Running, http: httpx.AsyncClient) -> None:
        self.running = running
        self.http = http

    async def call(self, path: str, user_id: int, token_of: int | None = None, **body: Any) -> dict[str, Any]:
        """POST ``/group/{path}`` as ``user_id`` (with ``token_of``'s token: another user's, say);
        the envelope, checked."""
        token = mint_token(self.running, user_id if token_of is None else token_of)
        response = await self.http.post(f"/group/{path}", json={"userId": user_id, **body}, headers=bearer(token))
        payload: dict[str, Any] = response.json()
        assert set(payload) == {"code", "message", "reqNo", "dataBody"}
        assert response.status_code == {"4001": 401, "4003": 403}.get(payload["code"], 200), payload
        return payload

    async def ok(self, path: str, user_id: int, **body: Any) -> Any:
        payload = await self.call(path, user_id, **body)
        assert payload["code"] == "9000", payload
        return payload["dataBody"]

    async def refused(self, path: str, user_id: int, words: str, **body: Any) -> None:
        payload = await self.call(path, user_id, **body)
        assert payload["code"] == INVALID and words in payload["message"], payload


async def start_stack(**overrides: Any) -> Running:
    return await start(stack_config(**overrides), {"server", "route"}, MemoryHub())


@pytest.fixture
async def api(stack: Running) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=route_url(stack)) as http:
        yield Api(stack, http)


async def users(running: Running, *names: str) -> list[int]:
    return [await register_user(running, name) for name in names]


async def test_the_api_creates_changes_lists_and_dissolves(api: Api) -> None:
    alice, bob, carol, dave = await users(api.running, "alice", "bob", "carol", "dave")
    group_id = (await api.ok("create", alice, name="team", members=[bob, carol]))["groupId"]
    assert isinstance(group_id, str)
    members = await api.ok("members", bob, groupId=group_id)
    named = sorted([(alice, "alice"), (bob, "bob"), (carol, "carol")])
    assert members == {"groupId": group_id, "name": "team", "ownerId": alice, "memberCount": 3,
                       "members": [{"userId": u, "userName": n} for u, n in named]}
    assert await api.ok("addMembers", alice, groupId=group_id, members=[dave, bob]) == {"groupId": group_id, "added": [dave]}
    assert await api.ok("removeMembers", alice, groupId=group_id, members=[carol]) == {"groupId": group_id, "removed": [carol]}
    assert await api.ok("rename", alice, groupId=group_id, name="crew") is None
    listed = await api.ok("list", dave)
    assert listed == [{"groupId": group_id, "name": "crew", "ownerId": alice, "memberCount": 3}]
    assert await api.ok("list", carol) == []
    assert await api.ok("leave", dave, groupId=group_id) is None
    assert await api.ok("list", dave) == []
    assert await api.ok("dissolve", alice, groupId=group_id) is None
    assert await api.ok("list", alice) == [] and await api.ok("list", bob) == []
    await api.refused("members", alice, "no such group", groupId=group_id)


async def test_only_the_owner_changes_a_group_and_only_members_read_it(api: Api) -> None:
    alice, bob, eve = await users(api.running, "alice", "bob", "eve")
    group_id = (await api.ok("create", alice, name="team", members=[bob]))["groupId"]
    changes: list[tuple[str, dict[str, Any]]] = [
        ("addMembers", {"members": [eve]}), ("removeMembers", {"members": [alice]}), ("rename", {"name": "mine"}),
        ("dissolve", {}),
    ]
    for path, body in changes:
        await api.refused(path, bob, f"only its owner (user {alice})", groupId=group_id, **body)
    await api.refused("members", eve, f"user {eve} is not a member", groupId=group_id)
    await api.refused("leave", eve, f"user {eve} is not a member", groupId=group_id)
    await api.refused("leave", alice, "the owner cannot leave", groupId=group_id)
    await api.refused("removeMembers", alice, "the owner", groupId=group_id, members=[alice])
    info = await api.ok("members", alice, groupId=group_id)
    assert (info["name"], info["memberCount"]) == ("team", 2)  # nothing refused changed anything


async def test_unknown_groups_and_users_are_named(api: Api) -> None:
    alice, bob = await users(api.running, "alice", "bob")
    await api.refused("create", alice, "members: user 999999 is not a registered user", name="team", members=[bob, 999999])
    await api.refused("create", 999998, "userId: user 999998 is not a registered user", name="team", members=[bob])
    group_id = (await api.ok("create", alice, name="team", members=[]))["groupId"]
    await api.refused("addMembers", alice, "members: user 999999 is not a registered user", groupId=group_id,
                      members=[999999])
    calls: list[tuple[str, dict[str, Any]]] = [
        ("addMembers", {"members": [bob]}), ("removeMembers", {"members": [bob]}), ("leave", {}), ("members", {}),
        ("rename", {"name": "x"}), ("dissolve", {}),
    ]
    for path, body in calls:
        await api.refused(path, alice, "groupId 'g999': no such group", groupId="g999", **body)
        await api.refused(path, alice, "no such group", groupId="not-an-id", **body)
    assert await api.ok("list", alice) == [{"groupId": group_id, "name": "team", "ownerId": alice, "memberCount": 1}]


async def test_the_size_limit_is_a_clear_error() -> None:
    running = await start_stack(group_max_members=3)
    try:
        async with httpx.AsyncClient(base_url=route_url(running)) as http:
            api = Api(running, http)
            alice, bob, carol, dave = await users(running, "alice", "bob", "carol", "dave")
            await api.refused("create", alice, "would have 4 members; the limit is 3 (--group-max-members)",
                              name="big", members=[bob, carol, dave])
            group_id = (await api.ok("create", alice, name="team", members=[bob, carol]))["groupId"]
            await api.refused("addMembers", alice, "the limit is 3", groupId=group_id, members=[dave])
            assert (await api.ok("members", alice, groupId=group_id))["memberCount"] == 3
    finally:
        await running.stop()


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/group/create", {"userId": 1, "members": []}, "name"),
        ("/group/create", {"userId": 1, "name": "", "members": []}, "name"),
        ("/group/create", {"userId": 1, "name": "x", "members": "2"}, "members"),
        ("/group/create", {"userId": 1, "name": "x", "members": [0]}, "members"),
        ("/group/addMembers", {"userId": 1, "members": [2]}, "groupId"),
        ("/group/members", {"userId": "one", "groupId": "g1"}, "userId"),
        ("/group/rename", {"userId": 1, "groupId": "g1", "name": "x" * 65}, "name"),
        ("/group/list", {}, "userId"),
    ],
)
async def test_bad_fields_are_3000_naming_the_field(api: Api, path: str, body: Any, field: str) -> None:
    payload = (await api.http.post(path, json=body)).json()
    assert payload["code"] == INVALID and field in payload["message"], payload


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1]", b"\xff"])
async def test_bad_json_is_3000(api: Api, raw: bytes) -> None:
    response = await api.http.post("/group/create", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["code"] == INVALID


async def test_group_calls_need_the_users_own_token() -> None:
    running = await start_stack(auth="token")
    try:
        async with httpx.AsyncClient(base_url=route_url(running)) as http:
            api = Api(running, http)
            alice, bob = await users(running, "alice", "bob")
            forged = await api.call("create", alice, token_of=bob, name="team", members=[bob])
            assert forged["code"] == "4003"
            missing = await http.post("/group/list", json={"userId": alice})
            assert (missing.status_code, missing.json()["code"]) == (401, "4001")
            assert await api.ok("list", alice) == []  # nothing was created for alice by bob
    finally:
        await running.stop()


async def test_the_openapi_document_lists_the_group_calls(api: Api) -> None:
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    expected = ["create", "addMembers", "removeMembers", "leave", "members", "list", "rename", "dissolve"]
    assert all(f"/group/{name}" in paths and "post" in paths[f"/group/{name}"] for name in expected)


# -- in-band -----------------------------------------------------------------------------


def test_group_pushes_carry_the_group_id_and_notice_flag_in_both_wire_twins(wire: ModuleType) -> None:
    sender = Sender.of(7, "alice")
    plain, notice = (wire.push_bodies(group_prefix(sender.prefix, "g12", notice=flag), [b"hi"], 99, 1_700_000_000_000, [0])[0]
                     for flag in (False, True))
    for body, flag in ((plain, False), (notice, True)):
        push = Response.FromString(body + receiver_entry(8))
        assert (push.cmd, push.resMsg, push.groupId, push.notice, push.msgId, push.responseId) == (
            MESSAGE, "hi", "g12", flag, 99, 7)
        assert dict(push.properties) == {"sendUserId": "7", "sendUserName": "alice", "receiveUserId": "8"}


def to_group(client: RawClient, group_id: str, text: str, client_msg_id: int = 0) -> None:
    client.send(cmd=MESSAGE, reqMsg=text, groupId=group_id, clientMsgId=client_msg_id)


async def nothing_more(*clients: RawClient) -> None:
    """No frame comes to any of the clients within a moment (a ping's pong is the next frame)."""
    for client in clients:
        client.send_ping(0)
        assert (await client.next()).resMsg == "pong"


async def test_members_get_group_messages_with_the_group_id_and_away_members_on_sync(api: Api) -> None:
    alice_id, alice = await online(api.running, "alice")
    bob_id, bob = await online(api.running, "bob")
    eve_id, eve = await online(api.running, "eve")
    dave_id = await register_user(api.running, "dave")  # away
    group_id = (await api.ok("create", alice_id, name="team", members=[bob_id, dave_id]))["groupId"]
    created = await bob.next()
    assert (created.cmd, created.groupId, created.notice) == (MESSAGE, group_id, True)
    assert "alice created the group 'team'" in created.resMsg and created.properties["sendUserId"] == str(alice_id)
    assert (await alice.next()).notice  # the owner's inbox too: their other devices see it

    to_group(alice, group_id, "hello team", client_msg_id=1)
    receipt = await alice.next()
    assert (receipt.cmd, receipt.code, receipt.clientMsgId) == (SEND_RECEIPT, 9000, 1)
    # A send with a clientMsgId: the sender's copy (cim.delivery) for her devices, set aside by RawClient.
    [copy] = alice.own_copies
    assert (copy.cmd, copy.resMsg, copy.groupId, copy.msgId, copy.clientMsgId) == (
        MESSAGE, "hello team", group_id, receipt.msgId, 1)
    assert copy.properties["sendUserId"] == copy.properties["receiveUserId"] == str(alice_id)
    pushed = await bob.next()
    assert (pushed.cmd, pushed.resMsg, pushed.groupId, pushed.notice, pushed.msgId) == (
        MESSAGE, "hello team", group_id, False, receipt.msgId)
    assert pushed.properties["sendUserName"] == "alice" and pushed.properties["receiveUserId"] == str(bob_id)
    for k in range(2, 6):  # in a row (most likely one read, sent as one run): answered and pushed in order
        to_group(alice, group_id, f"run {k}", client_msg_id=k)
    assert [(r.code, r.clientMsgId) for r in [await alice.next() for _ in range(4)]] == [(9000, k) for k in range(2, 6)]
    assert [r.resMsg for r in alice.own_copies[1:]] == [f"run {k}" for k in range(2, 6)]
    assert [r.resMsg for r in [await bob.next() for _ in range(4)]] == [f"run {k}" for k in range(2, 6)]
    to_group(bob, group_id, "hi alice")  # CIM's client: no clientMsgId, so no copy, and only a failure would answer
    assert (await alice.next()).resMsg == "hi alice"
    await nothing_more(alice, bob, eve)  # a non-member gets nothing

    # dave was away: his sync brings the notice and the messages, in order.
    answer = await route_login(api.running, dave_id, "dave")
    dave = await RawClient.connect(answer.server.port)
    dave.login(dave_id, "dave", answer.token)
    dave.send(cmd=SYNC, ackSeq=0)
    got = []
    while (frame := await dave.next()).cmd != SYNC:
        got.append(frame)
    assert [(r.resMsg.startswith("alice created"), r.groupId, r.notice) for r in got[:1]] == [(True, group_id, True)]
    texts = ["hello team", *(f"run {k}" for k in range(2, 6)), "hi alice"]
    assert [(r.resMsg, r.groupId, r.seq) for r in got[1:]] == [(text, group_id, seq) for seq, text in enumerate(texts, 2)]


async def test_a_non_member_or_an_unknown_group_gets_a_failure_receipt(api: Api) -> None:
    alice_id, alice = await online(api.running, "alice")
    bob_id, bob = await online(api.running, "bob")
    eve_id, eve = await online(api.running, "eve")
    group_id = (await api.ok("create", alice_id, name="team", members=[bob_id]))["groupId"]
    await bob.next(), await alice.next()  # the notices
    to_group(eve, group_id, "let me in", client_msg_id=5)
    refused = await eve.next()
    assert (refused.cmd, refused.code, refused.clientMsgId) == (SEND_RECEIPT, Status.VALIDATION_FAIL.code, 5)
    assert f"user {eve_id} is not a member" in refused.resMsg
    to_group(eve, "g424242", "anyone?")  # without a clientMsgId a failure is still answered
    unknown = await eve.next()
    assert unknown.code == Status.VALIDATION_FAIL.code and "no such group" in unknown.resMsg
    await nothing_more(alice, bob)


async def test_membership_changes_are_notices_and_dissolve_stops_delivery(api: Api) -> None:
    alice_id, alice = await online(api.running, "alice")
    bob_id, bob = await online(api.running, "bob")
    carol_id, carol = await online(api.running, "carol")
    group_id = (await api.ok("create", alice_id, name="team", members=[bob_id]))["groupId"]

    async def notices(*clients: RawClient) -> list[str]:
        texts = []
        for client in clients:
            frame = await client.next()
            assert (frame.cmd, frame.groupId, frame.notice) == (MESSAGE, group_id, True), frame
            texts.append(frame.resMsg)
        return texts

    assert len(set(await notices(alice, bob))) == 1
    await api.ok("addMembers", alice_id, groupId=group_id, members=[carol_id])
    assert await notices(alice, bob, carol) == [f"alice added carol({carol_id}) to 'team'"] * 3
    await api.ok("rename", alice_id, groupId=group_id, name="crew")
    assert await notices(alice, bob, carol) == ["alice renamed 'team' to 'crew'"] * 3
    await api.ok("removeMembers", alice_id, groupId=group_id, members=[carol_id])
    assert await notices(alice, bob, carol) == [f"alice removed carol({carol_id}) from 'crew'"] * 3  # carol learns it
    to_group(alice, group_id, "without carol", client_msg_id=1)
    assert (await alice.next()).code == 9000
    assert [copy.resMsg for copy in alice.own_copies] == ["without carol"]
    assert (await bob.next()).resMsg == "without carol"
    await api.ok("addMembers", alice_id, groupId=group_id, members=[carol_id])
    await notices(alice, bob, carol)
    await api.ok("leave", carol_id, groupId=group_id)
    assert await notices(alice, bob, carol) == ["carol left 'crew'"] * 3
    await api.ok("dissolve", alice_id, groupId=group_id)
    assert await notices(alice, bob) == ["alice dissolved 'crew'"] * 2
    to_group(alice, group_id, "anyone?", client_msg_id=2)
    gone = await alice.next()
    assert (gone.cmd, gone.code) == (SEND_RECEIPT, Status.VALIDATION_FAIL.code) and "no such group" in gone.resMsg
    await nothing_more(alice, bob, carol)


async def test_the_sdk_creates_sends_and_sees_group_ids_and_notices(stack: Running) -> None:
    url = route_url(stack)
    alice_id, bob_id = await register(url, "alice", PASSWORD), await register(url, "bob", PASSWORD)
    got: list[Message] = []
    async with Client(url, alice_id, "alice", password=PASSWORD) as alice, \
            Client(url, bob_id, "bob", password=PASSWORD, on_message=got.append) as bob:
        group_id = await alice.groups.create("team", [bob_id])
        await eventually(lambda: len(got) == 1)
        assert (got[0].group_id, got[0].notice, got[0].sender_id) == (group_id, True, alice_id)
        receipt = await alice.send_group("hello team", group_id=group_id)
        assert receipt.code == 9000
        await eventually(lambda: len(got) == 2)
        assert (got[1].text, got[1].group_id, got[1].notice) == ("hello team", group_id, False)
        [mine] = await bob.groups.mine()
        assert (mine.group_id, mine.name, mine.owner_id, mine.member_count) == (group_id, "team", alice_id, 2)
        summary, members = await bob.groups.members(group_id)
        assert summary == mine and members == [(alice_id, "alice"), (bob_id, "bob")]
        with pytest.raises(ClientError) as not_owner:
            await bob.groups.rename(group_id, "mine")
        assert not_owner.value.code == Status.VALIDATION_FAIL.code and "only its owner" in not_owner.value.message
        assert await alice.groups.add_members(group_id, [bob_id]) == []
        assert await alice.groups.remove_members(group_id, [bob_id]) == [bob_id]
        with pytest.raises(ClientError) as not_member:
            await bob.send_group("still here?", group_id=group_id)
        assert "not a member" in not_member.value.message
        await alice.groups.add_members(group_id, [bob_id])
        await bob.groups.leave(group_id)
        await alice.groups.rename(group_id, "solo")
        await alice.groups.dissolve(group_id)
        assert await alice.groups.mine() == []
        await eventually(lambda: sum(m.notice for m in got) == 4)  # created, removed, added, left


# -- two nodes on Redis -------------------------------------------------------------------


async def test_a_group_spans_two_nodes_on_redis(cluster: Cluster) -> None:
    await eventually(lambda: len(cluster.route_servers()) == 2)
    names = ["ann", "ben", "cat", "dan"]
    ids = {n: await register(cluster.url, n, PASSWORD) for n in names}
    got: dict[str, list[Message]] = {n: [] for n in names}
    clients = {n: Client(cluster.url, ids[n], n, password=PASSWORD, on_message=got[n].append) for n in names[:3]}
    try:
        for client in clients.values():
            await client.connect()
        assert len({server_port(c) for c in clients.values()}) == 2, "loop balancing spreads them over both nodes"
        ann = clients["ann"]
        group_id = await ann.groups.create("team", [ids["ben"], ids["cat"], ids["dan"]])
        await eventually(lambda: all(len(got[n]) == 1 for n in names[:3]))
        for k in range(5):
            assert (await ann.send_group(f"m{k}", group_id=group_id)).code == 9000
        await eventually(lambda: all(len(got[n]) == 6 for n in ("ben", "cat")))
        for name in ("ben", "cat"):
            assert [(m.text, m.group_id, m.notice) for m in got[name][1:]] == [(f"m{k}", group_id, False) for k in range(5)]
        # The notice, and her copies: her devices get what she sent (this one knows it sent them)
        await eventually(lambda: len(got["ann"]) == 6)
        assert [(m.text, m.outgoing, m.from_this_device) for m in got["ann"][1:]] == [(f"m{k}", True, True) for k in range(5)]
        # dan was away: the sync at his login brings all of it
        async with Client(cluster.url, ids["dan"], "dan", password=PASSWORD, on_message=got["dan"].append):
            await eventually(lambda: len(got["dan"]) == 6)
        assert got["dan"][0].notice and [m.text for m in got["dan"][1:]] == [f"m{k}" for k in range(5)]
        await ann.groups.dissolve(group_id)
        with pytest.raises(ClientError):
            await ann.send_group("after", group_id=group_id)
    finally:
        for client in clients.values():
            await client.close()
