"""A small Python client for `agentmx serve` (stdlib only).

    from agentmx.client import Client
    c = Client("http://127.0.0.1:8025", api_key)
    c.send(from_="agent@example.com", to=["bob@example.org"], subject="Hi", text="Hello")
    c.reply(event, text="Thanks, noted.")        # threaded answer to an email.received event
    m = c.wait(to="agent@example.com", from_="@github.com", timeout=120)   # the sign-up loop
    m and m["codes"]                                                       # ["551234"]
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def reply_from(event: dict) -> str:
    """The address an answer to an email.received event goes out from: the one it was sent to,
    without a +tag (agent+tag@ answers as agent@)."""
    local, _, domain = event["recipient"].rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60):
        self.base_url, self.api_key, self.timeout = base_url.rstrip("/"), api_key, timeout

    def _post(self, path: str, payload: dict | None) -> dict:
        return self._call(urllib.request.Request(
            self.base_url + path, data=json.dumps(payload or {}).encode(), method="POST",
            headers={"authorization": f"Bearer {self.api_key}", "content-type": "application/json"}))

    def _get(self, path: str, query: dict | None = None, timeout: float | None = None) -> dict:
        q = {k: ("true" if v is True else v) for k, v in (query or {}).items()
             if v is not None and v is not False and v != ""}        # 0 is a value (timeout=0)
        url = self.base_url + path + ("?" + urllib.parse.urlencode(q) if q else "")
        return self._call(urllib.request.Request(url, headers={"authorization": f"Bearer {self.api_key}"}), timeout)

    def _call(self, req: urllib.request.Request, timeout: float | None = None) -> dict:
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
                code, message = str(err["code"]), str(err["error"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", str(exc)
            raise ApiError(exc.code, code, message) from None

    def send(self, *, from_: str | dict, to=None, cc=None, bcc=None, reply_to=None, subject: str | None = None,
             text: str | None = None, html: str | None = None, attachments: list[str | Path] = (),
             headers: dict | None = None, in_reply_to: str | None = None, force: bool = False) -> dict:
        payload = {"from": from_, "to": to, "cc": cc, "bcc": bcc, "replyTo": reply_to, "subject": subject,
                   "text": text, "html": html, "headers": headers, "inReplyTo": in_reply_to, "force": force or None,
                   "attachments": [{"filename": Path(p).name, "content": base64.b64encode(Path(p).read_bytes()).decode()}
                                   for p in attachments] or None}
        return self.send_json({k: v for k, v in payload.items() if v is not None})

    def send_json(self, payload: dict) -> dict:
        """POST /v1/send with `payload` as its body, as it is (the API's own member names)."""
        return self._post("/v1/send", payload)

    # --- the inbox ----------------------------------------------------------------------------

    def messages(self, *, to: str | None = None, from_: str | None = None, subject: str | None = None,
                 since: str | None = None, unread: bool = False, limit: int = 20, cursor: str | None = None) -> dict:
        """{"messages": [...newest first...], "nextCursor": ...}"""
        return self._get("/v1/messages", {"to": to, "from": from_, "subject": subject, "since": since,
                                          "unread": unread, "limit": limit, "cursor": cursor})

    def message(self, event_id: str) -> dict:
        return self._get(f"/v1/messages/{event_id}")

    def ack(self, event_id: str) -> dict:
        return self._post(f"/v1/messages/{event_id}/ack", None)

    def thread(self, thread_id: str) -> dict:
        return self._get("/v1/threads/" + urllib.parse.quote(thread_id, safe=""))

    def wait(self, *, to: str | None = None, from_: str | None = None, subject: str | None = None,
             timeout: float = 30, ack: bool = False) -> dict | None:
        """The oldest unread matching message, waiting up to `timeout` seconds; None on timeout."""
        out = self._get("/v1/messages/wait", {"to": to, "from": from_, "subject": subject, "timeout": int(timeout),
                                              "ack": ack}, timeout=timeout + 30)
        return out.get("message")

    def events(self, *, name: str | None = None, email: str | None = None, kind: str | None = None,
               limit: int = 20, cursor: str | None = None) -> dict:
        """GET /v1/events: {"events": [...newest first...], "nextCursor": ...}; kind "sent": what
        became of what this key sent (email.sent ... email.complained), "received": the inbox."""
        return self._get("/v1/events", {"name": name, "email": email, "kind": kind, "limit": limit, "cursor": cursor})

    def send_status(self, send_id: str) -> dict:
        """GET /v1/send/{id}: the send, its `events` and each recipient's `timeline`."""
        return self._get("/v1/send/" + urllib.parse.quote(send_id, safe=""))

    def reply(self, event: dict, *, text: str | None = None, html: str | None = None, from_: str | None = None,
              **kw) -> dict:
        """Answer an email.received event: to its sender, threaded, from the address it was sent to."""
        return self.send(from_=from_ or reply_from(event), in_reply_to=event["id"], text=text, html=html, **kw)
