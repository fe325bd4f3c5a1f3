"""The `agentmx` command: one module per command group, each naming its commands in COMMANDS
(name -> a function that adds the command's parser, its arguments and its handler).

    mailchecks     auth, parse                                  a message file, offline
    keys           keygen, dns, check                           DKIM keys and DNS
    operations     status, replay, gc, transcript               what was delivered and sent
    storage        store migrate                                the store's schema and moves
    suppressions   suppressions list|add|remove                 whom agents may not send to
    blocks         blocks list|add|remove                       whom the milter refuses at RCPT
    services       milter, deliver, worker, lmtp, serve, agent, mcp    the running parts
    hostsetup      setup, check-config, postfix-map             Postfix and the configuration
    sending        send                                         through serve's API

The parser is built on every command, the per-message `agentmx deliver` included: the group
modules import argparse and the config at their top and nothing heavier; each handler imports
what it runs (docs/decisions.md, "Issue 20: the CLI and the SMTP replies").
"""
from __future__ import annotations

import argparse
import logging
import sys

from agentmx.config import DEFAULT_PATH, ConfigError

from . import blocks, hostsetup, keys, mailchecks, operations, sending, services, storage, suppressions

GROUPS = (services, hostsetup, mailchecks, operations, keys, sending, storage, suppressions, blocks)

# The order `agentmx --help` lists the commands in (as it has since before the groups).
ORDER = ("milter", "check-config", "auth", "deliver", "worker", "lmtp", "mcp", "agent", "transcript", "parse",
         "postfix-map", "serve", "keygen", "dns", "send", "status", "replay", "gc", "setup", "store",
         "suppressions", "blocks", "check")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentmx", description="Self-hosted email for AI agents, on Postfix.")
    p.add_argument("--config", help=f"configuration file (default $AGENTMX_CONFIG or {DEFAULT_PATH})")
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)
    adders = {name: add for group in GROUPS for name, add in group.COMMANDS.items()}
    for name in ORDER:         # every group's commands are in ORDER (tests/core/test_cli_groups.py)
        adders[name](sub)
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(name)s[%(process)d]: %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # Postfix bounces a message whose pipe program exits with anything but 0 or 75
        # (EX_TEMPFAIL): a deliver command line we cannot read must keep the message.
        if "deliver" in argv and exc.code not in (0, None):
            from agentmx.deliver import pipe      # lazy: 30-60 ms; this path only (the handler imports it too)
            return pipe.bad_command_line(argv)
        raise
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"agentmx: {exc}", file=sys.stderr)
        return 78          # EX_CONFIG
    except Exception as exc:
        from agentmx.store import StoreError      # lazy: 6-11 ms, not the parser's start-up cost
        if not isinstance(exc, StoreError):
            raise
        print(f"agentmx {args.command}: the store: {exc}", file=sys.stderr)
        return 75          # EX_TEMPFAIL: try again (after `agentmx store migrate`, if it says so)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
