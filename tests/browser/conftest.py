"""Browser tests: a real Chromium, driven by Playwright, against pytest-django's live server.

The suite's settings have neither ``django.contrib.staticfiles`` nor ``STATIC_URL``. The live
server serves ``STATIC_ROOT`` at ``STATIC_URL`` (read when it starts), so it starts with
``STATIC_URL`` set, and each browser test points ``STATIC_ROOT`` at the admin's own files: the
admin is styled as in production, which is what makes "fits at 1280 px" measurable.

Debian's Chromium is used (``apt-get install chromium``; ``DURABLY_CHROMIUM`` names another
executable); Playwright never downloads a browser here. Without Chromium or Playwright the tests
skip with the reason, unless ``DURABLY_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes that
a failure. ``DURABLY_WRITE_SCREENSHOTS=1`` makes the tests that take the documentation's
screenshots write them to ``docs/images/``; otherwise no committed file is touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import django.contrib.admin
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

CHROMIUM = os.environ.get("DURABLY_CHROMIUM", "/usr/bin/chromium")
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
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
"""A common laptop screen: what the admin's run list must fit."""
TIMEOUT_MS = 10_000
"""Playwright's deadline for each wait (a page to load, an element to appear)."""
PASSWORD = "a-browser-test-password"  # noqa: S105
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
STATIC_URL = "/static/"
ADMIN_STATIC = Path(django.contrib.admin.__file__).resolve().parent / "static"


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'django-durably[test]')"
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DURABLY_CHROMIUM)"
    return None


BROWSER_SKIP_REASON = _browser_missing()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module.

    Playwright's synchronous API runs an event loop in this thread for as long as it is started,
    and Django refuses ORM calls from a thread with a running loop (SynchronousOnlyOperation),
    although nothing here is asynchronous: the tests' own queries and the database flush between
    them need ``DJANGO_ALLOW_ASYNC_UNSAFE`` while the browser is up, and only then.
    """
    if BROWSER_SKIP_REASON is not None:
        if os.environ.get("DURABLY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DURABLY_REQUIRE_BROWSER=1 but {BROWSER_SKIP_REASON}")
        pytest.skip(BROWSER_SKIP_REASON)
    from playwright.sync_api import sync_playwright

    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture
def expect(browser: Browser) -> Any:
    """Playwright's ``expect`` (assertions that wait), imported once the browser is known to be
    there, so that this module loads without Playwright installed."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


@pytest.fixture(scope="session")
def _static_url_while_starting() -> Iterator[str | None]:
    """``STATIC_URL`` set for the live server to read as it starts; yields the suite's value."""
    from django.conf import settings

    before = settings.STATIC_URL
    settings.STATIC_URL = STATIC_URL
    try:
        yield before
    finally:
        settings.STATIC_URL = before


@pytest.fixture(scope="session")
def live_server(_static_url_while_starting: str | None, live_server: Any) -> Any:
    """pytest-django's live server, started with ``STATIC_URL`` set (the fixture before it in the
    arguments sets it), and the suite's value back for every other test."""
    from django.conf import settings

    settings.STATIC_URL = _static_url_while_starting
    return live_server


@pytest.fixture(autouse=True)
def _served_with_styles(settings: Any, db_alias: str) -> str:
    """The admin with its CSS and JavaScript, on the database under test, with a fast password
    hasher (users log in through the real login page)."""
    settings.STATIC_URL = STATIC_URL
    settings.STATIC_ROOT = str(ADMIN_STATIC)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return db_alias


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) at 1280 x 800, in English and UTC."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def log_in(page: Page, live_server: Any) -> Callable[[Any], Page]:
    """``log_in(user)``: sign ``user`` in through the admin's login page; returns the page."""

    def sign_in(user: Any) -> Page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")
        return page

    return sign_in


@pytest.fixture
def superuser(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", PASSWORD)


@pytest.fixture
def on_call(django_user_model: Any) -> Any:
    """A staff user who may view runs and cancel them, nothing more."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("oncall", password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="durably", codename__in=["view_run", "cancel_run"]
        )
    )
    return user


@pytest.fixture
def screenshot() -> Callable[[Page, str], Path | None]:
    """``screenshot(page, "admin-run-list.png", full_page=...)``: written to ``docs/images/``
    only when ``DURABLY_WRITE_SCREENSHOTS=1``."""

    def take(page: Page, name: str, *, full_page: bool = False) -> Path | None:
        if os.environ.get("DURABLY_WRITE_SCREENSHOTS") != "1":
            return None
        path = SCREENSHOTS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take
