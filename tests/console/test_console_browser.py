"""The web console as its user sees it, in a real headless Chromium (Debian's, driven by Selenium,
unprivileged and sandboxed: tests/support/browser.py), against a whole install: `agentmx setup`,
the milter and serve running as their systemd units say (serve as its unprivileged user), mail
arriving by SMTP into the install's Postfix (tests/support/install.py).

Signing in, a message that arrived by SMTP with its DKIM verdict explained, a hostile HTML
message (its script not run, its remote image not fetched until asked), another key's messages
out of sight, a wrong key, keyboard use and labels, the sign-in rate limit (last: it locks this
module's browser out). Every page visited is kept as a screenshot (artifacts/, see conftest.py).
"""
from __future__ import annotations

import pwd
import secrets
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from selenium.common.exceptions import NoSuchElementException, NoSuchFrameException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from e2e_helpers import message
from support.install import api_key
from support.postfix import wait_for

from .conftest import AGENT, OWNER, OWNER_KEY

NAV = ("Inbox", "Sends", "Deliveries", "Agent", "Suppressions", "Blocks", "Domains", "Queue", "Stats")


def _subject(what: str) -> str:
    return f"{what} {secrets.token_hex(4)}"


def test_the_browser_runs_unprivileged_and_sandboxed(console, browser):
    """The harness itself: no browser process is root, and the renderers (which parse what the
    pages and the mail hold) run in Chromium's sandbox: seccomp-bpf and a user namespace of their
    own. A container that refused user namespaces would fail here, not quietly run unsandboxed."""
    console.open("/console/signin")
    procs = browser.sandbox_state()
    uid = browser.user_ids()[0]
    assert uid != 0 and {p.uid for p in procs.values()} == {uid}, procs
    renderers = [p for p in procs.values() if p.kind == "renderer"]
    driver_ns = next(p.userns for p in procs.values() if p.kind == "chromedriver")
    assert renderers and all(p.seccomp == 2 and p.userns != driver_ns for p in renderers), procs


def test_sign_in_with_the_agents_key_shows_the_inbox(console, shot):
    console.open("/console/inbox")
    assert console.path() == "/console/signin"          # no session: sent to sign in (303)
    assert console.find("#key").get_attribute("type") == "password"
    shot("signin")
    console.sign_in(api_key(console.inst))
    assert console.path() == "/console/inbox" and console.status() == 200
    assert console.find("h1").text.strip()
    # the nav: Inbox, and each page built so far (of NAV), every link to a page that answers
    links = {a.text.strip(): a.get_attribute("href") for a in console.find_all("#nav a")}
    assert "Inbox" in links and set(links) <= set(NAV), links
    assert console.find("#main") and console.find("#messages") and console.find("#signout")
    cookie = console.session_cookie()
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert not cookie["secure"]            # plain HTTP here: Secure only behind TLS
    for form in console.find_all("form[method=post], form[method=POST]"):
        assert form.find_elements(By.CSS_SELECTOR, 'input[type=hidden][name="csrf"]'), form.get_attribute("outerHTML")
    shot("inbox")
    for name, href in links.items():
        console.driver.get(href)
        assert console.status() == 200 and console.find("#main h1").text.strip(), name
        shot(f"nav-{name.lower()}")
    console.open("/console/inbox")
    # signing out ends the session: the inbox sends one back to sign in
    console.submit(console.find("#signout"))
    console.open("/console/inbox")
    assert console.path() == "/console/signin"


