"""The status page in a real browser (Debian's chromium through chromium-driver and selenium),
served by `ingestd run` on this machine's own non-loopback address, with a password.

The page loads; a failed file shows its reason; a search finds it; clicking Retry puts it back
and the page (which reloads itself) later shows it done; a request without credentials gets 401;
and no request the browser made carries a folder or file name in its URL (Chrome's own network
log). With INGESTD_SCREENSHOTS=DIR, it also saves the page at desktop and phone width there (the
README's pictures come from it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

from ingestd.sandbox import Fault, Sandbox
from ingestd.web.auth import hash_password
from ingestd.web.server import ROUTES
from tests.conftest import DaemonProcess, Tree, make_config, wait_for
from tests.samples import pdf

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
PASSWORD = "front desk secret"
FOLDER = "Andersson Anna"
NAME = "remiss från vårdcentralen.pdf"
OTHERS = {"Berg Nils": ["labb 2026-12-04.pdf", "remiss.pdf"], "Lind Eva": ["kort.pdf"]}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]


def own_address() -> str | None:
    """An IPv4 address of this machine other than loopback (`hostname -I`), if it can be bound."""
    try:
        found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    for address in found.stdout.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", address) and not address.startswith("127."):
            with socket.socket() as probe:
                try:
                    probe.bind((address, 0))
                except OSError:
                    continue
            return address
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (tests/tools.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def body_text(driver: Any) -> str:
    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except Exception:  # the page is reloading itself right now: look again
        return ""


def screenshots(driver: Any, folder: str) -> None:
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1280, 1000)
    driver.save_screenshot(str(target / "status-page-desktop.png"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 1100, "deviceScaleFactor": 1, "mobile": True},
    )
    driver.refresh()
    driver.save_screenshot(str(target / "status-page-phone.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_front_desk_sees_a_failure_retries_it_and_sees_it_done(
    tree: Tree,
    sandbox: Sandbox,
    daemon_process: Callable[..., DaemonProcess],
    browser: Any,
) -> None:
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve the page on")
    folders = {FOLDER: "p_100", "Berg Nils": "p_200", "Lind Eva": "p_300"}
    page = {
        "listen": f"{address}:0",
        "user": "desk",
        "password_hash": str(hash_password(PASSWORD, n=2**12)),
        "refresh_seconds": 2,
    }
    config = make_config(tree, sandbox, status_page=page, patients={"folders": folders})
    sandbox.add_fault(Fault(api="leyr", route="upload", status=422, times=1))
    proc = daemon_process(config)
    proc.wait_started()
    listening = wait_for(
        lambda: re.search(r"event=status_page_listening address=(\S+)", proc.output())
    )
    url = f"http://{listening.group(1)}/"
    assert not url.startswith("http://127.")

    tree.drop(f"{FOLDER}/{NAME}", pdf("refused once"))
    wait_for(lambda: len(tree.receipts("failed")) == 1)
    [failure] = tree.receipts("failed")
    for folder, names in OTHERS.items():
        for name in names:
            tree.drop(f"{folder}/{name}", pdf(name))
    wait_for(lambda: len(tree.receipts("done")) == 3)

    # Off loopback, without the password: 401 and nothing of the page.
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 401
    assert FOLDER not in refused.text
    assert "Basic" in refused.headers["WWW-Authenticate"]

    browser.execute_cdp_cmd("Network.enable", {})
    token = requests.auth._basic_auth_str("desk", PASSWORD)  # type: ignore[attr-defined]
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": token}})
    browser.get(url)
    assert browser.title.startswith("Document intake")
    text = body_text(browser)
    assert FOLDER in text
    assert NAME in text
    assert "HTTP 422" in text
    assert failure["error"]["message"] in text
    assert "3 done today" in text
    if os.environ.get("INGESTD_SCREENSHOTS"):
        screenshots(browser, os.environ["INGESTD_SCREENSHOTS"])

    # A search by part of the name (a POST: the name goes in no URL), then back to the overview.
    browser.find_element(By.NAME, "q").send_keys("VÅRDCENTRAL")
    browser.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    wait_for(lambda: "1 file(s) found" in body_text(browser), timeout=10, interval=0.1)
    assert NAME in body_text(browser)
    browser.find_element(By.LINK_TEXT, "Back to the overview").click()
    wait_for(lambda: "Failed files (1)" in body_text(browser), timeout=10, interval=0.1)

    browser.find_element(By.CSS_SELECTOR, "form[action='/retry'] button").click()
    # The page reloads itself every 2 s: it shows the file done once the daemon has sent it.
    wait_for(lambda: "4 done today" in body_text(browser), timeout=30, interval=0.3)
    assert "0 failed" in body_text(browser)
    [again] = [r for r in tree.receipts("done") if r["source"] == f"{FOLDER}/{NAME}"]
    assert again["history"][0]["error"] == failure["error"]

    urls = requested_urls(browser)
    ours = [u for u in urls if u.startswith(url)]
    assert {urlsplit(u).path for u in ours} >= {"/", "/style.css", "/refresh.js", "/search"}
    for requested in urls:
        parts = urlsplit(requested)
        if parts.scheme in ("http", "https"):  # not the browser's own chrome:// pages
            assert requested.startswith(url), requested
            assert parts.path in ROUTES, requested
            assert not parts.query, requested
        for name in (FOLDER, NAME, *OTHERS, *(n for ns in OTHERS.values() for n in ns)):
            assert name not in requested
            assert quote(name) not in requested
    assert "Andersson" not in proc.output()
    assert "remiss" not in proc.output()
    assert proc.stop() == 0
