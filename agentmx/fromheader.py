"""Who a message says it is from: every From header field, read the way a receiver must read it,
and the mailboxes and domains those fields name.

DMARC (milter/dmarc_check.py), the DKIM signing domain (milter/sign.py), `agentmx auth` and the
event deliver builds all ask here, on the same bytes, so that none of them can judge a domain
other than the ones a mail client may show. What counts:
- every field named From in any case, also in RFC 5322's obsolete syntax with white space
  before the colon (4.5.1 obs-from, `From :`), which the stdlib parser takes for an mbox From_
  line and drops; a `From :` on the first line counts too (RFC 5322 says it is a field);
- folded fields unfolded; the header block ends at the first empty line, or, as in Postfix,
  at the first line that is neither a field nor a continuation (Postfix makes what follows the
  body and inserts the empty line);
- a NUL ends its line (Postfix keeps the line up to it; a C mail client reads no further);
  a bare CR is read both as a line end (the stdlib) and as a space (Postfix);
- every mailbox of a mailbox-list, mailboxes inside group syntax, several addresses run
  together without a comma, a quote or bracket never closed read as if it were not there;
  display names (quoted or not, encoded words) and comments never count:
  `"victim@bank.example" <a@passing.example>` is passing.example.
Bounded: at most MAX_FIELDS fields and MAX_CHARS characters of them are read; beyond that the
result says `incomplete`, and DMARC can then never pass.
"""
from __future__ import annotations

import email.header
import re
from dataclasses import dataclass
from typing import Iterable

from agentmx.orgdomain import normalize

MAX_FIELDS = 50             # From fields whose mailboxes are read (every field is counted)
MAX_CHARS = 256 * 1024      # characters read over all of them (Postfix's header_size_limit is 100 KB)

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_MBOX_FROM = re.compile(rb"From ")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True)
class Mailbox:
    address: str | None       # local-part@domain as written (comments and spaces removed); None if empty
    name: str | None          # the display name, encoded words decoded
    domain: str               # lower-case A-label domain; "" when there is none or it is no domain name
    domain_text: str          # the domain as written ("" when the address has no @)
    # address, name and domain_text are text to show: 8-bit bytes that are no UTF-8 are read as
    # windows-1252 (never lone surrogates, which JSON cannot carry)


@dataclass(frozen=True)
class Authors:
    fields: int                        # From header fields in the message (all counted)
    mailboxes: tuple[Mailbox, ...]     # of the fields read, in order
    incomplete: bool = False           # more fields or characters than were read

    @property
    def domains(self) -> tuple[str, ...]:
        """The distinct domains, in the order they first appear."""
        return tuple(dict.fromkeys(m.domain for m in self.mailboxes if m.domain))

    @property
    def unusable(self) -> tuple[str, ...]:
        """Domains as written that are no domain name (nothing DMARC could look up)."""
        return tuple(dict.fromkeys(m.domain_text for m in self.mailboxes if m.domain_text and not m.domain))

    @property
    def first(self) -> Mailbox | None:
        return self.mailboxes[0] if self.mailboxes else None

    @property
    def problem(self) -> str:
        """'' when the message names exactly one author domain in exactly one From field (the
        only case where DMARC can pass, RFC 9989 5.3.1); else why not, in a few words."""
        every = self.domains + self.unusable
        listed = ", ".join(every[:10]) + (f" and {len(every) - 10} more" if len(every) > 10 else "")
        if self.fields == 0:
            return "no From header"
        if self.fields > 1:
            return f"{self.fields} From header fields ({listed or 'no domain'})"
        if self.incomplete:
            return "From header too long to read in full"
        if self.unusable:
            return f"From has a domain that is no domain name ({listed})"
        if not self.domains:
            return "From has no usable domain"
        if len(self.domains) > 1:
            return f"From has addresses in several domains ({listed})"
        return ""

    @property
    def single_domain(self) -> str | None:
        return None if self.problem else self.domains[0]


def header_fields(message: bytes, name: bytes) -> list[str]:
    """The unfolded values of every header field called `name` (any case, obs-syntax white space
    before the colon allowed), as str (8-bit bytes kept as surrogate escapes).

    A bare CR is a line end for the stdlib parser (and so for a Python agent reading the raw
    message) but a space for Postfix: when the header block has one, the fields of both
    readings are returned, each distinct value once."""
    values, scanned = _fields(message, name.lower(), _LINES_CR)
    if _BARE_CR.search(message, 0, scanned):
        for value in _fields(message, name.lower(), _LINES)[0]:
            if value not in values:
                values.append(value)
    return [v.decode("utf-8", "surrogateescape") for v in values]


_LINES_CR = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n|\Z)")
_LINES = re.compile(rb"([^\n]*?)(?:\r?\n|\Z)")
_BARE_CR = re.compile(rb"\r(?!\n)")


