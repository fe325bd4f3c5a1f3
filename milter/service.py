"""The milter process: pymilter callbacks around authenticate(). The only I/O edge of inbound checks.

Per message: collect the envelope and the headers (raw, with their leading space); hash the body
per chunk as it comes, for the DKIM and ARC signatures the headers carry (bodyhash.py: the body is
not kept unless rspamd reads it); at end of message remove every Authentication-Results header
that claims our authserv-id, verify, prepend one Authentication-Results header, and answer per
policy. Mail we send (SASL logins, the send API's submission service, local submission, trusted
networks: signscope.py) is not verified (forged headers are still removed); it is DKIM-signed
with its From domain's keys (sign.py) only when that From address is allowed for whoever
submitted it, else passed unsigned with the reason logged.

Any unexpected exception in a callback answers TEMPFAIL (4xx), never 5xx; Postfix's
milter_default_action = tempfail covers a milter that is not running.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import random
import re
import socket
import time
from pathlib import Path

import Milter
import milter as libmilter

from agentmx import blocklist, smtpreplies, spamheader
from agentmx.authservid import claims_id
from agentmx.config import Config
from agentmx.dkimkeys import load, path_for as key_path_for
from agentmx.resolver import Resolver

from . import arheader, dkim_check, policy, procs, sign, spam_check
from .authenticate import Envelope, authenticate, from_header_values
from .bodyhash import RELAXED, BodyHasher
from .dkimcrypto import RsaBudget
from .signscope import Client, Submitter, decide, describe, submitter
from .stats import MilterStats, path_for

log = logging.getLogger("agentmx.milter")

AR = "Authentication-Results"
_AR_LOWER = AR.lower()                      # header() runs per field: lowered once here
_SPAM_LOWER = spamheader.HEADER.lower()


class QueueIdAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"{self.extra.get('qid') or 'NOQUEUE'}: {msg}", kwargs


def _tempfail_on_error(callback):
    """A bug of ours must never become a 5xx or a dead thread: log it and answer TEMPFAIL."""
    @functools.wraps(callback)
    def wrapper(self, *args):
        try:
            return callback(self, *args)
        except Exception:
            self.log.exception("internal error in %s; answering tempfail", callback.__name__)
            try:
                self.setreply(*smtpreplies.MILTER_INTERNAL_ERROR.args())
            except Exception:
                self.log.debug("setreply unavailable in %s", callback.__name__)
            return Milter.TEMPFAIL
    return wrapper


def _tempfail_at_eom(callback):
    """For the callbacks Postfix does not wait on (header, eoh, body: @Milter.noreply, no reply a
    header, which saves a round trip per header field): a bug of ours is logged and the message
    answered TEMPFAIL at its end (eom), never a 5xx; the rest of the message is not looked at."""
    @functools.wraps(callback)
    def wrapper(self, *args):
        if self.broken:
            return Milter.CONTINUE
        try:
            return callback(self, *args)
        except Exception:
            self.log.exception("internal error in %s; answering tempfail at the end of the message",
                               callback.__name__)
            self.broken = callback.__name__
            return Milter.CONTINUE
    return wrapper


@Milter.header_leading_space
class AuthMilter(Milter.Base):
    """One instance per SMTP connection (pymilter's factory); never shared between threads."""

    def __init__(self, config: Config, resolver: Resolver, rng: random.Random,
                 signing_keys: dict[str, list] | None = None, stats: MilterStats | None = None,
                 blocks: blocklist.Snapshot | None = None):
        super().__init__()
        self.config = config
        self.blocks = blocks
        self.signing_keys = signing_keys or {}
        self.stats = stats or MilterStats(None)
        self.resolver = resolver
        self.rng = rng
        self.client_ip = ""
        self.client_name = ""
        self.client_inet = False
        self.daemon_name = ""
        self.helo_name = ""
        self.log = QueueIdAdapter(log, {"qid": None})
        self._reset()

    def _reset(self) -> None:
        self.mail_from = ""
        self.rcpt_domains: list[str] = []
        self.rcpts: list[str] = []
        self.headers: list[bytes] = []
        self.forged: list[int] = []          # 1-based indexes among Authentication-Results fields
        self.ar_count = 0
        self.spam_headers = 0                # incoming X-Agentmx-Spam fields: all removed
        self.head: bytes | None = None       # the header block, CRLF, from the end of the headers on
        self.hasher: BodyHasher | None = None    # the body hashes, streamed per body chunk
        self.body_buf: io.BytesIO | None = None  # the body itself: kept for rspamd only
        self.submitter = Submitter.OUTSIDE
        self.login = ""
        self.broken = ""                     # the callback a bug of ours broke: tempfail at eom
        self.log = QueueIdAdapter(log, {"qid": None})

    # --- SMTP stages ----------------------------------------------------------------------------

    @_tempfail_on_error
    def connect(self, hostname, family, hostaddr):
        self.client_name = hostname or ""
        self.daemon_name = self.getsymval("{daemon_name}") or ""
        self.log.debug("connect %r family=%s hostaddr=%r daemon_name=%r", hostname, family, hostaddr,
                       self.daemon_name)
        self.client_inet = bool(family in (socket.AF_INET, socket.AF_INET6) and hostaddr and hostaddr[1])
        if self.client_inet:
            self.client_ip = str(hostaddr[0])
        else:
            # Local submission: sendmail(1)/pickup through non_smtpd_milters (Postfix's cleanup
            # presents it as 127.0.0.1 port 0, which no SMTP client can have), or an smtpd on a
            # unix-domain socket (family unknown, no address), such as the send API's service.
            self.client_ip = "127.0.0.1"
        return Milter.CONTINUE

    @_tempfail_on_error
    def hello(self, heloname):
        self.helo_name = heloname or ""
        return Milter.CONTINUE

    @_tempfail_on_error
    def envfrom(self, mailfrom, *params):
        self._reset()
        self.mail_from = (mailfrom or "").strip().strip("<>")
        self.log.extra["qid"] = self.getsymval("i")
        self.login = self.getsymval("{auth_authen}") or ""
        self.submitter = submitter(Client(self.client_inet, self.client_ip, self.daemon_name, self.login),
                                   self.config)
        return Milter.CONTINUE

    @_tempfail_on_error
    def envrcpt(self, rcpt, *params):
        rcpt = rcpt.strip().strip("<>")
        # A sender an agent blocked (its block-sender answer) for this recipient: refused here,
        # this recipient only. The block list fails open (blocklist.Snapshot): never a 5xx of ours.
        scope = self.blocks.blocked(self.mail_from, rcpt) if self.blocks and not self.submitter.ours else None
        if scope:
            self.log.info("refused RCPT %s: sender %s is blocked for %s", rcpt, self.mail_from, scope)
            self.stats.count("blocked")
            self.setreply(*smtpreplies.SENDER_BLOCKED.args(rcpt=rcpt))
            return Milter.REJECT
        self.rcpts.append(rcpt)
        self.rcpt_domains.append(rcpt.rpartition("@")[2].lower())
        return Milter.CONTINUE

    @Milter.nocallback
    def data(self):
        return Milter.CONTINUE

    @Milter.nocallback
    def unknown(self, cmd):
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    @_tempfail_at_eom
    def header(self, name, value):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        lower = name.lower()
        if lower == _AR_LOWER:
            self.ar_count += 1
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if claims_id(text, self.config.authserv_id):
                self.forged.append(self.ar_count)
        elif lower == _SPAM_LOWER:
            self.spam_headers += 1
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        self.headers.append(name.encode("ascii", "replace") + b":" + value)
        return Milter.CONTINUE

    @Milter.noreply
    @_tempfail_at_eom
    def eoh(self):
        self._start_body()
        return Milter.CONTINUE

    def _start_body(self) -> None:
        """At the end of the headers: the body hashes this message needs, and whether the body is
        kept. Mail we verify: the hashes its DKIM and ARC signatures' c= and l= ask for; mail we
        sign: relaxed, ours. The body is kept only for rspamd, which reads the whole message (and,
        should reading the signatures fail, to hash it at the end as before)."""
        if self.head is not None:
            return
        self.head = _assemble(self.headers, b"")
        if self.submitter.ours:
            self.hasher = BodyHasher([(RELAXED, None)] if self.signing_keys else [])
            return
        try:
            self.hasher = BodyHasher(dkim_check.body_wants(self.head))
        except Exception:       # a bug of ours: verify as before, from the whole body at the end
            self.log.exception("the signatures' c= and l= could not be read; the body is kept")
            self.hasher = None
        if self.hasher is None or self.config.milter.rspamd_url:
            self.body_buf = io.BytesIO()

    @Milter.noreply
    @_tempfail_at_eom
    def body(self, chunk):
        self._start_body()
        if self.hasher is not None:
            self.hasher.update(chunk)
        if self.body_buf is not None:
            self.body_buf.write(chunk)
        return Milter.CONTINUE

    @_tempfail_on_error
    def eom(self):
        qid = self.getsymval("i") or self.log.extra.get("qid")
        self.log.extra["qid"] = qid
        if self.broken:
            raise RuntimeError(f"{self.broken} failed on this message (logged above)")
        self._start_body()
        for idx in reversed(self.forged):
            self.chgheader(AR, idx, "")          # an empty value deletes the field
        if self.forged:
            self.log.warning("removed %d Authentication-Results header(s) claiming %s",
                             len(self.forged), self.config.authserv_id)
        for idx in range(self.spam_headers, 0, -1):
            self.chgheader(spamheader.HEADER, idx, "")
        if self.spam_headers:
            self.log.warning("removed %d incoming %s header(s)", self.spam_headers, spamheader.HEADER)
        if self.submitter.ours:
            self.log.info("not verified: submitted by %s (%s, %s)",
                          describe(self.submitter, self.login, self.config), self.client_ip,
                          self.client_name or "local")
            self.stats.count("signed" if self._sign() else "trusted")
            return Milter.ACCEPT

        started = time.monotonic()
        env = Envelope(client_ip=self.client_ip, helo=self.helo_name, mail_from=self.mail_from,
                       receiver=self.config.authserv_id)
        lookups = self.resolver.session(self.config.dns.lookup_budget)
        message = self.head if self.body_buf is None else self.head + self.body_buf.getvalue()
        res = authenticate(message, env, lookups, sample=self.rng.random(),
                           rsa_budget=RsaBudget(self.config.milter.max_rsa_verifications),
                           arc_trusted_sealers=self.config.milter.arc_trusted_sealers,
                           dmarc_mode=self.config.milter.dmarc,
                           body_digests=self.hasher.digests() if self.hasher is not None else None)
        # With header_leading_space negotiated, the value carries its own leading space.
        self.addheader(AR, arheader.fold(arheader.render(self.config.authserv_id, res)), 0)
        spam = spam_check.check(self.config.milter.rspamd_url, message,
                                spam_check.SpamEnvelope(self.client_ip, self.helo_name, self.client_name,
                                                        self.mail_from, tuple(self.rcpts), qid),
                                self.config.milter.rspamd_timeout) if self.config.milter.rspamd_url else None
        if spam is not None:
            self.addheader(spamheader.HEADER, " " + spamheader.render(self.config.authserv_id, spam), 0)

        decision = policy.decide(res, policy.combine(self.config.policy_for(d) for d in self.rcpt_domains))
        self.log.info(
            "spf=%s helo=%s dkim=%s arc=%s dmarc=%s spam=%s from=%s client=%s lookups=%d ms=%d action=%s",
            res.spf.result, res.spf_helo.result, ",".join(d.result for d in res.dkim) or "none",
            res.arc.result, res.dmarc.result,
            f"{spam.verdict}({spam.score if spam.score is not None else spam.reason})" if spam else "off",
            res.dmarc.from_domain or "-", self.client_ip,
            res.dns_lookups, (time.monotonic() - started) * 1000, decision.action)
        self.stats.count(decision.action, {"spf": res.spf.result, "dkim": res.dkim_summary,
                                           "dmarc": res.dmarc.result, "arc": res.arc.result},
                         (time.monotonic() - started) * 1000)
        if decision.action == "accept":
            return Milter.ACCEPT
        self.setreply(decision.code, decision.xcode, decision.text)
        return Milter.REJECT if decision.action == "reject" else Milter.TEMPFAIL

    def _sign(self) -> bool:
        """Our own mail: DKIM-sign it with its From domain's keys, if its submitter may send as it."""
        decision = decide(self.submitter, self.login, from_header_values(self.head), self.config,
                          self.signing_keys.keys())
        if not decision.sign:
            self.log.info("not signed: %s", decision.reason)
            return False
        domain = decision.domain
        keys = self.signing_keys[domain]
        for value in sign.sign(self.head, keys, body_digest=self.hasher.digests()[RELAXED, None]):
            self.addheader("DKIM-Signature", value, 0)
        self.log.info("signed d=%s s=%s: %s", domain, ",".join(k.selector for k in keys), decision.reason)
        return True

    def abort(self):
        self._reset()
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


_BARE_LF = re.compile(rb"(?<!\r)\n")


def _assemble(headers: list[bytes], body: bytes) -> bytes:
    """The message as the client sent it: header lines with CRLF, a blank line, the body."""
    out = io.BytesIO()
    for h in headers:
        out.write(_BARE_LF.sub(b"\r\n", h))
        out.write(b"\r\n")
    out.write(b"\r\n")
    out.write(body)
    return out.getvalue()


def signing_keys(config: Config) -> dict[str, list]:
    """The keys that sign for each domain ([domains."d"] dkim_selectors), loaded once at start."""
    out: dict[str, list] = {}
    for d in config.domains:
        for sel in d.dkim_selectors:
            for alg in ("rsa", "ed25519"):
                path = key_path_for(config.key_dir, d.name, sel, alg)
                if path.exists():
                    out.setdefault(d.name, []).append(load(path, d.name))
    return out


def run(config: Config) -> None:
    """Serve on the configured unix socket until stopped: in this process ([milter] processes = 1),
    else in that many children of this one (milter/procs.py), each with its own resolver (and so
    its own DNS cache), random numbers, counters file and block list."""
    sock = config.milter.socket
    sock.parent.mkdir(parents=True, exist_ok=True)
    keys = signing_keys(config)              # once, before any fork: a bad key stops the start
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    os.umask(0o777 & ~config.milter.socket_mode)
    n = config.milter.processes
    if n == 1:
        try:
            sock.unlink()                    # a stale socket from a previous run
        except FileNotFoundError:
            pass
        log.info("listening on unix:%s (authserv-id %s)", sock, config.authserv_id)
        _serve(config, keys, f"unix:{sock}", 0)
        log.info("stopped")
        return

    def open_socket(path: str) -> None:          # what Milter.runmilter does before smfi_main
        libmilter.setconn(f"unix:{path}")
        libmilter.register("agentmx")
        libmilter.opensocket(True)

    tmp, ident = procs.bind(sock, open_socket)
    conn = f"unix:{tmp}"                     # the children's runmilter finds it open already
    log.info("listening on unix:%s with %d processes (authserv-id %s)", sock, n, config.authserv_id)
    try:
        procs.supervise(n, lambda slot: _serve(config, keys, conn, slot), wake=lambda: _knock(sock, ident))
    finally:
        procs.unbind(sock, ident)
    log.info("stopped")


def _knock(sock: Path, ident: tuple[int, int]) -> None:
    """A connection to the milter socket, closed at once: wakes the processes' accept loops. Only
    while the path is still our socket (not a newer milter's, renamed onto it since)."""
    if procs.identity(sock) != ident:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        s.connect(str(sock))


def _serve(config: Config, keys: dict[str, list], conn: str, slot: int) -> None:
    """One milter process's accept loop (libmilter's threads), with its own per-process state."""
    resolver = Resolver.from_config(config.dns)
    rng = random.Random()                    # seeded here, after the fork: each process its own
    stats = MilterStats(path_for(Path(config.data_dir) / "stats", slot))
    blocks = blocklist.Snapshot(blocklist.path_in(config.data_dir), config.routes)
    Milter.factory = lambda: AuthMilter(config, resolver, rng, keys, stats, blocks)
    try:
        Milter.runmilter("agentmx", conn, config.milter.timeout)
    finally:
        stats.flush()
