"""parse() on what real mail does wrong, one case each: charsets and their usual mislabels,
RFC 2047 and RFC 2231, nesting, forwards, broken structure, bad base64, 8-bit headers, NULs.
Whatever cannot be decoded is named in `defects`; nothing is dropped silently."""
from __future__ import annotations

import base64

import pytest

from agentmx.deliver.parse import parse

pytestmark = pytest.mark.unit


def msg(headers: str, body: bytes = b"", ctype: str | None = "text/plain; charset=utf-8", cte: str | None = None) -> bytes:
    head = "From: a@example.org\r\nTo: agent@example.com\r\nMIME-Version: 1.0\r\n" + headers
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    return head.encode("latin-1", "surrogateescape") + b"\r\n" + body


@pytest.mark.parametrize("label,text,encoding", [
    ("iso-2022-jp", "こんにちは、エージェントさん", "iso2022_jp"),
    ("shift_jis", "日本語のメール", "cp932"),
    ("gb2312", "你好，代理", "gb2312"),
    ("gbk", "你好，代理人员", "gbk"),
    ("big5", "你好，代理人", "big5"),
    ("windows-1251", "Привет, агент", "cp1251"),
    ("windows-1252", "Grüße – “quoted”", "cp1252"),
    ("iso-8859-1", "Grüße “quoted”", "cp1252"),          # mislabelled windows-1252, the usual case
    ("ks_c_5601-1987", "안녕하세요", "cp949"),
    ("utf-8", "naïve café ☃", "utf-8"),
])
def test_charsets_and_mislabels(label, text, encoding):
    p = parse(msg("Subject: x\r\n", text.encode(encoding), f"text/plain; charset={label}"))
    assert p.text.strip() == text and p.defects == []


def test_iso_2022_jp_sent_as_7bit():
    body = "会議は明日です".encode("iso2022_jp")
    p = parse(msg("Subject: x\r\n", body, "text/plain; charset=ISO-2022-JP", "7bit"))
    assert p.text.strip() == "会議は明日です"


def test_unknown_label_falls_back_and_says_so():
    p = parse(msg("Subject: x\r\n", "Grüße".encode("utf-8"), "text/plain; charset=x-klingon"))
    assert p.text.strip() == "Grüße"
    assert any("unknown charset 'x-klingon'" in d for d in p.defects)


def test_undecodable_bytes_are_replaced_and_named():
    p = parse(msg("Subject: x\r\n", b"ok \xff\xfe\xfd end", "text/plain; charset=utf-8"))
    assert p.text.startswith("ok ") and p.text.rstrip().endswith("end")
    assert any("were replaced" in d for d in p.defects)


def test_rfc2047_subject_and_addresses():
    p = parse(msg("Subject: =?UTF-8?B?w5xiZXJzY2hyaWZ0?= =?ISO-8859-1?Q?_und_Gr=FC=DFe?=\r\n"
                  "Cc: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n", b"x"))
    assert p.header("Subject") == "Überschrift und Grüße"
    assert p.header("Cc") == "Jürgen <j@example.org>"


def test_eight_bit_headers():
    p = parse(msg("Subject: Gr\udcfc\udcdfe aus K\udcf6ln\r\n", b"x"))       # raw latin-1 bytes
    assert p.header("Subject") == "Grüße aus Köln"
    p = parse(msg("Subject: " + "日本".encode().decode("latin-1") + "\r\n", b"x"))   # raw UTF-8
    assert p.header("Subject") == "日本"


