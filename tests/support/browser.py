"""A real headless Chromium for the web console's tests: Debian's `chromium`, driven by Selenium through
Debian's /usr/bin/chromedriver, run as an unprivileged user with the browser's own sandbox on.

    browser = Browser(artifacts_dir).start()
    browser.driver.get(url)          # a selenium WebDriver
    browser.shot("inbox")            # artifacts_dir/inbox.png
    browser.stop()                   # quit, then the whole process group killed; nothing left behind

How it runs (and why):
- chromedriver (and so chromium, its child) runs as USER (a system user made here if missing, no
  login, no home) through setpriv: no capabilities, no groups, in a session of its own, with a clean
  environment whose HOME, XDG dirs and the profile (--user-data-dir) are a private 0700 temp folder.
  Not root: a browser parsing hostile mail has no business with root's files, and Chromium refuses
  to start its sandbox as root anyway ("Running as root without --no-sandbox is not supported").
- The sandbox is ON (no --no-sandbox): Debian's chromium has no setuid helper and sandboxes through
  unprivileged user namespaces, which this container allows (checked: chromium starts as `nobody`
  without --no-sandbox, and its renderers run under seccomp-bpf: `Seccomp: 2` in /proc/<pid>/status;
  sandbox_state() reports it and the console's tests assert it).
- Selenium Manager never runs (it would try to download a driver: no internet): we start
  chromedriver ourselves (setpriv cannot sit behind selenium's Service, which puts --port first)
  and connect with webdriver.Remote, with binary_location set to the system chromium. SE_OFFLINE
  is set too, belt and braces.
- Teardown: driver.quit(), then SIGTERM/SIGKILL to chromedriver's process group and to every
  process of its session and below it (collected before the kill: orphans lose their parent).
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

from . import reaper
from .postfix import free_tcp_port, wait_for

USER = "agentmx-browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 900

os.environ.setdefault("SE_OFFLINE", "true")      # selenium: never look for (or fetch) drivers or browsers


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """The browser's user: a system user of its own (so that `pgrep -u agentmx-browser` finds exactly
    the browsers of these tests, and the browser shares no files with the services under test)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--user-group", "--home-dir", "/nonexistent",
                               "--no-create-home", "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
        try:
            return pwd.getpwnam(name)          # made, or by another test run at the same moment
        except KeyError:
            raise RuntimeError(f"useradd {name}: {made.stderr}") from None


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, session) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()        # after "pid (comm) "
    return int(fields[1]), int(fields[2]), int(fields[3])


