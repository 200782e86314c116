"""Headless Chromium check of a report page: does it load, show the table and decode every image."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