def test_a_message_by_smtp_is_listed_and_shows_dkim_pass_explained(signed_in, shot):
    subject = _subject("Your invoice")
    event = signed_in.receive(subject)
    assert event["auth"]["dkim"] == "pass"
    row = signed_in.wait_for_row(event["id"])
    assert subject in row.text and "unread" in row.get_attribute("class").split()
    shot("inbox-new-message")
    link = row.find_element(By.CSS_SELECTOR, f'a[href$="/console/messages/{event["id"]}"]')
    signed_in.submit(link)
    assert signed_in.path() == f"/console/messages/{event['id']}"
    assert subject in signed_in.find("h1").text or subject in signed_in.find("#headers").text
    auth = signed_in.find("#auth")
    verdicts = {v.text.strip() for v in auth.find_elements(By.CSS_SELECTOR, ".verdict.pass")}
    assert {"dkim=pass", "spf=pass", "dmarc=pass"} <= verdicts, auth.text
    # explained: the paragraph beside the DKIM verdict (in its nearest container that has one)
    # says whose signature passed (d=remote.test)
    dkim = auth.find_element(By.XPATH, ".//*[contains(@class, 'verdict') and normalize-space() = 'dkim=pass']")
    explained = [p.text for p in dkim.find_elements(By.XPATH, "ancestor::*[.//p][1]//p")]
    assert any("remote.test" in text and len(text) > 20 for text in explained), (explained, auth.text)
    assert "318273" in signed_in.find("#text").text
    assert "alice@remote.test" in signed_in.find("#headers").text
    raw = signed_in.find("#raw").get_attribute("href")
    assert raw.startswith(signed_in.base + "/console/") and event["id"] in raw
    shot("message")


def test_a_new_message_appears_in_the_open_inbox_without_a_reload(signed_in):
    signed_in.open("/console/inbox")
    signed_in.driver.execute_script("window.amxSamePage = 'yes';")      # gone if the page reloads
    event = signed_in.receive(_subject("Live"))
    row = wait_for(lambda: signed_in.row(event["id"]), timeout=30, interval=0.25, what="the live row")
    assert event["subject"] in row.text
    assert signed_in.driver.execute_script("return window.amxSamePage") == "yes"


# --- a hostile HTML message ------------------------------------------------------------------------

class Pixel:
    """An HTTP server standing in for a tracker: records every request it gets."""

    def __init__(self):
        self.hits: list[str] = []
        pixel = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                pixel.hits.append(self.path)
                body = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                                     "1f15c4890000000d49444154789c6360000002000005000157a0fb0000"
                                     "000049454e44ae426082")
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pixel():
    p = Pixel()
    yield p
    p.stop()


# Markers built at run time ('amx-' + 'ran'): in the DOM only if a script or handler ran (the page
# source holds the script's text, never the joined word).
HOSTILE = """<html><head><title>Invoice</title></head><body>
<p id="greeting">Hello from the hostile message</p>
<script>document.title = 'PW' + 'NED'; window.amxRan = 1; parent.amxRan = 1;
  var b = document.createElement('b'); b.id = 'amx-' + 'ran'; document.body.appendChild(b);</script>
<img id="tracker" src="http://127.0.0.1:{port}/pixel.png?m={tag}" alt="tracker" width="1" height="1">
<img src="broken-{tag}" onerror="var b = document.createElement('b'); b.id = 'amx-' + 'onerror';
  document.body.appendChild(b); window.amxRan = 2;">
</iframe><script>var b = document.createElement('b'); b.id = 'amx-' + 'escaped'; document.body.appendChild(b);</script>
</body></html>"""


def _hostile_message(subject: str, port: int, tag: str) -> bytes:
    return message("Alice <alice@remote.test>", AGENT, subject=subject, html=HOSTILE.format(port=port, tag=tag),
                   body="Hello from the hostile message (text part).\n")


def _no_script_ran(driver) -> list[str]:
    """What a script or handler of the message left in the current document (empty: nothing)."""
    found = [m for m in ("amx-ran", "amx-onerror", "amx-escaped") if driver.find_elements(By.ID, m)]
    ran = driver.execute_script("return window.amxRan === undefined ? null : String(window.amxRan)")
    return found + ([f"window.amxRan={ran}"] if ran is not None else [])


def _frame_text(console) -> bool:
    """Whether the frame shows the hostile message (False while a page or the frame reloads)."""
    try:
        console.driver.switch_to.frame(console.find("#html-frame"))
        return "Hello from the hostile message" in console.driver.page_source
    except (StaleElementReferenceException, NoSuchFrameException, NoSuchElementException):
        return False
    finally:
        console.driver.switch_to.default_content()


