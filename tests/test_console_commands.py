"""The console's commands (issue 11 item 7) as a user types them: ``cim client`` in a subprocess, lines
on its stdin, its stdout read back, against a real route and cim-server (embedded stack, real sockets,
the suite's auth mode); the other users are SDK clients. Bad input gets one clear line and the console
goes on: every test ends with ``:info`` answering and ``:q!`` exiting 0."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import pytest

from cim.client import Client, Message
from cim.client.console import CLEAR_SCREEN, CLEARED, COMMANDS, Console
from cim.run import Running
from tests.conftest import PASSWORD, eventually, register_user, route_url
from tests.test_sdk_delivery import ConsoleProcess


@pytest.fixture
async def alice(stack: Running) -> AsyncIterator[tuple[int, ConsoleProcess]]:
    """alice's console, logged in; checked still usable and quit at the end."""
    alice_id = await register_user(stack, "alice")
    console = await ConsoleProcess.start(route_url(stack), alice_id, "alice")
    try:
        await console.expect("type :all for commands")
        yield alice_id, console
        console.type(":info")
        await console.expect(f"user alice({alice_id}) on ")
        await console.quit()
    finally:
        if console.process.returncode is None:
            console.process.kill()
            await console.process.wait()


PUSHED = re.compile(r"\[\d\d:\d\d:\d\d\] ")  # how a pushed message's line starts
MARKS = itertools.count()


async def output(console: ConsoleProcess, line: str) -> list[str]:
    """What typing ``line`` prints, pushed messages left out (they come when they come: the actor of a
    group change gets its notice too): the lines up to the answer to an unknown command typed after it."""
    start = len(console.lines)
    mark = f":mark{next(MARKS)}"
    console.type(line)
    console.type(mark)
    await console.expect(f"unknown command {mark};")
    return [printed for printed in console.lines[start:-1] if not PUSHED.match(printed)]


def sdk(stack: Running, user_id: int, name: str, inbox: list[Message] | None = None) -> Client:
    return Client(route_url(stack), user_id, name, password=PASSWORD, on_message=None if inbox is None else inbox.append)


async def test_all_lists_every_command_and_each_one_it_lists_runs(alice: tuple[int, ConsoleProcess]) -> None:
    _, console = alice
    listed = "\n".join(await output(console, ":all"))
    for usage in [":pu PREFIX", ":emoji [PAGE]", ":cls", ":g create NAME USER...", ":g list", ":g NAME TEXT",
                  ":g members NAME", ":g add NAME USER...", ":g leave NAME", ":history [USER]", ":q KEYWORD", ":olu",
                  ":info", ":devices", ":devices end ID", ":q!", ":all"]:
        assert re.search(rf"^  {re.escape(usage)}  +\S", listed, re.MULTILINE), (usage, listed)
    assert "userId;;text" in listed
    for word in {usage.split()[0] for usage in COMMANDS} - {":q!"}:
        assert not any("unknown command" in line for line in await output(console, word)), word


async def test_pu_lists_the_online_users_whose_name_starts_with_the_prefix(
        stack: Running, alice: tuple[int, ConsoleProcess]) -> None:
    _, console = alice
    bob_id, bobby_id = await register_user(stack, "bob"), await register_user(stack, "bobby")
    await register_user(stack, "boris")  # registered, not online
    async with sdk(stack, bob_id, "bob"), sdk(stack, bobby_id, "bobby"):
        assert await output(console, ":pu bo") == ["2 online named bo...:", f"  {bob_id}  bob", f"  {bobby_id}  bobby"]
        assert await output(console, ":pu bobb") == ["1 online named bobb...:", f"  {bobby_id}  bobby"]
        assert await output(console, ":pu Bo") == ["0 online named Bo...:"]  # case counts, as in CIM
        assert await output(console, ":pu a") == ["1 online named a...:", f"  {alice[0]}  alice"]
        assert await output(console, ":pu") == ["usage: :pu PREFIX"]
        assert await output(console, ":pu b o") == ["usage: :pu PREFIX"]


