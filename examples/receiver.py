#!/usr/bin/env python3
"""A minimal agent endpoint for agentmx: verify, acknowledge fast, work afterwards.

    AGENTMX_WEBHOOK_SECRET=whsec_... python3 examples/receiver.py --port 8080

- Verifies the Standard Webhooks signature (agentmx.webhook.verify; any Standard Webhooks library
  works the same) and answers 401 to anything unsigned, altered or replayed.
- Answers 200 at once and handles the event in a worker thread: agentmx waits for the answer
  (the route's timeout), and a slow answer means a retry.
- Deduplicates on webhook-id: a retry of a message already taken is acknowledged, not redone.
- Answers 406 to mail it will never want (here: bounces), so agentmx stops retrying and keeps it.
- Notes the events about what it sent (email.sent, email.delivered, email.bounced ...: `type`
  tells them from email.received) and acknowledges them.
- Treats the message as untrusted: it looks at auth.dmarc before believing the From address.
- With AGENTMX_API_KEY set, answers authenticated mail through `agentmx serve`'s send API
  (threaded, DKIM-signed by the milter, Auto-Submitted: auto-replied); AGENTMX_URL names the API
  (default http://127.0.0.1:8025).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentmx.webhook import WebhookVerificationError, verify

SEEN: set[str] = set()
WORK: "queue.Queue[dict]" = queue.Queue()


def handle(event: dict) -> None:
    sender = (event.get("from") or {}).get("address")
    trusted = event["auth"]["dmarc"] == "pass"
    print(f"event {event['id']}: from {sender} ({'authenticated' if trusted else 'NOT authenticated'}) "
          f"subject {event['subject']!r} codes {event['codes']} thread {event['threadId']}", flush=True)
    key = os.environ.get("AGENTMX_API_KEY")
    if key and trusted and not event["autoSubmitted"]:
        from agentmx.client import ApiError, Client
        try:
            sent = Client(os.environ.get("AGENTMX_URL", "http://127.0.0.1:8025"), key).reply(
                event, text=f"Thanks, I got your message about {event['subject']!r}.\n")
            print(f"replied {sent['id']} queued as {sent['queueId']} in thread {sent['threadId']}", flush=True)
        except ApiError as exc:
            print(f"could not reply: {exc}", flush=True)


def worker() -> None:
    while True:
        handle(WORK.get())


class Endpoint(BaseHTTPRequestHandler):
    secret = ""

    def log_message(self, *args):
        pass

    def answer(self, code: int, text: str) -> None:
        body = json.dumps({"status": text}).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            verify(dict(self.headers), body, self.secret)
        except WebhookVerificationError as exc:
            print(f"refused an unverified request: {exc}", flush=True)
            return self.answer(401, "unverified")
        event = json.loads(body)
        if event["id"] in SEEN:
            return self.answer(200, "duplicate")
        if event.get("type") != "email.received":      # what became of what we sent: email.sent, .bounced...
            SEEN.add(event["id"])
            what = " ".join(str(v) for v in (event.get("type"), event.get("recipient"), event.get("status")) if v)
            print(f"event {event['id']}: {what} (send {event.get('sendId')})", flush=True)
            return self.answer(200, "noted")
        if event["autoSubmitted"] == "bounce":
            return self.answer(406, "not wanted")
        SEEN.add(event["id"])
        WORK.put(event)
        self.answer(200, "accepted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    Endpoint.secret = os.environ["AGENTMX_WEBHOOK_SECRET"]
    threading.Thread(target=worker, daemon=True).start()
    server = ThreadingHTTPServer((args.host, args.port), Endpoint)
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
