"""The SDK's acknowledged delivery against a real server (embedded stack, real sockets):
resends after an RST, a restarted client resuming from its state file, the heartbeat
the server asks for, and the console printing each message once across a reconnect."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from cim.backends.memory import MemoryHub
from cim.client import Client, Message, Receipt, SendTimeout, Stopped
from cim.client.sdk import Alarm
from cim.client.transport import TcpTransport
from cim.run import Running, start
from tests.conftest import PASSWORD, cut, eventually, register_user, route_url, stack_config


def sdk(running: Running, user_id: int, name: str, inbox: list[Message] | None = None, **options: Any) -> Client:
    """An SDK client that reconnects fast; pushed messages go to ``inbox``."""
    return Client(route_url(running), user_id, name, password=PASSWORD, on_message=None if inbox is None else inbox.append,
                  backoff_base=0.05, backoff_max=0.2, **options)


async def test_sends_and_pushes_survive_rsts_mid_stream_once_each_in_order(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    got: list[Message] = []
    async with sdk(stack, alice_id, "alice") as alice, sdk(stack, bob_id, "bob", got) as bob:
        count = 150
        answered: list[Receipt] = []

        async def send(k: int) -> None:
            answered.append(await alice.send_private(bob_id, f"m{k}"))

        sends = []
        for k in range(count):
            sends.append(asyncio.create_task(send(k)))
            await asyncio.sleep(0.002)  # a stream of sends, so the cuts land mid-stream
            if k == count // 3:
                cut(stack, alice_id)  # the sender: written-not-read messages and receipts in flight are lost
            if k == 2 * count // 3:
                cut(stack, bob_id)  # the receiver: pushes in flight are lost
        await asyncio.wait_for(asyncio.gather(*sends), 30)  # every send answered: none failed, none lost

        assert all(r.accepted for r in answered)
        assert len({r.msg_id for r in answered}) == count  # a resend that had arrived got its original msgId
        await eventually(lambda: len(got) >= count, 10)
        assert [m.text for m in got] == [f"m{k}" for k in range(count)]  # exactly once, in send order
        assert [m.seq for m in got] == list(range(1, count + 1))
        assert alice.reconnects >= 1 and bob.reconnects >= 1
        await asyncio.sleep(0.3)
        assert len(got) == count  # nothing came again later


async def test_a_restarted_client_resumes_from_its_state_file(stack: Running, tmp_path: Path) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    state = tmp_path / "bob.seq"
    async with sdk(stack, alice_id, "alice") as alice:
        seen: list[int] = []
        got: list[Message] = []
        async with sdk(stack, bob_id, "bob", got, state_file=state, on_seq=seen.append):
            for k in range(3):
                await alice.send_private(bob_id, f"first {k}")
            await eventually(lambda: len(got) == 3)
            await eventually(lambda: state.exists() and state.read_text() == "3\n")  # acked within 100 ms
        assert seen[-1] == 3 and state.read_text() == "3\n"
        assert stack.node is not None
        inbox = stack.node.backends.inbox
        for _ in range(50):  # the server keeps the ack as the device's cursor (batched writes)
            if await inbox.cursor(bob_id, "") == 3:
                break
            await asyncio.sleep(0.1)
        assert await inbox.cursor(bob_id, "") == 3

        await eventually(lambda: bob_id not in stack.node.sessions.by_user)  # type: ignore[union-attr]
        for k in range(2):
            assert (await alice.send_private(bob_id, f"away {k}")).stored_offline

        again: list[Message] = []
        async with sdk(stack, bob_id, "bob", again, state_file=state) as bob:
            await eventually(lambda: len(again) == 2)
            assert [(m.text, m.seq) for m in again] == [("away 0", 4), ("away 1", 5)]  # not the first three again
        assert state.read_text() == "5\n" and bob.delivery.last_seq == 5

        # A client with no seq of its own resumes where its device left off (the server's
        # record of its acks, in the login answer): nothing new here.
        await eventually(lambda: bob_id not in stack.node.sessions.by_user)  # type: ignore[union-attr]
        assert (await alice.send_private(bob_id, "while no client ran")).stored_offline
        resumed: list[Message] = []
        async with sdk(stack, bob_id, "bob", resumed) as bob:
            await eventually(lambda: len(resumed) == 1)
            assert [(m.text, m.seq) for m in resumed] == [("while no client ran", 6)]
        # last_seq=0 asks for everything the inbox keeps.
        everything: list[Message] = []
        async with sdk(stack, bob_id, "bob", everything, last_seq=0):
            await eventually(lambda: len(everything) == 6)
        assert [m.seq for m in everything] == [1, 2, 3, 4, 5, 6]


async def test_a_retry_with_the_same_client_msg_id_gets_the_original_receipt_and_arrives_once(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    got: list[Message] = []
    async with sdk(stack, alice_id, "alice") as alice, sdk(stack, bob_id, "bob", got):
        first = await alice.send_private(bob_id, "once")
        again = await alice.send_private(bob_id, "once", client_msg_id=first.client_msg_id)
        assert (again.code, again.msg_id) == (first.code, first.msg_id)
        await alice.send_private(bob_id, "next")
        await eventually(lambda: len(got) == 2)
        assert [m.text for m in got] == ["once", "next"]


async def test_a_send_nobody_answers_times_out_and_closing_fails_the_rest() -> None:
    running = await start(stack_config(), {"server", "route"}, MemoryHub())
    alice_id = await register_user(running, "alice")
    alice = sdk(running, alice_id, "alice", send_timeout=0.5, reconnect_attempts=1000)
    await alice.connect()
    await running.stop()  # the server and the route go away: the client keeps trying to reconnect
    with pytest.raises(SendTimeout) as timed_out:
        await alice.send_private(alice_id, "anyone?")  # waits for a connection that never comes
    assert timed_out.value.client_msg_id > 0
    waiting = asyncio.create_task(alice.send_private(alice_id, "still there?"))
    await asyncio.sleep(0.05)
    await alice.close()
    with pytest.raises(Stopped, match="the client closed before the server answered"):
        await waiting
    with pytest.raises(ConnectionError, match="not connected"):
        await alice.send_private(alice_id, "after close")


@pytest.fixture
async def quick_heartbeat() -> AsyncIterator[Running]:
    """A stack whose server cuts a connection silent for 3 × 2 s."""
    running = await start(stack_config(heartbeat_interval=2.0), {"server", "route"}, MemoryHub())
    yield running
    await running.stop()


async def test_the_client_follows_the_servers_heartbeat_and_is_not_cut(quick_heartbeat: Running) -> None:
    alice_id, bob_id = await register_user(quick_heartbeat, "alice"), await register_user(quick_heartbeat, "bob")
    got: list[Message] = []
    statuses: list[str] = []
    async with sdk(quick_heartbeat, alice_id, "alice") as alice, \
            sdk(quick_heartbeat, bob_id, "bob", got, on_status=statuses.append) as bob:  # the default 30 s heartbeat
        assert bob.delivery.heartbeat_interval == 1.0  # half the server's 2 s
        await asyncio.sleep(7.5)  # past the server's 6 s idle limit
        assert bob.connected and bob.reconnects == 0 and alice.reconnects == 0, statuses
        await alice.send_private(bob_id, "still here?")
        await eventually(lambda: [m.text for m in got] == ["still here?"])


class ConsoleProcess:
    """``cim client`` as a user runs it: lines typed on stdin, the output read from stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, route: str, user_id: int, name: str, *options: str) -> ConsoleProcess:
        """``options``: more of the console's flags (``--device-id phone``)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cim", "client", "--route", route, "--user-id", str(user_id), "--user-name", name,
            *options, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "CIM_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"},
        )
        return cls(process)

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def expect(self, text: str, timeout: float = 10) -> str:
        """Read lines until one contains ``text``; that line."""
        assert self.process.stdout is not None
        try:
            while True:
                line = (await asyncio.wait_for(self.process.stdout.readline(), timeout)).decode()
                if not line:
                    raise EOFError
                self.lines.append(line.rstrip("\n"))
                if text in line:
                    return line
        except (TimeoutError, EOFError):
            raise AssertionError(f"{text!r} not printed; got:\n" + "\n".join(self.lines)) from None

    async def quit(self) -> str:
        """``:q!``; everything printed, once it exited (with status 0)."""
        self.type(":q!")
        rest, _ = await asyncio.wait_for(self.process.communicate(), 10)
        self.lines += rest.decode().splitlines()
        assert self.process.returncode == 0, "\n".join(self.lines)
        return "\n".join(self.lines)


async def test_the_console_prints_each_message_once_across_a_reconnect(stack: Running) -> None:
    alice_id, bob_id = await register_user(stack, "alice"), await register_user(stack, "bob")
    console = await ConsoleProcess.start(route_url(stack), bob_id, "bob")
    try:
        await console.expect("type :all for commands")
        async with sdk(stack, alice_id, "alice") as alice:
            for text in ("before 1", "before 2"):
                await alice.send_private(bob_id, text)
            await console.expect("before 2")
            cut(stack, bob_id)
            await alice.send_private(bob_id, "while away")  # stored: it comes with the sync after the reconnect
            await console.expect("while away")
            await alice.send_private(bob_id, "after")
            await console.expect("after")
        output = await console.quit()
    finally:
        if console.process.returncode is None:
            console.process.kill()
            await console.process.wait()
    printed = [line for line in console.lines if f"alice({alice_id}):" in line]
    assert [line.split(": ", 1)[1] for line in printed] == ["before 1", "before 2", "while away", "after"], output
    assert "reconnecting" in output


def test_a_send_on_a_connection_closed_under_it_is_resent_after_the_reconnect() -> None:
    """uvloop, as the SDK runs in production: its transports raise on a write once closed,
    and the SDK learns of the close a loop turn later. A send in between is kept and resent."""

    async def scenario() -> None:
        running = await start(stack_config(), {"server", "route"}, MemoryHub())
        try:
            alice_id, bob_id = await register_user(running, "alice"), await register_user(running, "bob")
            got: list[Message] = []
            async with sdk(running, alice_id, "alice") as alice, sdk(running, bob_id, "bob", got):
                assert isinstance(alice._writer, TcpTransport)
                alice._writer.writer.transport.abort()  # closed now; the SDK's read loop sees it later
                receipt = await asyncio.wait_for(alice.send_private(bob_id, "across the close"), 10)
                assert receipt.accepted and alice.reconnects == 1
                await eventually(lambda: len(got) == 1)
                await asyncio.sleep(0.2)
                assert [m.text for m in got] == ["across the close"]
        finally:
            await running.stop()

    uvloop.run(scenario())


def test_the_alarm_set_to_a_deadline_already_past_is_moved_and_rings_once() -> None:
    """uvloop answers call_at with a past deadline with a plain Handle (no ``when()``): the
    full chaos run's overloaded clients hit that as an AttributeError in every send."""
    rung: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        alarm = Alarm(loop, rung.append)
        past = loop.time() - 1.0
        alarm.set(past)
        alarm.set(past + 0.5)  # later than the one set: kept as it is
        alarm.set(past - 0.5)  # earlier: replaces it
        await asyncio.sleep(0.05)
        assert rung == [past - 0.5]
        alarm.set(loop.time() + 60)
        alarm.cancel()
        await asyncio.sleep(0.05)
        assert rung == [past - 0.5]

    uvloop.run(scenario())
