"""`agentmx lmtp`: deliver() as an LMTP server, for Postfix's lmtp(8) client. No process per message.

Postfix's lmtp client connects to our unix socket, says LHLO, XFORWARD (the SMTP client's name,
address and HELO, and the queue id as IDENT), MAIL, one RCPT (agentmx_destination_recipient_limit
= 1, as for the pipe) and DATA. The answer after DATA is deliver's outcome in SMTP words
(frontend.Result.reply):

  exit 0 (2xx, 406 refused, held)   250 2.0.0 <state> id=<event id>
  exit 75 (everything else)         451 4.3.0 <reason>   (Postfix keeps the message and retries)

No 5xx is ever sent for a message: a refusal by the agent is a 406 that deliver records, not a
bounce. aiosmtpd speaks the protocol (dot-unstuffing, pipelining, limits); each delivery runs in a
thread, as most of it is waiting on the endpoint. Like `agentmx worker`, [worker] processes
processes share the socket (frontend.serve_unix), and the configuration is reloaded when its
file changes (frontend.Current).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, syntax

from agentmx import smtpreplies
from agentmx.config import Config

from . import frontend

log = logging.getLogger("agentmx.deliver.lmtp")
MAX_MESSAGE = 128 * 1024 * 1024        # above any sane message_size_limit (ours ships 50 MB)
XFORWARD_ATTRS = ("NAME", "ADDR", "PROTO", "HELO", "IDENT", "SOURCE", "PORT", "LOGIN", "DESTADDR", "DESTPORT")


class _Lmtp(LMTP):
    """aiosmtpd's LMTP plus Postfix's XFORWARD (who the SMTP client was, and the queue id)."""
    line_length_limit = MAX_MESSAGE     # Postfix passes long lines on as they came (lmtp_line_length_limit = 0)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        fields = getattr(self.session, "xforward", {})
        for item in (arg or "").split():
            name, _, value = item.partition("=")
            if name.upper() in XFORWARD_ATTRS:
                fields[name.upper()] = "" if value.startswith("[") and value in ("[UNAVAILABLE]", "[TEMPUNAVAIL]") \
                    else value
        self.session.xforward = fields
        await self.push(smtpreplies.XFORWARD_OK.line())

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, read in runs up to each ".<CR><LF>" instead of a line at a time: its
        loop cost ~1 µs of Python per line (20,000 lines in a 1 MB attachment). The same
        transaction: the end is a line holding only a dot; a dot at the start of any other line
        is removed (RFC 5321 4.5.2); a message above data_size_limit is read to its end and
        refused (552) as aiosmtpd does. The reader's limit (line_length_limit) bounds a run
        here, not a line: _Lmtp sets it to the largest message it takes."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push(smtpreplies.NEED_RCPT.line())
            return
        if arg:
            await self.push(smtpreplies.DATA_SYNTAX.line())
            return
        await self.push(smtpreplies.START_DATA.line())
        data = bytearray(b"\r\n")        # a line starts here: the first line is like any other
        limit = self.data_size_limit
        state = None                     # or the reply for a message not taken
        while True:
            try:
                # A run ending in ".<CR><LF>" (never past it: what Postfix sends next stays unread).
                data += await self._reader.readuntil(b".\r\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # A run longer than the reader's limit (line_length_limit: here the whole
                # message's): a message too long, or with a line too long, for another limit.
                data += await self._reader.read(exc.consumed)
                state = state or (smtpreplies.TOO_MUCH_DATA.line() if limit and len(data) - 2 > limit
                                  else smtpreplies.LINE_TOO_LONG.line())
            end = data.endswith(b"\r\n.\r\n")      # the end: a line holding only the dot
            if state is None and limit and len(data) - 2 - 3 * end > limit:
                state = smtpreplies.TOO_MUCH_DATA.line()
            if end:
                break
            if state is not None:
                del data[:-4]            # read on to the end, keeping only what could begin it
        if state is not None:
            await self.push(state)
            self._set_post_data_state()
            return
        del data[-3:]                    # the dot line; the CRLF before it ends the last line
        unstuffed = data.replace(b"\r\n.", b"\r\n")
        del data
        content = bytes(memoryview(unstuffed)[2:])
        del unstuffed
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(smtpreplies.DATA_OK.line() if status is MISSING else status)


class Handler:
    def __init__(self, current: frontend.Current, pool: ThreadPoolExecutor):
        self.current, self.pool = current, pool

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        keyword = smtpreplies.XFORWARD_KEYWORD.line(more=True, attributes=" ".join(XFORWARD_ATTRS[:6]))
        return responses[:-1] + [keyword, responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        """An exception anywhere in the session outside deliver (which frontend.run maps itself):
        451, never aiosmtpd's own "500 Error", which Postfix takes as permanent and bounces on."""
        return frontend.failure(None, error, "lmtp", log).reply

    async def handle_DATA(self, server, session, envelope) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.deliver_one, session, envelope)

    def deliver_one(self, session, envelope) -> str:
        xforward = getattr(session, "xforward", {})

        def receive():
            env = frontend.envelope_from_lmtp(envelope.mail_from, envelope.rcpt_tos, xforward)
            return env, envelope.original_content or envelope.content
        return frontend.run("lmtp", receive, self.current, log, queue_id=xforward.get("IDENT")).reply


def serve_on(sock: socket.socket, current: frontend.Current, hostname: str) -> None:
    """Serve the listening socket in this process until SIGTERM or SIGINT."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler(current, ThreadPoolExecutor(max_workers=32, thread_name_prefix="deliver"))

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


def serve(config: Config, socket_path: Path, processes: int, mode: int,
          store_factory: Callable[[Config], Any] = frontend.open_store) -> None:
    current = frontend.Current.resident(config, store_factory)
    frontend.serve_unix("agentmx lmtp", socket_path, mode, processes,
                        lambda sock: serve_on(sock, current, config.authserv_id))