def _fields(message: bytes, want: bytes, lines: re.Pattern) -> tuple[list[bytes], int]:
    """(values, bytes scanned) of the fields named `want`, splitting lines with `lines`."""
    values: list[list[bytes]] = []
    current: list[bytes] | None = None
    pos, end, first = 0, len(message), True
    while pos < end:
        m = lines.match(message, pos)
        line, pos = m.group(1).replace(b"\r", b" "), m.end()
        if not line:
            break                                   # the empty line: the body follows
        line = line.split(b"\x00", 1)[0]          # Postfix keeps a line up to a NUL
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)                # folded: unfold
            continue                                # (a continuation of nothing is skipped)
        field = _FIELD.match(line)
        if field is None:
            if first and _MBOX_FROM.match(line):
                first = False
                continue                            # an mbox From_ line: no field
            break                                   # no field: Postfix ends the header block here
        first = False
        current = [line[field.end():]] if field.group(1).lower() == want else None
        if current is not None:
            values.append(current)
    return [b"".join(v) for v in values], pos


def from_values(message: bytes) -> list[str]:
    return header_fields(message, b"from")


def authors(values: Iterable[str]) -> Authors:
    """The mailboxes of the given From field values (one value per field)."""
    values = list(values)
    out: list[Mailbox] = []
    budget, incomplete = MAX_CHARS, len(values) > MAX_FIELDS
    for value in values[:MAX_FIELDS]:
        if budget <= 0:
            incomplete = True
            break
        if len(value) > budget:
            value, incomplete = value[:budget], True
        budget -= len(value)
        out.extend(mailboxes(value))
    return Authors(fields=len(values), mailboxes=tuple(out), incomplete=incomplete)


# --- one field: RFC 5322 3.4 mailbox-list, with the obsolete syntax of 4.4 ----------------------

_RUN = re.compile(r"(?P<ws>[\s\x00-\x1f\x7f]+)|(?P<s>[,;:@.<>])|(?P<w>[^\s\x00-\x1f\x7f\"(),;:@.<>\[\]]+)")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*+"', re.S)
_LITERAL = re.compile(r"\[(?:[^\]\\]|\\.)*+\]", re.S)
_COMMENT_PART = re.compile(r"[()]|\\.", re.S)


def _tokens(value: str) -> list[tuple[str, str]]:
    """(kind, text): q quoted string, l domain literal, w atom, s special, ws white space (and
    control characters, which separate as white space do); comments dropped. A quote, bracket
    or parenthesis that is never closed is dropped and what follows it is read as if it were
    outside: a mail client may show it. Linear: once one of them ran unclosed to the end, every
    later one would too, and is not scanned again."""
    out: list[tuple[str, str]] = []
    pos, end = 0, len(value)
    unclosed = set()
    while pos < end:
        ch = value[pos]
        if ch in '"[' and ch not in unclosed:
            m = (_QUOTED if ch == '"' else _LITERAL).match(value, pos)
            if m:
                out.append(("q" if ch == '"' else "l", m.group()))
                pos = m.end()
                continue
            unclosed.add(ch)
        elif ch == "(" and ch not in unclosed:
            close = _comment_end(value, pos)
            if close is not None:
                pos = close
                continue
            unclosed.add(ch)
        m = _RUN.match(value, pos)
        if m is None:
            pos += 1                             # ) ] or an unclosed " [ (: nothing
            continue
        out.append(("ws", " ") if m.lastgroup == "ws" else (m.lastgroup, m.group()))
        pos = m.end()
    return out


def _comment_end(value: str, pos: int) -> int | None:
    """Where the comment opening at pos ends (comments nest, quoted-pairs allowed), or None."""
    depth = 0
    for part in _COMMENT_PART.finditer(value, pos):
        text = part.group()
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                return part.end()
    return None


