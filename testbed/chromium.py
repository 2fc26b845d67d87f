"""Headless Chromium (Debian's `chromium` package) driven over the DevTools
protocol, for the tests and benchmarks that need a real browser.

No Playwright or Selenium: their browser downloads cannot run here, and the
protocol is small. One websocket to the browser (aiohttp's client), flat
sessions per page. The browser cannot leave loopback: every proxied request
goes to a port where nothing listens, and every name but 127.0.0.1 and
localhost resolves to nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

LOOPBACK_ONLY_FLAGS = (
    "--proxy-server=127.0.0.1:1",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-pings",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium not found: scripts/setup.sh installs the Debian package")


class CdpError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat session; records every event it gets."""

    def __init__(self, browser: Browser, session_id: str, target_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.target_id = target_id
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future]] = []

    def _event(self, method: str, params: dict[str, Any]) -> None:
        self.events.append((method, params))
        for waiter in list(self._waiters):
            name, match, future = waiter
            if name == method and not future.done() and match(params):
                future.set_result(params)
                self._waiters.remove(waiter)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session_id)

    def expect(
        self, method: str, match: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> asyncio.Future:
        """A future for the next `method` event that matches; create it before
        triggering the event."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append((method, match, future))
        return future

    async def enable(self) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable")

    async def navigate(self, url: str, wait_seconds: float = 60) -> float:
        """Loads url and waits for the load event; returns seconds taken."""
        loaded = self.expect("Page.loadEventFired")
        start = time.perf_counter()
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigate {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, wait_seconds)
        return time.perf_counter() - start

    async def evaluate(self, expression: str, wait_seconds: float = 60) -> Any:
        result = await asyncio.wait_for(
            self.send(
                "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
            ),
            wait_seconds,
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, wait_seconds: float = 30, every: float = 0.05) -> Any:
        """The first truthy value of a JS expression."""
        deadline = time.monotonic() + wait_seconds
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression[:80]} stayed {value!r}")
            await asyncio.sleep(every)

    async def screenshot(self, full_page: bool = True) -> bytes:
        """A PNG of the page; full_page: all of it (up to 16000 px high)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": min(size["height"], 16000),
                "scale": 1,
            }
        data = await self.send("Page.captureScreenshot", **params)
        return base64.b64decode(data["data"])

    def console_errors(self) -> list[str]:
        """Console errors and warnings, log entries of level error or
        warning (CSP violations, failed loads) and uncaught exceptions."""
        out = []
        for method, p in self.events:
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {p['args']}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
        return out

    def requested_urls(self) -> list[str]:
        return [p["request"]["url"] for m, p in self.events if m == "Network.requestWillBeSent"]


class Browser:
    """`async with Browser() as b: page = await b.new_page()`."""

    def __init__(self, width: int = 1366, height: int = 900, log: Path | None = None) -> None:
        self.width, self.height = width, height
        self._log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._pages: dict[str, Page] = {}
        self.process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        profile = Path(self._profile.name)
        argv = [
            chromium_binary(),
            "--headless",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}",
            "--disable-gpu",
            f"--window-size={self.width},{self.height}",
            *LOOPBACK_ONLY_FLAGS,
            "about:blank",
        ]
        if os.geteuid() == 0:
            # Chromium's sandbox refuses to run as root.
            argv.insert(1, "--no-sandbox")
        self.process = self._launch(argv)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("chromium wrote no DevToolsActivePort in 60 s")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            f"ws://127.0.0.1:{port}{path}", max_msg_size=0, autoping=False
        )
        self._reader = asyncio.create_task(self._read())
        return self

    def _launch(self, argv: list[str]) -> subprocess.Popen[bytes]:
        out = self._log.open("ab") if self._log else subprocess.DEVNULL
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = message.json()
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CdpError(str(data["error"])))
                    else:
                        future.set_result(data.get("result", {}))
            elif data.get("sessionId") in self._pages:
                self._pages[data["sessionId"]]._event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the connection"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_json(message)
        return await future

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"], target["targetId"])
        self._pages[page.session_id] = page
        await page.enable()
        return page

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 10)
        with contextlib.suppress(Exception):
            await self._ws.close()
        await self._http.close()
        self._reader.cancel()
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Its own process group (start_new_session): the renderers too.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._profile.cleanup()
