"""`agentmx lmtp`: deliver() as an LMTP server, for Postfix's lmtp(8) client. No process per message.

Postfix's lmtp client connects to our unix socket, says LHLO, XFORWARD (the SMTP client's name,
address and HELO, and the queue id as IDENT), MAIL, one RCPT (agentmx_destination_recipient_limit
= 1, as for the pipe) and DATA. The answer after DATA is deliver's outcome in SMTP words:

  exit 0 (2xx, 406 refused, held)   250 2.0.0 <state> id=<event id>
  exit 75 (everything else)         451 4.3.0 <reason>   (Postfix keeps the message and retries)

No 5xx is ever sent for a message: a refusal by the agent is a 406 that deliver records, not a
bounce. aiosmtpd speaks the protocol (dot-unstuffing, pipelining, limits); each delivery runs in a
thread, as most of it is waiting on the endpoint. Like `agentmx worker`, [worker] processes
children share the socket, and the configuration is reloaded when its file changes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import syntax

from agentmx.config import Config
from agentmx.worker import _Configs, bind_unix

log = logging.getLogger("agentmx.lmtp")
MAX_MESSAGE = 128 * 1024 * 1024        # above any sane message_size_limit (ours ships 50 MB)
XFORWARD_ATTRS = ("NAME", "ADDR", "PROTO", "HELO", "IDENT", "SOURCE", "PORT", "LOGIN", "DESTADDR", "DESTPORT")


class _Lmtp(LMTP):
    """aiosmtpd's LMTP plus Postfix's XFORWARD (who the SMTP client was, and the queue id)."""
    line_length_limit = MAX_MESSAGE     # Postfix passes long lines on as they came (lmtp_line_length_limit = 0)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        fields = getattr(self.session, "xforward", {})
        for item in arg.split():
            name, _, value = item.partition("=")
            if name.upper() in XFORWARD_ATTRS:
                fields[name.upper()] = "" if value.startswith("[") and value in ("[UNAVAILABLE]", "[TEMPUNAVAIL]") \
                    else value
        self.session.xforward = fields
        await self.push("250 2.0.0 Ok")


class Handler:
    def __init__(self, configs: _Configs, pool: ThreadPoolExecutor):
        self.configs, self.pool = configs, pool

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD " + " ".join(XFORWARD_ATTRS[:6]), responses[-1]]

    async def handle_DATA(self, server, session, envelope) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.deliver_one, session, envelope)

    def deliver_one(self, session, envelope) -> str:
        from agentmx.deliver.core import Envelope, deliver
        xf = getattr(session, "xforward", {})
        qid = xf.get("IDENT") or "NOQUEUE"
        try:
            if len(envelope.rcpt_tos) != 1:     # agentmx_destination_recipient_limit = 1
                return "451 4.3.0 one recipient per transaction (set agentmx_destination_recipient_limit = 1)"
            raw = envelope.original_content or envelope.content
            env = Envelope(sender=envelope.mail_from or "", recipient=envelope.rcpt_tos[0], queue_id=xf.get("IDENT"),
                           client_address=xf.get("ADDR") or None, client_helo=xf.get("HELO") or None,
                           original_recipient=None)
            outcome = deliver(raw, env, self.configs.get())
            text = (f"{qid}: {outcome.state} to={env.recipient} id={outcome.event_id or '-'} "
                    f"status={outcome.status if outcome.status is not None else '-'} ({outcome.reason})")
            log.info("%s", text)
            if outcome.exit_code == 0:
                return f"250 2.0.0 {outcome.state} id={outcome.event_id or '-'}"
            return "451 4.3.0 " + _one_line(outcome.reason or outcome.state)
        except Exception as exc:         # a bug of ours: the message stays in Postfix
            log.exception("%s: internal error", qid)
            return f"451 4.3.0 internal error {exc.__class__.__name__} in agentmx lmtp (deferred)"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def serve(config: Config, socket_path: Path, processes: int, mode: int) -> None:
    sock = bind_unix(socket_path, mode)
    import agentmx.deliver.core  # noqa: F401   (warm before forking)
    import agentmx.deliver.extract  # noqa: F401
    children = []
    for _ in range(max(0, processes - 1)):
        pid = os.fork()
        if pid == 0:
            try:
                _run(config, sock)
            finally:
                os._exit(0)
        children.append(pid)
    print(f"agentmx lmtp: listening on {socket_path} ({processes} process(es))", file=sys.stderr, flush=True)
    try:
        _run(config, sock)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass


def _run(config: Config, sock: socket.socket) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler(_Configs(config), ThreadPoolExecutor(max_workers=32, thread_name_prefix="deliver"))
    hostname = config.authserv_id

    def factory():
        return _Lmtp(handler, hostname=hostname, data_size_limit=MAX_MESSAGE, decode_data=False,
                     enable_SMTPUTF8=True, timeout=300, loop=loop)
    server = loop.run_until_complete(loop.create_unix_server(factory, sock=sock))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("lmtp serving (pid %d)", os.getpid())
    try:
        loop.run_until_complete(stop.wait())
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