def processes_of(leader: int) -> set[int]:
    """Every live process of `leader`'s session or process group, and every descendant of those."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = st
    found = {pid for pid, (_, pgid, sid) in table.items() if leader in (pgid, sid)}
    if leader in table:
        found.add(leader)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


class Proc(NamedTuple):
    uid: int
    kind: str          # "chromedriver", "chromium" (the browser), or chromium's --type: renderer, zygote, ...
    seccomp: int       # /proc/<pid>/status Seccomp: 0 none, 2 a seccomp-bpf filter
    userns: str        # the user namespace ("user:[4026531837]")


class Browser:
    def __init__(self, artifacts: Path, user: str = USER, width: int = WIDTH, height: int = HEIGHT):
        self.artifacts = Path(artifacts)
        self.user, self.width, self.height = user, width, height
        self.proc: subprocess.Popen | None = None
        self.driver = None
        self.home: Path | None = None

    # --- life -----------------------------------------------------------------------------------

    def start(self) -> "Browser":
        from selenium import webdriver

        who = ensure_user(self.user)
        self.home = Path(tempfile.mkdtemp(prefix="agentmx-browser-", dir="/tmp"))
        for sub in ("profile", "tmp", "config", "cache"):
            (self.home / sub).mkdir()
        for path in (self.home, *self.home.iterdir()):
            os.chown(path, who.pw_uid, who.pw_gid)
        os.chmod(self.home, 0o700)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        port = free_tcp_port()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.home), "USER": self.user,
               "TMPDIR": str(self.home / "tmp"), "XDG_CONFIG_HOME": str(self.home / "config"),
               "XDG_CACHE_HOME": str(self.home / "cache")}
        argv = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
                CHROMEDRIVER, f"--port={port}", f"--log-path={self.home / 'chromedriver.log'}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=self.home)
        reaper.register(self)             # stopped at exit too, when the run is interrupted
        try:
            wait_for(lambda: self._driver_up(port), timeout=30, what=f"chromedriver\n{self.log()}")
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for arg in ("--headless=new", f"--window-size={self.width},{self.height}",
                        f"--user-data-dir={self.home / 'profile'}", "--force-device-scale-factor=1",
                        "--hide-scrollbars", "--lang=en-US", "--no-first-run", "--no-default-browser-check",
                        "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--disable-default-apps", "--no-proxy-server", "--disable-crash-reporter",
                        "--disable-breakpad",
                        "--disable-features=Translate,MediaRouter,OptimizationHints"):
                options.add_argument(arg)
            self.driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)
            self.driver.set_window_size(self.width, self.height)
            # the viewport (what a screenshot shows) 1280x900, not the window with headless's frame
            inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight]")
            self.driver.set_window_size(2 * self.width - inner[0], 2 * self.height - inner[1])
            self.driver.set_page_load_timeout(30)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _driver_up(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Quit the browser; then every process it left (its session, its group, their children)
        terminated, then killed; raises if one survives that."""
        if self.proc is None:
            return
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:       # noqa: BLE001 -- a dead browser: the kill below is the teardown
                pass
            self.driver = None
        left = processes_of(self.proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 5
            while (left := {p for p in left if _alive(p)}) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not left:
                break
        self.proc = None
        reaper.unregister(self)
        if self.home is not None and not os.environ.get("AGENTMX_KEEP_TMP"):
            shutil.rmtree(self.home, ignore_errors=True)
        if left:
            raise RuntimeError(f"browser processes left after SIGKILL: {sorted(left)}")

    close = stop           # tests/support/reaper.py calls close()

    def log(self) -> str:
        try:
            return (self.home / "chromedriver.log").read_text(errors="replace")[-3000:]
        except (OSError, TypeError):
            return ""

    # --- what tests use -------------------------------------------------------------------------

    def shot(self, name: str) -> Path:
        """A PNG of the current page (the viewport: 1280x900) as artifacts/<name>.png."""
        path = self.artifacts / f"{_safe(name)}.png"
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"no screenshot for {name}")
        return path

    def keep_page(self, name: str) -> list[Path]:
        """A failed test's evidence: a screenshot and the page source (artifacts/<name>.png, .html)."""
        out = [self.shot(name)]
        html = self.artifacts / f"{_safe(name)}.html"
        html.write_text(f"<!-- {self.driver.current_url} -->\n{self.driver.page_source}")
        out.append(html)
        return out

    def sandbox_state(self) -> dict:
        """The browser's processes: {pid: Proc(uid, kind (chromium's --type=, or the program's name),
        seccomp mode (2: a filter), user namespace)}."""
        out = {}
        for pid in processes_of(self.proc.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                # chromium rewrites its argv into one string: the words are found in it, not split
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
            seccomp = int(re.search(r"^Seccomp:\s+(\d+)", status, re.M).group(1))
            kind = re.search(r"--type=(\S+)", cmdline)
            try:
                userns = os.readlink(f"/proc/{pid}/ns/user")
            except OSError:
                continue
            out[pid] = Proc(uid, kind.group(1) if kind else Path(cmdline.split(" ", 1)[0]).name, seccomp, userns)
        return out

    def user_ids(self) -> tuple[int, int]:
        who = pwd.getpwnam(self.user)
        return who.pw_uid, grp.getgrnam(self.user).gr_gid


def _alive(pid: int) -> bool:
    st = Path(f"/proc/{pid}/stat")
    try:
        return ") Z " not in st.read_text()           # a zombie is dead (its parent reaps it)
    except OSError:
        return False


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:150] or "page"
