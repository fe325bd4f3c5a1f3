"""parse(raw) -> Parsed: a MIME message as Unicode text, addresses and attachments, never raising.

The stdlib parser (policy.default) with the guards measured on the corpus (shared/PARSING.md):
- every header is decoded on its own, falling back to email.header on the raw value;
- a body is decoded with its declared charset strictly, then UTF-8 strictly, then the declared
  charset (or windows-1252) with replacement, and the event's `defects` say so;
- where get_body() finds nothing, the first text part that is not an attachment is the body;
- attachments are every other leaf, a message/rfc822 counted once (as a .eml), TNEF unpacked;
- nothing is re-serialised with policy.default (seconds on some corpus messages).
What could not be decoded is named in `defects`; nothing is dropped silently.
"""
from __future__ import annotations

import binascii
import codecs
import email
import email.header
import email.headerregistry
import email.parser
import email.policy
import email.utils
import os
import quopri
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message

from agentmx import fromheader
from agentmx.fromheader import unsurrogate as _unsurrogate

MAX_DEPTH = 40            # MIME nesting deeper than this is not walked (a defect says so)
MAX_PARTS = 2000          # leaves beyond this are not listed (a defect says so)
# More boundary-like lines than this and the body is not split at all (a defect says so): the
# stdlib parser costs ~1 ms per part with policy.default, so 50 MB of tiny parts would take
# minutes. The raw message is stored and linked either way.
MAX_BOUNDARY_LINES = 4 * MAX_PARTS
# Base64 bodies this big are lifted out of the message before the stdlib parser sees it and
# decoded straight from the raw bytes: the parser keeps a message as text lines (one Python
# object per 76 bytes), which made a 25 MB attachment cost ~10x its size in memory.
LIFT_MIN = 256 * 1024
# Up to 256 lines a match, runs merged in Python: an unbounded repeated group ({64,}) made the
# regex engine keep state per line, ~200 bytes each (117 MB for a 25 MB attachment); one line a
# match cost a Python iteration per 76 bytes (3 ms for a 1 MB attachment).
_B64_LINES = re.compile(rb"(?m)^(?:[A-Za-z0-9+/]{1,998}={0,2}\r?\n){1,256}")

_CHARSET_ALIASES = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030", "euc-cn": "gb18030",
    "big5": "big5hkscs", "x-big5": "big5hkscs",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949",
    "iso-8859-8-i": "iso-8859-8", "iso-8859-6-i": "iso-8859-6",
    "x-sjis": "cp932", "shift_jis": "cp932", "sjis": "cp932", "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "unicode-1-1-utf-7": "utf-7", "x-unicode-2-0-utf-7": "utf-7",
    "ansi_x3.4-1968": "ascii", "us-ascii": "ascii", "iso-8859-1": "cp1252", "latin1": "cp1252",
    "x-user-defined": "cp1252",
}


@dataclass
class Attachment:
    filename: str | None
    content_type: str
    disposition: str | None
    content_id: str | None
    data: bytes


@dataclass
class Parsed:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    calendars: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    content_type: str = "text/plain"
    message: Message | None = None
    parts_truncated: bool = False
    lifted: dict = field(default_factory=dict)      # placeholder line -> (start, end) in raw
    raw: bytes = b""
    # Who the message says it is from: every From field in any syntax, read from the raw bytes
    # as the milter reads them (agentmx/fromheader.py); None only if even that failed.
    authors: fromheader.Authors | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]


# --- text decoding ------------------------------------------------------------------------------

