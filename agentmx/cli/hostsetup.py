"""Setting a host up: `agentmx setup` (Postfix's main.cf and master.cf, idempotent, undoable),
`check-config` (the configuration as a service would load it) and `postfix-map` (the routed
addresses for relay_recipient_maps).

The handlers import agentmx.setup and deliver's routing inside them: the parser is built on every
command, and the per-message `agentmx deliver` must not pay for them (docs/decisions.md, "Issue 20:
the CLI and the SMTP replies")."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from agentmx.config import Service, load_config

from .common import config_path


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


def cmd_check_config(args) -> int:
    config = load_config(config_path(args.config), Service(args.service))
    print(f"{config.path}: ok (authserv-id {config.authserv_id}, {len(config.routes)} route(s))")
    return 0


def cmd_postfix_map(args) -> int:
    from agentmx.deliver.route import postfix_map
    config = load_config(config_path(args.config), Service.APP)
    sys.stdout.write(postfix_map(config))
    return 0


def add_setup(sub) -> None:
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


def add_check_config(sub) -> None:
    c = sub.add_parser("check-config", help="load and validate the configuration, then exit")
    c.add_argument("--service", choices=[s.value for s in Service], default="all",
                   help="check as this service would load it: milter (the DKIM keys, none of the app's "
                        "secrets), app (deliver, serve, agent: their secrets, not the keys), all (default)")
    c.set_defaults(func=cmd_check_config)


def add_postfix_map(sub) -> None:
    sub.add_parser("postfix-map", help="print relay_recipient_maps for the routed addresses").set_defaults(
        func=cmd_postfix_map)


COMMANDS = {"setup": add_setup, "check-config": add_check_config, "postfix-map": add_postfix_map}