def mailboxes(value: str) -> list[Mailbox]:
    """Every mailbox in one From field value. Elements are split at top-level commas and
    semicolons; a top-level colon opens a group, whose name is dropped unless it holds an @
    (then it is read as addresses: `victim@bank.example From: a@x.example` names both); inside
    <...> everything up to > is the address, and the text before it its display name. Text
    with no <...> is read as addr-specs, one per @ (so `a@x.example b@y.example` is two)."""
    out: list[Mailbox] = []
    phrase: list[tuple[str, str]] = []
    angle: list[tuple[str, str]] | None = None

    def add_specs(tokens):
        if any(t[0] != "ws" for t in tokens):
            found = _addr_specs(tokens)
            if found:
                out.extend(Mailbox(addr, None, dom, text) for addr, dom, text in found)
            else:                                # no @ at all: a bare local name (MAILER-DAEMON)
                out.append(Mailbox(unsurrogate(_joined(tokens)), None, "", ""))

    def add_angle(name_tokens, tokens):
        name = _display_name(name_tokens)
        found = _addr_specs(_without_route(tokens))
        if found:
            out.extend(Mailbox(addr, name, dom, text) for addr, dom, text in found)
        elif _joined(tokens) or name:            # <moderator>, or a name with an empty <>
            out.append(Mailbox(unsurrogate(_joined(tokens)) or None, name, "", ""))

    for kind, text in _tokens(value):
        if angle is not None:
            if kind == "s" and text == ">":
                add_angle(phrase, angle)
                phrase, angle = [], None
            elif not (kind == "s" and text == "<"):
                angle.append((kind, text))
            continue
        if kind == "s" and text in ",;":
            add_specs(phrase)
            phrase = []
        elif kind == "s" and text == ":":
            if ("s", "@") in phrase:
                add_specs(phrase)
            phrase = []                          # group syntax: what came before is its name
        elif kind == "s" and text == "<":
            angle = []
        elif not (kind == "s" and text == ">"):
            phrase.append((kind, text))
    if angle is not None:
        add_angle(phrase, angle)                 # never closed: the rest is the address
    else:
        add_specs(phrase)
    return out


def _without_route(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """<@relay.example,@other.example:a@x.example> is a@x.example (4.4 obs-route): the part
    before the last colon is a route only when it is nothing but @domains and commas."""
    colons = [i for i, t in enumerate(tokens) if t == ("s", ":")]
    if not colons:
        return tokens
    route = [t for t in tokens[:colons[-1]] if t[0] != "ws"]
    if route and route[0] == ("s", "@") and all(t[0] == "w" or t[1] in "@.," for t in route):
        return tokens[colons[-1] + 1:]
    return tokens


def _addr_specs(tokens: list[tuple[str, str]]) -> list[tuple[str | None, str, str]]:
    """(address, domain, domain as written) for each @ in tokens: local-part @ domain, where
    the domain is a dot-atom or a literal; white space between its parts is allowed (obsolete
    syntax), between two atoms it ends the domain."""
    found = []
    words = [t for t in tokens if t[0] != "ws"]
    start = i = 0
    while i < len(words):
        if words[i] != ("s", "@"):
            i += 1
            continue
        local = _local_part(words[start:i])
        j, dom = i + 1, []
        if j < len(words) and words[j][0] == "l":
            dom, j = [words[j]], j + 1
        else:
            while j < len(words) and words[j][0] == "w":
                dom.append(words[j])
                j += 1
                if j + 1 < len(words) and words[j] == ("s", ".") and words[j + 1][0] == "w":
                    dom.append(words[j])
                    j += 1
                else:
                    break
        domain_text = _joined(dom)       # raw: bytes that are no UTF-8 make it no domain name
        found.append((unsurrogate(local + "@" + domain_text), _domain(domain_text), unsurrogate(domain_text)))
        start = i = j
    return found


def _local_part(words: list[tuple[str, str]]) -> str:
    """The local part as written: words and dots; words that only white space separates (not
    valid, but sent: `Big Bug bb@x`) are kept apart and quoted, as the stdlib does."""
    parts = [t[1] for t in words if t[0] in ("w", "q") or t == ("s", ".")]
    if len(parts) > 1 and not any(t == ("s", ".") for t in words) and all(t[0] == "w" for t in words):
        return '"' + " ".join(parts) + '"'
    return "".join(parts)


def _domain(text: str) -> str:
    """The A-label form of a domain as written, or '' when it is no DNS name (a literal, bytes
    that are no UTF-8, characters no label may have)."""
    if not text or text.startswith("["):
        return ""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:                   # raw bytes that are no UTF-8
        return ""
    name = normalize(text)
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return ""
    return name


def _joined(tokens: list[tuple[str, str]]) -> str:
    return "".join(t[1] for t in tokens if t[0] != "ws")


def _display_name(tokens: list[tuple[str, str]]) -> str | None:
    """The phrase before <...>: quoted strings unquoted, encoded words (RFC 2047) decoded."""
    parts = []
    for kind, text in tokens:
        if kind == "q":
            inner = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
            parts.append(re.sub(r"\\(.)", r"\1", inner, flags=re.S))
        else:
            parts.append(text)
    raw = " ".join("".join(parts).split())
    if "=?" in raw:
        try:
            raw = str(email.header.make_header(email.header.decode_header(raw)))
        except Exception:                        # a broken encoded word: keep the text as sent
            pass
    return unsurrogate(raw).strip() or None


_SURROGATE = re.compile("[\udc80-\udcff]")


def unsurrogate(text: str) -> str:
    """8-bit bytes kept as surrogate escapes: UTF-8 if they are, else windows-1252."""
    if text.isascii() or not _SURROGATE.search(text):      # a C scan, not a Python loop per character
        return text
    raw = text.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")
