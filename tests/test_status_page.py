"""The status page in a real browser (the system's Chromium, driven by Playwright) against twistd.

Chromium comes from the distribution (Debian's `chromium` package), installed here
with apt-get when missing; Playwright only drives it (no `playwright install`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import installed, start_twistd, wait_for_port

GATEWAY_ID = "gw-status-page"
API_TOKEN = "status-page-token"
COMMAND_ONLY_TOKEN = "command-only-token"
SECRET = "k"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Chromium, installed with apt-get when missing; the test fails (never skips) without it."""
    found, output = installed("chromium", lambda: shutil.which("chromium"))
    if found is None:
        pytest.fail("Chromium is missing and apt-get could not install it:\n" + output)
    return found


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """Headless Chromium, each context a fresh profile."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Lot:
    """A standard lot's downlink connection over TCP, held open: it logs in and stays bound."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = FrameDecoder(2**20)
        self.frames: list[Any] = []

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in; the answer."""
        data = {"parkUserName": username, "parkUserPwd": password}
        message = {"token": "", "code": "login", "oprNum": "status-page-login", "data": data}
        message["signature"] = sign(compact(data), "", SECRET)
        self.socket.sendall(encode_frame(message))
        while not self.frames:
            chunk = self.socket.recv(65536)
            assert chunk, "the gateway closed the connection"
            for payload in self.decoder.feed(chunk):
                assert isinstance(payload, bytes), payload
                self.frames.append(json.loads(payload))
        answer: dict[str, Any] = self.frames.pop(0)
        return answer

    def close(self) -> None:
        self.socket.close()


class Gateway:
    """twistd running the gateway, with lot P001 logged in on the downlink and P002 offline."""

    def __init__(self, tmp_path: Path) -> None:
        self.api_port, downlink = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        config = tmp_path / "gateway.toml"
        lots = "".join(
            f'[[lot]]\npark_code = "{park}"\nusername = "{user}"\npassword = "{HASH}"\nsecret = "{SECRET}"\n'
            for park, user in (("P001", "lot001"), ("P002", "lot002"))
        )
        config.write_text(
            f'[gateway]\nid = "{GATEWAY_ID}"\nsigning_key = "{tmp_path / "gateway.key"}"\n'
            f'[listen]\nuplink = "tcp:0:interface=127.0.0.1"\n'
            f'downlink = "tcp:{downlink}:interface=127.0.0.1"\n'
            f'api = "tcp:{self.api_port}:interface=127.0.0.1"\n'
            f'[journal]\npath = "{tmp_path / "journal"}"\n'
            f'[cloud]\napi_token = "{API_TOKEN}"\n'
            f'[[api_client]]\nname = "commander"\nroles = ["command"]\n'
            f'token_sha256 = "{hashlib.sha256(COMMAND_ONLY_TOKEN.encode()).hexdigest()}"\n' + lots
        )
        self.process = start_twistd(tmp_path, str(config))
        try:
            wait_for_port(self.api_port, self.process)
            wait_for_port(downlink, self.process)
            self.lot = Lot(downlink)
            answer = self.lot.login("lot001", PASSWORD)
            assert answer["resultCode"] == "0000", answer
            # P002 tries a wrong password: refused (a lot.rejected event), and stays offline.
            self.stranger = Lot(downlink)
            refused = self.stranger.login("lot002", "not-the-password")
            assert refused["resultCode"] != "0000", refused
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for lot in ("lot", "stranger"):
            if hasattr(self, lot):
                getattr(self, lot).close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A running gateway with one lot online and one offline."""
    running = Gateway(tmp_path_factory.mktemp("status-page"))
    try:
        yield running
    finally:
        running.stop()


def _sign_in(page: Page, token: str) -> None:
    """Type `token` into the page's form and send it, as a person would."""
    expect(page.get_by_label("API token")).to_be_visible()
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Show the status").click()


def _lot_rows(page: Page) -> list[list[str]]:
    return [
        [cell.strip() for cell in row.locator("td").all_inner_texts()]
        for row in page.locator("#lots tbody tr").all()
    ]


