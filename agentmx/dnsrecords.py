"""What to publish in DNS for a domain agentmx receives and sends for, and a check of what is
published: pure functions of the config, the keys on disk and (for the check) a DNS session."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from . import dkimkeys
from .config import Config
from .resolver import DnsTempError, Lookups


@dataclass(frozen=True)
class Record:
    name: str                 # fully qualified, without the trailing dot
    rtype: str                # MX or TXT
    value: str                # MX: "10 host"; TXT: the whole text (split into strings when printed)
    what: str                 # for the reader: MX, SPF, DKIM <selector> (<alg>), DMARC


HELO = "SPF HELO"
HELO_SPF = "v=spf1 a -all"


def _keys(config: Config, domain: str) -> tuple[list[dkimkeys.DkimKey], tuple[str, ...]]:
    """The domain's DKIM keys on disk, and, when this process may not read them (serve and
    deliver run as agentmx; the keys are the milter's: docs/operator.md, "Who may read what"),
    none and the selectors [domains] dkim_selectors names instead."""
    try:
        return dkimkeys.keys_of(config.key_dir, domain), ()
    except PermissionError:
        settings = config.domain(domain)
        return [], settings.dkim_selectors if settings else ()


def records(config: Config, domain: str) -> list[Record]:
    """What to publish. A DKIM record whose key this process may not read has an empty value."""
    domain = domain.lower().rstrip(".")
    host = config.mail_host or config.authserv_id
    out = [Record(domain, "MX", f"10 {host}", "MX"),
           Record(domain, "TXT", f"v=spf1 mx a:{host} -all", "SPF")]
    if host.lower() != domain:
        # The HELO identity (RFC 7208 section 2.3): our SMTP client greets as the host, and
        # receivers check SPF for that name too. `a`: the host's own A/AAAA records, the address
        # the domain's SPF (a:host) already names for our outbound mail. The same record for every
        # domain this host serves: publish it once. (A host named as the domain needs none: the
        # domain's record covers it, and a second v=spf1 at one name is a permerror.)
        out.append(Record(host.lower(), "TXT", HELO_SPF, HELO))
    keys, unreadable = _keys(config, domain)
    for key in keys:
        out.append(Record(key.dns_name, "TXT", key.txt, f"DKIM {key.selector} ({key.algorithm})"))
    for selector in unreadable:                # the value needs the key: `agentmx dns` as root prints it
        out.append(Record(f"{selector}._domainkey.{domain}", "TXT", "", f"DKIM {selector}"))
    out.append(Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:dmarc-reports@{domain}",
                      "DMARC"))
    settings = config.domain(domain)
    if settings and settings.mta_sts:
        # The id changes whenever the policy does (mode or MX), so senders refetch it.
        policy_id = hashlib.sha256(f"{settings.mta_sts} {host}".encode()).hexdigest()[:20]
        out.append(Record(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={policy_id}",
                          f"MTA-STS (serve https://mta-sts.{domain}/.well-known/mta-sts.txt: "
                          f"version: STSv1 / mode: {settings.mta_sts} / mx: {host} / max_age: 604800)"))
    if settings and settings.tls_rpt:
        out.append(Record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua={settings.tls_rpt}", "TLS-RPT"))
    return out


def zone_lines(recs: list[Record]) -> str:
    lines = []
    for r in recs:
        if not r.value:
            lines.append(f"; {r.what}: {r.name}: this user may not read its key; run `agentmx dns` as root")
            continue
        if r.rtype == "TXT":
            value = " ".join(f'"{part}"' for part in dkimkeys.txt_strings(r.value))
        else:
            value = r.value + "."
        lines.append(f"; {r.what}\n{r.name}.\t3600\tIN\t{r.rtype}\t{value}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Finding:
    record: str               # what (MX, SPF, DKIM s1 (rsa), DMARC)
    status: str               # ok, missing, wrong, unknown (DNS failed), published (a DKIM key whose
                              # private key this process may not read: published, not compared)
    detail: str


def _tag(txt: str, tag: str) -> str | None:
    m = re.search(rf"(?:^|;)\s*{tag}\s*=\s*([^;]*)", txt, re.I)
    return re.sub(r"\s+", "", m.group(1)) if m else None


def _check_helo(host: str, txt) -> Finding:
    """The host's own SPF record (the HELO identity): one v=spf1 that names the host's address."""
    try:
        spf = [t for t in txt(host) if t.lower().startswith("v=spf1")]
    except DnsTempError as exc:
        return Finding(HELO, "unknown", str(exc))
    if not spf:
        return Finding(HELO, "missing", f"no v=spf1 record at {host} (publish {HELO_SPF!r})")
    if len(spf) > 1:
        return Finding(HELO, "wrong", f"{len(spf)} SPF records at {host} (permerror for every receiver): "
                                      f"keep one, {HELO_SPF!r}")
    covers = re.search(rf"(^|\s)[+]?(a(?:/[\d/]*)?|a:{re.escape(host)}|include:\S+)(\s|$)", spf[0], re.I)
    return Finding(HELO, "ok" if covers else "wrong",
                   spf[0] if covers else f"{spf[0]!r} at {host} does not cover its own address (publish {HELO_SPF!r})")


def check(config: Config, domain: str, lookups: Lookups) -> list[Finding]:
    """Record by record: is what we need published, and does it match?"""
    domain = domain.lower().rstrip(".")
    host = (config.mail_host or config.authserv_id).lower()
    out: list[Finding] = []

    def txt(name: str) -> list[str]:
        return [r.decode("utf-8", "replace") for r in lookups.txt(name)]

    try:
        mx = [h.lower() for _, h in lookups.lookup(domain, "MX").records]
        out.append(Finding("MX", "ok" if host in mx else ("wrong" if mx else "missing"),
                           f"MX {', '.join(mx) or 'none'}; expected {host}"))
    except DnsTempError as exc:
        out.append(Finding("MX", "unknown", str(exc)))
    try:
        spf = [t for t in txt(domain) if t.lower().startswith("v=spf1")]
        if not spf:
            out.append(Finding("SPF", "missing", f"no v=spf1 record at {domain}"))
        elif len(spf) > 1:
            out.append(Finding("SPF", "wrong", f"{len(spf)} SPF records (permerror for every receiver)"))
        else:
            covers = re.search(rf"(^|\s)[+]?(mx|a:{re.escape(host)}|include:)", spf[0], re.I)
            out.append(Finding("SPF", "ok" if covers else "wrong",
                               spf[0] if covers else f"{spf[0]!r} does not cover {host} (add mx or a:{host})"))
    except DnsTempError as exc:
        out.append(Finding("SPF", "unknown", str(exc)))
    if host != domain:
        out.append(_check_helo(host, txt))
    keys, unreadable = _keys(config, domain)
    for selector in unreadable:
        name = f"{selector}._domainkey.{domain}"
        try:
            published = [t for t in txt(name) if _tag(t, "p")]
        except DnsTempError as exc:
            out.append(Finding(f"DKIM {selector}", "unknown", str(exc)))
            continue
        out.append(Finding(f"DKIM {selector}", "published" if published else "missing",
                           f"a key is published at {name}; this user may not read the private key to compare "
                           f"(`agentmx check` as root does)" if published else f"no key at {name}"))
    for key in keys:
        what = f"DKIM {key.selector} ({key.algorithm})"
        try:
            published = [t for t in txt(key.dns_name) if _tag(t, "p") is not None]
        except DnsTempError as exc:
            out.append(Finding(what, "unknown", str(exc)))
            continue
        if not published:
            out.append(Finding(what, "missing", f"no key at {key.dns_name}"))
        elif _tag(published[0], "p") != key.public_b64:
            out.append(Finding(what, "wrong", f"{key.dns_name} publishes a key that does not match the private key"))
        else:
            out.append(Finding(what, "ok", key.dns_name))
    try:
        dmarc = [t for t in txt(f"_dmarc.{domain}") if t.replace(" ", "").upper().startswith("V=DMARC1")]
        out.append(Finding("DMARC", "ok" if len(dmarc) == 1 else ("wrong" if dmarc else "missing"),
                           dmarc[0] if len(dmarc) == 1 else (f"{len(dmarc)} DMARC records" if dmarc
                                                             else f"no record at _dmarc.{domain}")))
    except DnsTempError as exc:
        out.append(Finding("DMARC", "unknown", str(exc)))
    return out