async def test_emoji_pages_are_cims_and_shortcuts_print_as_emoji_but_are_sent_as_typed(
        stack: Running, alice: tuple[int, ConsoleProcess]) -> None:
    alice_id, console = alice
    first = await output(console, ":emoji")
    assert first[0].startswith("emoji page 0 of 0-")
    # emoji-java's getAll(): longest first, so CIM's page 0 opens with the subdivision flags
    assert first[1:5] == ["  :gbeng:--->🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
                          "  :gbsct:--->🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
                          "  :gbwls:--->🏴\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f",
                          "  :ustx:--->🏴\U000e0075\U000e0073\U000e0074\U000e0078\U000e007f"]
    assert len(first) == 6 and await output(console, ":emoji 0") == first
    last = int(first[0].rsplit("-", 1)[1].rstrip(":"))
    every = [line for number in range(last + 1) for line in (await output(console, f":emoji {number}"))[1:]]
    assert len(every) == len(set(every)) > 1500 and "  :smile:--->😄" in every and "  :+1:--->👍" in every
    assert await output(console, f":emoji {last + 1}") == [f"no emoji page {last + 1}: pages are 0 to {last}"]
    for bad in (":emoji x", ":emoji -1", ":emoji 1 2", ":emoji ²"):
        assert await output(console, bad) == [f"usage: :emoji [PAGE], PAGE a number from 0 to {last}"]

    bob_id = await register_user(stack, "bob")
    got: list[Message] = []
    async with sdk(stack, bob_id, "bob", got) as bob:
        await bob.send_private(alice_id, "hi :smile: :+1: :xyz:tada: :no_such_emoji: a:b")
        line = await console.expect(f"bob({bob_id}):")
        assert line.rstrip("\n").endswith(": hi 😄 👍 :xyz🎉 :no_such_emoji: a:b")
        console.type(f"{bob_id};;look :tada:")
        # on the wire as typed, as CIM sends it (bob's own copy came first: his SDK sends have clientMsgIds)
        await eventually(lambda: [m.text for m in got if not m.outgoing] == ["look :tada:"])


async def test_cls_clears_a_terminal_and_marks_a_pipe(stack: Running, alice: tuple[int, ConsoleProcess]) -> None:
    _, console = alice
    assert await output(console, ":cls") == [CLEARED]
    bob_id = await register_user(stack, "bob")
    printed: list[str] = []
    async with sdk(stack, bob_id, "bob") as bob:
        on_a_terminal = Console(bob, printed.append, terminal=True)
        assert await on_a_terminal.handle_line(":cls")
        assert printed == [CLEAR_SCREEN]


