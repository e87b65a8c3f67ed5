"""The console client: a plain line is a group message, ``userId;;text`` a private one,
``:`` starts a command. Incoming messages print above the line being typed, each once
and in order, across reconnects too: they are the SDK's ``on_message`` (it drops
what a sync after a reconnect brings again)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cim.client.contacts import ContactPresence
from cim.client.emoji import PAGE_SIZE, emojize, page, page_count
from cim.client.route import ClientError, GroupSummary
from cim.client.sdk import Client, Message, Receipt

PRIVATE_SEPARATOR = ";;"

# Each command with one line of help, as ``:all`` prints them: usage first.
COMMANDS = {
    ":q!": "quit (log out and close)",
    ":olu": "list online users",
    ":pu PREFIX": "online users whose name starts with PREFIX",
    ":info": "show user, server and connection state",
    ":emoji [PAGE]": f"the emoji shortcuts, {PAGE_SIZE} a page from 0; :smile: in a message shows as its emoji",
    ":cls": "clear the screen",
    ":g create NAME USER...": "a new group, yours, with these members (USER: a user id, or the name of an online user)",
    ":g list": "your groups",
    ":g NAME TEXT": "message to your group NAME (its name or its id)",
    ":g members NAME": "the members of your group NAME",
    ":g add NAME USER...": "add members to your group NAME (its owner only)",
    ":g leave NAME": "leave your group NAME",
    ":delay TEXT SECONDS": "group message to every online user, sent SECONDS later (online then)",
    ":history [USER]": "the last messages with USER (an id, or an online user's name), or of your whole inbox",
    ":q KEYWORD": "search your kept history: the last messages containing KEYWORD (any case)",
    ":devices": "your logged-in devices, this one marked",
    ":devices end ID": 'log out your device ID and end its connection ("" for a device without an id)',
    ":all": "list commands",
}
CLEAR_SCREEN = "\033[H\033[2J\033[3J"  # cursor home, clear the screen and its scrollback
CLEARED = "-" * 24 + " :cls " + "-" * 24  # what :cls prints when stdout is no terminal (a pipe, a log)


def is_number(word: str) -> bool:
    """A user id or a page: ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return word.isascii() and word.isdigit()


class UsageError(ValueError):
    """A command typed wrong (missing words, an unknown group or user): its message says what to type."""


PASSWORD_ENV = "CIM_PASSWORD"


def read_password(user_name: str, password_file: Path | None) -> str:
    """The account's password: the first line of ``password_file`` if given, else
    ``$CIM_PASSWORD``, else asked for (not echoed) when stdin is a terminal; "" when
    there is none to be had (a route under ``--auth none`` needs none). OSError if
    the file cannot be read."""
    if password_file is not None:
        return next(iter(password_file.read_text().splitlines()), "")
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {user_name}: ")
    return ""


def format_message(message: Message, group_name: str = "") -> str:
    """A pushed message as printed, its shortcuts as emoji (CIM prints them so). A named group's
    message or notice starts with ``#name(id)`` (``#id`` while the name is not known). What the user
    sent privately (their copy, from any device) names whom to: ``name(id) -> id``."""
    when = datetime.fromtimestamp(message.timestamp_ms / 1000).strftime("%H:%M:%S")
    text = emojize(message.text)
    if not message.group_id:
        to = f" -> {message.to_user_id}" if message.outgoing and message.to_user_id else ""
        return f"[{when}] {message.sender_name}({message.sender_id}){to}: {text}"
    group = f"#{group_name}({message.group_id})" if group_name else f"#{message.group_id}"
    if message.notice:
        return f"[{when}] {group} notice: {text}"
    return f"[{when}] {group} {message.sender_name}({message.sender_id}): {text}"


async def send_and_report(sending: Awaitable[Receipt], write: Callable[[str], None]) -> Receipt | None:
    """Await a send; a failure is printed (and None returned), the console goes on."""
    try:
        return await sending
    except ClientError as err:
        write(f"send failed: {err}")
    except (ConnectionError, TimeoutError) as err:
        write(f"send failed: {str(err) or 'timed out'}")
    return None


