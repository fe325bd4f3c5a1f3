"""Who is signed in to the web console: a session cookie, CSRF tokens, and the sign-in limit.

A session is a cookie that names the key it was opened with and when, signed (HMAC-SHA256) with
that key's own secret, like a realtime token (../realtime.py): no table, several serves behind one
address all read it, and a key removed or rotated in the config ends its sessions at once. The
admin key ([server] admin_key) opens a session that sees what every API key sees.

    agentmx_console = <body>.<sig>       body: base64url of JSON [name, issued, nonce]

HttpOnly, SameSite=Strict, Path=/console, Secure when serve is reached over TLS ([server]
public_url is https://, or the request itself was). A session lasts SESSION_TTL from sign-in.

CSRF: every form carries csrf = HMAC(session's key secret, "csrf" + nonce); a POST without it (or
with another session's) is refused, and so is one whose Origin is another site. The sign-in form,
which has no session yet, carries the value of a random pre-session cookie (double submit: a
page of another site can neither read nor set it), against login CSRF.

Sign-in attempts: LIMIT per client address per WINDOW seconds, counted in the store (store.take:
shared by every serve of a shared store), whether they succeed or not.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from agentmx.config import ApiKey, Config

COOKIE = "agentmx_console"
PRE_COOKIE = "agentmx_console_pre"
SESSION_TTL = 12 * 3600
LIMIT, WINDOW = 10, 300           # sign-in attempts per client address per window (seconds)
MAX_COOKIE = 600
ADMIN = "\0admin"                 # the admin session's name: no config's key name starts with NUL

_DOMAIN = b"agentmx console session v1\0"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: an API key (what it may read) or the admin (every key's addresses and every
    domain). `key` is an ApiKey so that every data function the API uses takes it unchanged."""
    key: ApiKey
    admin: bool
    nonce: str

    @property
    def name(self) -> str:
        return self.key.name

    def csrf(self) -> str:
        return _mac(self.key.key, b"csrf" + self.nonce.encode())[:32]

    def remote_token(self, event_id: str) -> str:
        """What ?remote= must be for a message's remote images to load: bound to this session and
        that message, so that the message itself (a link in its HTML navigating its frame) or a
        link someone sends cannot turn them on."""
        return _mac(self.key.key, b"remote" + self.nonce.encode() + b"\0" + event_id.encode())[:22]

    @property
    def label(self) -> str:
        return "admin" if self.admin else self.key.name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, data: bytes) -> str:
    return _b64(hmac.new(secret.encode(), _DOMAIN + data, hashlib.sha256).digest())


def keys(config: Config) -> dict[str, ApiKey]:
    """Every key that may sign in, by name: the API keys, and the admin key as an ApiKey that
    allows every key's addresses and every configured domain."""
    out = {k.name: k for k in config.api_keys}
    if config.admin_key:
        allow = [a for k in config.api_keys for a in k.allow]
        allow += ["@" + d.name for d in config.domains]
        allow += [r.match.lower() for r in config.routes if "@" in r.match]
        out[ADMIN] = ApiKey(name=ADMIN, key=config.admin_key, allow=tuple(dict.fromkeys(allow)))
    return out


def find_key(config: Config, given: str) -> ApiKey | None:
    """The key whose secret is `given` (compared in constant time, each one), else None."""
    given = given.strip()
    found = None
    for key in keys(config).values():
        if given and hmac.compare_digest(given.encode(), key.key.encode()):
            found = key
    return found


def open_session(key: ApiKey, now: float) -> str:
    body = _b64(json.dumps([key.name, int(now), _b64(os.urandom(12))], separators=(",", ":")).encode())
    return f"{body}.{_mac(key.key, body.encode())}"


def read_session(config: Config, cookie: str | None, now: float) -> Viewer | None:
    """The viewer of a session cookie: signed by a key the config still has, not expired; else None."""
    if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
        return None
    body, sig = cookie.split(".")
    try:
        name, issued, nonce = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    key = keys(config).get(name) if isinstance(name, str) else None
    if key is None or not hmac.compare_digest(sig.encode(), _mac(key.key, body.encode()).encode()):
        return None
    if not isinstance(issued, int) or not isinstance(nonce, str) or not issued <= now + 60 < issued + SESSION_TTL + 60:
        return None
    return Viewer(key=key, admin=name == ADMIN, nonce=nonce)


def new_pre() -> str:
    return _b64(os.urandom(18))


def same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())