def codec_for(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip('"').lower()
    label = _CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except (LookupError, ValueError):     # ValueError: a NUL in the label (found by fuzzing)
        return None


def decode_text(data: bytes, charset: str | None, defects: list[str], where: str) -> str:
    codec = codec_for(charset)
    if charset and codec is None:
        defects.append(f"{where}: unknown charset {charset!r}")
    for candidate in (codec, "utf-8"):
        if candidate:
            try:
                return _clean(data.decode(candidate), defects, where)
            except (UnicodeDecodeError, LookupError):
                continue
    fallback = codec or "cp1252"
    defects.append(f"{where}: bytes not valid in {charset or 'the default charset'} were replaced")
    return _clean(data.decode(fallback, errors="replace"), defects, where)


def _clean(text: str, defects: list[str], where: str) -> str:
    if "\x00" in text:
        defects.append(f"{where}: NUL characters removed")
        text = text.replace("\x00", "")
    return text


_FOLD = re.compile(r"\r?\n(?=[ \t])")


# --- policy.default, each header read once per message ------------------------------------------
# The stdlib's header registry (policy.default) parses a header again at every read, and makes a
# new class for it each time: the parser and get_body() read each part's Content-Type ~10 times,
# which was a third of deliver's CPU for a 4 KB message. The same classes and parse, kept.

_REGISTRY = email.headerregistry.HeaderRegistry()
# Made once at import (a class per registered name, and one for every other name): read only.
_CLASSES = {name: _REGISTRY[name] for name in _REGISTRY.registry}
_UNSTRUCTURED = _REGISTRY["x-any-other-name"]
_UNSTRUCTURED_NAMES = frozenset(name for name, cls in _REGISTRY.registry.items()
                                if issubclass(cls, email.headerregistry.UnstructuredHeader))


class _Registry(email.headerregistry.HeaderRegistry):
    """policy.default's header factory, with its classes made once rather than per header."""

    def __getitem__(self, name: str) -> type:
        return _CLASSES.get(name.lower(), _UNSTRUCTURED)


_FACTORY = _Registry()


class _OnePolicy(email.policy.EmailPolicy):
    """policy.default for one message: a header value read again is the object read before
    (header objects are immutable strings), not a new parse. Made per message: the memo is
    never shared between messages, and it holds only what was read."""

    def __init__(self, **kw):
        super().__init__(header_factory=_FACTORY, **kw)
        object.__setattr__(self, "_read", {})

    def header_fetch_parse(self, name, value):
        if hasattr(value, "name"):
            return value
        key = (name, value)
        header = self._read.get(key)
        if header is None:
            header = self._read[key] = super().header_fetch_parse(name, value)
        return header


def _unstructured(name: str) -> bool:
    """A header the registry reads as unstructured text: with no encoded word in it, its value
    as is (get_unstructured splits it into runs of text and white space and joins them again)."""
    name = name.lower()
    return name not in _CLASSES or name in _UNSTRUCTURED_NAMES


def decode_header(name: str, raw_value: str, defects: list[str]) -> str:
    # Raw 8-bit bytes arrive as surrogate escapes: the header classes decode them inside encoded
    # words with the word's charset; what is left afterwards is read as UTF-8 or windows-1252.
    value = _FOLD.sub("", raw_value).replace("\r", "").replace("\n", "")
    if "=?" not in value:
        value = _unsurrogate(value)       # plain 8-bit text: UTF-8, else windows-1252
        if _unstructured(name):
            return _clean(value, defects, f"header {name}")
    try:
        text = str(_FACTORY(name, value))
    except Exception:    # header classes raise on odd input (groups in DSNs, CR/LF in addresses)
        try:
            text = str(email.header.make_header(email.header.decode_header(_unsurrogate(value))))
        except Exception:
            defects.append(f"header {name}: could not be decoded, kept as sent")
            text = value
    return _clean(_unsurrogate(text), defects, f"header {name}")


_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_SPACE_BEFORE_COLON = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:")
_ANY_SPACE_BEFORE_COLON = re.compile(rb"(?m)^[\x21-\x39\x3b-\x7e]+[ \t]+:")


def _repair_header_block(raw: bytes) -> tuple[bytes, int]:
    """Fix what the stdlib parser misreads though RFC 5322's obsolete syntax allows it: white
    space between a field name and its colon ('Subject :' ends the header block for it; 'From :'
    is taken for an mbox From_ line and dropped, which hid a second From). Returns (bytes,
    lines changed)."""
    end = re.search(rb"\r?\n\r?\n", raw)
    head, rest = (raw[:end.start()], raw[end.start():]) if end else (raw, b"")
    if not _ANY_SPACE_BEFORE_COLON.search(head):
        return raw, 0
    lines = head.splitlines(keepends=True)
    out, changed = [], 0
    for line in lines:
        if _HEADER_LINE.match(line):
            fixed = _SPACE_BEFORE_COLON.sub(rb"\1:", line)
            changed += fixed != line
            out.append(fixed)
        else:
            out.append(line)       # anything else stays: the stdlib ends the header block there
    return b"".join(out) + rest, changed


# --- the walk -----------------------------------------------------------------------------------

INTERNAL = "internal parser error"


def parse(raw: bytes) -> Parsed:
    """Parse one message. Never raises for any input; see Parsed.defects.

    A bug of ours on some input must not keep the message from its agent (deliver would exit 75
    on every retry until Postfix bounces it): the message is delivered with its headers only and
    a defect that starts with INTERNAL, which the fuzz targets treat as a crash."""
    try:
        out = _parse(raw)
    except Exception as exc:
        out = Parsed(defects=[f"{INTERNAL} ({exc.__class__.__name__}: {str(exc)[:200]}): headers only; raw kept"])
        out = _headers_only(raw, out)
    try:
        out.authors = fromheader.authors(fromheader.from_values(raw))
    except Exception as exc:
        out.defects.append(f"{INTERNAL} ({exc.__class__.__name__}) reading the From fields")
    return out


def _lift(raw: bytes, out: Parsed) -> bytes:
    """raw with every large base64 run replaced by one placeholder line (a nonce per message, so
    no sender can name one); out.lifted maps each placeholder to the run's place in raw."""
    if len(raw) < LIFT_MIN:
        return raw
    runs, start, end = [], -1, -1
    for m in _B64_LINES.finditer(raw):
        if m.start() == end:
            end = m.end()
            continue
        if end - start >= LIFT_MIN:
            runs.append((start, end))
        start, end = m.span()
    if end - start >= LIFT_MIN:
        runs.append((start, end))
    if not runs:
        return raw
    nonce = os.urandom(6).hex()
    pieces, last = [], 0
    for i, (start, end) in enumerate(runs):
        token = f"AGENTMXLIFTED{nonce}X{i}"
        out.lifted[token] = (start, end)
        eol = b"\r\n" if raw[end - 2:end] == b"\r\n" else b"\n"
        pieces += [raw[last:start], token.encode(), eol]
        last = end
    pieces.append(raw[last:])
    out.raw = raw
    return b"".join(pieces)


def _lifted_bytes(part: Message, out: Parsed) -> bytes | None:
    """The decoded payload of a part whose body was lifted out, else None."""
    if not out.lifted or part.is_multipart():
        return None
    body = part.get_payload(decode=False)
    if not isinstance(body, str):
        return None
    span = out.lifted.get(body.strip())
    if span is None:
        return None
    data = memoryview(out.raw)[span[0]:span[1]]
    cte = str(part.get("content-transfer-encoding", "") or "").strip().lower()
    if cte == "base64":
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            out.defects.append("a large base64 part could not be decoded; raw kept")
            return bytes(data)
    if cte == "quoted-printable":
        return quopri.decodestring(bytes(data))
    return bytes(data)


def _unlift(data: bytes, out: Parsed) -> bytes:
    """Put the lifted runs back into re-serialised bytes (an embedded message/rfc822)."""
    for token, (start, end) in out.lifted.items():
        if token.encode() in data:
            eol = b"\r\n" if out.raw[end - 2:end] == b"\r\n" else b"\n"
            for sep in (b"\r\n", b"\n"):
                data = data.replace(token.encode() + sep, out.raw[start:end])
            data = data.replace(token.encode(), out.raw[start:end].rstrip(eol))
    return data


def _parse(raw: bytes) -> Parsed:
    out = Parsed()
    raw, changed = _repair_header_block(raw)
    if changed:
        out.defects.append(f"message: {changed} header line(s) with a space before the colon repaired")
    boundaries = raw.startswith(b"--") + raw.count(b"\n--")     # lines that begin with "--"
    if boundaries > MAX_BOUNDARY_LINES:
        out.defects.append(f"{boundaries} MIME boundary lines (more than {MAX_BOUNDARY_LINES}): "
                           f"body not split, headers only; raw kept")
        return _headers_only(raw, out)
    try:
        msg = email.message_from_bytes(_lift(raw, out), policy=_OnePolicy())
    except Exception as exc:         # RecursionError: MIME nested thousands deep
        out.defects.append(f"message could not be parsed ({exc.__class__.__name__}): headers only; raw kept")
        return _headers_only(raw, out)
    out.message = msg
    out.defects.extend(_defect_names("message", msg))
    for name, value in msg.raw_items():
        out.headers.append((name, decode_header(name, value, out.defects)))
    out.content_type = _content_type(msg)

    text_part = _get_body(msg, ("plain",), out.defects)
    html_part = _get_body(msg, ("html",), out.defects)
    if text_part is None and html_part is None:
        text_part = _first_text_leaf(msg)
        if text_part is not None and _content_type(text_part) == "text/html":
            html_part, text_part = text_part, None
    chosen = {id(p) for p in (text_part, html_part) if p is not None}
    if text_part is not None:
        out.text = decode_text(_payload(text_part, out, "text body"), text_part.get_content_charset(),
                               out.defects, "text body")
    if html_part is not None:
        out.html = decode_text(_payload(html_part, out, "html body"), html_part.get_content_charset(),
                               out.defects, "html body")
    _walk(msg, out, chosen, text_part, depth=0)
    return out


def _headers_only(raw: bytes, out: Parsed) -> Parsed:
    """The header block alone, when the body cannot (or should not) be split into parts."""
    try:
        msg = email.parser.BytesParser(policy=_OnePolicy()).parsebytes(raw, headersonly=True)
    except Exception as exc:
        out.defects.append(f"headers could not be parsed either ({exc.__class__.__name__})")
        return out
    for name, value in msg.raw_items():
        out.headers.append((name, decode_header(name, value, out.defects)))
    out.content_type = _content_type(msg)
    return out


def _get_body(msg: Message, prefs: tuple[str, ...], defects: list[str]) -> Message | None:
    try:
        return msg.get_body(preferencelist=prefs) if isinstance(msg, EmailMessage) else None
    except Exception as exc:
        defects.append(f"body structure could not be read ({exc.__class__.__name__})")
        return None


def _first_text_leaf(msg: Message) -> Message | None:
    for part in msg.walk():
        if part.is_multipart() or _is_attachment(part):
            continue
        if _content_type(part) in ("text/plain", "text/html"):
            return part
    return None


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _is_attachment(part: Message) -> bool:
    try:
        return part.get_content_disposition() == "attachment" or bool(part.get_filename())
    except Exception:
        return False


def _payload(part: Message, out: Parsed, where: str) -> bytes:
    lifted = _lifted_bytes(part, out)
    if lifted is not None:
        return lifted
    defects = out.defects
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"{where}: content could not be decoded ({exc.__class__.__name__})")
        return b""
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return data