@pytest.mark.parametrize("disposition,expected", [
    ("attachment; filename*=UTF-8''%E5%A0%B1%E5%91%8A%E6%9B%B8.pdf", "報告書.pdf"),             # RFC 2231
    ("attachment; filename*0*=UTF-8''long%20name%20;\r\n filename*1=part2.txt", "long name part2.txt"),
    ('attachment; filename="=?UTF-8?B?UsOpc3Vtw6kucGRm?="', "Résumé.pdf"),                   # RFC 2047
])
def test_filenames(disposition, expected):
    raw = msg("Subject: f\r\n", b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n--b\r\n"
              b"Content-Type: application/octet-stream\r\nContent-Disposition: "
              + disposition.encode() + b"\r\n\r\ndata\r\n--b--\r\n", "multipart/mixed; boundary=b")
    p = parse(raw)
    assert [a.filename for a in p.attachments] == [expected]


def test_nested_multiparts_and_a_forward():
    inner = (b"From: x@example.net\r\nSubject: Original\r\nContent-Type: text/plain\r\n\r\nForwarded body\r\n")
    raw = msg("Subject: fwd\r\n",
              b"--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"
              b"--i\r\nContent-Type: text/plain\r\n\r\nplain part\r\n"
              b"--i\r\nContent-Type: text/html\r\n\r\n<p>html part</p>\r\n--i--\r\n"
              b"--o\r\nContent-Type: message/rfc822\r\n\r\n" + inner +
              b"--o\r\nContent-Type: image/png\r\nContent-Disposition: inline\r\nContent-ID: <img1>\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--o--\r\n", "multipart/mixed; boundary=o")
    p = parse(raw)
    assert p.text.strip() == "plain part" and "html part" in p.html
    fwd, img = p.attachments
    assert fwd.content_type == "message/rfc822" and fwd.filename == "Original.eml"
    assert b"Forwarded body" in fwd.data
    assert (img.content_id, img.data) == ("img1", b"\x89PNG\r\n\x1a\n")


def test_missing_closing_boundary_keeps_the_body():
    raw = msg("Subject: x\r\n", b"--b\r\nContent-Type: text/plain\r\n\r\nno end in sight\r\n",
              "multipart/mixed; boundary=b")
    p = parse(raw)
    assert "no end in sight" in p.text
    assert any("CloseBoundaryNotFound" in d for d in p.defects)


def test_missing_boundary_parameter():
    p = parse(msg("Subject: x\r\n", b"just text\r\n", "multipart/mixed"))
    assert "just text" in (p.text or "") or any(a.data == b"just text\r\n" for a in p.attachments)
    assert p.defects


def test_bad_base64_is_decoded_as_far_as_possible_and_named():
    good = base64.b64encode(b"hello attachment").decode()
    raw = msg("Subject: x\r\n", b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n--b\r\n"
              b"Content-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
              + good[:-2].encode() + b"!!*\r\n--b--\r\n", "multipart/mixed; boundary=b")
    p = parse(raw)
    (att,) = p.attachments
    assert att.data.startswith(b"hello attach")
    assert any("Base64" in d for d in p.defects)


def test_nul_bytes_are_removed_and_named():
    p = parse(msg("Subject: a\x00b\r\n", b"te\x00xt"))
    assert p.text == "text" and "\x00" not in p.header("Subject")
    assert any("NUL" in d for d in p.defects)


def test_html_only_message():
    p = parse(msg("Subject: x\r\n", b"<p>Only <b>HTML</b></p>", "text/html; charset=utf-8"))
    assert p.text is None and p.html == "<p>Only <b>HTML</b></p>"


def test_space_before_colon_is_repaired():
    p = parse(b"From : a@example.org\r\nSubject : hello\r\n\r\nbody\r\n")
    assert p.header("Subject") == "hello" and p.text.strip() == "body"
    assert any("space before the colon" in d for d in p.defects)


def test_deep_nesting_is_bounded():
    depth = 60
    body = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(depth))
    body += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth
    p = parse(msg("Subject: deep\r\n", body, "multipart/mixed; boundary=b0"))
    assert any("nesting deeper" in d for d in p.defects)


