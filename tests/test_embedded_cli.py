"""`cim up` and two console clients, driven as a user would: lines on stdin, text on stdout."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cim.testing.services import CimProcess, free_port


class Console:
    def __init__(self, route: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cim", "client", "--route", route, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed; got:\n" + "\n".join(self.seen))

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[str]:
    route_port = free_port()
    proc = CimProcess(tmp_path, "up", ["up", "--host", "127.0.0.1", "--port", str(free_port()),
                                       "--http-port", str(free_port()), "--route-port", str(route_port)])
    proc.wait_http(route_port)
    yield f"http://127.0.0.1:{route_port}"
    assert proc.stop() == 0, proc.log()


def test_two_console_users_chat(up: str) -> None:
    alice = Console(up, "--register", "alice")
    alice_id = alice.expect("registered alice as user").split()[-1]
    alice.expect("type :all for commands")
    bob = Console(up, "--register", "bob")
    bob_id = bob.expect("registered bob as user").split()[-1]
    bob.expect("type :all for commands")

    alice.type("hello everyone")
    assert bob.expect("hello everyone").endswith(f"alice({alice_id}): hello everyone")
    bob.type(f"{alice_id};;hi alice, bob here")
    assert alice.expect("hi alice, bob here").endswith(f"bob({bob_id}): hi alice, bob here")

    bob.type(":olu")
    bob.expect("2 online:")
    bob.expect(f"{alice_id}  alice")
    bob.type(":info")
    bob.expect(f"user bob({bob_id}) on 127.0.0.1:")
    bob.type(":all")
    bob.expect(":q!")
    bob.type(":nope")
    bob.expect("unknown command :nope; type :all")
    bob.type("424242;;anyone?")
    bob.expect("send failed: 3000")

    # The same user twice: the second console is refused with 5000 and exits.
    again = Console(up, "--user-id", alice_id, "--user-name", "alice")
    again.expect("login failed: 5000")
    assert again.wait() == 1

    bob.type(":q!")
    assert bob.wait() == 0
    alice.type(f"{bob_id};;are you there?")
    alice.expect(f"user {bob_id} is offline; the message is stored for them")
    alice.type(":q!")
    assert alice.wait() == 0

    # bob comes back and gets what was stored, once.
    bob = Console(up, "--user-id", bob_id, "--user-name", "bob")
    bob.expect("are you there?")
    bob.type(":q!")
    assert bob.wait() == 0
