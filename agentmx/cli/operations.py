"""Operations on what was delivered and sent: `agentmx status` (recent deliveries, what waits in
Postfix's queue, what became of one send), `replay`, `gc` and `transcript` (what the agent saw and did).

The handlers import agentmx.ops inside them: the parser is built on every command, and the
per-message `agentmx deliver` must not pay for it (docs/decisions.md, "Issue 20: the CLI and the
SMTP replies")."""
from __future__ import annotations

import json
import os
import re
import sys

from agentmx.config import Service, load_config
from agentmx.times import rfc3339

from .common import checked_store, config_path


# C0 and C1 controls but tab and newline (ESC starts every ANSI sequence, CSI is U+009B), the
# bidirectional overrides that reorder what a terminal shows, and lone surrogates (unprintable).
# A pattern, compiled (and cached by re) on first use: not at import, which every command pays for.
_TERMINAL = ("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
             "\ud800-\udfff]")


def _shown(value) -> str:
    """Text from mail or a model, for a terminal: every control character written as an escape
    (\\x1b, \\u202e), so that none is interpreted."""
    return re.sub(_TERMINAL, lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                  str(value))


def cmd_transcript(args) -> int:
    """Print what the agent was shown and did for one message (mail and model text escaped)."""
    config = load_config(config_path(args.config), Service.APP)
    with checked_store(config) as store:
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


def _send_status(config, send_id: str) -> int:
    """`agentmx status snd_...`: what became of one send, recipient by recipient."""
    from agentmx import ops
    try:
        with checked_store(config) as store:
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
    config = load_config(config_path(args.config), Service.APP)
    if args.send_id:
        return _send_status(config, args.send_id)
    print(f"recent deliveries ({config.data_dir}):")
    with checked_store(config) as store:
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
    config = load_config(config_path(args.config), Service.APP)
    try:
        with checked_store(config) as store:
            status, reason = ops.replay(config, store, args.event_id)
    except LookupError as exc:
        print(f"agentmx replay: {exc}", file=sys.stderr)
        return 1
    print(f"{args.event_id}: HTTP {status or '-'} ({reason})")
    return 0 if (200 <= status < 300 or status == 406) else 1


def cmd_gc(args) -> int:
    from agentmx import ops
    config = load_config(config_path(args.config), Service.APP)
    days = args.days or config.retention_days
    with checked_store(config) as store:
        report = ops.gc(config, store, days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    rest = ", ".join(f"{n} {what}" for what, n in report.other.items() if n)
    print(f"{verb} {report.events} event(s) and {report.blobs} blob(s), {report.bytes} bytes, older than {days} days"
          + (f" (and {rest})" if rest else ""))
    return 0


def add_transcript(sub) -> None:
    tr = sub.add_parser("transcript", help="what the agent was shown and did for a message")
    tr.add_argument("id")
    tr.set_defaults(func=cmd_transcript)


def add_status(sub) -> None:
    st = sub.add_parser("status", help="recent deliveries, and what waits in Postfix's queue for the agents; "
                                       "with a send id, what became of that send, recipient by recipient")
    st.add_argument("send_id", nargs="?", help="a send's id (snd_...): its status timeline")
    st.add_argument("--limit", type=int, default=20)
    st.add_argument("--postfix-config", default=os.environ.get("MAIL_CONFIG"),
                    help="Postfix config directory (default $MAIL_CONFIG, else the system's)")
    st.set_defaults(func=cmd_status)


def add_replay(sub) -> None:
    rp = sub.add_parser("replay", help="POST a stored event again, with its original webhook-id")
    rp.add_argument("event_id")
    rp.set_defaults(func=cmd_replay)


def add_gc(sub) -> None:
    gcp = sub.add_parser("gc", help="remove stored mail older than [server] retention_days")
    gcp.add_argument("--days", type=int, help="override retention_days")
    gcp.add_argument("--dry-run", action="store_true")
    gcp.set_defaults(func=cmd_gc)


COMMANDS = {"transcript": add_transcript, "status": add_status, "replay": add_replay, "gc": add_gc}