@pytest.mark.parametrize("head", [
    b"From: a@passing.example\r\nFrom : victim@bank.example\r\nSubject: x\r\n",     # the stdlib dropped it
    b"From : victim@bank.example\r\nFrom: a@passing.example\r\nSubject: x\r\n",     # ... or took it for mbox From_
    b"From: a@passing.example\r\nSubject: x\r\nFrom\t: victim@bank.example\r\n",    # ... or pushed it into the body
])
def test_a_from_field_in_obsolete_syntax_is_kept(head):
    p = parse(head + b"\r\nbody\r\n")
    assert sorted(v for n, v in p.headers if n.lower() == "from") == ["a@passing.example", "victim@bank.example"]
    assert p.text.strip() == "body"
    assert (p.authors.fields, set(p.authors.domains)) == (2, {"passing.example", "bank.example"})
    assert any("space before the colon" in d for d in p.defects)


def test_from_fields_are_read_even_when_the_parser_breaks(monkeypatch):
    import agentmx.deliver.parse as parse_module
    monkeypatch.setattr(parse_module, "_parse", lambda raw: 1 / 0)
    p = parse(b"From: a@passing.example\r\nFrom : victim@bank.example\r\n\r\nx")
    assert p.defects[0].startswith(parse_module.INTERNAL) and p.authors.fields == 2


# --- the header registry, read once per header (issue 18) ---------------------------------------

def _alternative(parts: int) -> bytes:
    body = b"".join(b"--b\r\nContent-Type: text/%s; charset=utf-8\r\n\r\nhello %d\r\n" % (
        b"plain" if n == 0 else b"html", n) for n in range(parts)) + b"--b--\r\n"
    return msg("Subject: x\r\n", body, 'multipart/alternative; boundary="b"')


def test_each_content_type_is_parsed_once_per_message(monkeypatch):
    """The stdlib parser and get_body() read every part's Content-Type ~10 times; policy.default
    parsed it anew each time (a third of deliver's CPU on a 4 KB message). Now once per part,
    plus once for the event's `headers`."""
    import email.headerregistry as registry
    calls = []
    original = registry.ContentTypeHeader.parse.__func__

    def counting(cls, value, kwds):
        calls.append(value)
        return original(cls, value, kwds)
    monkeypatch.setattr(registry.ContentTypeHeader, "parse", classmethod(counting))
    p = parse(_alternative(2))
    assert p.text.strip() == "hello 0" and p.html.strip() == "hello 1"
    assert len(calls) <= 3 + 1, calls        # the top, two parts; the top again, unfolded, for `headers`


# Values the header registry reads as unstructured text: the fast path (no registry) must give
# exactly what the registry gives, white space, 8-bit bytes and all.
@pytest.mark.parametrize("name", ["Subject", "X-Custom", "Received", "Comments", "Authentication-Results",
                                  "DKIM-Signature", "Thread-Topic", "X-Mailer"])
@pytest.mark.parametrize("value", [
    "plain words", "  leading and trailing  ", "tabs\tinside\t\tthem", "a\u00a0no-break\u2003em space",
    "Grüße aus Köln", "caf\udcc3\udca9 8-bit utf-8", "caf\udce9 8-bit latin-1", "", " ", "(a comment) x",
    '"quoted" <angle> [bracket] ;,:@', "=? not an encoded word", "=?utf-8?q?caf=C3=A9?= x", "ends with =?",
    "\x0bvertical\x0ctab", "NUL\x00inside",
])
def test_unstructured_headers_decode_as_the_registry_does(name, value):
    import email.policy

    from agentmx.deliver.parse import decode_header
    from agentmx.fromheader import unsurrogate
    expected_defects: list[str] = []
    plain = unsurrogate(value) if "=?" not in value else value
    expected = unsurrogate(str(email.policy.default.header_factory(name, plain)))
    if "\x00" in expected:
        expected = expected.replace("\x00", "")
        expected_defects.append(f"header {name}: NUL characters removed")
    defects: list[str] = []
    assert decode_header(name, value, defects) == expected
    assert defects == expected_defects
