"""DKIM body hashes, streamed: the body canonicalized (RFC 6376 3.4.3 simple, 3.4.4 relaxed) and
hashed with SHA-256 chunk by chunk, as the milter receives it.

Exactly what dkimpy computes (its rfc822_parse turns every bare LF into CRLF, then
CanonicalizationPolicy.canonicalize_body), but without a Python loop per line or a whole-message
pass: each chunk costs a few C-speed bytes operations (`in`, replace, rstrip, and a regex sub
only when a chunk has a tab or two spaces in a row). What may change meaning with the next chunk
is carried over: a CR at the end of a chunk (the first half of a CRLF?), white space at the end
(relaxed: removed if a line end follows), and the empty lines at the end (removed if the body
ends there): these are a count, not bytes, so memory stays flat for any body.

l= is served by digests taken when the canonical body reaches l octets (hashlib's copy()).
One path for every body: the milter feeds chunks; a whole body in memory is fed at once.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

SIMPLE = b"simple"
RELAXED = b"relaxed"

Want = tuple[bytes, "int | None"]          # (body canonicalization name, l= or None)

_WSP_CHANGE = re.compile(rb"[\t ]{2,}|\t")  # the runs relaxed rewrites: one space stays one space
_CRLFS = b"\r\n" * 32768                    # pending empty lines are written from this, 64 KB at a time


class _Canonical:
    """One body canonicalization, its SHA-256, and the digests at each l= asked for."""

    def __init__(self, relaxed: bool, lengths: Iterable[int]):
        self.relaxed = relaxed
        self.sha = hashlib.sha256()
        self.count = 0                  # canonical octets hashed so far
        self.pending = 0                # CRLFs held back: they end the body if nothing follows
        self.space = False              # relaxed: white space held back at the end of the last piece
        self.marks = sorted(set(lengths), reverse=True)     # l= values not reached yet, smallest last
        self.at: dict[int, bytes] = {}

    def _hash(self, data) -> None:
        view = memoryview(data)
        while self.marks and self.count + len(view) >= self.marks[-1]:
            cut = self.marks.pop() - self.count
            self.sha.update(view[:cut])
            self.count += cut
            view = view[cut:]
            self.at[self.count] = self.sha.copy().digest()
        self.sha.update(view)
        self.count += len(view)

    def _flush_pending(self) -> None:
        while self.pending:
            n = min(self.pending, len(_CRLFS) // 2)
            self._hash(_CRLFS[:2 * n])
            self.pending -= n

    def feed(self, piece: bytes) -> None:
        """A piece of the body with CRLF line ends (bare CRs kept), not ending in half a CRLF."""
        if self.relaxed:
            if self.space:
                piece = b" " + piece
                self.space = False
            kept = piece.rstrip(b" \t")
            if len(kept) != len(piece):
                self.space, piece = True, kept
            if b"\t" in piece or b"  " in piece:
                piece = _WSP_CHANGE.sub(b" ", piece)        # every run of WSP -> one space
            if b" \r\n" in piece:
                piece = piece.replace(b" \r\n", b"\r\n")    # ... and none at the end of a line
        if not piece:
            return
        # The CRLFs at the end, counted from the end: after the last CR CR of the tail (the only
        # other thing a tail of CRs and LFs can hold, each LF being preceded by a CR).
        crlfs = 0
        if piece.endswith(b"\n"):
            start = len(piece.rstrip(b"\r\n"))
            cr_cr = piece.rfind(b"\r\r", start)
            crlfs = (len(piece) - (cr_cr + 1 if cr_cr >= 0 else start)) // 2
        content = len(piece) - 2 * crlfs
        if content == 0:
            self.pending += crlfs
            return
        self._flush_pending()
        self._hash(piece if crlfs == 0 else memoryview(piece)[:content])
        self.pending = crlfs

    def finish(self) -> None:
        if self.space:                  # white space ending the body without a line end stays
            self._flush_pending()
            self._hash(b" ")
            self.space = False
        if not self.relaxed or self.count:
            self._hash(b"\r\n")         # the one line end the body keeps (relaxed: none if empty)
        self.pending = 0

    def digest(self, length: int | None) -> bytes:
        if length is not None and length in self.at:
            return self.at[length]
        return self.sha.digest()        # no l=, or l= past the end: the whole body


class BodyHasher:
    """Feed the body's chunks with update(); digests() gives {(canonicalization, l): SHA-256}.
    `wants` names what to compute: (b"simple" or b"relaxed", l= or None)."""

    def __init__(self, wants: Iterable[Want]):
        wants = list(wants)
        lengths: dict[bytes, list[int]] = {}
        for name, length in wants:
            if name not in (SIMPLE, RELAXED):
                raise ValueError(f"unknown body canonicalization {name!r}")
            lengths.setdefault(name, [])
            if length is not None and length < 0:
                raise ValueError(f"negative l= {length}")
            if length is not None:
                lengths[name].append(length)
        self.wants = frozenset(wants)
        self._canon = {name: _Canonical(name == RELAXED, ls) for name, ls in lengths.items()}
        self._cr = False                # a CR ended the last chunk: it may start a CRLF
        self._done: dict[Want, bytes] | None = None

    def update(self, chunk: bytes) -> None:
        if not self._canon or not chunk:
            return
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        if b"\n" in chunk and chunk.count(b"\n") != chunk.count(b"\r\n"):
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")      # bare LF -> CRLF
        if chunk:
            for canon in self._canon.values():
                canon.feed(chunk)

    def digests(self) -> dict[Want, bytes]:
        """The digests asked for; the body ends here (later calls give the same answer)."""
        if self._done is None:
            if self._cr:
                self._cr = False
                for canon in self._canon.values():
                    canon.feed(b"\r")
            for canon in self._canon.values():
                canon.finish()
            self._done = {(name, length): self._canon[name].digest(length) for name, length in self.wants}
        return self._done


def digests(body: bytes, wants: Iterable[Want]) -> dict[Want, bytes]:
    """The digests of a body held whole in memory: the same hasher, fed at once."""
    hasher = BodyHasher(wants)
    hasher.update(body)
    return hasher.digests()
