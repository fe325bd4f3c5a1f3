"""A whole install, as an operator gets it: `agentmx setup` on a private Postfix (ix, for DOMAIN),
then the milter and serve started exactly as their systemd units say (tests/support/units.py: the
unit's user, groups, UMask, ExecStartPre, ExecStart, through setpriv). Outside it: a remote MX (rx,
for remote.test, with its own milter), the agent's endpoint (a Receiver), and DNS on the loopback
server. Used by tests/e2e/test_install.py and the console's browser tests (tests/console/).

    with installed(dns_server, extra_config=...) as inst:
        event = inbound(inst, "Subject")            # DKIM-signed by remote.test, over SMTP; its event
        key = api_key(inst)                          # the key setup wrote for the agent

Nothing here runs as root but Postfix itself (as on a real host), setup, and the units' "+" lines.
"""
from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from e2e_helpers import RsaKey, message, sign

from agentmx import dnsrecords
from agentmx.config import load_config

from .dnszone import zone_from_records
from .postfix import MilterProcess, PostfixInstance, agentmx_config, free_tcp_port, listening, wait_for
from .receiver import Receiver
from .units import Unit, stop

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
VENV = str(Path(sys.executable).parent.parent)
DOMAIN = "agents.test"
UNITS = Path(__file__).resolve().parents[2] / "systemd"


@contextmanager
def installed(dns_server, extra_config: str = "", prefix: str = "i") -> Iterator[dict]:
    """The install; `extra_config`: TOML appended to setup's agentmx.toml before the services start
    (what an operator would add: more [[api_keys]], ...). `prefix`: of the Postfix instances'
    names (two installs at once need different ones)."""
    # not under pytest's tmp_path: /tmp/pytest-of-root is root's alone, and the services are not root
    base = Path(tempfile.mkdtemp(prefix="agentmx-install-", dir="/tmp"))
    os.chmod(base, 0o755)
    receiver = Receiver()
    rx = PostfixInstance(f"{prefix}rx", "mx.remote.test", relay_domains="remote.test",
                         main={"transport_maps": "inline:{ remote.test=sink: }"})
    rx_cfg, rx_sock = agentmx_config(rx, "mx.remote.test", dns_server.port, milter="trusted_networks = []",
                                     server=f'data_dir = "{rx.base / "data"}"')
    rx_milter = MilterProcess(rx_cfg, rx_sock, rx.base / "milter.log").start()
    rx.start()
    ix = PostfixInstance(f"{prefix}x", "mx.agents.test", main={"relayhost": f"[127.0.0.1]:{rx.port}",
                                                              "default_transport": "smtp",
                                                              "inet_interfaces": "127.0.0.1"})
    procs: list[subprocess.Popen] = []
    try:
        etc, data, sock = base / "etc-agentmx", base / "data", ix.base / "milter" / "milter.sock"
        out = subprocess.run([AGENTMX, "setup", "--postfix-config", str(ix.etc), "--domain", DOMAIN,
                              "--endpoint", receiver.url, "--agentmx-dir", str(etc), "--data-dir", str(data),
                              "--socket", str(sock)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        # What an operator adds by hand: the DNS resolver, which clients are ours, where serve listens.
        serve_port = free_tcp_port()
        cfg = etc / "agentmx.toml"
        text = cfg.read_text().replace("[server]\n", f'[server]\nlisten = "127.0.0.1:{serve_port}"\n', 1)
        text = text.replace("[milter]\n", '[milter]\ntrusted_networks = ["127.0.0.1/32"]\n', 1)
        cfg.write_text(text + f'\n[dns]\nservers = ["127.0.0.1:{dns_server.port}"]\ntimeout = 1.0\n'
                       + (f"\n{extra_config}\n" if extra_config else ""))

        config = load_config(cfg)
        # remote.test: the outside party, whose mail comes from 127.0.0.2 and whose MX is rx
        outside_key = RsaKey()
        zone = {"mx.agents.test": {"A": ["127.0.0.1"]}, "remote.test": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]},
                "s1._domainkey.remote.test": {"TXT": [outside_key.txt]},
                "_dmarc.remote.test": {"TXT": ["v=DMARC1; p=reject"]}}
        zone_from_records(dnsrecords.records(config, DOMAIN), zone)
        dns_server.set_zone(zone)

        paths = {"/opt/agentmx/venv": VENV, "/etc/agentmx/agentmx.toml": str(cfg),
                 "/var/spool/postfix/agentmx": str(sock.parent), "/var/lib/agentmx": str(data)}
        units = {name: Unit.read(UNITS / f"agentmx-{name}.service") for name in ("milter", "serve")}
        for name in ("milter", "serve"):
            units[name].run_pre(paths)
            procs.append(units[name].start(paths, base / f"{name}.log"))
        wait_for(lambda: sock.exists(), timeout=30, what=f"the milter's socket\n{log(base, 'milter')}")
        wait_for(lambda: listening(serve_port), timeout=30, what=f"serve\n{log(base, 'serve')}")
        ix.start()
        yield {"ix": ix, "rx": rx, "etc": etc, "data": data, "cfg": cfg, "config": config, "units": units,
               "receiver": receiver, "api": f"http://127.0.0.1:{serve_port}", "outside_key": outside_key,
               "zone": zone, "base": base, "procs": procs}
    finally:
        for p in procs:
            stop(p)
        ix.stop()
        rx_milter.stop()
        rx.stop()
        receiver.stop()
        if not os.environ.get("AGENTMX_KEEP_TMP"):
            shutil.rmtree(base, ignore_errors=True)


def log(base: Path, name: str) -> str:
    """The end of a service's log (base/<name>.log), for failure messages."""
    try:
        return (base / f"{name}.log").read_text()[-3000:]
    except OSError:
        return ""


def api_key(inst: dict) -> str:
    """The agent's API key, from the key file setup wrote (read as root: it is agentmx's, 0400)."""
    return (inst["etc"] / "api.key").read_text().strip()


def inbound(inst: dict, subject: str, to: str = f"agent@{DOMAIN}", body: str = "Your code is 318273.\n",
            raw: bytes | None = None, timeout: float = 60) -> dict:
    """A message from alice@remote.test (DKIM-signed by remote.test's key: dkim=pass), over SMTP from
    an outside address (127.0.0.2: spf=pass), into the install's Postfix; its event, once the agent's
    endpoint has it (deliver stores a message before it posts it: it is in the store by then).
    `raw`: a message of one's own (signed here), found by `subject` all the same."""
    if raw is None:
        raw = message("Alice <alice@remote.test>", to, subject=subject, body=body)
    raw = sign(raw, "remote.test", "s1", inst["outside_key"])
    with smtplib.SMTP("127.0.0.1", inst["ix"].port, local_hostname="mail.remote.test", timeout=60,
                      source_address=("127.0.0.2", 0)) as s:
        s.sendmail("alice@remote.test", [to], raw)
    return wait_for(lambda: next((e for e in inst["receiver"].events() if e.get("subject") == subject), None),
                    timeout=timeout, what=f"the event\n{inst['ix'].log()[-3000:]}\n{log(inst['base'], 'milter')}")
