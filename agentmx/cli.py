"""The `agentmx` command. Each subcommand imports only what it needs (the pipe path stays lean)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from .times import rfc3339
from .config import (DEFAULT_PATH, ConfigError, DmarcMode, MilterConfig, Service, arc_sealers, dns_servers,
                     load_config)


def _config_path(arg: str | None) -> Path:
    """--config, else $AGENTMX_CONFIG, else $AGENTMX_DIR/agentmx.toml, else /etc/agentmx/agentmx.toml."""
    if arg or os.environ.get("AGENTMX_CONFIG"):
        return Path(arg or os.environ["AGENTMX_CONFIG"])
    if os.environ.get("AGENTMX_DIR"):
        return Path(os.environ["AGENTMX_DIR"]) / "agentmx.toml"
    return DEFAULT_PATH


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(name)s[%(process)d]: %(levelname)s %(message)s")


@contextmanager
def _store(config):
    """The configured store, its schema checked, closed after the command."""
    from agentmx.store import open_store
    store = open_store(config)
    try:
        store.check_schema()
        yield store
    finally:
        store.close()


def cmd_milter(args) -> int:
    config = load_config(_config_path(args.config), Service.MILTER)
    from agentmx.milter import service
    service.run(config)
    return 0


def cmd_check_config(args) -> int:
    config = load_config(_config_path(args.config), Service(args.service))
    print(f"{config.path}: ok (authserv-id {config.authserv_id}, {len(config.routes)} route(s))")
    return 0


def _parse_dns(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return dns_servers([text])
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--dns wants IP or IP:PORT ({exc})") from None


def cmd_auth(args) -> int:
    from agentmx.milter import arheader
    from agentmx.milter.authenticate import Envelope, authenticate
    from agentmx.milter.dkimcrypto import RsaBudget
    from agentmx.resolver import Resolver

    authserv_id, servers, timeout, budget, max_rsa = "agentmx.local", (), 2.0, 40, MilterConfig.max_rsa_verifications
    sealers: tuple[str, ...] = ()
    dmarc_mode = MilterConfig.dmarc
    path = _config_path(args.config)
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
        servers = _parse_dns(os.environ["AGENTMX_DNS"])
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


def cmd_deliver(args) -> int:
    """The Postfix pipe program: the message on stdin, exit 0 or 75 (never anything else)."""
    from agentmx.deliver import pipe
    return pipe.main(args, _config_path(args.config))


def cmd_worker(args) -> int:
    """deliver, resident, behind the lean pipe client (deliver/worker.py, deliver/pipeclient.py)."""
    config = load_config(_config_path(args.config), Service.APP)
    from agentmx.deliver import worker
    worker.serve(config, Path(args.socket) if args.socket else config.worker.socket,
                 args.processes or config.worker.processes, config.worker.socket_mode)
    return 0


def cmd_lmtp(args) -> int:
    """deliver as an LMTP server for Postfix's lmtp(8) (deliver/lmtp.py)."""
    config = load_config(_config_path(args.config), Service.APP)
    from agentmx.deliver import lmtp
    lmtp.serve(config, Path(args.socket) if args.socket else config.worker.lmtp_socket,
               args.processes or config.worker.processes, config.worker.socket_mode)
    return 0


def cmd_mcp(args) -> int:
    """The inbox and send API as MCP tools over stdio (agentmx/mcpserver.py)."""
    try:
        from agentmx import mcpserver
    except ImportError as exc:
        print(f"agentmx mcp: the MCP SDK is not installed ({exc.name}): pip install 'agentmx[mcp]'", file=sys.stderr)
        return 2
    return mcpserver.run(args.url, args.key)


def cmd_agent(args) -> int:
    """Run the agent for action = "agent" routes (agentmx/agentloop.py)."""
    config = load_config(_config_path(args.config), Service.APP)
    from agentmx import agentloop
    if args.requeue:
        with _store(config) as store:
            ok = store.job_requeue(args.requeue)
        print(f"{args.requeue}: {'queued again' if ok else 'not a parked job'}")
        return 0 if ok else 1
    return agentloop.serve(config, once=args.once)


