"""Helpers for the web UI test: a ``dagster dev`` server on 127.0.0.1 in its own process group,
headless Chromium driven by Selenium (Debian's ``chromium`` + ``chromedriver``), waits that fail
with a message and a screenshot instead of hanging, and the screenshot folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) found on PATH, or None: nothing is ever downloaded."""
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts_dir(sub: str = "ui") -> Path:
    """``$MEDTRINITY_TEST_ARTIFACTS/<sub>``, else ``<repo>/test-artifacts/<sub>`` (gitignored)."""
    root = os.environ.get("MEDTRINITY_TEST_ARTIFACTS")
    folder = (Path(root) if root else REPO_ROOT / "test-artifacts") / sub
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _reset_sigint() -> None:
    # A process started in the background by a non-interactive shell inherits SIGINT ignored;
    # `dagster dev` maps SIGTERM onto SIGINT's handler, so it would then ignore both.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DagsterDev:
    """``dagster dev`` bound to 127.0.0.1:<port>, its output in ``log``; ``stop()`` ends the whole
    process group (webserver, daemon, code server, run workers)."""

    def __init__(self, workspace: Path, env: dict[str, str], port: int, log: Path, cwd: Path = REPO_ROOT):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "wb")  # closed in stop()
        cmd = [sys.executable, "-m", "dagster", "dev", "--host", "127.0.0.1", "--port", str(port),
               "--workspace", str(workspace)]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_reset_sigint)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 10) -> dict:
        req = urllib.request.Request(
            f"{self.base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.load(resp)
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def _location_state(self) -> str | None:
        """'loaded', a load error's message, or None while the server or code location is not ready."""
        try:
            data = self.graphql("{ workspaceOrError { __typename ... on Workspace { locationEntries { name "
                                "loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }",
                                timeout=5)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        entries = (data.get("workspaceOrError") or {}).get("locationEntries") or []
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            return None
        errors = [e["locationOrLoadError"].get("message", "") for e in entries
                  if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
        return "; ".join(errors) if errors else "loaded"

    def wait_until_up(self, timeout: float = 90) -> float:
        """Seconds until the webserver answers and every code location is loaded."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"dagster dev exited with code {self.proc.returncode} before serving "
                                     f"{self.base}; last output:\n{self.log_tail()}")
            state = self._location_state()
            if state == "loaded":
                return time.monotonic() - start
            if state is not None:
                raise AssertionError(f"the code location failed to load: {state}\n{self.log_tail()}")
            time.sleep(1)
        raise AssertionError(f"dagster dev did not serve {self.base} with its code location loaded within "
                             f"{timeout:.0f}s; last output:\n{self.log_tail()}")

    def stop(self, grace: float = 20) -> None:
        """Ctrl-C for the whole group (dagster dev shuts its services down), then SIGKILL for anything
        left after ``grace`` seconds (a run worker, a code server)."""
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(pgid, signal.SIGINT)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        finally:
            self._log_file.close()


def headless_chrome(browser: str, driver: str, size: tuple[int, int] = (1600, 1000), tmp: Path | None = None):
    """Headless Chromium; with ``tmp``, its temporary files go there (each launch otherwise leaves an
    ``org.chromium.Chromium.*`` folder in ``/tmp``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={size[0]},{size[1]}", "--lang=en-US"):
        opts.add_argument(arg)
    env = {**os.environ, "TMPDIR": str(tmp)} if tmp is not None else None
    chrome = webdriver.Chrome(service=Service(driver, env=env), options=opts)
    chrome.set_page_load_timeout(30)
    return chrome


class Browser:
    """A Selenium driver plus the screenshot folder: ``until`` polls a condition and, on timeout,
    saves a screenshot named after the step before failing with a message."""

    def __init__(self, driver, shots: Path):
        self.driver = driver
        self.shots = shots
        self.saved: list[Path] = []

    def settle(self, quiet: float = 0.75, timeout: float = 5.0) -> None:
        """Until the page loaded no new resource for ``quiet`` seconds (Dagster's icons are CSS
        masks fetched after the DOM renders), at most ``timeout``: for screenshots, never fails."""
        end = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < end:
            try:
                n = self.driver.execute_script(
                    "performance.setResourceTimingBufferSize(100000);"
                    "return document.readyState === 'complete' ? performance.getEntriesByType('resource').length : -1")
            except Exception:  # a navigation in progress: try again
                n = -1
            now = time.monotonic()
            if n != last:
                last, since = n, now
            elif n >= 0 and now - since >= quiet:
                return
            time.sleep(0.25)

    def shot(self, name: str, settle: bool = True) -> Path:
        if settle:
            self.settle()
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.saved.append(path)
        return path

    def until(self, what: str, condition: Callable[[], T | None], timeout: float = 30, poll: float = 0.5) -> T:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                value = condition()
                if value:
                    return value
            except (StaleElementReferenceException, WebDriverException) as exc:  # re-rendered: try again
                last = exc
            if time.monotonic() > deadline:
                path = self.shot("failure-" + "".join(c if c.isalnum() else "-" for c in what)[:60], settle=False)
                detail = f" (last error: {type(last).__name__}: {str(last).splitlines()[0]})" if last else ""
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} on "
                                     f"{self.driver.current_url}{detail}; screenshot: {path}")
            time.sleep(poll)

    def click(self, what: str, find: Callable[[], Any], done: Callable[[], T | None] | None = None,
              timeout: float = 30, again_after: float | None = None) -> T | bool:
        """Click what ``find()`` returns once it is there and takes the click (a re-rendered or
        covered element is looked up again), then wait for ``done()`` (if given) and return it.
        With ``again_after``, click again when ``done()`` is still false that many seconds after
        the last click (for idempotent clicks only: never a toggle or a launch)."""
        clicked_at: float | None = None

        def step():
            nonlocal clicked_at
            if clicked_at is not None:
                if done is None:
                    return True
                result = done()
                if result or again_after is None or time.monotonic() - clicked_at < again_after:
                    return result
            element = find()
            if element:
                element.click()
                clicked_at = time.monotonic()
            return None

        return self.until(what, step, timeout)

    def xpath(self, expr: str, root=None) -> list:
        from selenium.webdriver.common.by import By

        return (root or self.driver).find_elements(By.XPATH, expr)

    def css(self, expr: str, root=None) -> list:
        from selenium.webdriver.common.by import By

        return (root or self.driver).find_elements(By.CSS_SELECTOR, expr)

    def button(self, text: str, root=None, prefix: bool = False):
        """The first displayed, enabled button whose text is ``text`` (or starts with it)."""
        for b in (root or self.driver).find_elements("tag name", "button"):
            label = " ".join(b.text.split())
            if (label.startswith(text) if prefix else label == text) and b.is_displayed() and b.is_enabled():
                return b
        return None
