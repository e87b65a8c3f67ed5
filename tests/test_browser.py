"""The web client (cim/web, served by the route at /app) in real Chromium: Debian's ``chromium``
driven through ``chromium-driver`` by selenium, against ``cim up`` as a process of its own.

Two browsers chat privately and in a named group; one goes away (its browser quits) and a new
browser of the same user sees what it missed, once each; a TCP SDK user and a browser user talk
both ways. Screenshots go to ``$CIM_SCREENSHOTS`` (default ``build/screenshots/``). A Chromium that
cannot start fails the test: the browser is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from cim.client import Client, register
from cim.client.sdk import Message
from cim.testing.services import CimProcess, free_port
from tests.conftest import PASSWORD, eventually, new_secret

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0  # seconds a page has to show what the test waits for
DESKTOP = (1280, 800)
PHONE = (390, 844)  # a phone's CSS pixels: the one-pane layout
SCREENSHOTS = Path(os.environ.get("CIM_SCREENSHOTS", Path(__file__).parent.parent / "build" / "screenshots"))
# Chromium as root in a container, offline: no sandbox, and none of its own calls home (this
# network refuses them, and they would slow every start).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``cim up`` (route, one cim-server with its WebSocket port, DELIVERED receipts on); the page's URL."""
    workdir = tmp_path_factory.mktemp("up")
    route_port = free_port()
    proc = CimProcess(workdir, "up", [
        "up", "--host", "127.0.0.1", "--port", str(free_port()), "--http-port", str(free_port()),
        "--ws-port", str(free_port()), "--route-port", str(route_port), "--delivered-receipts", "on",
    ])
    proc.wait_http(route_port)
    try:
        yield f"http://127.0.0.1:{route_port}"
    finally:
        proc.stop()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


class Page:
    """One browser (a fresh profile: its own localStorage, so its own device) on the web client."""

    def __init__(self, url: str, profile: Path, size: tuple[int, int] = DESKTOP) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        if size == PHONE:  # headless windows are at least 500 px wide: a phone's viewport is emulated
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": size[0], "height": size[1], "deviceScaleFactor": 2, "mobile": True})
        self.driver.get(f"{url}/app/")
        self.user_id = ""

    def quit(self) -> None:
        self.driver.quit()

    def until(self, check: Callable[[], T | None], what: str) -> T:
        """What ``check`` returns once it is truthy; a failure naming ``what`` and the page's log after WAIT."""
        def probe(_: webdriver.Chrome) -> T | Literal[False]:
            try:
                value = check()
            except StaleElementReferenceException:  # the page re-rendered the element meanwhile
                return False
            return value or False
        try:
            return WebDriverWait(self.driver, WAIT).until(probe)
        except WebDriverException as err:
            raise AssertionError(f"{what}: not within {WAIT} s; connection: {self.text('connection')!r}; "
                                 f"page errors: {self.errors()}") from err

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def errors(self) -> list[str]:
        log = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [e["message"] for e in log if e["level"] == "SEVERE"]

    def sign_in(self, name: str) -> str:
        """Sign in (registering the name); the user id the page shows, once it is online."""
        self.driver.find_element(By.ID, "signin-name").send_keys(name)
        self.driver.find_element(By.ID, "signin-password").send_keys(PASSWORD)
        self.driver.find_element(By.ID, "signin-button").click()
        self.until(lambda: self.text("connection") == "online", f"{name} online")
        self.user_id = self.text("me-id").lstrip("#")
        return self.user_id

    def on_conversation(self, key: str, act: Callable[[WebElement], T]) -> T:
        """``act`` on the sidebar entry of a conversation ("u:ID" or "g:ID") once it is listed; found
        again and retried when the sidebar re-rendered it in between (the online list refreshes it)."""
        def found() -> tuple[T] | None:
            entry = next(iter(self.driver.find_elements(By.CSS_SELECTOR, f'.conv[data-key="{key}"]')), None)
            return None if entry is None else (act(entry),)
        return self.until(found, f"conversation {key} listed")[0]

    def unread(self, key: str) -> str:
        return self.on_conversation(key, lambda entry: str(entry.find_element(By.CLASS_NAME, "unread").text))

    def open(self, key: str) -> None:
        self.on_conversation(key, lambda entry: entry.click())
        self.until(lambda: not self.driver.find_element(By.ID, "composer-text").get_attribute("disabled"), f"{key} open")

    def send(self, text: str) -> None:
        self.driver.find_element(By.ID, "composer-text").send_keys(text)
        self.driver.find_element(By.ID, "send").click()

    def messages(self) -> list[tuple[str, bool]]:
        """The open conversation's messages: (text, mine), in the order shown."""
        return [(str(m.find_element(By.CLASS_NAME, "text").text), "mine" in (m.get_attribute("class") or ""))
                for m in self.driver.find_elements(By.CSS_SELECTOR, "#message-list .msg:not(.notice)")]

    def shows(self, *texts: str) -> list[tuple[str, bool]]:
        """The open conversation's messages once every one of ``texts`` is among them."""
        def all_shown() -> list[tuple[str, bool]] | None:
            shown = self.messages()
            return shown if set(texts) <= {t for t, _ in shown} else None
        return self.until(all_shown, f"messages {texts} shown")

    def mark(self, text: str) -> str:
        """The delivered/read mark of my message ``text`` in the open conversation."""
        for m in self.driver.find_elements(By.CSS_SELECTOR, "#message-list .msg.mine"):
            if m.find_element(By.CLASS_NAME, "text").text == text:
                return str(m.find_element(By.CLASS_NAME, "mark").get_attribute("data-status"))
        raise AssertionError(f"no message of mine {text!r} shown")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"screenshot {path} not saved"
        return path