# C0 and C1 controls but tab and newline (ESC starts every ANSI sequence, CSI is U+009B), the
# bidirectional overrides that reorder what a terminal shows, and lone surrogates (unprintable).
_TERMINAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                       "\ud800-\udfff]")


def _shown(value) -> str:
    """Text from mail or a model, for a terminal: every control character written as an escape
    (\\x1b, \\u202e), so that none is interpreted."""
    return _TERMINAL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                         str(value))


def cmd_transcript(args) -> int:
    """Print what the agent was shown and did for one message (mail and model text escaped)."""
    config = load_config(_config_path(args.config), Service.APP)
    with _store(config) as store:
        record, job = store.get_transcript(args.id), store.job(args.id)
    if record is None and job is None:
        print(f"agentmx transcript: no agent job {_shown(args.id)}", file=sys.stderr)
        return 1
    if job is not None:
        print(_shown(f"{job.id}: {job.state}, {job.attempts} failed attempt(s), actions: "
                     f"{', '.join(job.actions) or 'none'}" + (f", last error: {job.last_error}" if job.last_error else "")))
    for attempt in (record or {}).get("attempts", []):
        if "error" in attempt:
            print(_shown(f"-- attempt: error: {attempt['error']} -> {attempt['state']}"))
            continue
        print(_shown(f"-- attempt: {attempt['outcome']}: {attempt['summary']}"))
        for m in attempt["messages"]:
            calls = "".join(f"\n   -> {c['function']['name']}({c['function'].get('arguments', '')})"
                            for c in m.get("tool_calls") or [])
            print(_shown(f"[{m['role']}] {m.get('content') or ''}{calls}"))
    return 0


def cmd_parse(args) -> int:
    """Print the event deliver would send for a message file, without storing or sending."""
    import time as _time
    from agentmx.deliver import route as routing
    from agentmx.deliver.core import Envelope, build_event
    from .config import Config
    path = _config_path(args.config)
    config = load_config(path, Service.APP) if (args.config or path.exists()) else Config(path=path, authserv_id="agentmx.local")
    try:
        raw = Path(args.message).read_bytes() if args.message != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"agentmx parse: {args.message}: {exc.strerror}", file=sys.stderr)
        return 2
    recipient = args.recipient or "agent@example.com"
    env = Envelope(sender=args.mail_from, recipient=recipient)
    event, _ = build_event(raw, env, config, None, _time.time(), routing.match(recipient, config.routes))
    print(json.dumps(event, indent=2, ensure_ascii=False))
    return 0


def cmd_postfix_map(args) -> int:
    from agentmx.deliver.route import postfix_map
    config = load_config(_config_path(args.config), Service.APP)
    sys.stdout.write(postfix_map(config))
    return 0


def cmd_serve(args) -> int:
    config = load_config(_config_path(args.config), Service.APP)
    from agentmx.api import server
    server.run(config)
    return 0


def _key_config(args):
    path = _config_path(args.config)
    if args.config or path.exists():
        return load_config(path)
    from .config import Config
    return Config(path=path, authserv_id="mx.example.com")


def cmd_keygen(args) -> int:
    from agentmx import dkimkeys
    from agentmx.ownership import share_with_group
    config = _key_config(args)
    key_dir = Path(args.key_dir) if args.key_dir else config.key_dir
    selector = args.selector or f"ax{__import__('time').strftime('%Y%m')}"
    algs = ["rsa", "ed25519"] if args.algorithm == "both" else [args.algorithm]
    try:
        made = []
        for alg in algs:
            sel = selector + ({"rsa": "r", "ed25519": "e"}[alg] if len(algs) == 2 else "")
            key = dkimkeys.generate(args.domain, sel, alg)
            path = dkimkeys.write(key_dir, key)
            # readable by the milter's group, as `agentmx setup` set the key directory up
            share_with_group(path.parent, key_dir, 0o750)
            share_with_group(path, key_dir, 0o640)
            made.append((path, key))
    except dkimkeys.KeyError_ as exc:
        print(f"agentmx keygen: {exc}", file=sys.stderr)
        return 1
    for path, key in made:
        print(f"; {path} (mode {path.stat().st_mode & 0o777:04o}); sign with it: [domains.\"{key.domain}\"] dkim_selectors = [\"{key.selector}\"]")
        print(f"{key.dns_name}.\t3600\tIN\tTXT\t" + " ".join(f'"{p}"' for p in dkimkeys.txt_strings(key.txt)))
    return 0


