"""End-to-end fixtures: a real daphne server on the test database and headless Chromium.

pytest-django's live_server speaks WSGI only, so the pages' sockets need a real ASGI server:
`daphne` runs in its own process against the test database (and the same Redis prefix), and
the browser talks to it over HTTP and WebSockets like an operator's would.

Playwright's sync API runs an event loop for as long as it is started, and Django refuses ORM
calls while a loop runs in the thread; so the browser lives only as long as one test, and tests
touch the database through `orm()`, which runs a call on a fresh thread.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.conf import settings
from django.db import connection, connections

REPO = Path(settings.BASE_DIR)
SCREENSHOTS = REPO / "artifacts" / "screenshots"
SERVER_LOG = REPO / "artifacts" / "e2e-daphne.log"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "e2e-secret-pw"
START_TIMEOUT_SECONDS = 30


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or None


def orm(fn, /, *args, **kwargs):
    """Run a database call on its own thread (no event loop there) and close its connections."""

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _test_database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += f":{quote(db['PASSWORD'], safe='')}"
    host = f"{auth}@" if auth else ""
    return f"postgres://{host}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class DaphneServer:
    """`daphne simsched.asgi:application` on a fixed port, stoppable and restartable."""

    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.env = {**os.environ, "DATABASE_URL": _test_database_url(), "DEBUG": "true"}
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
        SERVER_LOG.write_text("")

    def start(self) -> None:
        daphne = Path(sys.executable).with_name("daphne")
        log = open(SERVER_LOG, "a")  # noqa: SIM115 - the child process owns it
        self.process = subprocess.Popen(
            [str(daphne), "-b", "127.0.0.1", "-p", str(self.port), "simsched.asgi:application"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"daphne exited with {code}; see {SERVER_LOG}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daphne did not become healthy; see {SERVER_LOG}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def chromium():
    path = chromium_path()
    if not path or not Path(path).exists():
        pytest.skip("no chromium binary (install Debian's chromium or set CHROMIUM=/path)")
    return path


@pytest.fixture(scope="package")
def server(django_db_setup, chromium):
    """One daphne for the end-to-end tests; a test that stops it starts it again."""
    daphne = DaphneServer()
    daphne.start()
    yield daphne
    daphne.stop()


@pytest.fixture
def live(server, transactional_db):
    """The server, made sure to be up, with a clean database for this test."""
    if server.process.poll() is not None:
        server.start()
    return server


@pytest.fixture
def browser(chromium, live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def sign_in(page, server, username: str, password: str = PASSWORD) -> None:
    """Through the real login form, as a person would."""
    page.goto(f"{server.url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def api(server, token: str, method: str, path: str, body=None):
    """A script's request to the running server, authenticated with a token."""
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def drag_across(page, canvas: str, from_x: float, to_x: float) -> None:
    """Drags the mouse across a Chart.js chart from one x value to another (in its x scale's
    units), halfway up its chart area, as a person selecting a range would."""
    page.locator(canvas).scroll_into_view_if_needed()
    ends = page.evaluate(
        """([selector, values]) => {
            const canvas = document.querySelector(selector);
            const chart = Chart.getChart(canvas);
            const box = canvas.getBoundingClientRect();
            const y = box.top + (chart.chartArea.top + chart.chartArea.bottom) / 2;
            return values.map((value) => [box.left + chart.scales.x.getPixelForValue(value), y]);
        }""",
        [canvas, [from_x, to_x]],
    )
    page.mouse.move(*ends[0])
    page.mouse.down()
    page.mouse.move(*ends[1], steps=8)
    page.mouse.up()


def request_queries(page, path_end: str) -> list[dict[str, list[str]]]:
    """The query of every request the page makes from now on to a path ending in `path_end`,
    in the order it makes them (a list that grows as it does)."""
    queries = []

    def seen(request):
        url = urlsplit(request.url)
        if url.path.endswith(path_end):
            queries.append(parse_qs(url.query))

    page.on("request", seen)
    return queries
