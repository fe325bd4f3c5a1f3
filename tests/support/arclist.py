"""A mailing list that forwards an author's DKIM-signed message the way real lists do: it verifies
the message on arrival (its own Authentication-Results), adds a Subject tag, a footer and List-Id
(which breaks the author's DKIM signature), then ARC-seals it with dkimpy's arc_sign (RFC 8617).

Keys are e2e_helpers.RsaKey; the test publishes `key.txt` at <selector>._domainkey.<domain>."""
from __future__ import annotations

import dkim

from e2e_helpers import message, sign

AUTHOR_HEADERS = [b"from", b"to", b"subject", b"message-id", b"date"]


def authored(author: str, to: str, domain: str, selector: str, key, subject: str = "Hello") -> bytes:
    """The author's message as its own domain sends it: DKIM-signed, aligned with From."""
    return sign(message(author, to, subject=subject, body="Can we meet on Tuesday?\n"), domain, selector, key)


def list_forward(raw: bytes, list_domain: str, key, seen: str, selector: str = "arc",
                 tag: str = "[team]") -> bytes:
    """What the list sends on: its Authentication-Results (`seen`: what it verified, e.g.
    "spf=pass smtp.mailfrom=alice@author.test; dkim=pass header.d=author.test; dmarc=pass
    header.from=author.test"), the Subject tagged, a footer, List-Id, then its ARC set on top."""
    head, _, body = raw.partition(b"\r\n\r\n")
    head = head.replace(b"\r\nSubject: ", f"\r\nSubject: {tag} ".encode(), 1)
    if head.startswith(b"Subject: "):
        head = head.replace(b"Subject: ", f"Subject: {tag} ".encode(), 1)
    head = (f"Authentication-Results: {list_domain}; {seen}\r\n".encode() + head
            + f"\r\nList-Id: <team.{list_domain}>".encode())
    body = body + f"-- \r\nteam mailing list, https://{list_domain}/team\r\n".encode()
    return seal(head + b"\r\n\r\n" + body, list_domain, key, selector)


def seal(raw: bytes, domain: str, key, selector: str = "arc") -> bytes:
    """Add the next ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results of
    the Authentication-Results fields whose authserv-id is `domain`), as a forwarder does."""
    headers = dkim.arc_sign(raw, selector.encode(), domain.encode(), key.private, domain.encode(),
                            include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"list-id"])
    return b"".join(headers) + raw
