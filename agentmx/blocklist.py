"""The block list as the milter reads it: <data_dir>/blocks.json, a snapshot of the store's
blocks (block-sender answers, deliver/control.py; POST /v1/blocks, api/blocklist_api.py;
`agentmx blocks add`), and the routes' own block_senders from the config.

The milter runs as its own user and reads none of the application's secrets, so it cannot open a
PostgreSQL store: the application's processes write this file (deliver right after a block,
serve every REFRESH seconds on every host, from the store every host shares) and the milter reads
it when it changes. Written atomically (a new file renamed over the old), 0640, the data
directory's owner and group agentmx (the milter's group). Stdlib only.

    {"version": 1, "blocks": [["spammer@example.net", "agent@example.com"], ["x@y", "@example.com"]]}

A block is (sender, scope): the envelope sender (MAIL FROM, lower case) and a route's match (an
address or @domain). A recipient is in scope when the route that takes it (agentmx/routing.py: its
base address agent+tag@ -> agent@, else its domain, the first match in config order) is that
route: a block from the @domain route does not cover an address with a route of its own (another
agent). A block's sender is an address or a whole domain ("@bad.example": every sender at that
domain, not its subdomains). Reading fails open: a missing, unreadable, oversized or malformed
file is no blocks (logged), never a refusal. The config's blocks (a route's block_senders) are
never failed open: they are in the milter's own config, checked before the file.

    blocking(store, route, sender) -> a block or None   deliver's check before a POST: config, then store
    every(store, routes, scopes)                       the config's and the store's, for the API and the CLI
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from agentmx.config import Route
from agentmx.ownership import write_atomically
from agentmx.routing import match

log = logging.getLogger("agentmx.blocklist")

NAME = "blocks.json"
REFRESH = 60.0                 # seconds between serve's rewrites from the store
MAX_BYTES = 16 * 1024 * 1024   # a bigger file is not read (fail open)


def path_in(data_dir) -> Path:
    return Path(data_dir) / NAME


def render(entries) -> bytes:
    return json.dumps({"version": 1, "blocks": sorted({(s, c) for s, c in entries})},
                      separators=(",", ":")).encode()


def write(path: Path, entries) -> bool:
    """Replace the file with these (sender, scope) pairs, atomically; False when it already said so."""
    data = render(entries)
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomically(path, data, owner_of=path.parent)
    return True


CONFIG = "config"              # the event_id of a block from a route's block_senders
OPERATOR = "operator"          # the event_id of a block `agentmx blocks add` made


@dataclass(frozen=True)
class ConfigBlock:
    """A route's block_senders entry, shaped as the store's blocks (store.model.Block) are."""
    sender: str
    scope: str
    event_id: str = CONFIG
    created: float = 0.0


def senders(sender: str) -> tuple[str, ...]:
    """What a block may name to cover this envelope sender: itself and its domain ("@bad.example");
    () for the null sender, which is never blocked (bounces must reach the agent)."""
    sender = sender.strip().strip("<>").lower()
    if not sender:
        return ()
    _, at, domain = sender.rpartition("@")
    return (sender, "@" + domain) if at and domain else (sender,)


def configured(route: Route, sender: str) -> str | None:
    """The entry of the route's block_senders that names this sender (itself or its @domain), or None."""
    return next((s for s in senders(sender) if s in route.block_senders), None)


def blocking(store, route: Route, sender: str):
    """The block that refuses `sender` for `route`: the config's (event_id "config"), else the
    store's (for the sender or its @domain), or None. deliver's check before a POST: mail that reached it
    past the milter (a block added since) is kept aside, as the milter would have refused it."""
    named = configured(route, sender)
    if named is not None:
        return ConfigBlock(named, route.match)
    return next((b for b in (store.blocked(s, (route.match,)) for s in senders(sender)) if b is not None), None)


def every(store, routes: tuple[Route, ...], scopes: tuple[str, ...] | None = None) -> list:
    """The blocks of these scopes (every scope: None), the config's and the store's, in (scope,
    sender, the config's first) order: what the API and `agentmx blocks list` show."""
    configured_ = [ConfigBlock(s, r.match) for r in routes for s in r.block_senders]
    found = [b for b in configured_ + store.blocks() if scopes is None or b.scope in scopes]
    return sorted(found, key=order)


def order(block) -> tuple[str, str, str]:
    """Where a block comes in a listing (and a cursor after it): scope, sender, the config's first."""
    return block.scope, block.sender, "0" if block.event_id == CONFIG else "1"


def source_of(block) -> str:
    """Who made a block: config (a route's block_senders), agent (a block-sender answer to an
    event), api (an API key: "key:<name>"), operator (`agentmx blocks add`)."""
    if block.event_id == CONFIG:
        return "config"
    if block.event_id.startswith("key:"):
        return "api"
    return "operator" if block.event_id == OPERATOR else "agent"


class Snapshot:
    """The milter's view of the file: re-read when its identity (inode, size, mtime) changes,
    looked at with one stat per check. Fails open."""

    def __init__(self, path: Path, routes: tuple[Route, ...] = ()):
        self.path, self.routes = path, routes
        self._stamp: tuple | None = None
        self._blocks: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()        # the milter's threads share one snapshot

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._blocks = None, {}
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if st.st_size > MAX_BYTES:
            log.warning("%s: %d bytes, more than %d: not read, no sender blocked", self.path, st.st_size, MAX_BYTES)
            self._blocks = {}
            return
        blocks: dict[str, set[str]] = {}
        doc = json.loads(self.path.read_bytes())
        for sender, scope in doc["blocks"]:
            if isinstance(sender, str) and isinstance(scope, str):
                blocks.setdefault(sender, set()).add(scope)
        self._blocks = {s: frozenset(c) for s, c in blocks.items()}

    def blocked(self, sender: str, recipient: str) -> str | None:
        """The scope that blocks `sender` for `recipient`, or None. The route's block_senders
        first (the config: never failed open), then the file (on any error: fail open)."""
        keys = senders(sender)
        found = match(recipient.strip().strip("<>"), self.routes) if keys else None
        if found is not None and configured(found.route, sender) is not None:
            return found.route.match
        if not keys:
            return None
        try:
            with self._lock:
                self._load()
                scopes = set().union(*(self._blocks.get(k, ()) for k in keys))
            scope = found.route.match if found is not None else None      # the route matched above
            return scope if scope in scopes else None
        except Exception as exc:        # a bad file or a bug here must never refuse mail
            log.warning("%s: not usable, no sender blocked: %s", self.path, exc)
            with self._lock:
                self._blocks = {}
            return None
