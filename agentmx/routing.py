"""Which route takes a recipient: exact address, plus-address (agent+tag@ -> agent@), domain; the
first match in config order. One rule for deliver (where an event goes), serve (a delivery's
route) and the milter (whom a block covers: the recipients its route takes, blocklist.py)."""
from __future__ import annotations

from dataclasses import dataclass

from agentmx.address import split
from agentmx.config import Route


@dataclass(frozen=True)
class Match:
    route: Route
    mailbox_hash: str | None     # the tag of a plus-address, MailKite's name for it


def match(recipient: str, routes: tuple[Route, ...]) -> Match | None:
    """First match wins, in config order; an exact address or a whole domain (@example.com)."""
    address, tag = split(recipient)
    domain = "@" + address.rpartition("@")[2]
    for route in routes:
        if route.match == address or route.match == domain:
            return Match(route, tag)
    return None