def _defect_names(where: str, part: Message) -> list[str]:
    return [f"{where}: {d.__class__.__name__}" for d in getattr(part, "defects", []) or []]


def _walk(part: Message, out: Parsed, chosen: set[int], text_part, depth: int) -> None:
    if out.parts_truncated:
        return
    if depth > MAX_DEPTH:
        out.defects.append(f"MIME nesting deeper than {MAX_DEPTH}: inner parts not listed")
        return
    ctype = _content_type(part)
    if depth > 0 and (part.is_multipart() or id(part) in chosen):
        out.defects.extend(_defect_names(f"part {ctype}", part))
    if ctype == "message/rfc822" and (depth > 0 or not part.is_multipart()):
        _add(out, Attachment(_filename(part, out) or _embedded_name(part), ctype,
                             _disposition(part), _content_id(part), _embedded_bytes(part, out)))
        return
    if part.is_multipart():
        try:
            children = list(part.iter_parts())
        except Exception as exc:
            out.defects.append(f"multipart could not be split ({exc.__class__.__name__})")
            return
        for child in children:
            _walk(child, out, chosen, text_part, depth + 1)
        return
    if id(part) in chosen:
        return
    data = _payload(part, out, f"part {ctype}")
    if depth > 0:                 # decoding adds defects (bad base64): collect them afterwards
        out.defects.extend(_defect_names(f"part {ctype}", part))
    name = _filename(part, out)
    if ctype == "text/calendar":
        out.calendars.append(decode_text(data, part.get_content_charset(), out.defects, "calendar"))
    if ctype == "application/ms-tnef" or (name or "").lower() == "winmail.dat":
        if _unpack_tnef(data, out):
            return
    if (text_part is not None and ctype == "text/plain" and name is None
            and _disposition(part) != "attachment" and out.text is not None
            and _content_type(text_part) == "text/plain"):
        # Apple Mail and others: text, image, more text in one multipart/mixed: one body.
        out.text += "\n" + decode_text(data, part.get_content_charset(), out.defects, "text body")
        return
    _add(out, Attachment(name, ctype, _disposition(part), _content_id(part), data))