class GroupCommands:
    """``:g``: the user's named groups, through the route (``client.groups``). A group is named by its
    id or by its name among the user's groups (a group named like a subcommand: by its id); ``names``
    (id → name) is what pushes print with."""

    def __init__(self, client: Client, write: Callable[[str], None], met: Callable[..., None]) -> None:
        self.client = client
        self.write = write
        self.met = met  # the members this shows become contacts (``ContactPresence.met``)
        self.names: dict[str, str] = {}

    async def run(self, rest: str) -> None:
        """``rest``: the line after ``:g``."""
        words = rest.split()
        if not words:
            raise UsageError("\n".join(f"usage: {usage}" for usage in COMMANDS if usage.startswith(":g ")))
        action = words[0]
        if action == "list":
            await self._list()
        elif action == "create":
            await self._create(*self._needs(words, 2, ":g create NAME USER..."))
        elif action == "members":
            await self._members(*self._needs(words, 2, ":g members NAME", at_most=2))
        elif action == "add":
            await self._add(*self._needs(words, 3, ":g add NAME USER..."))
        elif action == "leave":
            await self._leave(*self._needs(words, 2, ":g leave NAME", at_most=2))
        else:
            name, _, text = rest.strip().partition(" ")
            if not text.strip():
                raise UsageError(f"usage: :g NAME TEXT (no text for {name})")
            group = await self.find(name)
            await send_and_report(self.client.send_group(text.strip(), group_id=group.group_id), self.write)

    @staticmethod
    def _needs(words: list[str], at_least: int, usage: str, at_most: int | None = None) -> list[str]:
        """The words after the subcommand, if there are as many as ``usage`` takes."""
        if len(words) < at_least or (at_most is not None and len(words) > at_most):
            raise UsageError(f"usage: {usage}")
        return words[1:]

    async def refresh(self) -> list[GroupSummary]:
        """The user's groups, from the route; ``names`` follows."""
        groups = await self.client.groups.mine()
        self.names = {group.group_id: group.name for group in groups}
        return groups

    async def find(self, name: str) -> GroupSummary:
        """The user's group with this id, else the one with this name; UsageError if none or several."""
        groups = await self.refresh()
        for group in groups:
            if group.group_id == name:
                return group
        named = [group for group in groups if group.name == name]
        if not named:
            raise UsageError(f"no group {name} among yours (:g list shows them)")
        if len(named) > 1:
            raise UsageError(f"{len(named)} of your groups are named {name}: {', '.join(g.group_id for g in named)}; "
                             "give its id")
        return named[0]

    async def users(self, words: list[str]) -> list[int]:
        """User ids for ``words``: a number is an id; a name is looked up among the online users (the
        route names no one else: an offline user is given by id)."""
        online = {name: user_id for user_id, name in await self.client.online_users()} if any(
            not is_number(word) for word in words) else {}
        ids = []
        for word in words:
            if is_number(word):
                ids.append(int(word))
            elif word in online:
                ids.append(online[word])
            else:
                raise UsageError(f"no online user named {word}: give their user id")
        return ids

    def _label(self, group: GroupSummary) -> str:
        return f"{group.name} ({group.group_id})"

    async def _list(self) -> None:
        groups = await self.refresh()
        if not groups:
            self.write("no groups yet (:g create NAME USER... makes one)")
            return
        self.write(f"{len(groups)} groups:")
        for group in groups:
            owner = "you" if group.owner_id == self.client.user_id else f"user {group.owner_id}"
            self.write(f"  {group.group_id}  {group.name}  {group.member_count} members, owner {owner}")

    async def _create(self, name: str, *users: str) -> None:
        members = await self.users(list(users))
        group_id = await self.client.groups.create(name, members)
        self.names[group_id] = name
        self.met(*members)
        self.write(f"created {name} ({group_id}): you and {', '.join(map(str, members))}" if members else
                   f"created {name} ({group_id}): just you")

    async def _members(self, name: str) -> None:
        summary, members = await self.client.groups.members((await self.find(name)).group_id)
        self.write(f"{self._label(summary)}: {summary.member_count} members")
        for user_id, user_name in members:
            self.write(f"  {user_id}  {user_name}{' (owner)' if user_id == summary.owner_id else ''}")
        self.met(*(user_id for user_id, _ in members))

    async def _add(self, name: str, *users: str) -> None:
        group = await self.find(name)
        added = await self.client.groups.add_members(group.group_id, await self.users(list(users)))
        self.met(*added)
        self.write(f"added to {self._label(group)}: {', '.join(map(str, added))}" if added else
                   f"nobody added to {self._label(group)}: all are members already")

    async def _leave(self, name: str) -> None:
        group = await self.find(name)
        await self.client.groups.leave(group.group_id)
        self.names.pop(group.group_id, None)
        self.write(f"left {self._label(group)}")


