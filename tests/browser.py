"""Debian's Chromium driven by Playwright, as every browser test launches it (platform-notes.md)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Headless, and no attempts to reach the internet (this machine has none).
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


@contextmanager
def chromium() -> Iterator[Browser]:
    """A launched browser; fails (never skips) when Chromium is missing, naming the fix."""
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError(
            f"{CHROMIUM} is missing: `make install` installs it when run as root (apt chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