def cmd_dns(args) -> int:
    from agentmx import dnsrecords
    sys.stdout.write(dnsrecords.zone_lines(dnsrecords.records(_key_config(args), args.domain)))
    return 0


def cmd_check(args) -> int:
    from agentmx import dnsrecords
    from agentmx.resolver import Resolver
    config = _key_config(args)
    servers = args.dns or (_parse_dns(os.environ["AGENTMX_DNS"]) if os.environ.get("AGENTMX_DNS") else config.dns.servers)
    findings = dnsrecords.check(config, args.domain, Resolver(servers, config.dns.timeout).session(50))
    for f in findings:
        print(f"{f.status.upper():8} {f.record}: {f.detail}")
    return 0 if all(f.status == "ok" for f in findings) else 1


def cmd_send(args) -> int:
    """Send through `agentmx serve`'s API, as any agent would (the same client)."""
    from agentmx.client import ApiError, Client
    key = args.api_key or os.environ.get("AGENTMX_API_KEY")
    if not key:
        print("agentmx send: give --api-key or set AGENTMX_API_KEY", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.text == "-" else args.text
    try:
        result = Client(args.url, key).send(from_=args.sender, to=args.to or None, cc=args.cc or None,
                                            subject=args.subject, text=text, html=args.html,
                                            attachments=args.attach or (), in_reply_to=args.in_reply_to,
                                            force=args.force)
    except ApiError as exc:
        print(f"agentmx send: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"agentmx send: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _send_status(config, send_id: str) -> int:
    """`agentmx status snd_...`: what became of one send, recipient by recipient."""
    from agentmx import ops
    try:
        with _store(config) as store:
            rec, lines = ops.send_status(store, send_id)
    except LookupError as exc:
        print(f"agentmx status: {exc}", file=sys.stderr)
        return 1
    print(f"{rec.id}: {rec.state} from={rec.sender} key={rec.key} queue={rec.queue_id or '-'} "
          f"created {rfc3339(rec.created)}{'  ' + rec.error if rec.error else ''}")
    for recipient, events in lines.items():
        print(f"  {recipient or '(no recipient named)'}:")
        for e in events:
            detail = json.loads(e.body)       # a remote server's words: no control character reaches the terminal
            said = [f"{k}={''.join(c if c.isprintable() else '?' for c in str(detail[k]))[:300]}"
                    for k in ("status", "diagnosticCode", "feedbackType") if detail.get(k)]
            print("    " + "  ".join([rfc3339(e.at), f"{e.type.value:16}", *said, f"(webhook {e.state}, {e.attempts} POSTs)"]))
        if not events:
            print("    nothing yet")
    return 0


def cmd_status(args) -> int:
    from agentmx import ops
    config = load_config(_config_path(args.config), Service.APP)
    if args.send_id:
        return _send_status(config, args.send_id)
    print(f"recent deliveries ({config.data_dir}):")
    with _store(config) as store:
        rows = store.recent_deliveries(args.limit)
    for d in rows:
        print(f"  {rfc3339(d.updated)}  {d.state:9} {d.event_id}  to={d.recipient}  queue={d.queue_id or '-'}  "
              f"attempts={d.attempts}  status={d.status if d.status is not None else '-'}  {d.reason}")
    if not rows:
        print("  none yet")
    waiting = ops.waiting_for_agents(config, ops.postfix_queue(args.postfix_config))
    print(f"waiting in Postfix's queue for agentmx routes: {len(waiting)}")
    for qid, queue, rcpt, reason in waiting:
        print(f"  {qid} ({queue}) to={rcpt}: {reason or 'in delivery'}")
    return 0


def cmd_replay(args) -> int:
    from agentmx import ops
    config = load_config(_config_path(args.config), Service.APP)
    try:
        with _store(config) as store:
            status, reason = ops.replay(config, store, args.event_id)
    except LookupError as exc:
        print(f"agentmx replay: {exc}", file=sys.stderr)
        return 1
    print(f"{args.event_id}: HTTP {status or '-'} ({reason})")
    return 0 if (200 <= status < 300 or status == 406) else 1


def cmd_gc(args) -> int:
    from agentmx import ops
    config = load_config(_config_path(args.config), Service.APP)
    days = args.days or config.retention_days
    with _store(config) as store:
        report = ops.gc(config, store, days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    rest = ", ".join(f"{n} {what}" for what, n in report.other.items() if n)
    print(f"{verb} {report.events} event(s) and {report.blobs} blob(s), {report.bytes} bytes, older than {days} days"
          + (f" (and {rest})" if rest else ""))
    return 0


def cmd_setup(args) -> int:
    from agentmx import setup
    postfix_dir = Path(args.postfix_config)
    try:
        if args.undo:
            for path in setup.undo(postfix_dir):
                print(f"restored {path}")
            print("now: postfix reload (and stop agentmx-milter, agentmx-serve)")
            return 0
        if not (args.domain and args.endpoint):
            print("agentmx setup: --domain and --endpoint are required (or --undo)", file=sys.stderr)
            return 2
        plan = setup.Plan(postfix_dir=postfix_dir, agentmx_dir=Path(args.agentmx_dir), domain=args.domain.lower(),
                          endpoint=args.endpoint, data_dir=Path(args.data_dir), pipe_user=args.pipe_user,
                          agentmx_bin=str(Path(sys.executable).with_name("agentmx")), socket=Path(args.socket))
        if args.dry_run:
            sys.stdout.write(setup.diff(plan) or "main.cf and master.cf already have these settings\n")
            return 0
        records = setup.apply(plan)
    except setup.SetupError as exc:
        print(f"agentmx setup: {exc}", file=sys.stderr)
        return 1
    print(f"configured {postfix_dir} for {plan.domain}; agentmx config in {plan.agentmx_dir}")
    print("next: start agentmx-milter and agentmx-serve, `postfix reload`, and publish:")
    sys.stdout.write(records)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentmx", description="Self-hosted email for AI agents, on Postfix.")
    p.add_argument("--config", help=f"configuration file (default $AGENTMX_CONFIG or {DEFAULT_PATH})")
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("milter", help="run the authentication milter on its unix socket")
    m.set_defaults(func=cmd_milter)

    c = sub.add_parser("check-config", help="load and validate the configuration, then exit")
    c.add_argument("--service", choices=[s.value for s in Service], default="all",
                   help="check as this service would load it: milter (the DKIM keys, none of the app's "
                        "secrets), app (deliver, serve, agent: their secrets, not the keys), all (default)")
    c.set_defaults(func=cmd_check_config)

    a = sub.add_parser("auth", help="verify SPF, DKIM, ARC and DMARC of a message file, offline",
                       description="Runs the milter's checks on MESSAGE and explains each verdict.")
    a.add_argument("message", help="the message file (.eml), or - for standard input")
    a.add_argument("--client-ip", required=True, help="the connecting client's IP address")
    a.add_argument("--helo", default="", help="the name the client gave in HELO/EHLO")
    a.add_argument("--mail-from", default="", help="the envelope sender (empty: null sender)")
    a.add_argument("--dns", type=_parse_dns, help="DNS server as IP or IP:PORT (default: config, else system)")
    a.add_argument("--timeout", type=float, help="seconds per DNS lookup")
    a.add_argument("--sample", type=float, default=0.0, help="DMARC pct sample in [0,1) (default 0; rfc7489 only)")
    a.add_argument("--dmarc", choices=[m.value for m in DmarcMode],
                   help="verify DMARC per RFC 9989 or RFC 7489 (default: [milter] dmarc, else rfc9989)")
    a.add_argument("--arc-trusted-sealer", action="append", type=_sealer_arg, metavar="DOMAIN",
                   help="trust this ARC sealer, as [milter] arc_trusted_sealers does (repeatable; "
                        "added to the config's)")
    a.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    a.set_defaults(func=cmd_auth)

    d = sub.add_parser("deliver", help="the Postfix pipe program: message on stdin, exit 0 or 75")
    from agentmx.deliver.frontend import add_envelope_arguments
    add_envelope_arguments(d)
    d.set_defaults(func=cmd_deliver)

    wk = sub.add_parser("worker", help="run deliver resident for the lean pipe client ([worker] in the config)")
    wk.add_argument("--socket", help="listen here instead of [worker] socket")
    wk.add_argument("--processes", type=int, help="processes sharing the socket (default [worker] processes)")
    wk.set_defaults(func=cmd_worker)
    lm = sub.add_parser("lmtp", help="run deliver as an LMTP server for Postfix ([worker] lmtp_socket)")
    lm.add_argument("--socket", help="listen here instead of [worker] lmtp_socket")
    lm.add_argument("--processes", type=int, help="processes sharing the socket (default [worker] processes)")
    lm.set_defaults(func=cmd_lmtp)
    mc = sub.add_parser("mcp", help="serve the inbox and the send API as MCP tools over stdio")
    mc.add_argument("--url", help="agentmx serve's base URL (default $AGENTMX_URL, else http://127.0.0.1:8025)")
    mc.add_argument("--key", help="the API key (default $AGENTMX_API_KEY)")
    mc.set_defaults(func=cmd_mcp)
    ag = sub.add_parser("agent", help='run the agent for action = "agent" routes (the model loop)')
    ag.add_argument("--once", action="store_true", help="process the due jobs, then exit")
    ag.add_argument("--requeue", metavar="ID", help="try a parked job again")
    ag.set_defaults(func=cmd_agent)
    tr = sub.add_parser("transcript", help="what the agent was shown and did for a message")
    tr.add_argument("id")
    tr.set_defaults(func=cmd_transcript)
    pa = sub.add_parser("parse", help="print the event a message file would become, without sending it")
    pa.add_argument("message", help="the message file (.eml), or - for standard input")
    pa.add_argument("--recipient", help="the envelope recipient (default agent@example.com)")
    pa.add_argument("--mail-from", default="sender@example.net", help="the envelope sender")
    pa.set_defaults(func=cmd_parse)

    pm = sub.add_parser("postfix-map", help="print relay_recipient_maps for the routed addresses")
    pm.set_defaults(func=cmd_postfix_map)

    sv = sub.add_parser("serve", help="serve signed attachment and raw-message URLs over HTTP")
    sv.set_defaults(func=cmd_serve)

    kg = sub.add_parser("keygen", help="make a DKIM key (0600, under [server] key_dir) and print its DNS record")
    kg.add_argument("domain")
    kg.add_argument("--selector", help="the selector (default ax<YYYYMM>; with both: <S>r and <S>e)")
    kg.add_argument("--algorithm", choices=("rsa", "ed25519", "both"), default="rsa")
    kg.add_argument("--key-dir", help="override [server] key_dir")
    kg.set_defaults(func=cmd_keygen)

    dn = sub.add_parser("dns", help="print every DNS record to publish for DOMAIN, as zone-file lines")
    dn.add_argument("domain")
    dn.set_defaults(func=cmd_dns)

    se = sub.add_parser("send", help="send or reply through agentmx serve's API")
    se.add_argument("--url", default=os.environ.get("AGENTMX_URL", "http://127.0.0.1:8025"))
    se.add_argument("--api-key", help="default $AGENTMX_API_KEY")
    se.add_argument("--from", dest="sender", required=True)
    se.add_argument("--to", action="append", default=[])
    se.add_argument("--cc", action="append", default=[])
    se.add_argument("--subject")
    se.add_argument("--text", help="the text body, or - for standard input")
    se.add_argument("--html")
    se.add_argument("--attach", action="append", default=[], help="a file to attach (repeatable)")
    se.add_argument("--in-reply-to", help="an event id (msg_...) or a Message-ID (<...>)")
    se.add_argument("--force", action="store_true", help="answer an auto-submitted message all the same")
    se.set_defaults(func=cmd_send)

    st = sub.add_parser("status", help="recent deliveries, and what waits in Postfix's queue for the agents; "
                                       "with a send id, what became of that send, recipient by recipient")
    st.add_argument("send_id", nargs="?", help="a send's id (snd_...): its status timeline")
    st.add_argument("--limit", type=int, default=20)
    st.add_argument("--postfix-config", default=os.environ.get("MAIL_CONFIG"),
                    help="Postfix config directory (default $MAIL_CONFIG, else the system's)")
    st.set_defaults(func=cmd_status)

    rp = sub.add_parser("replay", help="POST a stored event again, with its original webhook-id")
    rp.add_argument("event_id")
    rp.set_defaults(func=cmd_replay)

    gcp = sub.add_parser("gc", help="remove stored mail older than [server] retention_days")
    gcp.add_argument("--days", type=int, help="override retention_days")
    gcp.add_argument("--dry-run", action="store_true")
    gcp.set_defaults(func=cmd_gc)

    su = sub.add_parser("setup", help="configure this Postfix for agentmx (idempotent; --dry-run, --undo)")
    su.add_argument("--domain", help="the agents' mail domain")
    su.add_argument("--endpoint", help="where events for it are POSTed")
    env = os.environ.get
    su.add_argument("--postfix-config", default=env("MAIL_CONFIG", "/etc/postfix"),
                    help="Postfix's config directory (default $MAIL_CONFIG, else /etc/postfix)")
    su.add_argument("--agentmx-dir", default=env("AGENTMX_DIR", "/etc/agentmx"),
                    help="config, keys, secrets, recipient map (default $AGENTMX_DIR, else /etc/agentmx)")
    su.add_argument("--data-dir", default=env("AGENTMX_DATA_DIR", "/var/lib/agentmx"))
    su.add_argument("--socket", default=env("AGENTMX_SOCKET", "/var/spool/postfix/agentmx/milter.sock"))
    su.add_argument("--pipe-user", default=env("AGENTMX_PIPE_USER", "agentmx"), help="the user deliver runs as")
    su.add_argument("--dry-run", action="store_true", help="show the main.cf/master.cf diff, change nothing")
    su.add_argument("--undo", action="store_true", help="restore main.cf and master.cf from setup's backup")
    su.set_defaults(func=cmd_setup)

    from agentmx.storecli import add_commands
    add_commands(sub, _config_path)
    from agentmx import blockscli, suppressionscli      # issue 16: the operator's suppressions and blocks
    suppressionscli.add_commands(sub, _config_path)
    blockscli.add_commands(sub, _config_path)

    ck = sub.add_parser("check", help="query DNS and say, record by record, what is missing or wrong")
    ck.add_argument("domain")
    ck.add_argument("--dns", type=_parse_dns, help="DNS server as IP or IP:PORT (default $AGENTMX_DNS, the config, else the system's)")
    ck.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # Postfix bounces a message whose pipe program exits with anything but 0 or 75
        # (EX_TEMPFAIL): a deliver command line we cannot read must keep the message.
        if "deliver" in argv and exc.code not in (0, None):
            from agentmx.deliver import pipe
            return pipe.bad_command_line(argv)
        raise
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"agentmx: {exc}", file=sys.stderr)
        return 78          # EX_CONFIG
    except Exception as exc:
        from agentmx.store import StoreError
        if not isinstance(exc, StoreError):
            raise
        print(f"agentmx {args.command}: the store: {exc}", file=sys.stderr)
        return 75          # EX_TEMPFAIL: try again (after `agentmx store migrate`, if it says so)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
