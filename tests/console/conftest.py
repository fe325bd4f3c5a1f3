"""The web console's browser tests: fixtures every console test module shares.

    def test_something(signed_in, shot):           # a browser signed in with the agent's key
        signed_in.open("/console/inbox")
        event = signed_in.receive("A subject")        # into the install's Postfix by SMTP, stored
        row = signed_in.wait_for_row(event["id"])     # the inbox reloaded until its row is there
        shot("inbox")                                  # artifacts/inbox.png

- `browser` (this package): one headless Chromium, unprivileged, sandboxed (tests/support/browser.py).
- `console_install` (module): a whole install (tests/support/install.py: setup, the milter and
  serve as their units say, serve as its unprivileged user) with a second API key, OWNER_KEY, whose
  allow is OWNER only. One per module: a module's sign-in failures (the rate limit) stay its own.
- `console`: a Console on that install with a fresh browser session (cookies cleared);
  `signed_in`: the same, signed in with the agent's key (setup's, which allows @agents.test), on
  the inbox. serve counts every sign-in, good or bad, against a limit (10 per address per 5
  minutes): signed_in and Console.resume(key) reuse the module's session for a key, so only the
  tests about signing in use the form.
- `shot(name)`: a PNG of the current page into the artifacts folder ($AGENTMX_ARTIFACTS, default
  tests/artifacts/; gitignored). A failed test that used the browser leaves
  FAILED-<test>.png and .html (the page source) there.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By

from conftest import ROOT
from support.browser import Browser
from support.install import DOMAIN, api_key, inbound, installed
from support.postfix import wait_for

ARTIFACTS = Path(os.environ.get("AGENTMX_ARTIFACTS") or ROOT / "tests" / "artifacts")
AGENT = f"agent@{DOMAIN}"            # setup's key allows @agents.test: every address of the domain
OWNER = f"owner@{DOMAIN}"            # the second key allows only this address
OWNER_KEY = "amx_owner_" + secrets.token_hex(16)
SECOND_KEY = f'[[api_keys]]\nname = "owner"\nkey = "{OWNER_KEY}"\nallow = ["{OWNER}"]\n'


@pytest.fixture(scope="package")        # tests/console/: stopped once its last test is done
def browser():
    for stale in (*ARTIFACTS.glob("FAILED-*.png"), *ARTIFACTS.glob("FAILED-*.html")):   # an earlier run's
        stale.unlink()
    b = Browser(ARTIFACTS).start()
    try:
        yield b
    finally:
        b.stop()          # raises if a process of it survived SIGKILL


@pytest.fixture(scope="module")
def console_install(dns_server):
    with installed(dns_server, extra_config=SECOND_KEY, prefix="c") as inst:
        yield inst


class Console:
    """The console of one install, seen through the browser."""

    def __init__(self, inst: dict, browser: Browser, sessions: dict):
        self.inst, self.browser, self.driver = inst, browser, browser.driver
        self.base = inst["api"]
        self.sessions = sessions          # key -> its session cookie, for this module's install

    def resume(self, key: str) -> None:
        """Signed in with `key`, on the inbox: this module's session for that key when there is one
        (serve counts every sign-in against the limit, LIMIT a window: a user stays signed in),
        else by the sign-in form."""
        self.driver.delete_all_cookies()
        if (cookie := self.sessions.get(key)) is not None:
            self.driver.add_cookie(cookie)
            self.open("/console/inbox")
            if self.path() == "/console/inbox":
                return
            self.driver.delete_all_cookies()
        self.sign_in(key)
        assert self.path() == "/console/inbox", self.driver.page_source[:2000]
        cookie = self.session_cookie()
        self.sessions[key] = {k: v for k, v in cookie.items() if k != "domain"}     # the page's host

    def url(self, path: str) -> str:
        return self.base + path

    def open(self, path: str) -> None:
        self.driver.get(self.url(path))

    def path(self) -> str:
        """The current page's path, without its query (/console/signin?next=... is /console/signin)."""
        url = self.driver.current_url.partition("#")[0].partition("?")[0]
        return url[len(self.base):] if url.startswith(self.base) else url

    def status(self) -> int | None:
        """The HTTP status of the page the browser shows (its Navigation Timing entry)."""
        return self.driver.execute_script(
            "const e = performance.getEntriesByType('navigation')[0]; return e ? e.responseStatus : null;")

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def sign_in(self, key: str) -> None:
        """Types `key` into the sign-in form and submits it; wherever that leads."""
        self.open("/console/signin")
        field = self.find("#key")
        field.clear()
        field.send_keys(key)
        self.submit(self.find("#signin"))

    def submit(self, button) -> None:
        """Clicks a form's button and waits for the page it leads to."""
        old = self.find("html")
        button.click()
        self.wait_new_page(old)

    def wait_new_page(self, old) -> None:
        """Until `old` (an element of the page before) is gone and the new page is loaded."""
        def loaded():
            try:
                old.tag_name  # noqa: B018  (reading it raises once the page is gone)
                return False
            except StaleElementReferenceException:
                pass
            except WebDriverException as exc:    # Chromium's word for a node of a document since replaced
                if "does not belong to the document" not in str(exc):
                    raise
            return self.driver.execute_script("return document.readyState") == "complete"
        wait_for(loaded, timeout=30, interval=0.1, what=f"the next page (at {self.driver.current_url})")

    def session_cookie(self):
        return self.driver.get_cookie("agentmx_console")

    def receive(self, subject: str, to: str = AGENT, **kw) -> dict:
        """A DKIM-signed message from alice@remote.test into the install's Postfix; its event once
        stored and delivered (tests/support/install.py: inbound)."""
        return inbound(self.inst, subject, to=to, **kw)

    def row(self, message_id: str):
        rows = self.find_all(f'#messages tr[data-id="{message_id}"]')
        return rows[0] if rows else None

    def wait_for_row(self, message_id: str, path: str = "/console/inbox", timeout: float = 30):
        """The inbox row of a message, the page reloaded until it is there."""
        def look():
            self.open(path)
            return self.row(message_id)
        return wait_for(look, timeout=timeout, interval=0.5, what=f"{message_id} in {path}")


@pytest.fixture
def inst(console_install, dns_server):
    dns_server.set_zone(console_install["zone"])      # other modules' tests change the zone
    return console_install


@pytest.fixture(scope="module")
def _sessions(console_install) -> dict:
    return {}


@pytest.fixture
def console(inst, browser, _sessions) -> Console:
    browser.driver.get(inst["api"] + "/console/signin")    # cookies are per site: clear this one's
    browser.driver.delete_all_cookies()
    return Console(inst, browser, _sessions)


@pytest.fixture
def signed_in(console) -> Console:
    console.resume(api_key(console.inst))
    return console


@pytest.fixture
def shot(browser):
    return browser.shot


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _keep_the_page_on_failure(request):
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "browser" not in request.fixturenames:
        return
    browser = request.getfixturevalue("browser")
    try:
        saved = browser.keep_page("FAILED-" + request.node.nodeid.rpartition("::")[2])
    except WebDriverException as exc:         # a dead browser: the failure itself says more
        saved = [f"(no screenshot: {exc.msg})"]
    print("kept:", *saved)