def test_the_page_shows_the_lots_once_signed_in(browser: Browser, gateway: Gateway) -> None:
    """After the token is typed in, the page shows the gateway, P002 offline first, P001 online; a
    reload of the page does not ask again; the filter narrows the lots; it refreshes by itself."""
    page = browser.new_context().new_page()
    page.clock.install()  # the page's timers run on the test's word, so it need not wait 5 s
    page.goto(gateway.url + "/")
    assert page.get_by_label("API token").get_attribute("type") == "password"
    expect(page.locator("#status")).to_be_hidden()
    _sign_in(page, API_TOKEN)

    expect(page.locator("#gateway-id")).to_have_text(GATEWAY_ID)
    expect(page.get_by_label("API token")).to_be_hidden()
    expect(page.locator("#ready")).to_have_text(re.compile(r"^ready"))
    expect(page.locator("#lots-online")).to_have_text("1")
    expect(page.locator("#lots-offline")).to_have_text("1")
    expect(page.locator("#forwarding")).to_have_text("log-only: the journal is the sink")
    expect(page.locator("#updated")).to_have_text(re.compile(r"^updated \d+ s ago$"))
    offline, online = _lot_rows(page)
    assert offline[:3] == ["P002", "standard", "offline"] and offline[4] == "never"
    assert online[:3] == ["P001", "standard", "online"]
    assert online[4].endswith("ago") or online[4] == "just now"
    assert online[5].startswith("127.0.0.1:")
    assert page.evaluate("() => Object.keys(sessionStorage).length") == 1

    page.reload()
    expect(page.locator("#gateway-id")).to_have_text(GATEWAY_ID)
    expect(page.get_by_label("API token")).to_be_hidden()

    page.get_by_label("Filter by park code").fill("p001")
    assert [row[0] for row in _lot_rows(page)] == ["P001"]
    expect(page.locator("#lots-shown")).to_have_text("Showing 1 of 2 lots.")

    with page.expect_request(gateway.url + "/v1/status", timeout=2000):
        page.clock.run_for(5000)  # the next refresh is due
    page.context.close()


def test_a_wrong_token_asks_again_with_an_error(browser: Browser, gateway: Gateway) -> None:
    """A refused token (401) brings the form back with an error and is not kept; one without the
    `read` role (403) likewise."""
    page = browser.new_context().new_page()
    page.goto(gateway.url + "/")
    _sign_in(page, "not-the-token")
    expect(page.locator("#token-error")).to_contain_text("refused the token (401")
    expect(page.get_by_label("API token")).to_be_visible()
    expect(page.locator("#status")).to_be_hidden()
    assert page.evaluate("() => Object.keys(sessionStorage).length") == 0

    _sign_in(page, COMMAND_ONLY_TOKEN)
    expect(page.locator("#token-error")).to_contain_text("(403: client 'commander' lacks the 'read' role")

    _sign_in(page, API_TOKEN)
    expect(page.locator("#gateway-id")).to_have_text(GATEWAY_ID)
    expect(page.locator("#token-error")).to_be_hidden()
    page.context.close()


def test_a_failed_fetch_shows_a_banner(browser: Browser, gateway: Gateway) -> None:
    """When the status cannot be fetched, a banner says so and what is shown stays; it clears once
    the gateway answers again."""
    page = browser.new_context().new_page()
    page.clock.install()
    page.goto(gateway.url + "/")
    _sign_in(page, API_TOKEN)
    expect(page.locator("#gateway-id")).to_have_text(GATEWAY_ID)
    page.route("**/v1/status", lambda route: route.abort())
    page.clock.run_for(5000)
    banner = page.get_by_role("alert").filter(has_text="Could not fetch the status")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("what is shown is from before")
    expect(page.locator("#lots-online")).to_have_text("1")
    page.unroute("**/v1/status")
    page.clock.run_for(5000)
    expect(banner).to_be_hidden()
    page.context.close()


def test_a_rejected_login_is_listed(browser: Browser, gateway: Gateway) -> None:
    """P002's refused login is in the recent rejections table, with its park and result code."""
    page = browser.new_context().new_page()
    page.goto(gateway.url + "/")
    _sign_in(page, API_TOKEN)
    expect(page.locator("#gateway-id")).to_have_text(GATEWAY_ID)
    row = page.locator("#rejections tbody tr").filter(has_text="P002")
    expect(row.first).to_contain_text("lot.rejected", timeout=2000)
    page.context.close()


