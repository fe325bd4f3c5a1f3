"""A private Postfix instance on loopback (../shared/POSTFIX-IN-TESTS.md), and the milter process.

PostfixInstance makes its own config, queue and data directories under one temp folder, listens
on 127.0.0.1:<port>, logs to <base>/log/maillog, and is stopped and removed by stop(). Nothing of
the host's own Postfix is touched. Messages for the relay domains go to a pipe transport `sink`
that writes each delivered copy into <base>/out (or to whatever transport a test configures).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from . import reaper

SINK_SCRIPT = """#!/bin/sh
# A pipe(8) program for tests: keep the delivered copy. argv: OUTDIR
umask 022
f="$1/$(date +%s%N).$$.eml"
cat > "$f.tmp" && mv "$f.tmp" "$f"
"""


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def settled(*instances: "PostfixInstance", since: float, timeout: float = 30.0) -> None:
    """Wait until none of the instances holds a message that arrived at or after `since` (a
    time.time() taken before the test made its mail): whatever they took since then has been
    delivered, refused or bounced. The event a negative assertion (no other copy, nothing for that
    address) waits for, instead of a fixed sleep. Older mail left deferred by another test does not
    count."""
    def done() -> bool:
        return all(not any(m.get("arrival_time", 0) >= int(since) for m in pf.queued()) for pf in instances)
    wait_for(done, timeout=timeout, what="the mail taken since the test began to leave the queues of "
             + ", ".join(pf.name for pf in instances))


def _run(*cmd, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


class PostfixInstance:
    def __init__(self, name: str, hostname: str, relay_domains: str = "", port: int | None = None,
                 main: dict | None = None, master: list[str] | None = None):
        self.name = name
        self.base = Path(tempfile.mkdtemp(prefix=f"agentmx-{name}-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.etc = self.base / "etc"
        self.out = self.base / "out"
        self.port = port or free_tcp_port()
        self.hostname = hostname
        for d in ("etc", "spool", "data", "log", "out"):
            (self.base / d).mkdir()
        os.chmod(self.out, 0o777)
        shutil.chown(self.base / "data", "postfix", "postfix")
        shutil.copy("/etc/postfix/main.cf", self.etc / "main.cf")
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        sink = self.base / "sink.sh"
        sink.write_text(SINK_SCRIPT)
        sink.chmod(0o755)
        settings = {
            "queue_directory": str(self.base / "spool"),
            "data_directory": str(self.base / "data"),
            "multi_instance_name": f"postfix-{name}",
            "syslog_name": f"postfix-{name}",
            "myhostname": hostname,
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.2/32",
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.base / 'log'}",
            "maillog_file": str(self.base / "log" / "maillog"),
            "relay_domains": relay_domains,
            "transport_maps": f"inline:{{ {relay_domains}=sink: }}" if relay_domains else "",
            "sink_destination_recipient_limit": "1",
            "smtputf8_enable": "no",
            "compatibility_level": "3.6",
            "queue_run_delay": "300s",
            "minimal_backoff_time": "300s",
            "maximal_backoff_time": "600s",
        }
        settings.update(main or {})
        self.postconf(*(f"{k} = {v}" for k, v in settings.items()))
        _run("postconf", "-c", str(self.etc), "-F", "*/*/chroot = n")
        _run("postconf", "-c", str(self.etc), "-MX", "smtp/inet")
        entries = [f"{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd",
                   f"sink/unix = sink unix - n n - - pipe flags=Rq user=nobody argv={sink} {self.out}"]
        for entry in entries + list(master or []):
            _run("postconf", "-c", str(self.etc), "-M", entry)

    def postconf(self, *settings: str) -> None:
        _run("postconf", "-c", str(self.etc), "-e", *settings)

    def postconf_master(self, *entries: str) -> None:
        for entry in entries:
            _run("postconf", "-c", str(self.etc), "-M", entry)

    def start(self) -> "PostfixInstance":
        _run("postfix", "-c", str(self.etc), "start")
        wait_for(self._listening, what=f"postfix {self.name} on port {self.port}")
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(200).startswith(b"220")
        except OSError:
            return False

    def reload(self) -> None:
        _run("postfix", "-c", str(self.etc), "reload")

    def stop(self, remove: bool = True) -> None:
        _run("postfix", "-c", str(self.etc), "stop", check=False)
        pid_file = self.base / "spool" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            wait_for(lambda: not alive(pid), timeout=10, what="postfix master to exit")
        except (OSError, ValueError, TimeoutError):
            pass
        if remove and not os.environ.get("AGENTMX_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)

    # --- what tests look at ---------------------------------------------------------------------

    def queue(self) -> str:
        return _run("postqueue", "-c", str(self.etc), "-p", check=False).stdout

    def queue_is_empty(self) -> bool:
        return "Mail queue is empty" in self.queue()

    def queued(self) -> list[dict]:
        """The messages in the queue (postqueue -j: queue_name, queue_id, arrival_time, recipients...)."""
        out = _run("postqueue", "-c", str(self.etc), "-j", check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def flush(self) -> None:
        _run("postqueue", "-c", str(self.etc), "-f", check=False)

    def log(self) -> str:
        try:
            return (self.base / "log" / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def delivered(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.suffix == ".eml")

    def wait_delivered(self, count: int, timeout: float = 30.0) -> list[Path]:
        return wait_for(lambda: len(self.delivered()) >= count and self.delivered(), timeout=timeout,
                        what=f"{count} delivered message(s) in {self.out}\n{self.log()[-3000:]}")


def fragment_settings(path: Path, **overrides: str) -> list[str]:
    """The `name = value` lines of a shipped main.cf fragment, with some values replaced."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name = line.split("=", 1)[0].strip()
        out.append(f"{name} = {overrides[name]}" if name in overrides else line)
    return out


