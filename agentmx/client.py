"""A small Python client for `agentmx serve` (stdlib only).

    from agentmx.client import Client
    c = Client("http://127.0.0.1:8025", api_key)
    c.send(from_="agent@example.com", to=["bob@example.org"], subject="Hi", text="Hello")
    c.reply(event, text="Thanks, noted.")        # threaded answer to an email.received event
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60):
        self.base_url, self.api_key, self.timeout = base_url.rstrip("/"), api_key, timeout

    def _post(self, path: str, payload: dict) -> dict:
        req = urllib.request.Request(self.base_url + path, data=json.dumps(payload).encode(), method="POST",
                                     headers={"authorization": f"Bearer {self.api_key}",
                                              "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": str(exc)}
            raise ApiError(exc.code, err.get("code", ""), err.get("message", "")) from None

    def send(self, *, from_: str | dict, to=None, cc=None, bcc=None, reply_to=None, subject: str | None = None,
             text: str | None = None, html: str | None = None, attachments: list[str | Path] = (),
             headers: dict | None = None, in_reply_to: str | None = None, force: bool = False) -> dict:
        payload = {"from": from_, "to": to, "cc": cc, "bcc": bcc, "replyTo": reply_to, "subject": subject,
                   "text": text, "html": html, "headers": headers, "inReplyTo": in_reply_to, "force": force or None,
                   "attachments": [{"filename": Path(p).name, "content": base64.b64encode(Path(p).read_bytes()).decode()}
                                   for p in attachments] or None}
        return self._post("/v1/send", {k: v for k, v in payload.items() if v is not None})

    def reply(self, event: dict, *, text: str | None = None, html: str | None = None, from_: str | None = None,
              **kw) -> dict:
        """Answer an email.received event: to its sender, threaded, from the address it was sent to."""
        local, _, domain = event["recipient"].rpartition("@")
        sender = from_ or f"{local.split('+', 1)[0]}@{domain}"        # agent+tag@ answers as agent@
        return self.send(from_=sender, in_reply_to=event["id"], text=text, html=html, **kw)
