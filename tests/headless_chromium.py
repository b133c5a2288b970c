"""Debian's Chromium driven by Playwright, for the tests that look at pages in a real browser
(.ci/run installs it; Playwright's own browser download cannot reach its server here)."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# README's "Tests" says the same: how to get the browser these tests need.
GET_CHROMIUM = "sudo apt-get install chromium"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason=f"Chromium not installed: `{GET_CHROMIUM}` (Debian, Ubuntu), or put a chromium or "
    "chromium-browser on PATH; .ci/run installs it (README: Tests)",
)
# Headless in a container, and quiet: nothing reaches for the network on its own.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def launch(playwright):
    """A headless Chromium from a started `sync_playwright()`."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
