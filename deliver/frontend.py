"""What the three delivery front-ends share. Each hands one message to deliver() and answers Postfix:

    pipe.py     `agentmx deliver`, one process per message (pipe(8))      exit 0 or 75
    worker.py   `agentmx worker`, behind the lean pipe client (pipeclient.py) exit 0 or 75
    lmtp.py     `agentmx lmtp`, for Postfix's lmtp(8)                      250 or 451, never 5xx

Here, once for all three:
    the envelope   from deliver's command line (pipe, worker: the same arguments, the same parser)
                   or from LMTP's MAIL FROM, RCPT TO and XFORWARD
    run()          deliver() for one message, never raising: its Outcome, a request we cannot read,
                   a configuration that does not load, a store that cannot be reached or any other
                   exception of ours become one Result: exit 0/75, reply 250/451, and the one
                   outcome line with the Postfix queue id on it
    Current        the configuration (loaded on first use, or reloaded when its file changes,
                   keeping the last good one when an edit is broken) and the store, made by
                   store_factory(config) once per process, and a resident's kept-alive
                   connections to the endpoints (http.Connections), once per process too
    serve_unix()   N processes on one unix socket (the residents' prefork)

The pipe process imports this once per message, with deliver's core: every `agentmx` command's
parser imports only deliver's arguments (arguments.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from agentmx.config import Config, ConfigError, Service, load_config
from agentmx.store import StoreError, open_store as open_configured_store

from .arguments import add_envelope_arguments
from .core import deliver
from .http import Connections
from .outcome import Envelope, Outcome

log = logging.getLogger("agentmx.deliver.frontend")

EX_OK = 0
EX_TEMPFAIL = 75                 # EX_TEMPFAIL: Postfix keeps the message and retries
NOQUEUE = "NOQUEUE"              # the queue id on a line when Postfix gave none
MAX_REPLY = 400                  # characters of reason in an SMTP reply


# --- the envelope --------------------------------------------------------------------------------

class BadRequest(ValueError):
    """A command line or an LMTP transaction we cannot read: the message stays in Postfix's queue."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises BadRequest where it would print and exit: a resident serves on."""

    def error(self, message: str):
        raise BadRequest(f"bad command line in master.cf: {message}")

    def exit(self, status: int = 0, message: str | None = None):
        raise BadRequest(f"bad command line in master.cf: {(message or 'exit').strip()}")