def _add(out: Parsed, att: Attachment) -> None:
    if len(out.attachments) >= MAX_PARTS:
        if not out.parts_truncated:
            out.parts_truncated = True
            out.defects.append(f"more than {MAX_PARTS} attachments: the rest are not listed")
        return
    out.attachments.append(att)


def _filename(part: Message, out: Parsed) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        out.defects.append("an attachment's filename could not be decoded")
        return None
    if name is None:
        return None
    return _clean(_unsurrogate(str(name)), out.defects, "filename").strip() or None


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _content_id(part: Message) -> str | None:
    value = part.get("Content-ID")
    return str(value).strip().strip("<>") or None if value else None


def _embedded_name(part: Message) -> str:
    try:
        inner = part.get_payload(0)
        subject = str(inner.get("Subject", "") or "").strip()
    except Exception:
        subject = ""
    subject = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', " ", subject).strip()[:80]
    return f"{subject or 'forwarded message'}.eml"


def _embedded_bytes(part: Message, out: Parsed) -> bytes:
    try:
        if not part.is_multipart():            # base64 or quoted-printable message/rfc822
            return _payload(part, out, "embedded message")
        inner = part.get_payload(0)
        return _unlift(inner.as_bytes(policy=email.policy.compat32), out)
    except Exception as exc:
        out.defects.append(f"an embedded message could not be re-read ({exc.__class__.__name__})")
        return b""


def _unpack_tnef(data: bytes, out: Parsed) -> bool:
    """Replace winmail.dat by the files it carries (and its body, if the message had none)."""
    try:
        from tnefparse import TNEF      # lazy: 5 ms a message, for winmail.dat only
        tnef = TNEF(data)
    except Exception as exc:
        out.defects.append(f"winmail.dat could not be unpacked ({exc.__class__.__name__}); kept as is")
        return False
    for att in tnef.attachments:
        try:
            name = att.long_filename() or att.name
        except Exception:
            name = getattr(att, "name", None)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        _add(out, Attachment(name or None, "application/octet-stream", "attachment", None, bytes(att.data or b"")))
    if out.html is None and getattr(tnef, "htmlbody", None):
        body = tnef.htmlbody
        out.html = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    if out.text is None and getattr(tnef, "body", None):
        body = tnef.body
        out.text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return True
