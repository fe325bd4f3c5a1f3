"""deliver/frontend.py: what the pipe program, the worker and the LMTP server share, each mapping
checked through all three front-ends in this process (their own entry points: pipe.main,
worker.handle over a socket pair, lmtp.Handler.deliver_one), against a real endpoint on loopback:

  every state deliver can end in      -> exit 0 / 250, or 75 / 451 (never anything else)
  an exception of ours, a store down  -> 75 / 451, the message stays
  a command line or LMTP transaction we cannot read -> 75 / 451
  a configuration that does not load  -> 75 (pipe: per message); residents do not start
  a configuration edit that breaks    -> residents keep the last good one

The end-to-end behaviour (processes, Postfix) is in tests/deliver/test_cli_deliver.py, test_worker.py and
test_lmtp.py."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session

from agentmx import cli
from agentmx.config import Service, load_config
from agentmx.deliver import frontend, lmtp, pipe, worker
from agentmx.deliver.core import Envelope, Outcome
from agentmx.store.embedded import EmbeddedStore
from agentmx.store.base import StoreUnavailable
from support.receiver import Receiver
from test_cli_deliver import MESSAGE, SECRET

FRONTENDS = ("pipe", "worker", "lmtp")


def write_config(tmp: Path, endpoint: str) -> Path:
    cfg = tmp / "agentmx.toml"
    route = f'endpoint = "{endpoint}"\nsecret = "{SECRET}"\ntimeout = 2\n'
    cfg.write_text(f'[server]\nauthserv_id = "mx.agentmx.test"\ndata_dir = "{tmp / "data"}"\n'
                   f'url_secret = "frontend-url-secret-0123456"\n'
                   f'[[routes]]\nmatch = "agent@agentmx.test"\n{route}'
                   f'[[routes]]\nmatch = "control@agentmx.test"\nack = "control"\n{route}'
                   f'[[routes]]\nmatch = "held@agentmx.test"\ntrust = "require-dmarc"\n{route}'
                   f'[[routes]]\nmatch = "pull@agentmx.test"\nmode = "pull"\n'
                   f'[[routes]]\nmatch = "bot@agentmx.test"\naction = "agent"\nprompt = "You answer."\n'
                   f'[agent]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    return cfg


class Via:
    """One front-end, driven through its own entry point in this process."""

    def __init__(self, kind: str, cfg: Path, store_factory=frontend.open_store):
        self.kind, self.cfg, self.store_factory = kind, cfg, store_factory
        # Residents load the configuration once at start and watch the file; the pipe loads it per message.
        self.current = frontend.Current.resident(load_config(cfg, Service.APP), store_factory) \
            if kind != "pipe" else None
        self.parser = frontend.command_line_parser()
        self.pool = ThreadPoolExecutor(max_workers=2)

    def args(self, recipient: str, queue_id: str) -> list[str]:
        return ["--config", str(self.cfg), "deliver", "--sender=bob@example.org", f"--recipient={recipient}",
                f"--queue-id={queue_id}"]

    def send(self, recipient="agent@agentmx.test", queue_id="4FE", raw=MESSAGE, argv=None,
             rcpts=None) -> tuple[int, str]:
        """(0 or 75, what Postfix is told: the pipe's exit code, the worker's answer, the LMTP reply)."""
        argv = argv if argv is not None else self.args(recipient, queue_id)
        if self.kind == "pipe":
            code = cli.main(argv) if argv[-1:] == ["--no-such-flag"] else pipe.main(
                cli.build_parser().parse_args(argv), self.cfg, io.BytesIO(raw), self.store_factory)
            return code, ""
        if self.kind == "worker":
            ours, theirs = socket.socketpair()
            with ours, theirs:
                theirs.sendall(b"AMX1 " + json.dumps(argv).encode() + b"\n" + raw)
                theirs.shutdown(socket.SHUT_WR)
                worker.handle(ours, self.current, self.parser)
                ours.shutdown(socket.SHUT_WR)              # as socketserver does after handle()
                answer = theirs.makefile("rb").read().decode()
            code, _, line = answer.partition(" ")
            return int(code), line
        loop = asyncio.new_event_loop()
        try:
            session, envelope = Session(loop), SmtpEnvelope()
            session.xforward = {"ADDR": "192.0.2.9", "HELO": "mail.example.org", "IDENT": queue_id}
            envelope.mail_from, envelope.rcpt_tos = "bob@example.org", rcpts or [recipient]
            envelope.content = envelope.original_content = raw
            reply = lmtp.Handler(self.current, self.pool).deliver_one(session, envelope)
        finally:
            loop.close()
        assert reply[:3] in ("250", "451"), reply          # never 5xx, never anything else
        return (0 if reply.startswith("250 ") else 75), reply


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def endpoint(receiver):
    receiver.default, receiver.answer, receiver.script = (200, 0), None, []
    receiver.requests.clear()
    return receiver


@pytest.fixture(params=FRONTENDS)
def via(request, tmp_path, endpoint):
    return Via(request.param, write_config(tmp_path, endpoint.url))


# --- every state, each front-end ----------------------------------------------------------------

CASES = [  # (recipient, endpoint status, endpoint answer body, exit code, state)
    ("agent@agentmx.test", 200, None, 0, "delivered"),
    ("agent@agentmx.test", 406, None, 0, "refused"),
    ("control@agentmx.test", 200, b'{"status":"drop"}', 0, "dropped"),
    ("control@agentmx.test", 200, b'{"status":"spam"}', 0, "spam"),
    ("held@agentmx.test", 200, None, 0, "held"),
    ("pull@agentmx.test", 200, None, 0, "stored"),
    ("bot@agentmx.test", 200, None, 0, "queued"),
    ("agent@agentmx.test", 503, None, 75, "deferred"),
    ("agent@agentmx.test", 302, None, 75, "deferred"),
    ("nobody@elsewhere.test", 200, None, 75, "deferred"),
]


@pytest.mark.unit
@pytest.mark.parametrize("recipient,status,answer,code,state", CASES, ids=[f"{c[4]}-{c[1]}" for c in CASES])
def test_every_outcome_maps_to_0_or_75_and_250_or_451(via, endpoint, caplog, recipient, status, answer, code,
                                                      state):
    caplog.set_level(logging.INFO)
    endpoint.default, endpoint.answer = (status, 0), answer
    got, told = via.send(recipient=recipient, queue_id="4STATE")
    assert got == code
    line = f"4STATE: {state} to={recipient} id="
    assert line in caplog.text                                   # the one outcome line, queue id first
    if via.kind == "worker":
        assert told.startswith(line)                             # what the pipe client prints for Postfix
    if via.kind == "lmtp":
        assert told.startswith(f"250 2.0.0 {state} id=msg_" if code == 0 else "451 4.3.0 ")
        if status == 503 and recipient.startswith("agent"):
            assert "HTTP 503" in told


@pytest.mark.unit
def test_the_three_frontends_make_the_same_event(tmp_path, endpoint):
    """Same message, same envelope (the pipe's arguments, LMTP's XFORWARD), same queue id: the same
    event and webhook-id from each."""
    cfg = write_config(tmp_path, endpoint.url)
    argv = ["--config", str(cfg), "deliver", "--sender=bob@example.org", "--recipient=agent@agentmx.test",
            "--queue-id=4SAME", "--client-address=192.0.2.9", "--client-helo=mail.example.org"]
    assert Via("pipe", cfg).send(argv=argv)[0] == 0
    assert Via("worker", cfg).send(argv=argv)[0] == 0
    assert Via("lmtp", cfg).send(queue_id="4SAME")[0] == 0
    assert len({r.headers["webhook-id"] for r in endpoint.requests}) == 1 and len(endpoint.requests) == 3
    events = [json.loads(r.body) for r in endpoint.requests]
    for e in events:
        e.pop("createdAt"), e["raw"].pop("url")
    assert events[0] == events[1] == events[2]
    assert events[0]["envelope"] == {"mailFrom": "bob@example.org", "rcptTo": "agent@agentmx.test",
                                     "clientIp": "192.0.2.9", "helo": "mail.example.org", "tls": None}


# --- exceptions of ours, the store -------------------------------------------------------------

class BrokenStore(EmbeddedStore):
    """A real embedded store with one bug: storing a blob raises."""

    def put_blob(self, data: bytes) -> str:
        raise KeyError("a bug of ours")


@pytest.mark.unit
@pytest.mark.parametrize("kind", FRONTENDS)
def test_an_exception_of_ours_keeps_the_message(kind, tmp_path, endpoint, caplog):
    v = Via(kind, write_config(tmp_path, endpoint.url), store_factory=lambda c: BrokenStore(c.data_dir))
    code, told = v.send(queue_id="4BUG")
    assert code == 75 and not endpoint.requests
    expected = f"4BUG: internal error KeyError in agentmx {'deliver' if kind == 'pipe' else kind} (deferred)"
    assert expected in caplog.text and "Traceback" in caplog.text          # a bug: logged with its traceback
    if kind == "lmtp":
        assert told == "451 4.3.0 internal error KeyError in agentmx lmtp"
    if kind == "worker":
        assert told.strip() == expected


@pytest.mark.unit
@pytest.mark.parametrize("kind", FRONTENDS)
def test_a_store_that_cannot_be_reached_keeps_the_message(kind, tmp_path, endpoint, caplog):
    def unavailable(config):
        raise StoreUnavailable("connection refused (database at 127.0.0.1:9)")
    v = Via(kind, write_config(tmp_path, endpoint.url), store_factory=unavailable)
    code, told = v.send(queue_id="4DB")
    assert code == 75 and not endpoint.requests
    assert "4DB: the store: StoreUnavailable: connection refused" in caplog.text
    assert "Traceback" not in caplog.text                  # not a bug: one line, no traceback
    if kind == "lmtp":
        assert told.startswith("451 4.3.0 the store: StoreUnavailable")


@pytest.mark.unit
def test_an_exception_in_the_lmtp_session_is_451_not_aiosmtpd_s_500(tmp_path, endpoint, caplog):
    """Outside deliver (here the delivery pool is gone, so handle_DATA itself raises) aiosmtpd would
    answer "500 Error: ...", which Postfix takes as permanent."""
    import smtplib
    import threading
    current = frontend.Current.resident(load_config(write_config(tmp_path, endpoint.url), Service.APP))
    pool = ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    handler = lmtp.Handler(current, pool)
    loop = asyncio.new_event_loop()
    sock = frontend.bind_unix(tmp_path / "l.sock", 0o600)
    server = loop.run_until_complete(loop.create_unix_server(
        lambda: lmtp._Lmtp(handler, hostname="mx.agentmx.test", decode_data=False, loop=loop), sock=sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with smtplib.LMTP(str(tmp_path / "l.sock")) as c:
            c.ehlo_or_helo_if_needed()
            c.mail("bob@example.org")
            c.rcpt("agent@agentmx.test")
            code, text = c.data(MESSAGE)
        assert code == 451 and text == b"4.3.0 internal error RuntimeError in agentmx lmtp", (code, text)
        assert "NOQUEUE: internal error RuntimeError in agentmx lmtp (deferred)" in caplog.text
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


# --- requests we cannot read --------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("kind", FRONTENDS)
def test_a_request_we_cannot_read_keeps_the_message(kind, tmp_path, endpoint, caplog, capsys):
    v = Via(kind, write_config(tmp_path, endpoint.url))
    if kind == "pipe":          # argparse refuses it (cli.main); pipe(8) would bounce on its exit 2
        code, _ = v.send(argv=["--config", str(v.cfg), "deliver", "--queue-id=4ARG", "--no-such-flag"])
        assert code == 75 and "4ARG: bad command line in master.cf (deferred)" in capsys.readouterr().err
        assert cli.main(["deliver", "--sender=x@y"]) == 75                      # no --recipient
    elif kind == "worker":
        for argv in (["deliver", "--queue-id=4ARG", "--sender=x@y"],              # no --recipient
                     ["deliver", "--recipient=agent@agentmx.test", "--typo=1"],
                     ["--config", "x"], "not a list", [1, 2]):
            code, told = v.send(argv=argv)
            assert code == 75 and "bad command line" in told, told
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(b"HELO\n" + MESSAGE)
            theirs.shutdown(socket.SHUT_WR)
            assert worker.handle(ours, v.current, v.parser).exit_code == 75
            ours.shutdown(socket.SHUT_WR)
            assert theirs.makefile("rb").read().startswith(b"75 NOQUEUE: not an agentmx pipe client request")
    else:
        code, told = v.send(rcpts=["agent@agentmx.test", "x@support.agentmx.test"], queue_id="4ARG")
        assert code == 75 and told == "451 4.3.0 one recipient per transaction (set " \
                                      "agentmx_destination_recipient_limit = 1)"
        assert "4ARG: one recipient per transaction" in caplog.text
    assert not endpoint.requests


@pytest.mark.unit
def test_the_worker_reads_the_command_line_as_the_pipe_does(tmp_path, endpoint):
    """`--queue-id X` (a separate argument, as `agentmx deliver` accepts it) must reach the worker as
    it reaches the pipe: the queue id is part of the webhook-id, which must not change between an
    attempt through the worker and a retry through the fallback `agentmx deliver`."""
    cfg = write_config(tmp_path, endpoint.url)
    argv = ["--config", str(cfg), "deliver", "--sender", "bob@example.org", "--recipient", "agent@agentmx.test",
            "--queue-id", "4SPACE", "--client-address", "192.0.2.1"]
    assert Via("pipe", cfg).send(argv=argv)[0] == 0
    code, told = Via("worker", cfg).send(argv=argv)
    assert code == 0 and told.startswith("4SPACE: delivered to=agent@agentmx.test"), told
    first, second = endpoint.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert json.loads(second.body)["envelope"]["clientIp"] == "192.0.2.1"


@pytest.mark.unit
def test_envelopes():
    parser = frontend.command_line_parser()
    a = frontend.envelope_from_command_line(["--config", "/x", "deliver", "--sender=", "--recipient=a@b",
                                             "--queue-id=", "--client-address=", "--client-helo=h"], parser)
    assert a == Envelope(sender="", recipient="a@b", queue_id=None, client_address=None, client_helo="h")
    b = frontend.envelope_from_lmtp(None, ["a@b"], {"IDENT": "4Q", "ADDR": "", "HELO": "h"})
    assert b == Envelope(sender="", recipient="a@b", queue_id="4Q", client_address=None, client_helo="h")
    with pytest.raises(frontend.BadRequest):
        frontend.envelope_from_lmtp("x@y", [], {})
    with pytest.raises(frontend.BadRequest):
        frontend.envelope_from_command_line(["deliver", "--recipient=a@b", "--help"], parser)


@pytest.mark.unit
@pytest.mark.parametrize("exit_code", [0, 75, 1, 2, 64, 78, 255])
def test_results_are_0_or_75_and_250_or_451_only(exit_code):
    r = frontend.from_outcome("4Q", "a@b", Outcome(exit_code, "whatever", "msg_x", 500, "why\r\n 5.0.0 x"))
    assert r.exit_code == (0 if exit_code == 0 else 75)
    assert r.reply.startswith("250 2.0.0 " if exit_code == 0 else "451 4.3.0 ")
    assert "\n" not in r.reply and "\r" not in r.reply
    assert frontend.deferred(None, "x" * 2000).reply == "451 4.3.0 " + "x" * frontend.MAX_REPLY


# --- configurations that do not load, edits that break -------------------------------------------

@pytest.mark.unit
def test_the_pipe_defers_on_a_configuration_that_does_not_load(tmp_path, endpoint, caplog):
    v = Via("pipe", write_config(tmp_path, endpoint.url))
    v.cfg.write_text(v.cfg.read_text() + "[server2]\n")
    assert v.send(queue_id="4CFG")[0] == 75
    assert "4CFG: " in caplog.text and "server2: unknown key (deferred)" in caplog.text
    v.cfg.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")       # not even a ConfigError: deferred too
    assert v.send(queue_id="4CFG")[0] == 75 and "cannot load the configuration: RecursionError" in caplog.text
    v.cfg.unlink()
    assert v.send(queue_id="4CFG")[0] == 75 and "cannot be read" in caplog.text
    assert not endpoint.requests


@pytest.mark.unit
@pytest.mark.parametrize("command", ["worker", "lmtp"])
def test_residents_do_not_start_on_a_configuration_that_does_not_load(tmp_path, command, capsys):
    cfg = tmp_path / "agentmx.toml"
    cfg.write_text('[server]\nauthserv_id = "mx.agentmx.test"\nnonsense = 1\n')
    sock = tmp_path / "s.sock"
    assert cli.main(["--config", str(cfg), command, "--socket", str(sock)]) == 78      # EX_CONFIG
    assert "[server] nonsense: unknown key" in capsys.readouterr().err and not sock.exists()


BROKEN_EDITS = {
    "unknown key": "[bogus]\n",
    "not TOML": "[[routes\n",
    "nested too deeply": "a = " + "[" * 5000 + "]" * 5000 + "\n",       # tomllib: RecursionError
}


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["worker", "lmtp"])
@pytest.mark.parametrize("edit", BROKEN_EDITS, ids=list(BROKEN_EDITS))
def test_residents_reload_and_keep_the_last_good_configuration(kind, edit, tmp_path, endpoint, caplog):
    caplog.set_level(logging.INFO)
    v = Via(kind, write_config(tmp_path, endpoint.url))
    assert v.send(recipient="new@agentmx.test")[0] == 75                        # no route yet
    good = v.cfg.read_text() + f'[[routes]]\nmatch = "new@agentmx.test"\nendpoint = "{endpoint.url}"\n' \
                               f'secret = "{SECRET}"\n'
    v.cfg.write_text(good)
    assert v.send(recipient="new@agentmx.test")[0] == 0                         # reloaded
    assert "configuration reloaded" in caplog.text
    v.cfg.write_text(good + BROKEN_EDITS[edit])
    for _ in range(2):
        assert v.send(recipient="new@agentmx.test")[0] == 0                     # the last good one
    assert caplog.text.count("configuration not reloaded") == 1                 # said once, not per message
    v.cfg.unlink()                                                              # gone a moment: kept too
    assert v.send(recipient="new@agentmx.test")[0] == 0


@pytest.mark.unit
def test_a_same_size_edit_with_its_time_kept_is_reloaded(tmp_path, endpoint):
    """cp -p, rsync -t, tar x: a replaced file may keep the old size and modification time."""
    cfg = write_config(tmp_path, endpoint.url)
    current = frontend.Current.resident(load_config(cfg, Service.APP))
    st = cfg.stat()
    text = cfg.read_text()
    replacement = tmp_path / "new.toml"
    replacement.write_text(text.replace("timeout = 2\n", "timeout = 3\n", 1))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, cfg)
    assert cfg.stat().st_size == st.st_size and cfg.stat().st_mtime_ns == st.st_mtime_ns
    assert current.config().routes[0].timeout == 3


# --- the store: once per process ----------------------------------------------------------------

@pytest.mark.unit
def test_the_store_is_made_once_per_process_and_again_when_it_moves(tmp_path, endpoint):
    made = []

    def factory(config):
        made.append((os.getpid(), config.data_dir))
        return EmbeddedStore(config.data_dir)
    cfg = write_config(tmp_path, endpoint.url)
    v = Via("worker", cfg, store_factory=factory)
    for n in range(3):
        assert v.send(queue_id=f"4S{n}")[0] == 0
    assert made == [(os.getpid(), tmp_path / "data")]
    cfg.write_text(cfg.read_text().replace("timeout = 2", "timeout = 3"))       # a reload, same store
    assert v.send(queue_id="4S3")[0] == 0 and len(made) == 1
    cfg.write_text(cfg.read_text().replace(f'data_dir = "{tmp_path / "data"}"', f'data_dir = "{tmp_path / "d2"}"'))
    assert v.send(queue_id="4S4")[0] == 0
    assert made[1:] == [(os.getpid(), tmp_path / "d2")] and (tmp_path / "d2" / "agentmx.sqlite").is_file()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # a forked process makes its own
        try:
            v.current.get()
            os.write(w, json.dumps([p for p, _ in made]).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        assert json.loads(f.read()) == [os.getpid(), os.getpid(), pid]


@pytest.mark.unit
def test_the_pipe_makes_its_store_once(tmp_path, endpoint):
    made = []
    cfg = write_config(tmp_path, endpoint.url)
    args = cli.build_parser().parse_args(["deliver", "--recipient=agent@agentmx.test", "--queue-id=4P"])
    assert pipe.main(args, cfg, io.BytesIO(MESSAGE), lambda c: made.append(c) or EmbeddedStore(c.data_dir)) == 0
    assert len(made) == 1 and len(endpoint.requests) == 1


# --- the prefork ---------------------------------------------------------------------------------

@pytest.mark.unit
def test_bind_unix_replaces_a_stale_socket_with_the_mode_asked(tmp_path):
    path = tmp_path / "run" / "s.sock"
    for _ in range(2):                                 # the second one replaces the first's leftover
        frontend.bind_unix(path, 0o660).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o660 and stat.S_ISSOCK(path.stat().st_mode)


PREFORK = """
import os, signal, sys
from pathlib import Path
from agentmx.deliver import frontend

def serve(sock):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock.settimeout(0.1)
    while not stop:
        try:
            conn, _ = sock.accept()
        except (TimeoutError, InterruptedError):
            continue
        with conn:
            conn.sendall(str(os.getpid()).encode())
frontend.serve_unix("prefork test", Path(sys.argv[1]), 0o600, 3, serve)
"""


def test_serve_unix_runs_n_processes_on_one_socket_and_stops_them(tmp_path):
    path = tmp_path / "p.sock"
    proc = subprocess.Popen([sys.executable, "-c", PREFORK, str(path)], stderr=subprocess.PIPE, cwd="/")
    try:
        assert b"prefork test: listening on" in proc.stderr.readline()
        pids = set()
        deadline = time.monotonic() + 20
        while len(pids) < 3 and time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(str(path))
                pids.add(int(c.recv(32)))
        assert len(pids) == 3 and proc.pid in pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for pid in pids - {proc.pid}:                  # the children were stopped and reaped
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
