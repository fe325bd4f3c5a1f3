"""Where the header block ends (agentmx/headerblock.py), one answer for the milter's DKIM
verification and signing and deliver's duplicate fingerprint: they used to find it three times,
two ways (a message starting with an empty line had a body for DKIM and none for the fingerprint;
LF line ends had a header block for DKIM and none for the signer's list of fields)."""
from __future__ import annotations

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentmx import headerblock
from agentmx.deliver.dedup import body_chunks
from agentmx.milter.sign import include_headers

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("message, start", [
    (b"A: b\r\n\r\nbody\r\n", 8),
    (b"A: b\n\nbody\n", 6),
    (b"A: b\r\n\nbody", 7),
    (b"\r\nbody", 2),                 # no fields: all of it is the body
    (b"\nbody", 1),
    (b"A: b\r\nC: d\r\n", None),     # no empty line: no body
    (b"", None),
])
def test_the_body_starts_after_the_first_empty_line(message, start):
    assert headerblock.body_start(message) == start
    assert headerblock.split(message) == ((message, b"") if start is None else (message[:start], message[start:]))


def test_the_fingerprint_reads_a_body_after_an_empty_first_line():
    """Was: nothing (its pattern wanted a line before the empty one), while DKIM read a body."""
    assert b"".join(body_chunks(b"\r\nthe body\r\n")) == b"the body\n"


def test_the_signer_lists_only_the_header_blocks_fields_with_lf_line_ends():
    """Was: with LF line ends no CRLF CRLF was found and the body's "From:" lines were counted as
    fields, so h= named From once more than the message has."""
    message = b"From: a@example.com\nSubject: s\n\nFrom: a line of the body\nSubject: another\n"
    assert include_headers(message).count(b"from") == 2          # the field, and once more (oversigned)
    assert include_headers(message) == include_headers(message.replace(b"\n", b"\r\n"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"A: b", b"From: x", b"\r\n", b"\n", b"\r", b" c", b"body"]), max_size=14)
       .map(b"".join))
def test_dkim_the_signer_and_the_fingerprint_cut_alike(message):
    head, body = headerblock.split(message)
    assert head + body == message
    assert b"".join(body_chunks(message)) == (body.replace(b"\r\n", b"\n") if headerblock.body_start(message)
                                             is not None else b"")
    assert include_headers(message) == include_headers(head)
    try:
        expected = dkim.rfc822_parse(message)[1]
    except (dkim.MessageFormatError, IndexError):
        return
    assert dkim.rfc822_parse(b"X: y\r\n\r\n" + body)[1] == expected
