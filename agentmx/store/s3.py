"""Blobs in an S3-compatible bucket, for the postgres backend: a small client of our own.

AWS Signature Version 4 over http.client and hashlib (path-style URLs, so any S3-compatible
server works: AWS, SeaweedFS, MinIO, Ceph RGW, Garage), with the calls the store needs and no
more: PUT, GET (whole or streamed), HEAD, DELETE, ListObjectsV2, and PUT bucket for set-up. It is
on deliver's per-message path, where boto3 cost ~10x the import time and ~3x the memory
(docs/performance.md, "The S3 client"): stdlib only, nothing imported that a call does not use.

    client = S3Client(endpoint, bucket, region, access_key, secret_key)
    blobs = BlobStore(client)
    sha = blobs.put(data)            content-addressed: blobs/<sha[:2]>/<sha>, written once
    blobs.get(sha) / blobs.open(sha) / blobs.delete(sha) / blobs.list()

Every failure to reach or use the server (refused, timeout, a broken connection, 5xx, 403, any
status it should not give) is StoreUnavailable, with the status and S3's error code, never the
keys. The client is thread-safe: idle keep-alive connections are kept in a small LIFO pool.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Iterator

from .base import StoreUnavailable
from .model import Blob

_EMPTY_SHA = hashlib.sha256(b"").hexdigest()
_SHA = re.compile(r"[0-9a-f]{64}")
CHUNK = 64 * 1024
ANSWER_MAX = 8 << 20           # bytes: a list, an error, a PUT's answer
OBJECT_MAX = 512 << 20        # bytes: one blob read whole (raw messages are far smaller: Postfix's message_size_limit)
PREFIX = "blobs/"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float          # unix seconds (the server's Last-Modified)


class S3Client:
    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str, secret_key: str,
                 timeout: float = 10.0, max_idle: int = 8):
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint: an http:// or https:// URL")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        default = (443 if self.https else 80)
        self.host_header = parts.netloc.rsplit("@", 1)[-1] if self.port != default else self.host
        self.base_path = parts.path.rstrip("/")
        self.bucket = bucket
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._signing_key: tuple[str, bytes] | None = None

    def __repr__(self) -> str:                     # never the keys
        return f"S3Client({'https' if self.https else 'http'}://{self.host_header}, bucket={self.bucket!r})"

    # --- the calls --------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, sha256: str | None = None) -> None:
        self._call("PUT", key, body=data, payload_sha=sha256 or hashlib.sha256(data).hexdigest(),
                   expect=(200,), headers={"content-type": "application/octet-stream"})

    def get(self, key: str) -> bytes | None:
        status, _, body = self._call("GET", key, expect=(200, 404), limit=OBJECT_MAX)
        return body if status == 200 else None

    def head(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        status, headers, _ = self._call("HEAD", key, expect=(200, 404))
        return int(headers.get("content-length", "0")) if status == 200 else None

    def delete(self, key: str) -> None:
        self._call("DELETE", key, expect=(200, 204, 404))

    def open(self, key: str, chunk: int = CHUNK) -> tuple[int, Iterator[bytes]] | None:
        """(size, chunks) read from the connection as the caller iterates; None when absent."""
        conn, resp = self._send("GET", self._path(key), "", {}, b"", _EMPTY_SHA)
        if resp.status == 404:
            self._finish(conn, resp)
            return None
        if resp.status != 200:
            self._fail(conn, resp, "GET", key)
        length = resp.getheader("content-length")
        size = int(length) if length and length.isdigit() else -1          # -1: not said (chunked)
        return max(size, 0), self._stream(conn, resp, size, chunk, key)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix`, in key order (ListObjectsV2, 1000 a page)."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            elif start_after:
                query["start-after"] = start_after
            _, _, body = self._call("GET", "", query=query, expect=(200,))
            items, token = _parse_list(body)
            yield from items
            if not token:
                return

    def create_bucket(self) -> None:
        """PUT bucket; an existing bucket of ours is fine (set-up and tests)."""
        status, _, body = self._call("PUT", "", expect=(200, 409))
        if status == 409 and b"BucketAlreadyOwnedByYou" not in body:
            raise StoreUnavailable(f"S3 create bucket {self.bucket}: {_error_code(body)}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- HTTP and SigV4 -----------------------------------------------------------------------------

    def _call(self, method: str, key: str, *, query: dict | None = None, body: bytes = b"",
              payload_sha: str = _EMPTY_SHA, expect: tuple[int, ...], headers: dict | None = None,
              limit: int = ANSWER_MAX):
        """One request; its answer read whole, up to `limit` bytes (the service's answer is input
        like any other: a list or an error is far below ANSWER_MAX, an object below OBJECT_MAX)."""
        path = self._path(key)
        qs = _canonical_query(query or {})
        conn, resp = self._send(method, path, qs, headers or {}, body, payload_sha)
        if resp.status not in expect:
            self._fail(conn, resp, method, key)
        try:
            data = resp.read(limit + 1)          # HEAD: b"", and the response is done
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise StoreUnavailable(f"S3 {method} {key or self.bucket}: {_describe(exc)}") from None
        if len(data) > limit:
            conn.close()
            raise StoreUnavailable(f"S3 {method} {key or self.bucket}: an answer of more than {limit} bytes")
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        self._finish(conn, resp)
        return resp.status, resp_headers, data

    def _send(self, method: str, path: str, qs: str, headers: dict, body: bytes, payload_sha: str):
        """One request on an idle connection (a new one if the idle one went stale); its response."""
        for attempt in (0, 1):
            conn, reused = self._connection()
            signed = self._sign(method, path, qs, headers, payload_sha)
            try:
                conn.request(method, path + ("?" + qs if qs else ""), body=body or None, headers=signed)
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A kept-alive connection the server closed meanwhile: once more on a fresh one.
                if reused and attempt == 0 and isinstance(exc, (ConnectionError, http.client.RemoteDisconnected,
                                                                 http.client.BadStatusLine)):
                    continue
                raise StoreUnavailable(f"S3 {method} {path}: {_describe(exc)}") from None
        raise AssertionError("unreachable")

    def _fail(self, conn, resp, method: str, key: str):
        try:
            body = resp.read(4096)
        except (OSError, http.client.HTTPException):
            body = b""
        conn.close()
        raise StoreUnavailable(f"S3 {method} {key or self.bucket}: HTTP {resp.status} {_error_code(body)}".rstrip())

    def _stream(self, conn, resp, size: int, chunk: int, key: str) -> Iterator[bytes]:
        done = False
        got = 0
        try:
            while True:
                try:
                    data = resp.read(chunk)
                except (OSError, http.client.HTTPException) as exc:
                    raise StoreUnavailable(f"S3 GET {key}: {_describe(exc)}") from None
                if not data:
                    break
                got += len(data)
                yield data
            if size >= 0 and got != size:
                raise StoreUnavailable(f"S3 GET {key}: {got} of {size} bytes")
            done = True
        finally:
            if done:
                self._finish(conn, resp)
            else:                        # abandoned or broken halfway: the connection cannot be reused
                conn.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout), False

    def _finish(self, conn, resp) -> None:
        if resp.will_close or not resp.isclosed():
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _path(self, key: str) -> str:
        path = f"{self.base_path}/{self.bucket}" + (f"/{key}" if key else "")
        return urllib.parse.quote(path, safe="/-_.~")

    def _sign(self, method: str, path: str, qs: str, headers: dict, payload_sha: str) -> dict:
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        h = {k.lower(): str(v).strip() for k, v in headers.items()}
        h["host"] = self.host_header
        h["x-amz-date"] = amz_date
        h["x-amz-content-sha256"] = payload_sha
        names = sorted(h)
        signed_names = ";".join(names)
        canonical = "\n".join([method, path, qs, "".join(f"{n}:{h[n]}\n" for n in names), signed_names,
                               payload_sha])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                              f"SignedHeaders={signed_names}, Signature={signature}")
        return h

    def _key(self, day: str) -> bytes:
        cached = self._signing_key
        if cached and cached[0] == day:
            return cached[1]
        key = ("AWS4" + self._secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._signing_key = (day, key)
        return key


def _canonical_query(query: dict) -> str:
    return "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                    for k, v in sorted(query.items()))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or type(exc).__name__


def _error_code(body: bytes) -> str:
    m = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", body or b"")
    return m.group(1).decode() if m else ""


def _parse_list(body: bytes) -> tuple[list[ObjectInfo], str]:
    import xml.etree.ElementTree as ET           # lazy: 1 ms; gc only, not on the per-message path
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise StoreUnavailable(f"S3 list: not XML ({exc})") from None
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    items = []
    for c in root.iter(f"{ns}Contents"):
        modified = c.findtext(f"{ns}LastModified") or ""
        try:
            when = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
        except ValueError:
            when = 0.0
        items.append(ObjectInfo(c.findtext(f"{ns}Key") or "", int(c.findtext(f"{ns}Size") or 0), when))
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    token = root.findtext(f"{ns}NextContinuationToken") or "" if truncated else ""
    return items, token


class BlobStore:
    """Content-addressed blobs: blobs/<sha[:2]>/<sha>, the sha256 hex digest of the bytes (under
    `root`, a key prefix: tests give each store a part of one bucket)."""

    def __init__(self, client: S3Client, root: str = ""):
        self.client = client
        self.root = root

    def key(self, sha256: str) -> str:
        if not _SHA.fullmatch(sha256):
            raise ValueError("not a sha256 hex digest")
        return f"{self.root}{PREFIX}{sha256[:2]}/{sha256}"

    def put(self, data: bytes) -> str:
        """Written once: an object already there (same bytes, by its name) is not sent again."""
        sha = hashlib.sha256(data).hexdigest()
        key = self.key(sha)
        if self.client.head(key) != len(data):
            self.client.put(key, data, sha256=sha)
        return sha

    def get(self, sha256: str) -> bytes | None:
        return self.client.get(self.key(sha256)) if _SHA.fullmatch(sha256) else None

    def open(self, sha256: str) -> Blob | None:
        if not _SHA.fullmatch(sha256):
            return None
        opened = self.client.open(self.key(sha256))
        if opened is None:
            return None
        size, chunks = opened
        return Blob(sha256=sha256, size=size, chunks=chunks)

    def delete(self, sha256: str) -> None:
        self.client.delete(self.key(sha256))

    def list(self) -> Iterator[tuple[str, int, float]]:
        """(sha256, size, modified) of every blob in the bucket (gc)."""
        for item in self.client.list(self.root + PREFIX):
            name = item.key.rsplit("/", 1)[-1]
            if _SHA.fullmatch(name) and item.key == self.key(name):
                yield name, item.size, item.modified


def blob_store(s3) -> BlobStore:
    """From config.store.s3 (agentmx.config.S3Config)."""
    return BlobStore(S3Client(s3.endpoint, s3.bucket, s3.region, s3.access_key, s3.secret_key), root=s3.prefix)

