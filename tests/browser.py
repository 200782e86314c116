"""Headless Chromium for the tests: a report page's check (does it load, show the table and
decode every image), and a small DevTools-protocol client to drive a live page (`Browser`)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


@dataclass(frozen=True)
class PageCheck:
    dom: str
    images_total: int
    images_loaded: int
    has_results_table: bool


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (Debian package `chromium`; .ci/run installs it)")


def load_page(page: Path) -> PageCheck:
    """Render `page` in headless Chromium and read back the DOM after the load event."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout

    def attr(name: str) -> int:
        match = re.search(rf'data-{name}="(\d+)"', dom)
        return int(match.group(1)) if match else -1

    return PageCheck(
        dom=dom,
        images_total=attr("images-total"),
        images_loaded=attr("images-loaded"),
        has_results_table='<table id="results">' in dom,
    )


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    JSON messages ended by NUL, read by the browser on fd 3 and written on fd 4), with one page.

    `call` sends a command to the page and returns its result; `evaluate` runs JavaScript in it
    (awaiting a promise) and returns the value. Use as a context manager.
    """

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        # Chromium's helper processes can still write here after the browser exits (a full
        # suite once failed its teardown on ENOTEMPTY): a leftover profile is harmless
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        to_browser, self._send_fd = os.pipe()
        self._recv_fd, from_browser = os.pipe()

        def pipes_on_3_and_4() -> None:  # in the child: above any fd number in the way, then down
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self._proc = subprocess.Popen(
            [
                chromium(),
                *[f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")],
                f"--user-data-dir={self._profile.name}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # Python's own fds are not inheritable; 3 and 4 are, by dup2
            preexec_fn=pipes_on_3_and_4,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        target = self._command("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self._command("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._send_fd, self._recv_fd):
            os.close(fd)
        self._profile.cleanup()

    def call(self, method: str, params: dict | None = None) -> dict:
        """A command to the page's session (Page.navigate, DOM.setFileInputFiles, ...)."""
        return self._command(method, params or {}, self._session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        reply = self.call(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"JavaScript error: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.1)
        raise AssertionError(f"still false after {self.timeout} s: {expression}")

    def _command(self, method: str, params: dict, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        while True:  # events and other replies are skipped
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._recv_fd], [], [], self.timeout)
            chunk = os.read(self._recv_fd, 1 << 20) if ready else b""
            if not chunk:
                raise AssertionError(f"Chromium did not answer (exit status {self._proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)
