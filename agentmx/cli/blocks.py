"""`agentmx blocks list|add|remove`: the operator's hand on the senders the milter refuses at
RCPT (550 5.7.1) for a route's addresses, on the store directly; after a change the block list
the milter reads (<data_dir>/blocks.json) is written at once (deliver/control.publish).

    agentmx blocks list [--scope ROUTE]
    agentmx blocks add SENDER [--scope ROUTE]
    agentmx blocks remove SENDER [--scope ROUTE]

SENDER is an envelope sender (spammer@example.net) or a whole domain (@bad.example). ROUTE is a
route's match as in the config ("agent@example.com", "@example.com"); it may be left out when the
config has exactly one route. Blocks in the config (a route's block_senders) are listed too, and
changed only in the config. Exit 0 when done (also when there was nothing to remove, said so), 2
for input that is not a sender or a route's match.

Imported by the CLI's parser on every command (deliver's too): argparse only, here; the handlers
import the store inside them, so that the per-message `agentmx deliver` does not pay for it.
"""
from __future__ import annotations

import sys
from contextlib import closing

from agentmx.config import Service, block_sender, load_config
from agentmx.times import rfc3339

from .common import config_path

EX_USAGE = 2


def add_blocks(sub) -> None:
    bp = sub.add_parser("blocks", help="senders refused at RCPT for a route's addresses: list, add, remove")
    commands = bp.add_subparsers(dest="blocks_command", required=True)
    ls = commands.add_parser("list", help="every block, the config's and the store's, by route")
    ls.add_argument("--scope", help="of this route only (its match)")
    ad = commands.add_parser("add", help="refuse SENDER (an address or @domain) for a route's addresses")
    ad.add_argument("sender")
    ad.add_argument("--scope", help="the route's match (default: the config's only route)")
    rm = commands.add_parser("remove", help="take SENDER's mail for a route's addresses again")
    rm.add_argument("sender")
    rm.add_argument("--scope", help="the route's match (default: the config's only route)")
    ls.set_defaults(func=cmd_list)
    ad.set_defaults(func=cmd_change)
    rm.set_defaults(func=cmd_change)


COMMANDS = {"blocks": add_blocks}


def _setup(args, what: str):
    """(config, sender or None, the route) for add and remove; None (said) for bad input."""
    config = load_config(config_path(args.config), Service.APP)
    try:
        sender = block_sender(args.sender) if what != "list" else None
    except ValueError as exc:
        print(f"agentmx blocks {what}: SENDER must be {exc}", file=sys.stderr)
        return None
    matches = [r.match for r in config.routes]
    scope = args.scope.strip().lower() if args.scope else (matches[0] if len(matches) == 1 else None)
    if scope not in matches and (args.scope or what != "list"):
        print(f"agentmx blocks {what}: --scope must be a route's match: one of {', '.join(matches) or 'none'}",
              file=sys.stderr)
        return None
    return config, sender, next((r for r in config.routes if r.match == scope), None)


def _publish(store, config) -> None:
    from agentmx import blocklist
    from agentmx.deliver.control import publish
    if publish(store, config.data_dir):
        print(f"the milter's block list written ({blocklist.path_in(config.data_dir)})")


def cmd_list(args) -> int:
    from agentmx import blocklist
    from agentmx.api.guard import printable
    from agentmx.store import open_store
    got = _setup(args, "list")
    if got is None:
        return EX_USAGE
    config, _, route = got
    with closing(open_store(config)) as store:
        store.check_schema()
        rows = blocklist.every(store, config.routes, (route.match,) if args.scope else None)
    for b in rows:
        source = blocklist.source_of(b)
        since = f"  since {rfc3339(b.created)}" if source != "config" else ""
        by = f" {b.event_id}" if source in ("agent", "api") else ""
        print(printable(f"{b.scope}  {b.sender}  {source}{by}{since}", 2000))
    return 0


def cmd_change(args) -> int:
    """add or remove (args.blocks_command) one sender for one route, then publish the block list."""
    from agentmx import blocklist
    from agentmx.store import open_store
    what = args.blocks_command
    got = _setup(args, what)
    if got is None:
        return EX_USAGE
    config, sender, route = got
    with closing(open_store(config)) as store:
        store.check_schema()
        changed = (store.add_block(sender, route.match, blocklist.OPERATOR) if what == "add"
                   else store.remove_block(sender, route.match))
        _publish(store, config)                    # also when unchanged: a file gone stale is mended
    if what == "add":
        print(f"{sender} blocked for {route.match}" if changed else f"{sender} was blocked for {route.match} already")
        return 0
    if sender in route.block_senders:
        print(f"{sender} is blocked for {route.match} by the config (its block_senders): remove it there")
    print(f"{sender} no longer blocked for {route.match} in the store" if changed else
          f"{sender} was not blocked for {route.match} in the store")
    return 0
