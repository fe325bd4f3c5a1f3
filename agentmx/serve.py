"""`agentmx serve`: the HTTP service beside Postfix.

    POST /v1/send                                  send or reply (API key; see docs/openapi.json)
    GET  /v1/messages, /v1/messages/wait, /v1/messages/{id}, /v1/threads/{threadId}, /v1/events,
    POST /v1/messages/{id}/ack                     the inbox API (agentmx/inboxapi.py)
    GET /v1/blobs/{sha256}?exp=&type=&name=&sig=   a stored raw message or attachment
    GET /metrics                                   Prometheus: deliveries, auth verdicts, latency
    GET /healthz                                   200 "ok"

A forged, altered or expired URL gets 403 (the log says which); a valid URL for a blob that is
gone (expired by retention) gets 404. The file is found by its sha256 alone; the signed filename
only goes into Content-Disposition, quoted per RFC 6266.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import send, urls
from .config import Config
from .store import Store, StoreError

log = logging.getLogger("agentmx.serve")


def _disposition(name: str) -> str:
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\]', "_", name) or "file"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def handle_send(config: Config, store: Store, limiter: send.RateLimiter, authorization: str | None,
                body: bytes) -> tuple[int, dict, dict]:
    """(status, JSON body, extra headers) for one POST /v1/send."""
    try:
        key = send.authorize(config, authorization)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise send.SendError(400, "bad_json", "the body is not JSON") from None
        req = send.parse_request(data)
        send.check_sender(key, req)
        original = None
        if req.in_reply_to and req.in_reply_to.startswith("msg_"):
            raw_event = store.get_event(req.in_reply_to)
            if raw_event is None:
                raise send.SendError(404, "unknown_event", f"no stored event {req.in_reply_to}")
            original = json.loads(raw_event)
            from agentmx.deliver.route import split
            if not key.may_send_as(split(original.get("recipient", ""))[0]):
                raise send.SendError(403, "forbidden_event", "this key may not answer mail sent to another address")
        out = send.build(req, original, config)
        limiter.take(out.correspondents, out.thread_id if original is not None or out.in_reply_to else None)
        queue_id = send.submit(out, config)
    except send.SendError as exc:
        log.info("send refused (%s): %s", exc.status, exc.message)
        headers = {"retry-after": str(exc.retry_after)} if exc.retry_after else {}
        return exc.status, exc.body(), headers
    send_id = "snd_" + base64.b32encode(os.urandom(16)).decode().lower().rstrip("=")
    result = {"id": send_id, "messageId": out.message_id, "queueId": queue_id, "threadId": out.thread_id,
              "inReplyTo": out.in_reply_to, "recipients": list(out.recipients)}
    try:
        store.put_sent(send_id, {**result, "key": key.name, "from": out.envelope_from,
                                 "replyToEvent": original.get("id") if original else None})
    except StoreError as exc:
        log.warning("%s: sent as %s but not recorded: %s", send_id, queue_id, exc.strerror)
    log.info("%s: queued as %s from=%s to=%s key=%s", send_id, queue_id, out.envelope_from,
             ",".join(out.recipients), key.name)
    return 200, result, {}


def make_handler(config: Config, store: Store):
    from .inboxapi import ApiError, InboxApi
    limiter = send.RateLimiter(config.send.per_correspondent_per_hour, config.send.per_thread_per_hour)
    inbox_api = InboxApi(config, store)

    class Handler(BaseHTTPRequestHandler):
        server_version = "agentmx"
        sys_version = ""

        def log_message(self, fmt, *args):          # no query strings (signatures) in logs
            log.info("%s %s %s", self.command, urlsplit(self.path).path, args[1] if len(args) > 1 else "")

        def _plain(self, code: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: dict, headers: dict | None = None) -> None:
            body = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _inbox(self, method: str, path: str, query: str) -> bool:
            """The inbox routes; False when the path is not one of them."""
            q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
            ack = re.fullmatch(r"/v1/messages/(msg_[a-z0-9]+)/ack", path)
            one = re.fullmatch(r"/v1/messages/(msg_[a-z0-9]+)", path)
            thread = re.fullmatch(r"/v1/threads/(.+)", path)
            routes = {("GET", "/v1/messages"): lambda k: inbox_api.list(k, q),
                      ("GET", "/v1/messages/wait"): lambda k: inbox_api.wait(k, q)}
            if (method, path) in routes:
                handler = routes[(method, path)]
            elif method == "POST" and ack:
                handler = lambda k: inbox_api.ack(k, ack.group(1))  # noqa: E731
            elif method == "GET" and one:
                handler = lambda k: inbox_api.get(k, one.group(1))  # noqa: E731
            elif method == "GET" and thread:
                handler = lambda k: inbox_api.thread(k, unquote(thread.group(1)))  # noqa: E731
            elif method == "GET" and path == "/v1/events":
                handler = None
            else:
                return False
            try:
                key = inbox_api.key(self.headers.get("authorization"))
                if handler is None:
                    return self._events(key, q) or True
                self._json(200, handler(key))
            except ApiError as exc:
                self._json(exc.status, exc.body())
            return True

        def _events(self, key, q: dict) -> None:
            last = self.headers.get("last-event-id") or q.get("after")
            after = int(last) if last and last.isdigit() else None
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-store")
            self.send_header("x-accel-buffering", "no")
            self.end_headers()
            self.close_connection = True
            try:
                for chunk in inbox_api.stream(key, after, alive=lambda: True):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass                        # the client went away: the stream ends

        def do_POST(self):
            parts = urlsplit(self.path)
            if self._inbox("POST", parts.path, parts.query):
                return
            if parts.path != "/v1/send":
                return self._plain(404, "not found")
            try:
                length = int(self.headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= config.send.max_request_bytes:
                return self._json(413, {"error": {"code": "too_large", "message":
                                  f"a request is at most {config.send.max_request_bytes} bytes"}})
            body = self.rfile.read(length)
            status, data, headers = handle_send(config, store, limiter, self.headers.get("authorization"), body)
            self._json(status, data, headers)

        def do_GET(self):
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                return self._plain(200, "ok")
            if self._inbox("GET", parts.path, parts.query):
                return
            if parts.path == "/metrics":
                from agentmx.ops import metrics
                body = metrics(config).encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            m = re.fullmatch(r"/v1/blobs/([^/]+)", parts.path)
            if not m:
                return self._plain(404, "not found")
            q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            sha = m.group(1)
            why = urls.check(config.url_secret, sha, q.get("exp"), q.get("type", ""), q.get("name", ""),
                             q.get("sig", ""))
            if not config.url_secret or why:
                log.warning("403 for blob %s: %s", sha[:16], why or "no url_secret configured")
                return self._plain(403, "forbidden")
            path = store.blob_path(sha)
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                return self._plain(404, "gone")
            with f:
                size = path.stat().st_size
                self.send_response(200)
                self.send_header("content-type", q.get("type") or "application/octet-stream")
                self.send_header("content-length", str(size))
                self.send_header("content-disposition", _disposition(q.get("name") or sha))
                self.send_header("x-content-type-options", "nosniff")
                self.send_header("content-security-policy", "sandbox")
                self.send_header("cache-control", "private, max-age=300")
                self.end_headers()
                shutil.copyfileobj(f, self.wfile, 1 << 16)

    return Handler


def make_server(config: Config) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(config.listen, make_handler(config, Store(config.data_dir)))
    server.daemon_threads = True
    return server


def start_mcp(config: Config, api_port: int):
    """MCP over streamable HTTP beside the API ([server] mcp_listen), as a client of this API."""
    from . import mcpserver
    host = "127.0.0.1" if config.listen[0] in ("0.0.0.0", "::", "") else config.listen[0]
    log.info("MCP (streamable HTTP) on http://%s:%d/mcp", *config.mcp_listen)
    return mcpserver.serve_http(f"http://{host}:{api_port}", config.mcp_listen)


def run(config: Config) -> None:
    server = make_server(config)
    log.info("serving on http://%s:%d (public URL %s)", *config.listen, config.public_url)
    if config.mcp_listen:
        try:
            start_mcp(config, server.server_address[1])
        except ImportError as exc:
            raise SystemExit(f"agentmx serve: [server] mcp_listen needs the MCP SDK ({exc.name}): "
                             "pip install 'agentmx[mcp]'") from None
    try:
        server.serve_forever()
    finally:
        server.server_close()
