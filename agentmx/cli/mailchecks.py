"""Mail checks, offline: `agentmx auth` (the milter's verdicts on a message file, explained) and
`agentmx parse` (the event deliver would send for it).

The handlers import the milter and deliver inside them: the parser is built on every command, and
the per-message `agentmx deliver` must not pay for the milter's verifiers (docs/decisions.md,
"Issue 20: the CLI and the SMTP replies")."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from agentmx.config import Config, DmarcMode, MilterConfig, Service, arc_sealers, load_config

from .common import config_path, parse_dns


def cmd_auth(args) -> int:
    from agentmx.milter import arheader
    from agentmx.milter.authenticate import Envelope, authenticate
    from agentmx.milter.dkimcrypto import RsaBudget
    from agentmx.resolver import Resolver

    authserv_id, servers, timeout, budget, max_rsa = "agentmx.local", (), 2.0, 40, MilterConfig.max_rsa_verifications
    sealers: tuple[str, ...] = ()
    dmarc_mode = MilterConfig.dmarc
    path = config_path(args.config)
    if args.config or path.exists():
        config = load_config(path, Service.APP)
        authserv_id, servers = config.authserv_id, config.dns.servers
        timeout, budget = config.dns.timeout, config.dns.lookup_budget
        max_rsa = config.milter.max_rsa_verifications
        sealers = config.milter.arc_trusted_sealers
        dmarc_mode = config.milter.dmarc
    if args.dmarc:
        dmarc_mode = DmarcMode(args.dmarc)
    if args.dns:
        servers = args.dns
    elif os.environ.get("AGENTMX_DNS"):
        servers = parse_dns(os.environ["AGENTMX_DNS"])
    if args.timeout:
        timeout = args.timeout
    if args.arc_trusted_sealer:
        sealers = tuple(dict.fromkeys(sealers + tuple(args.arc_trusted_sealer)))
    try:
        message = Path(args.message).read_bytes() if args.message != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"agentmx auth: {args.message}: {exc.strerror}", file=sys.stderr)
        return 2
    message = re.sub(rb"(?<!\r)\n", b"\r\n", message)      # a file with LF ends, as on the wire
    env = Envelope(client_ip=args.client_ip, helo=args.helo, mail_from=args.mail_from,
                   receiver=authserv_id)
    lookups = Resolver(servers, timeout).session(budget)
    res = authenticate(message, env, lookups, sample=args.sample, rsa_budget=RsaBudget(max_rsa),
                       arc_trusted_sealers=sealers, dmarc_mode=dmarc_mode)
    header = arheader.render(authserv_id, res)
    if args.json:
        out = asdict(res)
        out["authenticationResults"] = header
        print(json.dumps(out, indent=2))
    else:
        print(explain(res, header, sealers))
    return 0


def explain(res, header: str, sealers: tuple[str, ...] = ()) -> str:
    """A postmaster's reading of the verdicts: each result with its reason."""
    def record_lines(dm) -> list[str]:
        if dm.record is None:
            return []
        if dm.mode == DmarcMode.RFC9989.value:      # RFC 9989: no pct; np, t and what the DNS Tree Walk found
            rec = dm.record
            return [f"  record at _dmarc.{dm.record_domain}: {rec.raw}",
                    f"  policy {dm.policy} (p={rec.p} sp={rec.sp or '-'} np={rec.np or '-'} t={rec.t}"
                    f" adkim={rec.adkim} aspf={rec.aspf}); applies to this message: {dm.disposition}",
                    f"  tree walk: records at {', '.join(dm.walk) or 'no name above'}; Organizational Domain"
                    f" {dm.org_domain or 'unknown (DNS)'}",
                    f"  aligned: DKIM {dm.dkim_aligned or 'no'}, SPF {dm.spf_aligned or 'no'}"]
        return [f"  record at _dmarc.{dm.record_domain}: {dm.record.raw}",
                f"  policy {dm.policy} (p={dm.record.p} sp={dm.record.sp or '-'} pct={dm.record.pct}"
                f" adkim={dm.record.adkim} aspf={dm.record.aspf}); applies to this message: {dm.disposition}",
                f"  aligned: DKIM {dm.dkim_aligned or 'no'}, SPF {dm.spf_aligned or 'no'}"]

    lines = []
    s, h = res.spf, res.spf_helo
    lines.append(f"SPF  MAIL FROM {s.address or '<>'}: {s.result}" + (f" ({s.reason})" if s.reason else ""))
    lines.append(f"SPF  HELO {h.address or '-'}: {h.result}" + (f" ({h.reason})" if h.reason else ""))
    if not res.dkim:
        lines.append("DKIM: none (the message has no DKIM-Signature)")
    for d in res.dkim:
        lines.append(f"DKIM d={d.domain} s={d.selector} a={d.algorithm}: {d.result}"
                     + (f" ({d.reason})" if d.reason else ""))
    lines.append(f"ARC: {res.arc.result}" + (f" ({res.arc.reason})" if res.arc.reason else ""))
    dm = res.dmarc
    lines.append(f"DMARC From {dm.from_domain or '?'}: {dm.result}" + (f" ({dm.reason})" if dm.reason else ""))
    if dm.each:      # several From fields or domains: every domain's own verdict (RFC 9989 11.5)
        lines.append(f"  {len(dm.each)} From domain(s) checked; the result above is the one that applies:")
        for one in dm.each:
            lines.append(f"  DMARC From {one.from_domain}: {one.result}" + (f" ({one.reason})" if one.reason else ""))
            lines.extend("  " + line for line in record_lines(one))
    else:
        lines.extend(record_lines(dm))
    lines.extend(_override_lines(res, sealers))
    if res.iprev is not None:        # RFC 8601 section 3: does the client's PTR name map back to it?
        ip = res.iprev
        lines.append(f"iprev {ip.ip}: {ip.result}" + (f" (PTR {ip.confirmed} maps back to it)" if ip.confirmed
                                                       else f" ({ip.reason})" if ip.reason else ""))
        if ip.names:
            lines.append(f"  PTR names checked: {', '.join(ip.names)}")
    for note in res.notes:
        lines.append(f"internal error: {note}")
    lines.append(f"DNS lookups: {res.dns_lookups}")
    lines.append(f"Authentication-Results: {header}")
    return "\n".join(lines)


