"""Headless Debian Chromium driven over the DevTools protocol (a WebSocket; `websockets` is already a dependency).

No WebDriver and no browser download: `apt-get install -y chromium` is all it needs. The browser runs in its own
process group on 127.0.0.1 with a throwaway profile, and is killed with that group when the block ends.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.waiting import wait_until

CHROMIUM = os.environ.get("K2_CHROMIUM", "/usr/bin/chromium")


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


class Browser:
    """One headless Chromium with one page. `evaluate()` runs JavaScript in it (awaiting promises)."""

    def __init__(self, width: int = 1600, height: int = 1000, *, offline: bool = False) -> None:
        """`offline`: no host name resolves but 127.0.0.1, so a page that needs anything from the internet fails
        as it would on a machine without network (`requests` still records what the page asked for)."""
        self.width, self.height = width, height
        self.offline = offline
        self._profile = Path(tempfile.mkdtemp(prefix="k2-chromium-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self.console: list[str] = []  # console messages and uncaught exceptions of the page
        self.requests: list[str] = []  # every URL the page requested (seen while a command was awaited)
        self._request_urls: dict[str, str] = {}  # DevTools request id -> URL
        self.blocked: dict[str, str] = {}  # URL -> why the browser refused to send it (e.g. "csp")

    def __enter__(self) -> Browser:
        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium not found: apt-get install -y chromium (or set K2_CHROMIUM)")
        self._proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                *(["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"] if self.offline else []),
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: renderer and GPU helpers go with it
        )
        try:
            port = self._devtools_port()
            pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(p for p in pages if p.get("type") == "page")
            # No keepalive pings: while a test waits on something else, CDP events fill the client's queue, it stops
            # reading, and a ping's answer would go unread (a "keepalive ping timeout" on a healthy browser).
            # Chromium is a child process on loopback: its death shows as a closed socket.
            self._ws = connect(
                page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10, ping_interval=None
            )
            self.call("Runtime.enable")
            self.call("Page.enable")
            self.call("Network.enable")
            # Overlay-free screenshots: a classic scrollbar would take 15 px off the layout and clip the right edge.
            self.call("Emulation.setScrollbarsHidden", {"hidden": True})
            self.set_viewport(self.width, self.height)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _devtools_port(self, timeout: float = 30) -> int:
        marker = self._profile / "DevToolsActivePort"

        def running() -> None:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with code {self._proc.returncode} at start")

        text = wait_until(
            lambda: marker.exists() and marker.read_text().strip(), timeout, "chromium's DevTools port", check=running
        )
        return int(text.split()[0])

    def __exit__(self, *_exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
            self._proc = None
        shutil.rmtree(self._profile, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        """Send one DevTools command and return its result (events met meanwhile are kept in `console`)."""
        assert self._ws is not None
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"{method}: no answer within {timeout}s")
            message = json.loads(self._ws.recv(timeout=remaining))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._note_event(message)

    def _note_event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            self.requests.append(url)
            self._request_urls[params.get("requestId", "")] = url
        elif method == "Network.loadingFailed" and params.get("blockedReason"):
            self.blocked[self._request_urls.get(params.get("requestId", ""), "")] = params["blockedReason"]
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")

    def set_viewport(self, width: int, height: int) -> None:
        """Lay the page out at `width` x `height` CSS pixels, as a window of that size would, and wait until it has."""
        self.width, self.height = width, height
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.wait_for(f"document.documentElement.clientWidth === {width}")
        # Resize observers (the charts' autoSize) run before the next frame is drawn: wait two frames.
        self.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The value of a JavaScript expression (a promise is awaited); page exceptions raise BrowserError."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.25) -> Any:
        """Poll `expression` until it is truthy; its value, or BrowserError with the last value after `timeout`."""
        last: list[Any] = [None]

        def value() -> Any:
            try:
                last[0] = self.evaluate(expression)
            except BrowserError:
                last[0] = None
            return last[0]

        def detail() -> str:
            return f"last value {last[0]!r}; page: {self.console}"

        return wait_until(value, timeout, expression, interval=interval, detail=detail)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, timeout=60)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