@pytest.fixture
def browsers(app_url: str, tmp_path: Path) -> Iterator[Callable[..., Page]]:
    """Start browsers on the page (each with a profile of its own); all quit at the end."""
    started: list[Page] = []

    def start(size: tuple[int, int] = DESKTOP, url: str = app_url) -> Page:
        page = Page(url, tmp_path / f"profile{len(started)}", size)
        started.append(page)
        return page

    yield start
    for page in started:
        with contextlib.suppress(WebDriverException):  # quit by the test already
            page.quit()


def test_chromium_is_there() -> None:
    """The browser tests need Debian's chromium and chromium-driver (the README's test command installs them)."""
    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt-get install -y chromium chromium-driver"


def test_two_browsers_chat_privately_and_in_a_named_group(browsers: Callable[..., Page]) -> None:
    alice, bob = browsers(), browsers()
    alice_name, bob_name = unique("alice"), unique("bob")
    alice_id, bob_id = alice.sign_in(alice_name), bob.sign_in(bob_name)

    alice.open(f"u:{bob_id}")  # bob is listed: he is online
    alice.send("hi bob")
    assert bob.until(lambda: bob.unread(f"u:{alice_id}") == "1", "one unread from alice")
    # bob's page acked it (not read: the conversation is not open there), so alice's mark says delivered.
    alice.until(lambda: alice.mark("hi bob") == "DELIVERED", "alice sees it delivered to bob")
    bob.open(f"u:{alice_id}")
    assert bob.shows("hi bob") == [("hi bob", False)]
    assert bob.unread(f"u:{alice_id}") == ""  # on screen: read
    alice.until(lambda: alice.mark("hi bob") == "READ", "alice sees bob read it")
    bob.send("hi alice")
    assert alice.shows("hi bob", "hi alice") == [("hi bob", True), ("hi alice", False)]

    alice.driver.find_element(By.ID, "group-name").send_keys("team")
    alice.driver.find_element(By.ID, "group-members").send_keys(bob_name)  # by name: bob is a known user
    alice.driver.find_element(By.ID, "group-create").click()
    alice.until(lambda: alice.text("chat-title") == "team", "the new group open")
    group_key = str(alice.driver.find_element(By.CSS_SELECTOR, ".conv.active").get_attribute("data-key"))
    alice.send("hello team")
    assert bob.until(lambda: bob.unread(group_key) == "1", "one unread in the group")
    bob.open(group_key)
    bob.shows("hello team")
    bob.send("hello alice, in the team")
    assert alice.shows("hello team", "hello alice, in the team") == [("hello team", True), ("hello alice, in the team", False)]
    bob.driver.find_element(By.ID, "members-toggle").click()
    members = bob.until(lambda: bob.text("members") or None, "the member list")
    assert alice_name in members and bob_name in members
    alice.screenshot("desktop-group")
    bob.screenshot("desktop-group-members")