def command_line_parser() -> argparse.ArgumentParser:
    """The parser of a whole `agentmx ... deliver ...` command line, as the pipe client sends it to
    the worker: the global options (ignored: the worker has its own configuration) and deliver's."""
    parser = _Parser(prog="agentmx", add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--log-level")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_envelope_arguments(sub.add_parser("deliver", add_help=False))
    return parser


def envelope_from_args(args: argparse.Namespace) -> Envelope:
    """The envelope from deliver's parsed arguments (empty macros are absent values)."""
    return Envelope(sender=args.sender or "", recipient=args.recipient, queue_id=args.queue_id or None,
                    client_address=args.client_address or None, client_helo=args.client_helo or None,
                    original_recipient=args.original_recipient or None)


def envelope_from_command_line(argv: list[str], parser: argparse.ArgumentParser) -> Envelope:
    """The envelope from a whole command line (the worker's request); BadRequest if it is not one."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise BadRequest("bad command line: not a list of strings")
    return envelope_from_args(parser.parse_args(argv))


def envelope_from_lmtp(mail_from: str | None, rcpt_tos: list[str], xforward: dict[str, str]) -> Envelope:
    """The envelope of one LMTP transaction: MAIL FROM, its one RCPT TO, and what Postfix's
    XFORWARD said about the SMTP client (ADDR, HELO) and the queue id (IDENT)."""
    if len(rcpt_tos) != 1:
        raise BadRequest("one recipient per transaction (set agentmx_destination_recipient_limit = 1)")
    return Envelope(sender=mail_from or "", recipient=rcpt_tos[0], queue_id=xforward.get("IDENT") or None,
                    client_address=xforward.get("ADDR") or None, client_helo=xforward.get("HELO") or None,
                    original_recipient=None)


# --- the result: exit code, SMTP reply, the outcome line -----------------------------------------

class Result:
    """What a front-end answers for one message. exit_code is 0 or 75 and nothing else.
    (A plain class: defining a dataclass costs 0.5 ms, in every pipe process.)"""
    __slots__ = ("exit_code", "line", "state", "queue_id", "event_id", "reason")

    def __init__(self, exit_code: int, line: str, state: str, queue_id: str | None = None,
                 event_id: str | None = None, reason: str = ""):
        self.exit_code = exit_code
        self.line = line                  # the one outcome line, the queue id first
        self.state = state                # deliver's state, or "deferred" when deliver did not finish
        self.queue_id, self.event_id, self.reason = queue_id, event_id, reason

    def __repr__(self) -> str:
        return f"Result({self.exit_code}, {self.line!r})"

    @property
    def reply(self) -> str:
        """The LMTP answer after DATA: 250 when done, else 451 (Postfix retries). Never 5xx."""
        # Here, not at the top: the pipe program (a process per message) imports this module and
        # never answers in SMTP; the table costs it ~0.4 ms of start-up (python -X importtime).
        from agentmx import smtpreplies
        if self.exit_code == EX_OK:
            return smtpreplies.DELIVERED.line(state=self.state, event_id=self.event_id or "-")
        return smtpreplies.DEFERRED.line(reason=" ".join((self.reason or self.state).split())[:MAX_REPLY] or "deferred")


def from_outcome(queue_id: str | None, recipient: str, outcome: Outcome) -> Result:
    status = outcome.status if outcome.status is not None else "-"
    line = (f"{queue_id or NOQUEUE}: {outcome.state} to={recipient} id={outcome.event_id or '-'} "
            f"status={status} ({outcome.reason})")
    code = EX_OK if outcome.exit_code == EX_OK else EX_TEMPFAIL       # 0 or 75, whatever deliver said
    state = getattr(outcome.state, "value", outcome.state)     # a DeliveryState
    return Result(code, line, state, queue_id, outcome.event_id, outcome.reason)


def deferred(queue_id: str | None, why: str) -> Result:
    """deliver did not finish: the message stays in Postfix's queue."""
    return Result(EX_TEMPFAIL, f"{queue_id or NOQUEUE}: {why} (deferred)", "deferred", queue_id, None, why)


def failure(queue_id: str | None, exc: BaseException, frontend: str, logger: logging.Logger) -> Result:
    """Any exception of ours, or one we were handed, as a deferral; logged here, a traceback for a bug."""
    if isinstance(exc, (BadRequest, ConfigError)):
        result = deferred(queue_id, str(exc))
    elif isinstance(exc, StoreError):
        result = deferred(queue_id, f"the store: {exc.__class__.__name__}: {exc}")
    else:
        result = deferred(queue_id, f"internal error {exc.__class__.__name__} in agentmx {frontend}")
        logger.error("%s", result.line, exc_info=exc)
        return result
    logger.warning("%s", result.line)
    return result


# --- the configuration and the store -------------------------------------------------------------

def open_store(config: Config) -> Any:
    """The store of this process (one per process: a resident front-end reuses it for every
    message), its schema checked: an old schema defers (StoreError -> 75 / 451) until
    `agentmx store migrate` has run."""
    store = open_configured_store(config)
    store.check_schema()
    return store


def _where(config: Config) -> tuple:
    """What decides which store a configuration names."""
    return config.data_dir, getattr(config, "store", None)


class Current:
    """The configuration and the store a front-end delivers with.

    The pipe loads the file on first use (a file that does not load defers the message). A
    resident is given the configuration it started with and reloads the file when it changes
    (inode, size, times): an edit that does not load is logged and the last good one kept.
    The store is made by store_factory(config) once per process (a fork gets its own: SQLite
    connections and connection pools do not survive one) and again only when a reload moves it."""

    def __init__(self, path: Path, service: Service = Service.APP, *, config: Config | None = None,
                 store_factory: Callable[[Config], Any] = open_store,
                 loader: Callable[[Path, Service], Config] = load_config):
        self.path, self.service = Path(path), service
        self.store_factory, self.loader = store_factory, loader
        self.watch = config is not None
        self._config = config
        self._stamp = self._stat() if self.watch else None
        self._store: Any = None
        self._store_key: tuple | None = None
        self._connections: Any = None     # a resident's kept-alive connections to the endpoints
        self._connections_pid: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def resident(cls, config: Config, store_factory: Callable[[Config], Any] = open_store) -> Current:
        return cls(config.path, config.service, config=config, store_factory=store_factory)

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None                   # gone for a moment (an editor's rename): keep what we have
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def _load(self) -> Config:
        try:
            return self.loader(self.path, self.service)
        except ConfigError:
            raise
        except Exception as exc:          # e.g. a file this user may not read
            raise ConfigError(f"{self.path}: cannot load the configuration: {exc.__class__.__name__}: {exc}") \
                from exc

    def config(self) -> Config:
        if self._config is None:          # the pipe: once, on first use; ConfigError defers the message
            with self._lock:
                if self._config is None:
                    self._config = self._load()
            return self._config
        if self.watch:
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                with self._lock:
                    if stamp != self._stamp:
                        try:
                            self._config = self._load()
                            log.info("configuration reloaded from %s", self.path)
                        except ConfigError as exc:
                            log.error("configuration not reloaded, keeping the previous one: %s", exc)
                        self._stamp = stamp
        return self._config

    def get(self) -> tuple[Config, Any]:
        """(config, store) for one message."""
        config = self.config()
        key = (os.getpid(), _where(config))
        if key != self._store_key:
            with self._lock:
                if key != self._store_key:
                    self._store = self.store_factory(config)
                    self._store_key = key
        return config, self._store

    def post(self) -> Callable | None:
        """A resident's POST, on connections kept alive across messages (made once per process,
        like the store); None for the pipe: its one POST opens and closes its own."""
        if not self.watch:
            return None
        if self._connections_pid != os.getpid():
            with self._lock:
                if self._connections_pid != os.getpid():
                    self._connections = Connections()
                    self._connections_pid = os.getpid()
        return self._connections.post


# --- one message ---------------------------------------------------------------------------------

def run(frontend: str, receive: Callable[[], tuple[Envelope, bytes]], current: Current,
        logger: logging.Logger, queue_id: str | None = None) -> Result:
    """Read the request (receive: the envelope and the message bytes), deliver, and answer. Never
    raises an Exception: whatever goes wrong, the message stays in Postfix's queue. queue_id: for
    the line when the request cannot be read (the envelope's own wins)."""
    try:
        env, raw = receive()
        queue_id = env.queue_id
        config, store = current.get()
        post = current.post()
        outcome = deliver(raw, env, config, store=store, **({"post": post} if post else {}))
        result = from_outcome(queue_id, env.recipient, outcome)
    except Exception as exc:              # a bug of ours must keep the message: Postfix retries
        return failure(queue_id, exc, frontend, logger)
    logger.info("%s", result.line)
    return result


# --- residents: N processes on one unix socket ---------------------------------------------------

def bind_unix(socket_path: Path, mode: int, backlog: int = 128) -> socket.socket:
    """A listening unix socket at socket_path (a stale one removed), created with `mode`."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        socket_path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(socket_path))
    finally:
        os.umask(old)
    os.chmod(socket_path, mode)
    sock.listen(backlog)
    return sock


def serve_unix(name: str, socket_path: Path, mode: int, processes: int,
               serve: Callable[[socket.socket], None], backlog: int = 128) -> None:
    """Listen on socket_path and run serve(sock) in `processes` processes (this one and forks of
    it): deliver holds the GIL while it parses, so one process uses one core. serve() returns on
    SIGTERM or SIGINT; then the children are stopped and waited for, and the socket removed."""
    sock = bind_unix(socket_path, mode, backlog)
    children = []
    for _ in range(max(0, processes - 1)):
        pid = os.fork()
        if pid == 0:
            try:
                serve(sock)
            finally:
                os._exit(0)
        children.append(pid)
    log.info("%s listening on %s (%d process(es))", name, socket_path, processes)
    print(f"{name}: listening on {socket_path} ({processes} process(es))", file=sys.stderr, flush=True)
    try:
        serve(sock)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass
