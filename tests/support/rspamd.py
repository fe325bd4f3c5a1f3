"""A private rspamd (Debian's package) on loopback for tests: its own local.d under a temp folder,
the normal worker (/checkv2) and the controller on free ports, proxy and fuzzy workers off, DNS
pointed at the tests' DNS server, run as _rspamd in the foreground. Nothing of /etc/rspamd is
changed: the stock configuration is read with LOCAL_CONFDIR, DBDIR, RUNDIR, LOGDIR overridden."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from . import reaper
from .postfix import free_tcp_port, wait_for


class Rspamd:
    def __init__(self, dns_port: int | None = None):
        self.base = Path(tempfile.mkdtemp(prefix="agentmx-rspamd-", dir="/tmp"))
        self.port, self.controller_port = free_tcp_port(), free_tcp_port()
        for d in ("local.d", "override.d", "db", "run", "log"):
            (self.base / d).mkdir()
        (self.base / "local.d" / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{self.port}";\n')
        (self.base / "local.d" / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.controller_port}";\n')
        (self.base / "override.d" / "worker-proxy.inc").write_text("enabled = false;\n")
        (self.base / "override.d" / "worker-fuzzy.inc").write_text("enabled = false;\n")
        (self.base / "local.d" / "logging.inc").write_text('type = "file";\nfilename = "' + str(self.base / "log" / "rspamd.log") + '";\nlevel = "error";\n')
        if dns_port:
            (self.base / "local.d" / "options.inc").write_text(
                f'dns {{\n  nameserver = ["127.0.0.1:{dns_port}"];\n  timeout = 0.5s;\n  retransmits = 1;\n}}\n')
        shutil.chown(self.base, "_rspamd")
        for p in self.base.rglob("*"):
            shutil.chown(p, "_rspamd")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rspamd":
        b = self.base
        self.proc = subprocess.Popen(
            ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", "/etc/rspamd/rspamd.conf",
             f"--var=LOCAL_CONFDIR={b}", f"--var=DBDIR={b}/db", f"--var=RUNDIR={b}/run", f"--var=LOGDIR={b}/log"],
            stdout=open(b / "out.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, timeout=60, interval=0.3, what=f"rspamd on {self.url}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"rspamd exited: {(self.base / 'out.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=1) as r:
                return r.read().strip() == b"pong"
        except OSError:
            return False

    def stop(self) -> None:
        reaper.stop_group(self.proc, grace=15)
        if not os.environ.get("AGENTMX_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)