def test_a_browser_that_went_away_sees_what_it_missed_once(browsers: Callable[..., Page]) -> None:
    alice, bob = browsers(), browsers(PHONE)
    bob_name = unique("bob")
    alice_id, bob_id = alice.sign_in(unique("alice")), bob.sign_in(bob_name)
    alice.open(f"u:{bob_id}")
    alice.send("before you left")
    bob.open(f"u:{alice_id}")
    bob.shows("before you left")
    bob.quit()  # gone: no goodbye, the connection just drops

    missed = [f"while you were away {n}" for n in range(3)]
    for text in missed:
        alice.send(text)
    alice.until(lambda: all(alice.mark(t) not in ("pending", "") for t in missed), "the server took them")

    back = browsers(PHONE)  # a new browser: no localStorage, so a new device that syncs the inbox
    assert back.sign_in(bob_name) == bob_id
    # A new device syncs the whole inbox kept, and knows nothing of what the old one read: all 4 are unread.
    assert back.until(lambda: back.unread(f"u:{alice_id}") == "4", "4 unread from alice")
    back.screenshot("phone-list")
    back.open(f"u:{alice_id}")
    shown = back.shows("before you left", *missed)
    assert [t for t, _ in shown] == ["before you left", *missed]  # each once, in order
    back.send("back again")
    alice.shows("back again")
    back.screenshot("phone-chat")
    alice.screenshot("desktop-chat")


async def test_an_sdk_user_and_a_browser_user_talk_both_ways(app_url: str, browsers: Callable[..., Page]) -> None:
    carol_name = unique("carol")
    carol_id = await register(app_url, carol_name, PASSWORD)
    received: list[Message] = []
    async with Client(app_url, carol_id, carol_name, password=PASSWORD, on_message=received.append) as carol:
        dave = await asyncio.to_thread(browsers)
        dave_id = int(await asyncio.to_thread(dave.sign_in, unique("dave")))
        receipt = await carol.send_private(dave_id, "hello from the SDK")
        assert receipt.accepted
        await asyncio.to_thread(dave.open, f"u:{carol_id}")
        assert await asyncio.to_thread(dave.shows, "hello from the SDK") == [("hello from the SDK", False)]
        await asyncio.to_thread(dave.send, "hello from the browser")
        await eventually(lambda: any(m.text == "hello from the browser" for m in received), timeout=WAIT)
        from_dave = next(m for m in received if m.text == "hello from the browser")
        assert from_dave.sender_id == dave_id



def test_a_server_restart_is_a_reconnect_that_syncs_and_resends(tmp_path: Path, browsers: Callable[..., Page]) -> None:
    """``cim up --data-dir`` stopped and started again on the same ports: both pages reconnect by
    themselves; what was sent meanwhile is resent from the outbox, and arrives once."""
    ports = ["--port", str(free_port()), "--http-port", str(free_port()), "--ws-port", str(free_port())]
    route_port = free_port()
    args = ["up", "--host", "127.0.0.1", *ports, "--route-port", str(route_port), "--data-dir", str(tmp_path / "data")]
    env = {"CIM_SECRET": new_secret()}  # the tokens the pages hold stay valid across the restart

    def up() -> CimProcess:
        proc = CimProcess(tmp_path, "up", args, env)
        proc.wait_http(route_port)
        return proc

    proc = up()
    try:
        url = f"http://127.0.0.1:{route_port}"
        alice, bob = browsers(url=url), browsers(url=url)
        alice_id, bob_id = alice.sign_in(unique("alice")), bob.sign_in(unique("bob"))
        alice.open(f"u:{bob_id}")
        bob.open(f"u:{alice_id}")
        alice.send("before the restart")
        bob.shows("before the restart")

        proc.stop()
        alice.until(lambda: alice.text("connection") != "online", "alice's page sees the server gone")
        missed = [f"while the server was down {n}" for n in range(2)]
        for text in missed:
            alice.send(text)  # kept in the outbox until a receipt
        assert {alice.mark(t) for t in missed} == {"pending"}
        proc = up()

        shown = bob.shows(*missed)
        assert [t for t, _ in shown] == ["before the restart", *missed]  # each once, in order
        alice.until(lambda: all(alice.mark(t) != "pending" for t in missed), "their receipts")
        bob.send("welcome back")
        assert [t for t, mine in alice.shows("welcome back") if not mine] == ["welcome back"]
    finally:
        proc.stop()