def _override_lines(res, sealers: tuple[str, ...]) -> list[str]:
    """Whether a trusted ARC forwarder lifted the DMARC policy (milter/arc_override.py), and why not."""
    from agentmx.milter import arc_override
    o = res.dmarc.override
    if o is not None:
        return [f"  policy override: {o.type}: the ARC chain validates, every sealer is trusted "
                f"(newest: {o.sealer}) and its earliest ARC-Authentication-Results saw dmarc=pass; "
                f"the policy's {o.evaluated} is not applied (applies: none); the DMARC result stays fail"]
    if sealers and res.dmarc.result == "fail" and res.arc.result != "none":
        return [f"  no ARC override: {arc_override.check(res.dmarc, res.arc, sealers)[1]}"]
    return []


def _sealer_arg(text: str) -> str:
    try:
        return arc_sealers([text])[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--arc-trusted-sealer wants a domain ({exc})") from None


def cmd_parse(args) -> int:
    """Print the event deliver would send for a message file, without storing or sending."""
    from agentmx.deliver import route as routing
    from agentmx.deliver.core import Envelope, build_event
    path = config_path(args.config)
    config = load_config(path, Service.APP) if (args.config or path.exists()) else Config(path=path, authserv_id="agentmx.local")
    try:
        raw = Path(args.message).read_bytes() if args.message != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"agentmx parse: {args.message}: {exc.strerror}", file=sys.stderr)
        return 2
    recipient = args.recipient or "agent@example.com"
    env = Envelope(sender=args.mail_from, recipient=recipient)
    event, _ = build_event(raw, env, config, None, time.time(), routing.match(recipient, config.routes))
    print(json.dumps(event, indent=2, ensure_ascii=False))
    return 0


def add_auth(sub) -> None:
    a = sub.add_parser("auth", help="verify SPF, DKIM, ARC and DMARC of a message file, offline",
                       description="Runs the milter's checks on MESSAGE and explains each verdict.")
    a.add_argument("message", help="the message file (.eml), or - for standard input")
    a.add_argument("--client-ip", required=True, help="the connecting client's IP address")
    a.add_argument("--helo", default="", help="the name the client gave in HELO/EHLO")
    a.add_argument("--mail-from", default="", help="the envelope sender (empty: null sender)")
    a.add_argument("--dns", type=parse_dns, help="DNS server as IP or IP:PORT (default: config, else system)")
    a.add_argument("--timeout", type=float, help="seconds per DNS lookup")
    a.add_argument("--sample", type=float, default=0.0, help="DMARC pct sample in [0,1) (default 0; rfc7489 only)")
    a.add_argument("--dmarc", choices=[m.value for m in DmarcMode],
                   help="verify DMARC per RFC 9989 or RFC 7489 (default: [milter] dmarc, else rfc9989)")
    a.add_argument("--arc-trusted-sealer", action="append", type=_sealer_arg, metavar="DOMAIN",
                   help="trust this ARC sealer, as [milter] arc_trusted_sealers does (repeatable; "
                        "added to the config's)")
    a.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    a.set_defaults(func=cmd_auth)


def add_parse(sub) -> None:
    pa = sub.add_parser("parse", help="print the event a message file would become, without sending it")
    pa.add_argument("message", help="the message file (.eml), or - for standard input")
    pa.add_argument("--recipient", help="the envelope recipient (default agent@example.com)")
    pa.add_argument("--mail-from", default="sender@example.net", help="the envelope sender")
    pa.set_defaults(func=cmd_parse)


COMMANDS = {"auth": add_auth, "parse": add_parse}
