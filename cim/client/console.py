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

from cim.client.route import ClientError
from cim.client.sdk import Client, Message

PRIVATE_SEPARATOR = ";;"

COMMANDS = {
    ":q!": "quit (log out and close)",
    ":olu": "list online users",
    ":info": "show user, server and connection state",
    ":all": "list commands",
}


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


def format_message(message: Message) -> str:
    when = datetime.fromtimestamp(message.timestamp_ms / 1000).strftime("%H:%M:%S")
    return f"[{when}] {message.sender_name}({message.sender_id}): {message.text}"


class Console:
    """What a typed line does: sends, or runs a ``:`` command; output goes to ``write``."""

    def __init__(self, client: Client, write: Callable[[str], None]) -> None:
        self.client = client
        self.write = write

    async def handle_line(self, line: str) -> bool:
        """Act on one input line; False when the user quit."""
        line = line.strip()
        if not line:
            return True
        if line.startswith(":"):
            return await self._command(line)
        try:
            receiver, sep, text = line.partition(PRIVATE_SEPARATOR)
            if sep and receiver.strip().isdigit():
                receipt = await self.client.send_private(int(receiver), text)
                if receipt.stored_offline:
                    self.write(f"user {receiver} is offline; the message is stored for them")
            else:
                await self.client.send_group(line)
        except ClientError as err:
            self.write(f"send failed: {err}")
        except (ConnectionError, TimeoutError) as err:
            self.write(f"send failed: {str(err) or 'timed out'}")
        return True

    async def _command(self, line: str) -> bool:
        command = line.split()[0]
        if command == ":q!":
            return False
        if command == ":olu":
            users = await self.client.online_users()
            self.write(f"{len(users)} online:")
            for user_id, name in users:
                self.write(f"  {user_id}  {name}")
        elif command == ":info":
            c = self.client
            server = f"{c.server.host}:{c.server.port}" if c.server else "-"
            state = "connected" if c.connected else "disconnected"
            self.write(f"user {c.user_name}({c.user_id}) on {server}: {state}, {c.reconnects} reconnects, "
                       f"last seq {c.delivery.last_seq}")
        elif command == ":all":
            for name, help_text in COMMANDS.items():
                self.write(f"  {name:<6} {help_text}")
            self.write(f"  userId{PRIVATE_SEPARATOR}text  private message; any other line: group message")
        else:
            self.write(f"unknown command {command}; type :all for the list")
        return True


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
        return await _converse(client, read)


async def _converse(client: Client, read: LineReader) -> int:
    def write(text: str) -> None:
        print(text, flush=True)

    client.on_message = lambda message: write(format_message(message))
    client.on_status = lambda text: write(f"* {text}")
    console = Console(client, write)
    status = 0
    try:
        await client.connect()
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
        if not client.done.done():
            await client.close()
    return status
