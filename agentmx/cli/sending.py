"""`agentmx send`: send or reply through `agentmx serve`'s API, as any agent would (agentmx.client).

The handler imports the client inside it: the parser is built on every command, and the
per-message `agentmx deliver` must not pay for it (docs/decisions.md, "Issue 20: the CLI and the
SMTP replies")."""
from __future__ import annotations

import json
import os
import sys


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


def add_send(sub) -> None:
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


COMMANDS = {"send": add_send}
