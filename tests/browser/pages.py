"""Driving the explorer page in the browser: typing keys, opening views, waiting for DOM
text. Shared by the browser tests and scripts/explorer_screenshots.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT_S = 15


def wait(browser: Any, timeout: float = TIMEOUT_S) -> WebDriverWait[Any]:
    return WebDriverWait(browser, timeout)


def find(browser: Any, css: str) -> WebElement:
    """The element matching ``css`` once it is present."""
    return wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def text_of(browser: Any, css: str, contains: str) -> str:
    """The text of ``css`` once it contains ``contains``."""
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), contains))
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def error_text(browser: Any) -> str:
    box = browser.find_element(By.ID, "error")
    return "" if box.get_attribute("hidden") is not None else str(box.text)


def enter_keys(browser: Any, ledger: str = "", member_id: str = "", member: str = "") -> None:
    """Type the keys into the page's key bar and apply them."""
    for element_id, value in (
        ("ledger-key", ledger),
        ("member-id", member_id),
        ("member-key", member),
    ):
        field = find(browser, f"#{element_id}")
        field.clear()
        if value:
            field.send_keys(value)
    browser.find_element(By.ID, "save-keys").click()


def go(browser: Any, route: str) -> None:
    """Open a view by its hash route (``#/blocks``, ``#/block/3``, ...)."""
    browser.execute_script("location.hash = arguments[0]", route)


def screenshot(browser: Any, folder: Path | None, name: str) -> None:
    """Save ``explorer-<name>.png`` into ``folder`` (when screenshots are wanted)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(folder / f"explorer-{name}.png"))
