"""`agentmx serve`: the HTTP service beside Postfix. This release: signed blob URLs.

    GET /v1/blobs/{sha256}?exp=&type=&name=&sig=   a stored raw message or attachment
    GET /healthz                                   200 "ok"

A forged, altered or expired URL gets 403 (the log says which); a valid URL for a blob that is
gone (expired by retention) gets 404. The file is found by its sha256 alone; the signed filename
only goes into Content-Disposition, quoted per RFC 6266.
"""
from __future__ import annotations

import logging
import re
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from . import urls
from .config import Config
from .store import Store

log = logging.getLogger("agentmx.serve")


def _disposition(name: str) -> str:
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\]', "_", name) or "file"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def make_handler(config: Config, store: Store):
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

        def do_GET(self):
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                return self._plain(200, "ok")
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


def run(config: Config) -> None:
    server = make_server(config)
    log.info("serving on http://%s:%d (public URL %s)", *config.listen, config.public_url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
