"""End to end in a real headless Chromium: ``saga-fsm demo`` fills a SQLite store,
``saga-fsm ui`` serves it from a subprocess, selenium clicks through it as an operator.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them); without
them the test is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saga_fsm.stores import open_store
from tests.cli.test_cli import saga_fsm

ROOT = Path(__file__).resolve().parents[2]
REF = "saga_fsm.examples.order_fulfillment"  # as the README starts it
EVIL = "<script>document.title='owned'</script>"
# Set it to a path to keep the saga page's screenshot (the README's picture is one).
SCREENSHOT_ENV = "SAGA_FSM_CONSOLE_SCREENSHOT"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """The console's base URL, and the ids of three sagas started but not run (the
    last one quarantined)."""
    store = f"sqlite:///{tmp_path}/shop.db"
    demo = saga_fsm("demo", "--store", store, "--sagas", "24", "--seed", "7", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    pending = []
    for n in (1, 2, 3):
        data = f'{{"order_id": "waiting-{n}", "amount": 12, "quantity": 1, "note": "{EVIL}"}}'
        started = saga_fsm("start", REF, "--store", store, "--data", data, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        pending.append(started.stdout.strip())

    async def quarantine() -> None:
        async with open_store(store) as opened:
            await opened.quarantine(pending[2], "undecodable: a hand-edited row", now=T0)

    asyncio.run(quarantine())
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "saga_fsm.cli", "ui", REF, "--store", store, "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/static/console.css", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                time.sleep(0.1)
        else:
            raise AssertionError("saga-fsm ui did not start listening")
        yield base, pending
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def browser() -> Iterator[object]:
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1900")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def test_an_operator_filters_opens_and_cancels_in_chromium(
    console: tuple[str, list[str]], browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    driver = browser
    wait = WebDriverWait(driver, 15)  # page loads, on a busy machine
    base, (to_cancel, to_forge, to_free) = console

    # The overview, then the list filtered to compensated sagas through its form.
    driver.get(base + "/")
    assert "Overview" in driver.title
    assert driver.find_element(By.ID, "inbox").is_displayed()
    driver.find_element(By.LINK_TEXT, "Sagas").click()
    field = driver.find_element(By.NAME, "state")
    field.send_keys("compensated")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait.until(expected.url_contains("state=compensated"))
    states = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#sagas td .state")]
    assert states and set(states) == {"compensated"}

    # One of them: its path drawn on the Machine, the current state marked.
    driver.find_element(By.CSS_SELECTOR, "#sagas a.saga-link").click()
    assert driver.find_element(By.ID, "state").text == "compensated"
    marked = driver.execute_script(
        "return [...document.querySelectorAll('#diagram svg g.node')]"
        ".filter(g => g.querySelector('[fill=\"#ffd54f\"]'))"
        ".map(g => g.querySelector('title').textContent)"
        ".filter(name => name !== 'legend')"
    )
    assert marked == ["compensated"]
    png = driver.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    (tmp_path / "saga.png").write_bytes(png)
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).write_bytes(png)

    # A waiting saga: its data shown as text, cancelled through the confirmation.
    driver.get(f"{base}/sagas/{to_cancel}")
    assert driver.title.startswith("Saga ") and EVIL in driver.find_element(By.ID, "data").text
    assert driver.find_element(By.ID, "state").text == "pending"
    driver.find_element(By.ID, "action-cancel").click()
    wait.until(expected.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Cancel saga"))
    driver.find_element(By.ID, "confirm").click()
    assert driver.find_element(By.ID, "done").text == "cancel: done."
    assert driver.find_element(By.ID, "state").text == "compensated"

    # The same action with the form's CSRF token taken out is refused, and changes nothing.
    driver.get(f"{base}/sagas/{to_forge}/do/cancel")
    driver.execute_script("document.querySelector('input[name=csrf_token]').remove()")
    driver.find_element(By.ID, "confirm").click()
    assert "CSRF token is missing or wrong" in driver.find_element(By.ID, "problem").text
    driver.get(f"{base}/sagas/{to_forge}")
    assert driver.find_element(By.ID, "state").text == "pending"

    # The quarantined saga, from the overview's count: why, then let go through the
    # confirmation.
    driver.get(base + "/")
    driver.find_element(By.ID, "quarantined").click()
    wait.until(expected.url_contains("quarantined=yes"))
    driver.find_element(By.CSS_SELECTOR, "#sagas a.saga-link").click()
    assert driver.find_element(By.ID, "quarantine-reason").text == "undecodable: a hand-edited row"
    driver.find_element(By.ID, "action-unquarantine").click()
    wait.until(expected.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Unquarantine saga"))
    driver.find_element(By.ID, "confirm").click()
    assert driver.find_element(By.ID, "done").text == "unquarantine: done."
    assert driver.current_url.startswith(f"{base}/sagas/{to_free}")
    driver.implicitly_wait(0)
    assert driver.find_elements(By.ID, "quarantine") == []