HISTORY_LINES = 20  # messages :history and :q print


class HistoryCommands:
    """``:history [USER]`` and ``:q KEYWORD``: the user's own inbox (``client.history``: what retention
    keeps, the messages this user sent included once the server keeps them), printed as pushes are."""

    def __init__(self, client: Client, write: Callable[[str], None], groups: GroupCommands) -> None:
        self.client = client
        self.write = write
        self.groups = groups

    async def conversation(self, rest: str) -> None:
        words = rest.split()
        if len(words) > 1:
            raise UsageError("usage: :history [USER]")
        peer_id = (await self.groups.users(words))[0] if words else 0
        await self._show(f"with user {peer_id}" if peer_id else "in your inbox", peer_id=peer_id)

    async def search(self, rest: str) -> None:
        """CIM's ``:q kw``: scans back page by page (the server bounds each) until enough are found."""
        keyword = rest.strip()
        if not keyword:
            raise UsageError("usage: :q KEYWORD")
        await self._show(f"containing {keyword!r}", keyword=keyword)

    async def _show(self, what: str, peer_id: int = 0, keyword: str = "") -> None:
        found: list[Message] = []
        before_seq = 0
        try:
            while len(found) < HISTORY_LINES:
                page = await self.client.history(peer_id=peer_id, keyword=keyword, before_seq=before_seq,
                                                 limit=HISTORY_LINES - len(found))
                found = page.messages + found
                if not page.has_more:
                    break
                before_seq = page.next_seq
        except (ConnectionError, TimeoutError) as err:
            self.write(f"history failed: {err}")
            return
        self.write(f"{len(found)} messages {what}:" if found else f"no messages {what}")
        for message in found:
            self.write("  " + format_message(message, self.groups.names.get(message.group_id, "")))


class DeviceCommands:
    """``:devices`` and ``:devices end ID``: the user's devices, through the route (``client.devices``)."""

    def __init__(self, client: Client, write: Callable[[str], None]) -> None:
        self.client = client
        self.write = write

    async def run(self, rest: str) -> None:
        """``rest``: the line after ``:devices``."""
        words = rest.split()
        if not words:
            await self._list()
        elif words[0] == "end" and len(words) == 2:
            await self._end(words[1])
        else:
            raise UsageError('usage: :devices, or :devices end ID ("" for a device without an id)')

    async def _list(self) -> None:
        devices = await self.client.devices()
        this_device = self.client.session.device_id
        self.write(f"{len(devices)} devices:")
        for device in devices:
            since = datetime.fromtimestamp(device.since_ms / 1000).strftime("%H:%M:%S")
            marker = "  (this device)" if device.device_id == this_device else ""
            self.write(f"  {self._label(device.device_id)}  on {device.server_id} since {since}{marker}")

    async def _end(self, word: str) -> None:
        device_id = "" if word == '""' else word
        await self.client.end_device(device_id)
        self.write(f"ended device {self._label(device_id)}")

    @staticmethod
    def _label(device_id: str) -> str:
        return device_id or '""'


