"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) for the
explorer tests, driven by selenium through ``/usr/bin/chromedriver`` so selenium-manager
never downloads a browser.

Outside CI a missing Chromium, driver or selenium skips the tests with the reason; with
``CI=true`` it fails them (scripts/test installs the Debian packages there).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER = os.environ.get("COALITION_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1280, 800)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)


def _chromium() -> str | None:
    found = os.environ.get("COALITION_CHROMIUM")
    if found:
        return found if os.access(found, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _chromium() is None:
        return "Chromium is not installed (apt-get install chromium chromium-driver)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return f"chromedriver is not at {CHROMEDRIVER} (apt-get install chromium-driver)"
    return None


@pytest.fixture(scope="session")
def browser_available() -> None:
    problem = _missing()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser tests must run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture
def browser(browser_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh headless Chromium (new profile) at 1280x800; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(_chromium())
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile: Path = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