def test_hostile_html_runs_no_script_and_loads_no_remote_image_until_asked(signed_in, pixel, shot):
    subject, tag = _subject("Hostile invoice"), secrets.token_hex(4)
    raw = _hostile_message(subject, pixel.port, tag)
    event = signed_in.receive(subject, raw=raw)
    signed_in.wait_for_row(event["id"])
    signed_in.open(f"/console/messages/{event['id']}")
    driver = signed_in.driver
    frame = signed_in.find("#html #html-frame")
    assert frame.get_attribute("sandbox") is not None
    assert "allow-scripts" not in (frame.get_attribute("sandbox") or "")
    assert frame.get_attribute("src").endswith(f"/console/messages/{event['id']}/html")
    driver.switch_to.frame(frame)
    try:
        wait_for(lambda: "Hello from the hostile message" in driver.page_source, timeout=15,
                 what="the message's HTML in the frame")
        # "complete": every image of the frame loaded or failed: a fetched tracker would be counted
        # by now (the server records the request before it answers it)
        wait_for(lambda: driver.execute_script("return document.readyState") == "complete", timeout=15,
                 what="the frame's images")
        assert _no_script_ran(driver) == []
    finally:
        driver.switch_to.default_content()
    assert _no_script_ran(driver) == [] and driver.title != "PWNED"
    assert pixel.hits == [], pixel.hits
    driver.execute_script("document.getElementById('html').scrollIntoView()")
    shot("message-hostile")

    # the user asks for remote images: now (and only now) the tracker is fetched; scripts still not
    signed_in.find("#load-remote").click()          # a link (a new page) or a button (the frame reloaded)
    wait_for(lambda: any(f"m={tag}" in h for h in pixel.hits), timeout=20, what="the remote image, once asked for")
    wait_for(lambda: _frame_text(signed_in), timeout=15, what="the frame again")
    driver.switch_to.frame(signed_in.find("#html-frame"))
    try:
        assert _no_script_ran(driver) == []
    finally:
        driver.switch_to.default_content()
    assert _no_script_ran(driver) == [] and driver.title != "PWNED"
    driver.execute_script("document.getElementById('html').scrollIntoView()")
    shot("message-hostile-remote-images")


# --- scope ------------------------------------------------------------------------------------------

def test_another_keys_messages_are_invisible(console, shot):
    """The owner's key allows owner@ only: the agent's mail (agent@) is not listed for it, nor
    opened by its id; the owner's own mail is. (Setup's key allows all of @agents.test.)"""
    agents = console.receive(_subject("For the agent"))
    owners = console.receive(_subject("For the owner"), to=OWNER)
    console.resume(OWNER_KEY)
    console.wait_for_row(owners["id"])
    assert console.row(agents["id"]) is None and agents["subject"] not in console.find("#messages").text
    console.open(f"/console/inbox?q={agents['subject'].split()[-1]}")    # nor found by a search
    assert console.row(agents["id"]) is None
    shot("inbox-second-key")
    console.open(f"/console/messages/{agents['id']}")
    assert console.status() in (403, 404) and agents["subject"] not in console.driver.page_source
    console.open(f"/console/messages/{agents['id']}/html")
    assert console.status() in (403, 404)
    # the wide key sees both (it allows the whole domain)
    console.resume(api_key(console.inst))
    console.wait_for_row(agents["id"])
    assert console.row(owners["id"]) is not None
    console.open(f"/console/inbox?q={agents['subject'].split()[-1]}")    # the same search finds it here
    assert console.row(agents["id"]) is not None


def test_the_admin_key_sees_every_keys_messages(console, shot):
    """[server] admin_key_file (setup writes admin.key): the mail of every key, the owner's too."""
    agents = console.receive(_subject("Agent's, for the admin"))
    owners = console.receive(_subject("Owner's, for the admin"), to=OWNER)
    admin_key = console.inst["etc"] / "admin.key"              # as setup left it: agentmx's alone
    st = admin_key.stat()
    assert (pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)) == ("agentmx", 0o400)
    console.resume(admin_key.read_text().strip())
    assert "admin" in console.find("#nav ~ form .who, .who").text
    console.wait_for_row(agents["id"])
    console.wait_for_row(owners["id"])
    shot("inbox-admin")


# --- keyboard and labels ----------------------------------------------------------------------------

def _from_the_top(console) -> None:
    """Puts the keyboard's starting point at the top of the page, as a user clicking its header (or
    arriving without autofocus) would: the next Tab goes to the first control after it."""
    console.find("header .brand").click()


