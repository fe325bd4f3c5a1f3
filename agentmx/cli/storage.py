"""`agentmx store ...`: the store's own commands.

    agentmx store migrate     apply the pending schema migrations (each once, in order); on the
                              embedded backend, then import an earlier version's data directory
                              (events/, state/, sent/, transcripts/, inbox.sqlite, agent-jobs.sqlite)
                              once. Safe to run again: it does what is left to do.
    agentmx store migrate --to postgres [--verify-only]
                              move the embedded store in [server] data_dir to the PostgreSQL + S3
                              store the same config's [store] names (backend = "postgres"), then
                              verify it table by table (transfer.py): exit 0 when everything
                              matches, 1 with what does not. Safe to run again and to resume.

Imported by the CLI's parser on every command (deliver's too): argparse only, here; the handlers
import the store and deliver's routing inside them, so that the per-message `agentmx deliver` does
not pay for them.
"""
from __future__ import annotations

import sys

from agentmx.config import Service, StoreBackend, load_config

from .common import config_path

EX_MISMATCH = 1
EX_CONFIG = 78


def add_store(sub) -> None:
    st = sub.add_parser("store", help="the store: schema migrations, importing an earlier data directory, "
                                      "moving to PostgreSQL")
    commands = st.add_subparsers(dest="store_command", required=True)
    mg = commands.add_parser("migrate", help="apply pending schema migrations; import an earlier version's "
                                             "data directory (embedded backend) once; --to postgres: move the "
                                             "embedded store to the configured PostgreSQL + S3 store")
    mg.add_argument("--to", choices=["postgres"],
                    help="move the embedded store in [server] data_dir to the store [store] names (backend = "
                         "\"postgres\"), then verify it (docs/operator.md, \"Moving to PostgreSQL\")")
    mg.add_argument("--verify-only", action="store_true", help="with --to: compare the two stores, copy nothing")
    mg.add_argument("--workers", type=int, default=4, help="with --to: blobs copied at once (default 4)")
    mg.add_argument("--batch", type=int, default=500, help="with --to: records per transaction, blobs per listing "
                                                          "(default 500)")
    mg.set_defaults(func=cmd_migrate)


COMMANDS = {"store": add_store}


def cmd_migrate(args) -> int:
    from agentmx.store import open_store
    path = config_path(args.config)
    config = load_config(path, Service.APP)
    if args.to:
        return cmd_move(config, path, args)
    if args.verify_only:
        print("agentmx store migrate: --verify-only goes with --to postgres", file=sys.stderr)
        return EX_CONFIG
    store = open_store(config)
    try:
        version = store.migrate()
        print(f"schema version {version} ({config.store.backend.value} store)")
        if config.store.backend is StoreBackend.EMBEDDED:
            _import_legacy(store, config)
        store.check_schema()
    finally:
        store.close()
    return 0


def _import_legacy(store, config) -> None:
    """An earlier version's data directory into the embedded store, once."""
    from agentmx.deliver.route import match

    def route_of(recipient: str) -> str:
        found = match(recipient, config.routes)
        return found.route.match if found else recipient
    counts = store.import_legacy(route_of)
    if counts:
        print("imported the earlier data directory: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
        print(f"the old files are left in {config.data_dir}: remove events/, state/, sent/, transcripts/, "
              "inbox.sqlite* and agent-jobs.sqlite* once you have checked the import (docs/operator.md)")


def cmd_move(config, path, args) -> int:
    """The embedded store in data_dir -> the configured postgres store, copied and verified."""
    from agentmx.store import SchemaMismatch, StoreError, StoreUnavailable, open_store, transfer
    from agentmx.store.embedded import FILE, EmbeddedStore
    if config.store.backend is not StoreBackend.POSTGRES:
        print(f"agentmx store migrate --to postgres: {path}: [store] backend is \"{config.store.backend.value}\": "
              "set backend = \"postgres\" with database_url_file and [store.s3] first, the target of the move "
              "(docs/operator.md, \"Moving to PostgreSQL\")", file=sys.stderr)
        return EX_CONFIG
    source = EmbeddedStore(config.data_dir)
    if not (config.data_dir / FILE).exists() and not source.legacy_present():
        print(f"agentmx store migrate --to postgres: no embedded store in {config.data_dir} ([server] data_dir "
              f"in {path}): nothing to move", file=sys.stderr)
        return EX_MISMATCH
    target = open_store(config, pool_size=max(1, args.workers))
    try:
        if not args.verify_only:              # both schemas up to date (the source's own import first)
            source.migrate()
            _import_legacy(source, config)
            print(f"target: schema version {target.migrate()} (postgres store)", flush=True)
        source.check_schema()
        target.check_schema()
        say = lambda line: print(line, flush=True)   # noqa: E731
        if args.verify_only:
            report = transfer.verify(source, target, say, batch=max(1, args.batch))
        else:
            report = transfer.move(source, target, say, workers=max(1, args.workers), batch=max(1, args.batch))
    except StoreError as exc:
        if isinstance(exc, (StoreUnavailable, SchemaMismatch)):
            raise                             # 75: try again (after `agentmx store migrate`)
        print(f"agentmx store migrate --to postgres: refused: {exc}", file=sys.stderr)
        return EX_MISMATCH
    finally:
        source.close()
        target.close()
    _print_report(report)
    if not report.ok:
        print("agentmx store migrate --to postgres: the target does NOT match the source:", file=sys.stderr)
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
        print("Nothing in the target was overwritten. If services have used the target since the move, "
              "differences in read flags, deliveries and jobs are theirs; otherwise run the command again, "
              "and if it persists restore the target from scratch (docs/operator.md, \"Moving to PostgreSQL\")",
              file=sys.stderr)
        return EX_MISMATCH
    print(f"verified: the target holds everything of {config.data_dir}. Start the services with {path} "
          "(they use the postgres store now); keep the data directory until you have checked the inbox.")
    return 0


def _print_report(report) -> None:
    if report.copied or report.read.get("blobs"):
        copied = report.seconds
        total = sum(v for k, v in copied.items() if k != "verify")
        events = report.read.get("events", 0)
        print(f"copied in {total:.1f} s: {report.read.get('blobs', 0)} blobs ({report.blob_bytes / 1e6:.1f} MB) in "
              f"{copied.get('blobs', 0):.1f} s, {events} events in {copied.get('events', 0):.1f} s; new in the target: "
              + ", ".join(f"{n} {what}" for what, n in report.copied.items()))
    print(f"{'table':<12} {'source rows':>11} {'sha256':<16} {'target rows':>11} {'sha256':<16} {'target only':>11}")
    for c in report.checks:
        print(f"{c.name:<12} {c.source_rows:>11} {c.source_hash[:16]:<16} {c.target_rows:>11} {c.target_hash[:16]:<16} "
              f"{c.target_only:>11}  {'ok' if c.ok else 'MISMATCH'}")
    if "verify" in report.seconds:
        print(f"verified in {report.seconds['verify']:.1f} s")
