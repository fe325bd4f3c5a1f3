"""DKIM keys and DNS: `agentmx keygen` (a key and its record), `dns` (every record to publish) and
`check` (what DNS says, record by record).

The handlers import dkimkeys, dnsrecords and the resolver inside them: the parser is built on
every command, and the per-message `agentmx deliver` must not pay for them (docs/decisions.md,
"Issue 20: the CLI and the SMTP replies")."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from agentmx.config import Config, load_config

from .common import config_path, parse_dns


def _key_config(args):
    path = config_path(args.config)
    if args.config or path.exists():
        return load_config(path)
    return Config(path=path, authserv_id="mx.example.com")


def cmd_keygen(args) -> int:
    from agentmx import dkimkeys
    from agentmx.ownership import share_with_group
    config = _key_config(args)
    key_dir = Path(args.key_dir) if args.key_dir else config.key_dir
    selector = args.selector or f"ax{time.strftime('%Y%m')}"
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
    servers = args.dns or (parse_dns(os.environ["AGENTMX_DNS"]) if os.environ.get("AGENTMX_DNS") else config.dns.servers)
    findings = dnsrecords.check(config, args.domain, Resolver(servers, config.dns.timeout).session(50))
    for f in findings:
        print(f"{f.status.upper():8} {f.record}: {f.detail}")
    return 0 if all(f.status == "ok" for f in findings) else 1


def add_keygen(sub) -> None:
    kg = sub.add_parser("keygen", help="make a DKIM key (0600, under [server] key_dir) and print its DNS record")
    kg.add_argument("domain")
    kg.add_argument("--selector", help="the selector (default ax<YYYYMM>; with both: <S>r and <S>e)")
    kg.add_argument("--algorithm", choices=("rsa", "ed25519", "both"), default="rsa")
    kg.add_argument("--key-dir", help="override [server] key_dir")
    kg.set_defaults(func=cmd_keygen)


def add_dns(sub) -> None:
    dn = sub.add_parser("dns", help="print every DNS record to publish for DOMAIN, as zone-file lines")
    dn.add_argument("domain")
    dn.set_defaults(func=cmd_dns)


def add_check(sub) -> None:
    ck = sub.add_parser("check", help="query DNS and say, record by record, what is missing or wrong")
    ck.add_argument("domain")
    ck.add_argument("--dns", type=parse_dns, help="DNS server as IP or IP:PORT (default $AGENTMX_DNS, the config, else the system's)")
    ck.set_defaults(func=cmd_check)


COMMANDS = {"keygen": add_keygen, "dns": add_dns, "check": add_check}
