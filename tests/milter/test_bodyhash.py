"""The streamed DKIM body hash (milter/bodyhash.py) against dkimpy's canonicalization, on random
bodies cut into random chunks, with random l=: the digests must be the very same."""
from __future__ import annotations

import hashlib

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentmx.milter.bodyhash import RELAXED, SIMPLE, BodyHasher, digests

pytestmark = pytest.mark.unit

POLICIES = {SIMPLE: CanonicalizationPolicy.from_c_value(b"simple/simple"),
            RELAXED: CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")}


def dkimpy_digest(body: bytes, name: bytes, length: int | None) -> bytes:
    """What dkimpy hashes: the body as rfc822_parse leaves it (bare LF -> CRLF), canonicalized, cut at l=."""
    _, parsed = dkim.rfc822_parse(b"Subject: x\r\n\r\n" + body)
    canonical = POLICIES[name].canonicalize_body(parsed)
    return hashlib.sha256(canonical if length is None else canonical[:length]).digest()


def streamed(body: bytes, cuts: list[int], wants) -> dict:
    hasher = BodyHasher(wants)
    start = 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]:
        hasher.update(body[start:cut])
        start = cut
    return hasher.digests()


# Bodies made of the pieces that matter at chunk boundaries: line ends of every kind, runs of
# white space, empty lines, and a little text.
PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b"  ", b" \t ", b"a", b"b c", b"\r\n\r\n",
                          b"\n\n", b"\r\r\n", b"x \r\n", b"\t\r\n", b"\xff", b"."])
BODIES = st.lists(PIECES, max_size=40).map(b"".join)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
       lengths=st.lists(st.integers(min_value=0, max_value=120), max_size=3))
def test_streamed_digests_equal_dkimpys(body, cuts, lengths):
    wants = {(name, length) for name in (SIMPLE, RELAXED) for length in [None, *lengths]}
    got = streamed(body, cuts, wants)
    for name, length in wants:
        assert got[name, length] == dkimpy_digest(body, name, length), (body, cuts, name, length)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
       length=st.none() | st.integers(min_value=0, max_value=400))
def test_any_bytes(body, cuts, length):
    wants = {(SIMPLE, length), (RELAXED, length)}
    got = streamed(body, cuts, wants)
    for want in wants:
        assert got[want] == dkimpy_digest(body, *want)


@pytest.mark.parametrize("body", [b"", b"\r\n", b"\n\n\n", b"  ", b"a  ", b"a \r", b"\r", b"a\r\n\r\n \t\r\n",
                                  b"a\r\n" + b"\r\n" * 100_000, b" " * 20_000 + b"x", b"\t" * 20_000 + b"\r\n"])
def test_edges_one_byte_at_a_time_and_whole(body):
    wants = {(SIMPLE, None), (RELAXED, None), (RELAXED, 3), (SIMPLE, 0)}
    whole = digests(body, wants)
    for want in wants:
        assert whole[want] == dkimpy_digest(body, *want)
    if len(body) < 100:
        assert streamed(body, list(range(len(body))), wants) == whole


def test_pending_empty_lines_are_a_count_not_bytes():
    """A body of a million empty lines then text, fed in 64 KB chunks: same digest as dkimpy's,
    and the hasher holds no bytes of those lines between chunks."""
    body = b"\r\n" * 1_000_000 + b"end\r\n"
    hasher = BodyHasher({(RELAXED, None), (SIMPLE, None)})
    for i in range(0, len(body) - 6, 65536):
        hasher.update(body[i:min(i + 65536, len(body) - 6)])
    assert hasher._canon[SIMPLE].pending > 900_000 and hasher._canon[SIMPLE].count == 0
    hasher.update(body[len(body) - 6:])
    got = hasher.digests()
    assert got[SIMPLE, None] == dkimpy_digest(body, SIMPLE, None)
    assert got[RELAXED, None] == dkimpy_digest(body, RELAXED, None)


def test_digests_are_final():
    hasher = BodyHasher({(SIMPLE, None)})
    hasher.update(b"a\r")
    first = hasher.digests()
    assert hasher.digests() is first and first[SIMPLE, None] == dkimpy_digest(b"a\r", SIMPLE, None)


def test_unknown_canonicalization_is_refused():
    with pytest.raises(ValueError):
        BodyHasher({(b"nowsp", None)})


# --- where the body starts, and which hashes the headers ask for (dkim_check) --------------------

@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"A: b", b"\r\n", b"\n", b"\r", b" c", b"\tx", b"From x"]), max_size=14).map(b"".join))
def test_the_body_starts_where_dkimpys_parse_says(message):
    from agentmx.headerblock import split
    from agentmx.milter.dkim_check import body_wants
    head, body = split(message)
    assert head + body == message
    try:
        _, expected = dkim.rfc822_parse(message)
    except (dkim.MessageFormatError, IndexError):      # IndexError: dkimpy on a folded first line
        assert body_wants(head) == set()
        return
    assert dkim.rfc822_parse(head)[1] == b""
    assert dkim.rfc822_parse(b"X: y\r\n\r\n" + body)[1] == expected


def test_body_wants_reads_c_and_l_as_the_verifier_does():
    from agentmx.milter.dkim_check import MAX_SIGNATURES, body_wants
    head = (b"DKIM-Signature: v=1; c=relaxed/simple; l=10; bh=x; b=y\r\n"
            b"DKIM-Signature: v=1; c=relaxed; bh=x; b=y\r\n"            # body: simple
            b"DKIM-Signature: v=1; bh=x; b=y\r\n"                        # simple/simple
            b"DKIM-Signature: v=1; c=nowsp/relaxed; l=3; bh=x; b=y\r\n"  # invalid c=: never hashed
            b"DKIM-Signature: v=1; c=relaxed/relaxed; l=-3; bh=x\r\n"    # l= refused by dkimpy
            b"ARC-Message-Signature: i=1; a=rsa-sha256; l=7; bh=x; b=y\r\n"   # ARC: relaxed by default
            b"ARC-Message-Signature: i=2; c=simple/simple; bh=x; b=y\r\n"
            b"ARC-Message-Signature: i=2; c=relaxed/relaxed; l=99; bh=x; b=y\r\n"   # duplicate i=2: refused
            b"ARC-Message-Signature: i=51; c=simple/simple; l=5; bh=x; b=y\r\n"     # past RFC 8617's 50
            b"ARC-Seal: i=1; cv=none; b=y\r\n"                                      # no bh=: no body hash
            b"ARC-Message-Signature: i=" + b"9" * 5000 + b"; l=4; bh=x\r\n"          # int() refuses 5,000 digits
            b"ARC-Seal: i=00000000003; cv=pass; l=11; bh=x; b=y\r\n"                  # i=3, with a bh=
            b"Subject: x\r\n\r\n")
    assert body_wants(head) == {(b"simple", 10), (b"simple", None), (b"relaxed", 7), (b"relaxed", 11)}
    many = b"".join(b"DKIM-Signature: v=1; c=simple/relaxed; l=%d; bh=x\r\n" % i for i in range(20)) + b"\r\n"
    assert body_wants(many) == {(b"relaxed", i) for i in range(MAX_SIGNATURES)}