class Console:
    """What a typed line does: sends, or runs a ``:`` command; output goes to ``write``. ``terminal``:
    stdout is a terminal (``:cls`` clears it; else it prints a separator)."""

    def __init__(self, client: Client, write: Callable[[str], None], *, terminal: bool = False) -> None:
        self.client = client
        self.write = write
        self.terminal = terminal
        self.contacts = ContactPresence(client, write)
        self.groups = GroupCommands(client, write, self.contacts.met)
        history = HistoryCommands(client, write, self.groups)
        devices = DeviceCommands(client, write)
        self._commands: dict[str, Callable[[str], Awaitable[None]]] = {
            ":olu": self._online, ":pu": self._prefix, ":info": self._info, ":emoji": self._emoji,
            ":cls": self._clear, ":g": self.groups.run, ":delay": self._delay, ":all": self._all,
            ":history": history.conversation, ":q": history.search, ":devices": devices.run,
        }
        self._refreshing: set[asyncio.Task[None]] = set()

    def show(self, message: Message) -> None:
        """Print a pushed message. A notice (the user's groups changed) or a group not known yet has
        the names fetched again, for the lines after it (the notice's own text names the group); a
        burst from an unknown group waits for the fetch in flight rather than making one each. The
        copy of a send from this device is not printed: the send was (its receipt, if it failed)."""
        if message.from_this_device:
            return
        self.write(format_message(message, self.groups.names.get(message.group_id, "")))
        peer = message.to_user_id if message.outgoing else message.sender_id  # 0: one's own to everyone
        if peer and (message.group_id or message.to_user_id):  # a conversation: private, or a named group's
            self.contacts.met(peer)
        unknown = message.group_id not in self.groups.names and not self._refreshing
        if message.group_id and (message.notice or unknown):
            task = asyncio.create_task(self.refresh_groups())
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)

    async def refresh_groups(self) -> None:
        """The group names pushes print with; a route that does not answer leaves the old ones."""
        with contextlib.suppress(ClientError, httpx.HTTPError):
            await self.groups.refresh()

    def close(self) -> None:
        self.contacts.close()
        for task in self._refreshing:
            task.cancel()

    async def handle_line(self, line: str) -> bool:
        """Act on one input line; False when the user quit."""
        line = line.strip()
        if not line:
            return True
        if line.startswith(":"):
            return await self._command(line)
        receiver, sep, text = line.partition(PRIVATE_SEPARATOR)
        if sep and is_number(receiver.strip()):
            receipt = await send_and_report(self.client.send_private(int(receiver), text), self.write)
            if receipt is not None:
                self.contacts.met(int(receiver))
            if receipt is not None and receipt.stored_offline:
                self.write(f"user {receiver} is offline; the message is stored for them")
        else:
            await send_and_report(self.client.send_group(line), self.write)
        return True

    async def _command(self, line: str) -> bool:
        command, _, rest = line.partition(" ")
        if command == ":q!":
            return False
        run = self._commands.get(command)
        if run is None:
            self.write(f"unknown command {command}; type :all for the list")
            return True
        try:
            await run(rest)
        except UsageError as err:
            self.write(str(err))
        except ClientError as err:
            self.write(f"{command} failed: {err}")
        except httpx.HTTPError as err:
            self.write(f"{command} failed: the route did not answer ({err!r})")
        return True

    async def _online(self, _: str) -> None:
        users = await self.client.online_users()
        self.write(f"{len(users)} online:")
        for user_id, name in users:
            self.write(f"  {user_id}  {name}")

    async def _prefix(self, rest: str) -> None:
        """CIM's ``:pu``: the online users whose name starts with the prefix (case counts, as in CIM's trie)."""
        if len(rest.split()) != 1:
            raise UsageError("usage: :pu PREFIX")
        prefix = rest.strip()
        users = sorted((name, user_id) for user_id, name in await self.client.online_users() if name.startswith(prefix))
        self.write(f"{len(users)} online named {prefix}...:")
        for name, user_id in users:
            self.write(f"  {user_id}  {name}")

    async def _info(self, _: str) -> None:
        c = self.client
        server = f"{c.server.host}:{c.server.port}" if c.server else "-"
        state = "connected" if c.connected else "disconnected"
        self.write(f"user {c.user_name}({c.user_id}) on {server}: {state}, {c.reconnects} reconnects, "
                   f"last seq {c.delivery.last_seq}")

    async def _emoji(self, rest: str) -> None:
        """CIM's ``:emoji N``: page N of the shortcuts as ``:alias:--->emoji`` (page 0 without N)."""
        last = page_count() - 1
        words = rest.split()
        if len(words) > 1 or (words and not is_number(words[0])):
            raise UsageError(f"usage: :emoji [PAGE], PAGE a number from 0 to {last}")
        number = int(words[0]) if words else 0
        shortcuts = page(number)
        if not shortcuts:
            raise UsageError(f"no emoji page {number}: pages are 0 to {last}")
        self.write(f"emoji page {number} of 0-{last}:")
        for shortcut in shortcuts:
            self.write(f"  {shortcut.alias}--->{shortcut.emoji}")

    async def _clear(self, _: str) -> None:
        self.write(CLEAR_SCREEN if self.terminal else CLEARED)

    async def _delay(self, rest: str) -> None:
        """CIM's ``:delay msg seconds``: the text to everyone, delivered that many seconds later."""
        text, _, seconds = rest.strip().rpartition(" ")
        if not text.strip() or not (seconds.isascii() and seconds.isdigit()) or int(seconds) == 0:
            raise UsageError("usage: :delay TEXT SECONDS (SECONDS a whole number from 1)")
        receipt = await send_and_report(self.client.send_group(text.strip(), delay_seconds=int(seconds)), self.write)
        if receipt is not None:
            self.write(f"scheduled: sent to everyone online in {int(seconds)} s")

    async def _all(self, _: str) -> None:
        width = max(map(len, COMMANDS))
        for usage, help_text in COMMANDS.items():
            self.write(f"  {usage:<{width}}  {help_text}")
        self.write(f"  {'userId' + PRIVATE_SEPARATOR + 'text':<{width}}  private message; any other line: group message")


