"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium, for tests of pages people see.

`make install` installs both packages; a test that needs the browser calls `require_chromium()`,
which skips with the reason when /usr/bin/chromium is missing (never silently).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# No network beyond the page under test, no background services, a fresh profile each time.
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
    "--window-size=1400,1000",
)


def require_chromium() -> None:
    """Skip the calling test, saying why, when Debian's Chromium or its driver is not installed."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.skip(f"{path} is missing: install it with `make install` (apt-get install chromium chromium-driver)")


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium WebDriver with a new profile directory, quit and removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: object, timeout_s: float, condition: Callable[[Any], Any]) -> Any:
    """`WebDriverWait(...).until(condition)` that retries when the page re-renders an element it was reading
    (React apps such as Label Studio's and MLflow's replace nodes while they load: StaleElementReference)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout_s, ignored_exceptions=ignored).until(condition)  # type: ignore[arg-type]


def login_label_studio(driver: object, url: str, username: str, password: str, *, timeout_s: float = 60) -> None:
    """Log into Label Studio through its login form, as a person would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url.rstrip('/')}/user/login/")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, timeout_s)
    wait.until(ec.presence_of_element_located((By.NAME, "email"))).send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()  # type: ignore[attr-defined]
    wait.until(lambda d: "/user/login" not in d.current_url)
