"""`cim up` and console clients, driven as a user would: lines on stdin, text on stdout,
the password from ``CIM_PASSWORD`` or ``--password-file``."""

from __future__ import annotations

import contextlib
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
from tests.conftest import PASSWORD


class Console:
    def __init__(self, route: str, *args: str, password: str | None = PASSWORD) -> None:
        """``password`` goes in ``CIM_PASSWORD``; None: not set (``--password-file`` among ``args``)."""
        env = {k: v for k, v in os.environ.items() if k != "CIM_PASSWORD"}
        if password is not None:
            env["CIM_PASSWORD"] = password
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cim", "client", "--route", route, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
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


@contextlib.contextmanager
def cim_up(workdir: Path, *args: str) -> Iterator[str]:
    """``cim up ARGS`` (its own secret, made per run); yields the route URL."""
    route_port = free_port()
    proc = CimProcess(workdir, "up", ["up", "--host", "127.0.0.1", "--port", str(free_port()),
                                      "--http-port", str(free_port()), "--route-port", str(route_port), *args])
    proc.wait_http(route_port)
    yield f"http://127.0.0.1:{route_port}"
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[str]:
    """``cim up`` in the suite's auth mode (CIM_AUTH, inherited)."""
    with cim_up(tmp_path) as url:
        yield url


def test_two_console_users_chat(up: str, tmp_path: Path) -> None:
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

    # bob comes back (the password from a file this time) and gets what was stored, once.
    password_file = tmp_path / "bob.password"
    password_file.write_text(PASSWORD + "\n")
    bob = Console(up, "--user-id", bob_id, "--user-name", "bob", "--password-file", str(password_file), password=None)
    bob.expect("are you there?")
    bob.type(":q!")
    assert bob.wait() == 0


def test_console_passwords_under_token_auth(tmp_path: Path) -> None:
    with cim_up(tmp_path, "--auth", "token") as url:
        password_file = tmp_path / "alice.password"
        password_file.write_text(PASSWORD + "\n")
        alice = Console(url, "--register", "alice", "--password-file", str(password_file), password=None)
        alice_id = alice.expect("registered alice as user").split()[-1]
        alice.expect("type :all for commands")
        alice.type(":q!")
        assert alice.wait() == 0

        # A wrong password neither logs in as alice nor learns her id by registering her name.
        impostor = Console(url, "--user-id", alice_id, "--user-name", "alice", password="not alice's")
        impostor.expect("login failed: 9100")
        assert impostor.wait() == 1
        squatter = Console(url, "--register", "alice", password="not alice's")
        line = squatter.expect("registration failed: 3000")
        assert "userName is taken" in line and alice_id not in line
        assert squatter.wait() == 1
        # No password at all (none in the environment, no file, stdin not a terminal): the route says which field.
        blank = Console(url, "--register", "bob", password=None)
        assert "password" in blank.expect("registration failed: 3000")
        assert blank.wait() == 1
