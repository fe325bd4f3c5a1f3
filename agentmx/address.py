"""Plus-addresses: agent+tag@example.com is agent@example.com's, with the tag as its mailbox hash.

    split("Agent+tag@Example.com") -> ("agent@example.com", "tag")

Routing (deliver/route.py), the store's inbox scopes and the send API's From check all read an
address this one way.
"""
from __future__ import annotations

DELIMITER = "+"      # Postfix's recipient_delimiter, which the generated map relies on too


def split(recipient: str) -> tuple[str, str | None]:
    """('agent@example.com', 'tag') for 'Agent+tag@Example.com'."""
    local, _, domain = recipient.strip().strip("<>").rpartition("@")
    base, sep, tag = local.partition(DELIMITER)
    return f"{base}@{domain}".lower(), (tag if sep and tag else None)