def _tab_to(console, element_id: str, limit: int = 25) -> int:
    """Presses Tab until the element with that id has the focus; how many presses it took."""
    for n in range(1, limit + 1):
        console.driver.switch_to.active_element.send_keys(Keys.TAB)
        if console.driver.switch_to.active_element.get_attribute("id") == element_id:
            return n
    raise AssertionError(f"#{element_id} not reached in {limit} Tabs "
                         f"(focus on {console.driver.switch_to.active_element.get_attribute('outerHTML')[:200]})")


def test_the_keyboard_alone_signs_in(console, shot):
    console.open("/console/signin")
    assert console.driver.switch_to.active_element.get_attribute("id") == "key"      # autofocus
    _from_the_top(console)
    assert _tab_to(console, "key", limit=2) <= 2        # nothing focusable before it but the skip link
    console.driver.switch_to.active_element.send_keys(api_key(console.inst))
    _tab_to(console, "signin", limit=3)            # the button right after the field
    old = console.find("html")
    console.driver.switch_to.active_element.send_keys(Keys.ENTER)
    console.wait_new_page(old)
    assert console.path() == "/console/inbox"
    # and Enter in the field submits the form too
    console.driver.delete_all_cookies()
    console.open("/console/signin")
    _from_the_top(console)
    _tab_to(console, "key", limit=2)
    old = console.find("html")
    console.driver.switch_to.active_element.send_keys(api_key(console.inst), Keys.ENTER)
    console.wait_new_page(old)
    assert console.path() == "/console/inbox"


def _labelled(console, element) -> str:
    """The control's accessible name (Chromium's own computation), given that it comes from a
    <label for>, aria-label or aria-labelledby (or a button's text), not a placeholder."""
    name = (element.accessible_name or "").strip()
    how = console.driver.execute_script("""
        const el = arguments[0];
        if (el.getAttribute('aria-label')) return 'aria-label';
        if (el.getAttribute('aria-labelledby')) return 'aria-labelledby';
        if (el.labels && el.labels.length && el.labels[0].textContent.trim()) return 'label';
        if (el.tagName === 'BUTTON' && el.textContent.trim()) return 'text';
        if (el.tagName === 'INPUT' && ['submit', 'button'].includes(el.type) && el.value) return 'value';
        return null;""", element)
    assert name and how, f"no label: {element.get_attribute('outerHTML')[:300]}"
    return name


def test_the_main_controls_are_labelled(console, shot):
    console.open("/console/signin")
    assert _labelled(console, console.find("#key")) == "API key"
    _labelled(console, console.find("#signin"))
    console.resume(api_key(console.inst))
    assert _labelled(console, console.find("#q")) == "Search"
    for control in console.find_all("#signout, #filters input:not([type=hidden]), #filters select, #filters button"):
        _labelled(console, control)


def test_the_retry_button_is_labelled(signed_in, shot):
    event = signed_in.receive(_subject("A delivery"))
    signed_in.open(f"/console/deliveries/{event['id']}")
    assert signed_in.status() == 200
    _labelled(signed_in, signed_in.find("#retry"))
    shot("delivery")


def test_the_suppression_form_is_labelled(signed_in, shot):
    signed_in.open("/console/suppressions")
    assert signed_in.status() == 200
    _labelled(signed_in, signed_in.find("#suppress #address"))
    _labelled(signed_in, signed_in.find("#suppress #add"))
    shot("suppressions")


# --- refusals (last: the rate limit locks this module's browser out of signing in) --------------

def test_a_wrong_key_gets_an_error_and_no_session(console, shot):
    console.sign_in("amx_" + secrets.token_hex(20))
    assert console.path() == "/console/signin" and console.status() == 401
    assert console.find(".error").text.strip()
    assert console.session_cookie() is None
    shot("signin-wrong-key")
    console.open("/console/inbox")
    assert console.path() == "/console/signin"


def test_sign_in_is_rate_limited(console, shot):
    statuses = []
    for _ in range(40):
        console.sign_in("amx_" + secrets.token_hex(20))
        statuses.append(console.status())
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) <= {401}, statuses
    error = console.find(".error").text
    assert "too many" in error.lower(), error
    shot("signin-rate-limited")
    # locked out means every attempt, the right key's too: guesses are not checked meanwhile
    console.sign_in(api_key(console.inst))
    assert console.status() == 429 and console.session_cookie() is None