async def test_groups_are_made_listed_messaged_and_shown_by_name(stack: Running, alice: tuple[int, ConsoleProcess]) -> None:
    alice_id, console = alice
    bob_id, carol_id, dave_id = [await register_user(stack, name) for name in ("bob", "carol", "dave")]
    bob_got: list[Message] = []
    async with sdk(stack, bob_id, "bob", bob_got) as bob, sdk(stack, carol_id, "carol") as carol:
        assert await output(console, ":g list") == ["no groups yet (:g create NAME USER... makes one)"]
        # by name (online users) and by id (dave is offline: the route looks no one else up by name)
        [created] = await output(console, f":g create team bob carol {dave_id}")
        team = re.fullmatch(r"created team \((g\d+)\): you and (.*)", created)
        assert team is not None and team[2] == f"{bob_id}, {carol_id}, {dave_id}", created
        team_id = team[1]
        assert await output(console, ":g list") == ["1 groups:", f"  {team_id}  team  4 members, owner you"]
        assert await output(console, ":g members team") == [
            f"team ({team_id}): 4 members", f"  {alice_id}  alice (owner)", f"  {bob_id}  bob", f"  {carol_id}  carol",
            f"  {dave_id}  dave"]

        console.type(":g team hello team :smile:")
        console.type(f":g {team_id}   by its id")
        await eventually(lambda: [m.text for m in bob_got if not m.notice] == ["hello team :smile:", "by its id"])
        assert {m.group_id for m in bob_got} == {team_id}

        await bob.send_group("hi all :wave:", group_id=team_id)
        line = await console.expect("hi all")
        assert line.rstrip("\n").endswith(f"] #team({team_id}) bob({bob_id}): hi all 👋"), line
        await bob.groups.leave(team_id)
        line = await console.expect("notice: bob left")
        assert re.search(rf"\] #team\({team_id}\) notice: bob left 'team'$", line.rstrip()), line
        assert await output(console, ":g add team bob") == [f"added to team ({team_id}): {bob_id}"]
        assert await output(console, ":g add team bob carol") == [f"nobody added to team ({team_id}): all are members already"]

        # a group someone else makes: its notice first names it by id, then the console learns its name
        party_id = await carol.groups.create("party", [alice_id])
        line = await console.expect("notice: carol created the group 'party'")
        assert f"#{party_id}" in line or f"#party({party_id})" in line, line
        for k in range(50):
            await carol.send_group(f"ping {k}", group_id=party_id)
            line = await console.expect(f"ping {k}")
            if f"#party({party_id}) carol({carol_id}): ping {k}" in line:
                break
            await asyncio.sleep(0.1)  # the console fetches the names meanwhile
        else:
            raise AssertionError(f"the console never printed the name of {party_id}:\n" + "\n".join(console.lines))
        assert await output(console, ":g leave party") == [f"left party ({party_id})"]
        assert await output(console, ":g list") == ["1 groups:", f"  {team_id}  team  4 members, owner you"]


async def test_bad_group_commands_say_what_is_wrong_and_the_console_goes_on(
        stack: Running, alice: tuple[int, ConsoleProcess]) -> None:
    _, console = alice
    usages = [f"usage: {usage}" for usage in COMMANDS if usage.startswith(":g ")]
    assert await output(console, ":g") == usages
    assert await output(console, ":g   ") == usages
    assert await output(console, ":g create") == ["usage: :g create NAME USER..."]
    assert await output(console, ":g members") == ["usage: :g members NAME"]
    assert await output(console, ":g members a b") == ["usage: :g members NAME"]
    assert await output(console, ":g add team") == ["usage: :g add NAME USER..."]
    assert await output(console, ":g leave") == ["usage: :g leave NAME"]
    assert await output(console, ":g create team nobody") == ["no online user named nobody: give their user id"]
    assert await output(console, ":g create team ²") == ["no online user named ²: give their user id"]
    assert await output(console, ":g create team 999999") == [
        ":g failed: 3000: members: user 999999 is not a registered user"]
    assert await output(console, ":g nosuch hello") == ["no group nosuch among yours (:g list shows them)"]
    assert await output(console, ":g members g999") == ["no group g999 among yours (:g list shows them)"]

    bob_id = await register_user(stack, "bob")
    [one] = await output(console, f":g create dup {bob_id}")
    [two] = await output(console, f":g create dup {bob_id}")
    ids = [line.split("(")[1].split(")")[0] for line in (one, two)]
    assert await output(console, ":g dup hi") == [f"2 of your groups are named dup: {', '.join(ids)}; give its id"]
    assert await output(console, f":g {ids[0]}") == [f"usage: :g NAME TEXT (no text for {ids[0]})"]
    assert await output(console, f":g {ids[0]} hi") == []  # sent: nothing to say
    [refused] = await output(console, f":g leave {ids[0]}")  # the owner cannot leave: the route's refusal, named
    assert refused.startswith(":g failed: 3000: ") and "owner" in refused, refused