LineReader = Callable[[], Awaitable[str | None]]  # the next typed line; None at the end of input


async def _lines_from_pipe() -> LineReader:
    """Non-interactive stdin (a pipe, a test): plain lines."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read() -> str | None:
        line = await reader.readline()
        return line.decode() if line else None

    return read


def _lines_from_prompt(prompt: str, terminal: contextlib.ExitStack) -> LineReader:
    """An interactive terminal: a prompt, with output printed above it (until ``terminal`` closes),
    so incoming messages don't garble typing."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession()
    terminal.enter_context(patch_stdout(raw=True))

    async def read() -> str | None:
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            return await session.prompt_async(prompt)
        return None

    return read


async def run_console(client: Client) -> int:
    """Drive ``client`` from stdin; returns the exit status."""
    with contextlib.ExitStack() as terminal:
        if sys.stdin.isatty():
            read = _lines_from_prompt(f"{client.user_name}> ", terminal)
        else:
            read = await _lines_from_pipe()
        return await _converse(client, read, terminal=sys.stdout.isatty())


async def _converse(client: Client, read: LineReader, *, terminal: bool) -> int:
    def write(text: str) -> None:
        print(text, flush=True)

    console = Console(client, write, terminal=terminal)
    client.on_message = console.show
    client.on_status = lambda text: write(f"* {text}")
    status = 0
    try:
        await client.connect()
        await console.refresh_groups()  # the names group messages print with
        write("type :all for commands")
        while True:
            line_task = asyncio.ensure_future(read())
            waiting: set[asyncio.Future[Any]] = {line_task, client.done}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if client.done.done():
                line_task.cancel()
                error = client.done.exception()
                if error is not None:
                    write(f"* stopped: {error}")
                    status = 1
                break
            line = line_task.result()
            if line is None or not await console.handle_line(line):
                break
    except ClientError as err:
        write(f"* login failed: {err}")
        status = 1
    finally:
        console.close()
        if not client.done.done():
            await client.close()
    return status