def agentmx_config(pf: PostfixInstance, authserv_id: str, dns_port: int, *, server: str = "", milter: str = "",
                   rest: str = "", dns_timeout: float = 1.0, dns: str = "") -> tuple[Path, Path]:
    """Write <base>/agentmx.toml for an agentmx beside `pf` (its milter socket in <base>/milter) and
    apply the main.cf settings we ship, pointed at that socket. Returns (config path, socket)."""
    sock = pf.base / "milter" / "milter.sock"
    cfg = pf.base / "agentmx.toml"
    cfg.write_text(f"[server]\nauthserv_id = \"{authserv_id}\"\n{server}\n"
                   f"[dns]\nservers = [\"127.0.0.1:{dns_port}\"]\ntimeout = {dns_timeout}\n{dns}\n"
                   f"[milter]\nsocket = \"{sock}\"\nsocket_mode = \"0666\"\n{milter}\n{rest}\n")
    os.chmod(cfg, 0o644)
    root = Path(__file__).resolve().parents[2]
    pf.postconf(*fragment_settings(root / "postfix" / "main.cf.fragment", smtpd_milters=f"unix:{sock}"))
    return cfg, sock


def _deliver_side(pf: PostfixInstance, cfg: Path, domain: str, agentmx: str, transport_maps: str,
                  master_fragment: str) -> str:
    """main.cf.deliver.fragment on `pf` with the recipient map `agentmx postfix-map` writes;
    returns the transport line of `master_fragment`, for the caller to adapt and add."""
    root = Path(__file__).resolve().parents[2]
    recipients = pf.base / "recipients"
    recipients.write_text(_run(agentmx, "--config", str(cfg), "postfix-map").stdout)
    pf.postconf(*fragment_settings(root / "postfix" / "main.cf.deliver.fragment", relay_domains=domain,
                                   transport_maps=transport_maps, relay_recipient_maps=f"texthash:{recipients}"))
    (entry,) = [line for line in (root / "postfix" / master_fragment).read_text().splitlines()
                if line and not line.startswith("#")]
    return entry


def install_deliver(pf: PostfixInstance, cfg: Path, domain: str, agentmx: str, transport_maps: str | None = None) -> None:
    """The deliver side we ship (main.cf.deliver.fragment, master.cf.fragment) on `pf`, with this
    instance's config path, the recipient map `agentmx postfix-map` writes, and user nobody."""
    entry = _deliver_side(pf, cfg, domain, agentmx, transport_maps or f"inline:{{ {domain}=agentmx: }}",
                          "master.cf.fragment")
    pf.postconf_master(entry.replace("user=agentmx", "user=nobody").replace("/opt/agentmx/venv/bin/agentmx", agentmx)
                       .replace("/etc/agentmx/agentmx.toml", str(cfg)))


def install_lmtp(pf: PostfixInstance, cfg: Path, domain: str, sock: Path, agentmx: str,
                 transport_maps: str | None = None) -> None:
    """The LMTP front-end's side we ship (main.cf.deliver.fragment, master.cf.lmtp.fragment) on
    `pf`: mail for `domain` to `agentmx lmtp` on `sock` (its folder made here), the recipient map
    `agentmx postfix-map` writes. The LMTP server itself is the test's to start."""
    pf.postconf_master(_deliver_side(pf, cfg, domain, agentmx, transport_maps or f"inline:{{ {domain}=agentmx:unix:{sock} }}",
                                     "master.cf.lmtp.fragment"))
    sock.parent.mkdir(exist_ok=True)
    os.chmod(sock.parent, 0o755)