def _busy_status(now: str) -> dict[str, Any]:
    """A /v1/status answer of a gateway that is behind, with a hostile rejection reason."""
    return {
        "gateway": {"id": "gw-<b>bold</b>", "now": now, "started": now, "uptimeSeconds": 93784},
        "ready": {"ok": False, "reason": "journal cannot write: disk full"},
        "journal": {"lastSeq": 120, "committedSeq": 118, "problem": "disk full"},
        "forwarding": {"sink": "cloudevents", "backlog": 1234, "lagSeconds": 11530.0, "note": None},
        "commands": {
            "window": 1000,
            "total": 10,
            "count": 10,
            "p50Ms": 12.5,
            "p90Ms": 40.0,
            "p99Ms": 80.0,
            "maxMs": 95.0,
            "byOutcome": {},
        },
        "lots": {"online": 0, "offline": 0, "items": []},
        "rejections": [
            {
                "time": now,
                "event": "cloud.rejected",
                "park": "P001",
                "code": "carIn",
                "result": 422,
                "reason": "<img src=x onerror=window.pwned=1>",
            }
        ],
    }


def test_figures_are_humanised_and_data_is_text(browser: Browser, gateway: Gateway) -> None:
    """Lag reads "3 h 12 min behind", latency p50/p99, not-ready in words; a rejection is listed, and
    markup in the data is shown as text, never run."""
    page = browser.new_context().new_page()
    page.goto(gateway.url + "/")
    now = page.evaluate("() => new Date().toISOString()")
    page.route("**/v1/status", lambda route: route.fulfill(json=_busy_status(now)))
    _sign_in(page, API_TOKEN)
    expect(page.locator("#gateway-id")).to_have_text("gw-<b>bold</b>")
    expect(page.locator("#forwarding")).to_have_text("3 h 12 min behind, 1234 records to forward")
    expect(page.locator("#latency")).to_have_text("p50 12.5 ms, p99 80 ms (max 95 ms, last 10 commands)")
    expect(page.locator("#ready")).to_have_text("NOT READY – journal cannot write: disk full")
    expect(page.locator("#uptime")).to_contain_text("1 d 2 h")
    expect(page.locator("#journal")).to_have_text("seq 120 (committed 118) – disk full")
    [rejection] = page.locator("#rejections tbody tr").all()
    cells = [cell.strip() for cell in rejection.locator("td").all_inner_texts()]
    assert cells[1:] == ["cloud.rejected", "P001", "carIn", "422", "<img src=x onerror=window.pwned=1>"]
    assert cells[0] in ("just now", "1 s ago", "2 s ago")
    assert page.locator("img, b").count() == 0
    assert page.evaluate("() => window.pwned") is None
    page.context.close()


def test_many_lots_show_offline_first_and_a_filter_finds_the_rest(browser: Browser, gateway: Gateway) -> None:
    """With 10,000 lots the table shows the first 1000 (offline first, as sent) and says so; the filter
    reaches any other."""
    page = browser.new_context().new_page()
    page.goto(gateway.url + "/")
    now = page.evaluate("() => new Date().toISOString()")
    status = _busy_status(now)
    status["lots"] = {
        "online": 5000,
        "offline": 5000,
        "items": [
            {
                "parkCode": f"P{n:05d}",
                "dialect": "standard",
                "connected": n >= 5000,
                "since": now,
                "lastSeen": now,
                "peer": "",
                "backlog": 0,
            }
            for n in range(10_000)
        ],
    }
    page.route("**/v1/status", lambda route: route.fulfill(json=status))
    _sign_in(page, API_TOKEN)
    expect(page.locator("#lots-shown")).to_have_text(
        "Showing 1000 of 10000 lots (the table shows at most 1000; filter to find others)."
    )
    assert page.locator("#lots tbody tr").count() == 1000
    assert page.locator("#lots tbody tr .offline").count() == 1000
    page.get_by_label("Filter by park code").fill("P09999")
    expect(page.locator("#lots tbody tr")).to_have_count(1)
    expect(page.locator("#lots tbody tr td").nth(2)).to_have_text("online")
    page.context.close()