async def test_a_reloaded_page_scrolls_back_through_history(app_url: str, browsers: Callable[..., Page]) -> None:
    """After a reload the page resumes at the seq it kept (nothing is synced again): the past comes
    from ``/history``, a page of 30 at first and the rest on "older messages", in order, once each."""
    carol_name = unique("carol")
    carol_id = await register(app_url, carol_name, PASSWORD)
    erin = await asyncio.to_thread(browsers)
    erin_name = unique("erin")
    erin_id = int(await asyncio.to_thread(erin.sign_in, erin_name))
    sent = [f"old {n}" for n in range(40)]
    async with Client(app_url, carol_id, carol_name, password=PASSWORD) as carol:
        for text in sent:
            assert (await carol.send_private(erin_id, text)).accepted
    await asyncio.to_thread(erin.until, lambda: erin.unread(f"u:{carol_id}") == "40", "40 unread")
    await asyncio.sleep(0.5)  # past the page's ack: the seq it keeps covers them

    await asyncio.to_thread(erin.driver.refresh)
    assert int(await asyncio.to_thread(erin.sign_in, erin_name)) == erin_id
    await asyncio.to_thread(erin.open, f"u:{carol_id}")
    first = await asyncio.to_thread(erin.shows, "old 39")
    assert [t for t, _ in first] == sent[10:]  # the newest 30
    await asyncio.to_thread(lambda: erin.driver.find_element(By.ID, "older").click())
    everything = await asyncio.to_thread(erin.shows, "old 0")
    assert [t for t, _ in everything] == sent


async def test_what_i_send_from_another_device_shows_as_mine_once(app_url: str, browsers: Callable[..., Page]) -> None:
    """The sender's copy: erin's phone (the SDK) sends to carol, and erin's page shows it as hers in the
    conversation with carol; what the page sends shows once (its own copy merged with it) and reaches the
    phone; after a reload history has both, once each."""
    carol_name = unique("carol")
    carol_id = await register(app_url, carol_name, PASSWORD)
    erin = await asyncio.to_thread(browsers)
    erin_name = unique("erin")
    erin_id = int(await asyncio.to_thread(erin.sign_in, erin_name))
    on_phone: list[Message] = []
    async with Client(app_url, erin_id, erin_name, password=PASSWORD, device_id="phone", on_message=on_phone.append) as phone:
        assert (await phone.send_private(carol_id, "from my phone")).accepted
        await asyncio.to_thread(erin.open, f"u:{carol_id}")
        assert await asyncio.to_thread(erin.shows, "from my phone") == [("from my phone", True)]
        await asyncio.to_thread(erin.send, "from the page")
        await eventually(lambda: any(m.text == "from the page" for m in on_phone), timeout=WAIT)
        [copy] = [m for m in on_phone if m.text == "from the page"]
        assert (copy.outgoing, copy.to_user_id, copy.from_this_device) == (True, carol_id, False)
        await asyncio.to_thread(erin.until, lambda: erin.mark("from the page") != "pending", "sent")
        both = [("from my phone", True), ("from the page", True)]
        assert await asyncio.to_thread(erin.messages) == both
    await asyncio.sleep(0.5)  # past the page's ack
    await asyncio.to_thread(erin.driver.refresh)
    assert int(await asyncio.to_thread(erin.sign_in, erin_name)) == erin_id
    await asyncio.to_thread(erin.open, f"u:{carol_id}")
    assert await asyncio.to_thread(erin.shows, "from my phone", "from the page") == both
