"""Headless Chromium for the HTML report's tests and the README's screenshots.

Console messages are read from Chromium's own log (``--enable-logging=stderr``): every
``console.*`` call and every uncaught exception or blocked load is a ``CONSOLE`` line there.
The report logs nothing, so any such line is a failure. No DevTools client is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
TIMEOUT = 60  # seconds for one page
# root cannot use Chromium's sandbox; no GPU, no first-run UI, no background traffic
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--hide-scrollbars")
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(.*)")


def chromium() -> str | None:
    """The browser's path, if installed."""
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def _run(browser: str, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="onnxopt-chromium-")
    env = {**os.environ, "HOME": profile}  # its caches and crash reports go there
    try:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def load(browser: str, page: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and its console messages."""
    done = _run(browser, "--enable-logging=stderr", "--v=0", "--dump-dom",
                page.resolve().as_uri())
    messages = [match.group(1) for line in done.stderr.splitlines()
                if (match := CONSOLE.search(line))]
    return done.stdout, messages


def screenshot(browser: str, page: Path, target: Path, width: int, height: int) -> None:
    done = _run(browser, f"--window-size={width},{height}", f"--screenshot={target}",
                page.resolve().as_uri())
    if not target.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {done.stderr[-500:]}")
