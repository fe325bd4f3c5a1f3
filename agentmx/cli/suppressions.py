"""`agentmx suppressions list|add|remove`: the operator's hand on the suppression list, on the
store directly (the same store the send path checks: agentmx/suppression.py).

    agentmx suppressions list [--domain D] [--limit N] [--json]
    agentmx suppressions add ADDRESS [--domain D] [--reason manual|bounced|complained] [--note TEXT]
    agentmx suppressions remove ADDRESS [--domain D]

--domain is the sending domain; it may be left out when the config has exactly one [domains]
entry. Exit 0 when done (also when there was nothing to remove, said so), 2 for input that is
not an address, a reason or a one-line note.

Imported by the CLI's parser on every command (deliver's too): argparse only, here; the handlers
import the store inside them, so that the per-message `agentmx deliver` does not pay for it.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import closing

from agentmx.config import Service, load_config

from .common import config_path

EX_USAGE = 2


def add_suppressions(sub) -> None:
    sp = sub.add_parser("suppressions", help="addresses agents may not send to, per sending domain: list, add, remove")
    commands = sp.add_subparsers(dest="suppressions_command", required=True)
    ls = commands.add_parser("list", help="the suppressions, in (domain, address) order")
    ls.add_argument("--domain", help="of this sending domain only")
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    ls.add_argument("--json", action="store_true", help="one JSON object a line, as the API shows them")
    ad = commands.add_parser("add", help="suppress ADDRESS for a sending domain")
    ad.add_argument("address")
    ad.add_argument("--domain", help="the sending domain (default: the config's only [domains] entry)")
    ad.add_argument("--reason", default="manual", choices=("manual", "bounced", "complained"))
    ad.add_argument("--note", help="who or why (one line)")
    rm = commands.add_parser("remove", help="let agents send to ADDRESS from a sending domain again")
    rm.add_argument("address")
    rm.add_argument("--domain", help="the sending domain (default: the config's only [domains] entry)")
    ls.set_defaults(func=cmd_list)
    ad.set_defaults(func=cmd_change)
    rm.set_defaults(func=cmd_change)


COMMANDS = {"suppressions": add_suppressions}


def _config(args):
    return load_config(config_path(args.config), Service.APP)


def _domain(config, given: str | None) -> str | None:
    """The sending domain given, else the config's only one; None (said) when neither."""
    if given:
        return given.strip().lower().rstrip(".")
    if len(config.domains) == 1:
        return config.domains[0].name
    print("agentmx suppressions: name the sending domain with --domain (the config has "
          f"{len(config.domains)} [domains] entries)", file=sys.stderr)
    return None


def cmd_list(args) -> int:
    from agentmx import suppression
    from agentmx.api.guard import printable
    from agentmx.store import open_store
    config = _config(args)
    domains = (args.domain.strip().lower().rstrip("."),) if args.domain else None
    left, after = max(1, args.limit), None
    with closing(open_store(config)) as store:
        store.check_schema()
        while left > 0:
            rows = store.suppressions(domains, after=after, limit=min(left, 500))
            for s in rows:
                if args.json:
                    print(json.dumps(suppression.view(s)))
                else:
                    v = suppression.view(s)
                    print(printable(f"{v['domain']}  {v['email']}  {v['reason']}  since {v['createdAt']}"
                                    + (f"  {v['note']}" if v["note"] else ""), 2000))
            if not rows:
                break
            left, after = left - len(rows), (rows[-1].domain, rows[-1].address)
    return 0


def cmd_change(args) -> int:
    """add or remove (args.suppressions_command) one address for one sending domain."""
    from agentmx import suppression
    from agentmx.store import open_store
    from agentmx.store.model import Suppression
    what = args.suppressions_command
    config = _config(args)
    try:
        address = suppression.address(args.address)
        if what == "add":
            reason, note = suppression.reason(args.reason), suppression.note(args.note)
    except ValueError as exc:
        print(f"agentmx suppressions {what}: must be {exc}", file=sys.stderr)
        return EX_USAGE
    domain = _domain(config, args.domain)
    if domain is None:
        return EX_USAGE
    with closing(open_store(config)) as store:
        store.check_schema()
        if what == "remove":
            removed = store.unsuppress(domain, address)
            print(f"{address} no longer suppressed for {domain}" if removed else
                  f"{address} was not suppressed for {domain}")
            return 0
        added = store.suppress(Suppression(domain, address, reason, time.time(), "", note or "by the operator"))
    print(f"{address} suppressed for {domain} ({reason.value})" if added else
          f"{address} was suppressed for {domain} already (the first reason and time stand)")
    return 0
