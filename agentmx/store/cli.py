"""`agentmx store ...`: the store's own commands.

    agentmx store migrate     apply the pending schema migrations (each once, in order); on the
                              embedded backend, then import an earlier version's data directory
                              (events/, state/, sent/, transcripts/, inbox.sqlite, agent-jobs.sqlite)
                              once. Safe to run again: it does what is left to do.

Imported by the CLI's parser on every command (deliver's too): argparse only, here.
"""
from __future__ import annotations

import sys


def add_commands(sub, config_path) -> None:
    st = sub.add_parser("store", help="the store: schema migrations, importing an earlier data directory")
    commands = st.add_subparsers(dest="store_command", required=True)
    mg = commands.add_parser("migrate", help="apply pending schema migrations; import an earlier version's "
                                             "data directory (embedded backend) once")
    mg.set_defaults(func=lambda args: cmd_migrate(args, config_path))


def cmd_migrate(args, config_path) -> int:
    from agentmx.config import Service, StoreBackend, load_config
    from agentmx.store import open_store
    config = load_config(config_path(args.config), Service.APP)
    store = open_store(config)
    try:
        version = store.migrate()
        print(f"schema version {version} ({config.store.backend.value} store)")
        if config.store.backend is StoreBackend.EMBEDDED:
            from agentmx.deliver.route import match

            def route_of(recipient: str) -> str:
                found = match(recipient, config.routes)
                return found.route.match if found else recipient
            counts = store.import_legacy(route_of)
            if counts:
                print("imported the earlier data directory: " + ", ".join(f"{n} {what}" for what, n in counts.items()),
                      file=sys.stdout)
                print(f"the old files are left in {config.data_dir}: remove events/, state/, sent/, transcripts/, "
                      "inbox.sqlite* and agent-jobs.sqlite* once you have checked the import (docs/operator.md)")
        store.check_schema()
    finally:
        store.close()
    return 0