def install_submit(pf: PostfixInstance) -> Path:
    """The send API's submission service we ship (master.cf.submit.fragment) on `pf`; returns its
    socket, <queue>/public/agentmx-submit, for [send] submit = "unix:<it>"."""
    root = Path(__file__).resolve().parents[2]
    (entry,) = [line for line in (root / "postfix" / "master.cf.submit.fragment").read_text().splitlines()
                if line and not line.startswith("#")]
    pf.postconf_master(entry)
    return pf.base / "spool" / "public" / "agentmx-submit"


def enable_sasl(pf: PostfixInstance, users: dict[str, str]) -> None:
    """SMTP AUTH (PLAIN, LOGIN) on `pf`'s smtpd with Cyrus SASL and a sasldb of its own, holding
    `users` (login -> password). Debian's Postfix reads <config dir>/sasl/smtpd.conf (it ignored
    cyrus_sasl_config_path here); the sasldb realm is the instance's myhostname, which Cyrus uses
    when smtpd_sasl_local_domain is empty, so the logins are the plain names."""
    sasl = pf.etc / "sasl"
    sasl.mkdir(exist_ok=True)
    db = sasl / "sasldb2"
    for login, password in users.items():
        subprocess.run(["saslpasswd2", "-f", str(db), "-c", "-p", "-u", pf.hostname, login],
                       input=password + "\n", text=True, capture_output=True, check=True)
    shutil.chown(db, "root", "postfix")         # smtpd runs as postfix (chroot = n): it reads the db
    os.chmod(db, 0o640)
    (sasl / "smtpd.conf").write_text(f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\n"
                                     "mech_list: PLAIN LOGIN\n")
    pf.postconf("smtpd_sasl_type = cyrus", f"cyrus_sasl_config_path = {sasl}", "smtpd_sasl_auth_enable = yes",
                "smtpd_sasl_security_options = noanonymous", "smtpd_sasl_local_domain =")


def alive(pid: int) -> bool:
    """Whether the process runs. A zombie does not: Postfix's master, once stopped, is the child
    of PID 1, which may reap it seconds later (measured: 2 s a stop here, in every module's teardown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class MilterProcess:
    """`agentmx milter` as a real process on its unix socket, with the given config file."""

    def __init__(self, config_path: Path, socket_path: Path, log_path: Path, program: str | None = None):
        self.config_path, self.socket_path, self.log_path = config_path, socket_path, log_path
        self.program = program or str(Path(sys.executable).with_name("agentmx"))   # another install's, for A/B
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MilterProcess":
        agentmx = self.program
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(agentmx), "--config", str(self.config_path), "milter"],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(self._ready, timeout=20, what=f"milter socket {self.socket_path}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"milter exited with {self.proc.returncode}: {self.log()[-2000:]}")
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.socket_path))
            return True
        except OSError:
            return False

    def kill(self) -> None:
        """Stop it hard (SIGKILL), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        reaper.stop_group(self.proc)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the milter has used so far: with [milter] processes
        > 1, its supervisor and every milter process, those still running and those it reaped."""
        ticks = 0
        for pid, fields in self._session():
            ticks += int(fields[11]) + int(fields[12])
            if pid == self.proc.pid:
                ticks += int(fields[13]) + int(fields[14])        # children it reaped
        return ticks / os.sysconf("SC_CLK_TCK")

    def session_pids(self) -> list[int]:
        """Every process of its session still running (not a zombie): the milter and its children."""
        return [pid for pid, fields in self._session() if fields[0] != "Z"]

    def _session(self):
        """(pid, /proc/<pid>/stat fields after the command) of each process in its session."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue                                 # gone meanwhile
            if int(fields[3]) == self.proc.pid:          # start_new_session: its pid is the session's
                yield int(stat.parent.name), fields

    def children(self) -> list[int]:
        """The pids of the milter processes under the supervisor (none with processes = 1)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]


@contextmanager
def running_with_milter(pf: PostfixInstance, config: Path, sock: Path):
    """A module's stack: the real milter on `config` (log pf.base/milter.log), then `pf`, both running;
    yields the milter, stops the milter then Postfix (which removes its directory) on the way out."""
    milter = MilterProcess(config, sock, pf.base / "milter.log").start()
    try:
        pf.start()
        yield milter
    finally:
        milter.stop()
        pf.stop()
