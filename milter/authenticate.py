"""authenticate(): every inbound check of one message, as one pure call.

Input: the message as received (bytes), the SMTP envelope, a DNS session, a sample in [0, 1) for
DMARC's pct. Output: AuthResults. No I/O but DNS through the session; no exception escapes for
any message: a check that breaks on input it cannot read reports permerror; DNS failures and
our own unexpected errors report temperror, so that no bug of ours can ever cause a 5xx.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from agentmx import fromheader, headerblock
from agentmx.config import DmarcMode
from agentmx.resolver import Lookups

from . import arc_override, bodyhash, dkim_check, dmarc_check, iprev_check, spf_check
from .dkimcrypto import Bodies, RsaBudget
from .results import ArcResult, AuthResults, DkimResult, DmarcResult, IprevResult, SpfResult

log = logging.getLogger("agentmx.milter.authenticate")


@dataclass(frozen=True)
class Envelope:
    client_ip: str
    helo: str
    mail_from: str                  # without angle brackets; "" for the null sender
    receiver: str = ""              # our host name, for SPF's %{r} macro


def from_header_values(message: bytes) -> list[str]:
    """Every From field's value, also in the obsolete syntax `From :` that the stdlib parser
    drops as an mbox From_ line (agentmx/fromheader.py). Only the header block is read (the
    stdlib parser reads a whole message even for headers: ~30 ms for a 1 MB attachment,
    bench/pipeline), cut where the DKIM check cuts it (agentmx/headerblock.py)."""
    return fromheader.from_values(headerblock.split(message)[0])


def authenticate(message: bytes, env: Envelope, lookups: Lookups, sample: float = 0.0,
                 rsa_budget: RsaBudget | None = None, arc_trusted_sealers: tuple[str, ...] = (),
                 dmarc_mode: DmarcMode = DmarcMode.RFC9989, body_digests: dict | None = None) -> AuthResults:
    """`body_digests`: the body hashes the signatures need (dkim_check.body_wants), streamed by the
    milter as the body came (bodyhash.py); `message` is then the header block alone. Without
    them, they are computed here from the message's body, with the same hasher, in one pass."""
    notes = []
    rsa = rsa_budget if rsa_budget is not None else RsaBudget()     # DKIM and ARC share it
    head, body = headerblock.split(message)
    if body_digests is None:        # dkimpy reads the header block only; the body is hashed once here
        bodies = _guard("dkim body", notes,
                        lambda: Bodies(bodyhash.digests(body, dkim_check.body_wants(head)), body), Bodies(body=body))
    else:
        bodies = Bodies(body_digests)
    helo = _guard("spf helo", notes, lambda: spf_check.check_helo(lookups, env.client_ip, env.helo, env.receiver),
                  SpfResult("temperror", "helo", env.helo, env.helo, "internal error"))
    mfrom = _guard("spf mailfrom", notes,
                   lambda: spf_check.check_mailfrom(lookups, env.client_ip, env.mail_from, env.helo, helo, env.receiver),
                   SpfResult("temperror", "mailfrom", "", env.mail_from, "internal error"))
    dkim = _guard("dkim", notes, lambda: dkim_check.verify_dkim(head, lookups, rsa, bodies),
                  (DkimResult("temperror", reason="internal error reading the signatures"),))
    arc = _guard("arc", notes, lambda: dkim_check.verify_arc(head, lookups, rsa, bodies),
                 ArcResult("temperror", reason="internal error reading the ARC set"))
    dmarc = _guard("dmarc", notes,
                   lambda: dmarc_check.evaluate(lookups, from_header_values(head), mfrom, dkim, sample,
                                                dmarc_mode),
                   DmarcResult("temperror", reason="internal error"))
    if arc_trusted_sealers:     # a trusted forwarder's ARC chain may lift the policy (arc_override.py)
        dmarc = _guard("arc override", notes, lambda: arc_override.apply(dmarc, arc, arc_trusted_sealers), dmarc)
    # Last: its up to 11 lookups never take the budget from SPF, DKIM or DMARC.
    iprev = _guard("iprev", notes, lambda: iprev_check.check(lookups, env.client_ip),
                   IprevResult("temperror", env.client_ip, reason="internal error"))
    return AuthResults(spf=mfrom, spf_helo=helo, dkim=dkim, arc=arc, dmarc=dmarc,
                       dns_lookups=lookups.count, notes=tuple(notes), iprev=iprev)


def _guard(stage: str, notes: list, run, fallback):
    """Run one check; an unexpected exception becomes the fallback verdict and a logged note."""
    try:
        return run()
    except Exception as exc:          # the milter must survive any message: say what broke
        log.exception("%s check failed on this message", stage)
        notes.append(f"{stage}: {exc.__class__.__name__}")
        return fallback
