"""DKIM and ARC through OpenSSL: hostile keys refused before any arithmetic (RFC 8301's 1024 to
4096 bits, a small odd exponent), one RSA budget per message across DKIM and ARC, and signing
and verifying that agree with dkimpy's own code. Keys are served by a real DNS server on loopback.
"""
from __future__ import annotations

import base64
import re
import time
from unittest import mock

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from e2e_helpers import Ed25519Key, RsaKey, message, sign
from support.hostile import dkim_costly_key, random_rsa_record, rsa_key_record

from agentmx import dkimkeys
from agentmx.milter import sign as milter_sign
from agentmx.milter.authenticate import Envelope, authenticate
from agentmx.milter.dkim_check import verify_arc, verify_dkim
from agentmx.milter.dkimcrypto import RsaBudget

ENV = Envelope(client_ip="192.0.2.10", helo="mail.example.org", mail_from="news@example.org")


def rsa_key(bits: int = 2048, exponent: int = 65537) -> RsaKey:
    key = RsaKey.__new__(RsaKey)
    private = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    key.private = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key.txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()
    key.algorithm = b"rsa-sha256"
    return key


@pytest.fixture(scope="module")
def keys():
    return {"rsa": RsaKey(), "other": RsaKey(), "ed": Ed25519Key(), "arc": RsaKey()}


# --- keys refused before any arithmetic --------------------------------------------------------

def _prime_like(bits: int) -> int:
    import os
    return int.from_bytes(os.urandom(bits // 8), "big") | (3 << (bits - 2)) | 1


@pytest.mark.parametrize("record,reason", [
    (lambda: random_rsa_record(512, 17), "RSA key of 512 bits: RFC 8301 allows 1024 to 4096"),
    (lambda: random_rsa_record(1016, 17), "RSA key of 1016 bits: RFC 8301 allows 1024 to 4096"),
    (lambda: random_rsa_record(8192, 17), "RSA key of 8192 bits: RFC 8301 allows 1024 to 4096"),
    (lambda: random_rsa_record(16384, 16384), "RSA key of 16384 bits: RFC 8301 allows 1024 to 4096"),
    (lambda: rsa_key_record(_prime_like(2048), (1 << 40) + 15),
     "RSA key with exponent 1099511627791: only odd exponents from 3 to 2^33-1 are accepted"),
    (lambda: rsa_key_record(_prime_like(2048), _prime_like(2040)),
     "RSA key with exponent of 2040 bits: only odd exponents from 3 to 2^33-1 are accepted"),
])
def test_out_of_range_rsa_keys_are_permerror_with_the_reason(zone, lookups, keys, record, reason):
    zone({"rsa._domainkey.example.org": {"TXT": [record()]}})
    raw = sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "rsa", keys["rsa"])
    budget = RsaBudget()
    (res,) = verify_dkim(raw, lookups, budget)
    assert (res.result, res.reason, res.domain, res.selector) == ("permerror", reason, "example.org", "rsa")
    assert budget.used == 0, "a refused key must not be verified with"


def test_the_costly_key_costs_nothing(zone, lookups):
    record, raw = dkim_costly_key("example.org", "big")
    zone({"big._domainkey.example.org": {"TXT": [record]}})
    cpu = time.process_time()
    res = verify_dkim(raw, lookups)
    cpu = time.process_time() - cpu
    assert [(r.result, r.reason) for r in res] == [("permerror", "RSA key of 16384 bits: RFC 8301 allows 1024 to 4096")] * 8
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for keys that are refused before any arithmetic"   # dkimpy: ~7 s each


@pytest.mark.parametrize("bits,exponent", [(1024, 65537), (4096, 65537), (2048, 3)])
def test_keys_in_range_verify(zone, lookups, bits, exponent):
    key = rsa_key(bits, exponent)
    zone({"k._domainkey.example.org": {"TXT": [key.txt]}})
    raw = sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "k", key)
    budget = RsaBudget()
    assert [r.result for r in verify_dkim(raw, lookups, budget)] == ["pass"] and budget.used == 1
    tampered = raw.replace(b"Subject: Hello", b"Subject: Hello!")
    assert [(r.result, r.reason) for r in verify_dkim(tampered, lookups)] == [("fail", "signature did not verify")]


@pytest.mark.parametrize("record,reason_part", [
    ("v=DKIM1; k=rsa; p=", "revoked"),
    ("v=DKIM1; k=rsa; s=tlsrpt; p=MIIB", "not email"),
    ("v=DKIM1; k=rsa; p=bm90IGEga2V5", "not an RSA public key"),
])
def test_unusable_key_records_are_permerror(zone, lookups, keys, record, reason_part):
    zone({"rsa._domainkey.example.org": {"TXT": [record]}})
    raw = sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "rsa", keys["rsa"])
    (res,) = verify_dkim(raw, lookups)
    assert res.result == "permerror" and "key unusable" in res.reason and reason_part in res.reason


def test_an_ed25519_key_does_not_verify_an_rsa_signature(zone, lookups, keys):
    zone({"rsa._domainkey.example.org": {"TXT": [keys["ed"].txt]}})
    raw = sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "rsa", keys["rsa"])
    (res,) = verify_dkim(raw, lookups)
    assert res.result == "permerror" and res.reason == "key unusable: k=ed25519 does not sign a=rsa-sha256"


# --- ARC -----------------------------------------------------------------------------------------

def arc_seal(raw: bytes, key: RsaKey, selector: str = "arc") -> bytes:
    raw = b"Authentication-Results: lists.example.net; dkim=pass header.d=example.org\r\n" + raw
    return b"".join(dkim.arc_sign(raw, selector.encode(), b"example.net", key.private, b"lists.example.net")) + raw


def test_an_arc_set_beyond_i_50_fails_on_every_path(zone, resolver, keys):
    """RFC 8617 4.2.1: no ARC set beyond i=50. dkimpy verifies one anyway (its limit is for
    sealing); the milter, which streams body hashes for i=1..50 only, said fail with a misleading
    reason while a whole message (`agentmx auth`) could verify: both now fail, saying why."""
    zone({"arc._domainkey.example.net": {"TXT": [keys["arc"].txt]}})
    raw = arc_seal(message("News <news@example.org>", "agent@agentmx.test"), keys["arc"])
    assert verify_arc(raw, resolver.session(20)).result == "pass"
    head, body = raw.split(b"\r\n\r\n", 1)
    past = re.sub(rb"(?m)^(ARC-[A-Za-z-]+: ?i=)1;", rb"\g<1>51;", head) + b"\r\n\r\n" + body
    assert past.count(b"i=51;") == 3
    res = verify_arc(past, resolver.session(20))
    assert (res.result, res.reason) == ("fail", "an ARC set beyond i=50 (RFC 8617 4.2.1)")


def test_an_arc_set_with_a_refused_key_fails_with_the_reason(zone, resolver, keys):
    raw = arc_seal(message("News <news@example.org>", "agent@agentmx.test"), keys["arc"])
    zone({"arc._domainkey.example.net": {"TXT": [keys["arc"].txt]}})
    assert verify_arc(raw, resolver.session(20)).result == "pass"
    zone({"arc._domainkey.example.net": {"TXT": [random_rsa_record(8192, 17)]}})
    budget = RsaBudget()
    res = verify_arc(raw, resolver.session(20), budget)
    assert (res.result, res.reason) == ("fail", "RSA key of 8192 bits: RFC 8301 allows 1024 to 4096")
    assert budget.used == 0


# --- one RSA budget per message, DKIM and ARC together -------------------------------------------

@pytest.fixture
def budget_zone(zone, keys):
    return zone({
        "example.org": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
        "rsa._domainkey.example.org": {"TXT": [keys["rsa"].txt]},
        "other._domainkey.example.org": {"TXT": [keys["other"].txt]},
        "ed._domainkey.example.org": {"TXT": [keys["ed"].txt]},
        "arc._domainkey.example.net": {"TXT": [keys["arc"].txt]},
    })


def two_rsa_and_arc(keys) -> bytes:
    raw = message("News <news@example.org>", "agent@agentmx.test")
    raw = sign(sign(raw, "example.org", "rsa", keys["rsa"]), "example.org", "other", keys["other"])
    return arc_seal(raw, keys["arc"])


@pytest.mark.parametrize("limit,dkim_results,arc", [
    (4, ["pass", "pass"], "pass"),          # 2 DKIM + 2 for the ARC set
    (3, ["pass", "pass"], "fail"),
    (1, ["pass", "neutral"], "fail"),
])
def test_one_budget_covers_dkim_and_arc(budget_zone, resolver, keys, limit, dkim_results, arc):
    budget = RsaBudget(limit)
    res = authenticate(two_rsa_and_arc(keys), ENV, resolver.session(40), rsa_budget=budget)
    assert [d.result for d in res.dkim] == dkim_results
    assert res.arc.result == arc and budget.used == min(limit, 4)
    over = f"not checked: more than {limit} RSA verifications in this message"
    assert [d.reason for d in res.dkim if d.result == "neutral"] == [over] * dkim_results.count("neutral")
    if arc == "fail":
        assert res.arc.reason == over
    if limit == 1:
        assert (res.dkim[1].domain, res.dkim[1].selector) == ("example.org", "rsa")
        assert res.dmarc.result == "pass"           # the first signature passed and is aligned


def test_ed25519_does_not_count(budget_zone, resolver, keys):
    raw = sign(sign(message("News <news@example.org>", "agent@agentmx.test"), "example.org", "rsa", keys["rsa"]),
               "example.org", "ed", keys["ed"])
    budget = RsaBudget(1)
    res = authenticate(raw, ENV, resolver.session(40), rsa_budget=budget)
    assert [(d.result, d.selector) for d in res.dkim] == [("pass", "ed"), ("pass", "rsa")] and budget.used == 1


# --- signing and verifying agree with dkimpy -----------------------------------------------------

OUTBOUND = (b"From: Agent <agent@agents.example>\r\nTo: bob@example.org\r\nSubject: Re:  hello \r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <r1@agents.example>\r\n"
            b"In-Reply-To: <q1@example.org>\r\n\r\nHi Bob,  \r\n\r\nsee below.\r\n\r\n\r\n")


@pytest.fixture(scope="module")
def outbound_keys():
    return {alg: dkimkeys.generate("agents.example", "s1", alg) for alg in ("rsa", "ed25519")}


def as_header(value: str) -> bytes:
    return b"DKIM-Signature:" + value.replace("\n", "\r\n").encode() + b"\r\n"


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
def test_our_signature_is_dkimpys_to_the_byte(outbound_keys, alg):
    key = outbound_keys[alg]
    (ours,) = milter_sign.sign(OUTBOUND, [key], now=1795000000)
    with mock.patch("dkim.time.time", return_value=1795000000):
        theirs = dkim.sign(OUTBOUND, b"s1", b"agents.example", key.private, signature_algorithm=key.dkim_algorithm,
                           canonicalize=(b"relaxed", b"relaxed"), include_headers=milter_sign.include_headers(OUTBOUND),
                           linesep=b"\r\n")
    assert as_header(ours) == theirs


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
def test_what_we_sign_verifies_with_dkimpy_and_with_ours_and_tampering_breaks_both(outbound_keys, zone, lookups, alg):
    key = outbound_keys[alg]
    zone({key.dns_name: {"TXT": [key.txt]}})
    signed = as_header(milter_sign.sign(OUTBOUND, [key])[0]) + OUTBOUND

    def dnsfunc(name, timeout=5):
        return key.txt.encode() if name.decode().rstrip(".") == key.dns_name else None

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert [r.result for r in verify_dkim(signed, lookups)] == ["pass"]
    for tampered in (signed.replace(b"Hi Bob", b"Hi Rob"), signed.replace(b"Re:  hello", b"Re: hullo"),
                     signed.replace(b"Subject:", b"Subject: x\r\nSubject:")):
        assert tampered != signed
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)
        assert [r.result for r in verify_dkim(tampered, lookups)] == ["fail"]


def test_rsa_never_goes_through_python_integers(outbound_keys, zone, lookups):
    """dkimpy's pure-Python RSA (pow() on big ints) is not reached, signing or verifying."""
    key = outbound_keys["rsa"]
    arc_key = RsaKey()
    sealed = arc_seal(OUTBOUND, arc_key)                    # dkimpy signs this one, before the guard
    zone({key.dns_name: {"TXT": [key.txt]}, "arc._domainkey.example.net": {"TXT": [arc_key.txt]}})
    boom = mock.Mock(side_effect=AssertionError("dkimpy's Python RSA was used"))
    with mock.patch("dkim.RSASSA_PKCS1_v1_5_sign", boom), mock.patch("dkim.RSASSA_PKCS1_v1_5_verify", boom):
        signed = as_header(milter_sign.sign(OUTBOUND, [key])[0]) + OUTBOUND
        assert [r.result for r in verify_dkim(signed, lookups)] == ["pass"]
        assert verify_arc(sealed, lookups).result == "pass"
    assert not boom.called


def test_a_long_run_of_white_space_costs_linear_time(zone, lookups, keys):
    """A relaxed signature over a body of 150,000 spaces and no line end: dkimpy's relaxed body
    canonicalization (its regex [\\t ]+\\r\\n tried at every space of the run) took ~17 s of
    CPU for it, quadratic in the run; the streamed hasher reads it once."""
    zone({"rsa._domainkey.example.org": {"TXT": [keys["rsa"].txt]}})
    head = (b"From: News <news@example.org>\r\nTo: agent@agentmx.test\r\nSubject: spaces\r\n"
            b"Message-ID: <spaces@example.org>\r\n\r\n")
    signed = sign(head + b" x", "example.org", "rsa", keys["rsa"])     # relaxed: the same body hash
    raw = signed[:-2] + b" " * 150_000 + b"x"
    cpu = time.process_time()
    res = authenticate(raw, ENV, lookups)
    cpu = time.process_time() - cpu
    assert [(r.result, r.domain) for r in res.dkim] == [("pass", "example.org")]
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for one run of white space"


def test_loaded_key_is_kept_for_signing(tmp_path):
    path = dkimkeys.write(tmp_path, dkimkeys.generate("agents.example", "s2", "rsa"))
    key = dkimkeys.load(path, "agents.example")
    assert isinstance(key.signer, rsa.RSAPrivateKey)
    assert re.search(r"\bb=", milter_sign.sign(OUTBOUND, [key])[0])


# --- header selection: linear in h=, whatever the number of header fields ----------------------

def _many_names(zone, keys, fields: int, names: int, signatures: int) -> bytes:
    """A signature whose h= names `names` absent fields, over `fields` header fields: dkimpy's
    select_headers scanned every field for each absent name (9 s of CPU for 20,000 x 14,000)."""
    import hashlib
    from dkim.canonicalization import CanonicalizationPolicy
    zone({"many._domainkey.example.org": {"TXT": [keys["rsa"].txt]}})
    body = b"hello\r\n"
    bh = base64.b64encode(hashlib.sha256(
        CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(body)).digest())
    h = b":".join(b"h%05d" % i for i in range(names))
    h = b"\r\n\t".join(h[i:i + 900] for i in range(0, len(h), 900))
    sig = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=many; h=from:\r\n\t" + h
           + b"; bh=" + bh + b"; b=" + base64.b64encode(b"x" * 256) + b"\r\n")
    return sig * signatures + b"From: m@example.org\r\nSubject: x\r\n" + b"X-A: b\r\n" * fields + b"\r\n" + body


@pytest.mark.parametrize("fields,names,signatures,result,reason", [
    (4900, 250, 8, "fail", "signature did not verify"),
    (4900, 14000, 2, "permerror", "h= names 14002 header fields (at most 256 are checked)"),
    (20000, 14000, 1, "permerror", "20003 header fields: at most 5000 are checked"),
])
def test_many_names_in_h_over_many_fields_cost_no_time(zone, lookups, keys, fields, names, signatures, result,
                                                         reason):
    raw = _many_names(zone, keys, fields, names, signatures)
    started = time.process_time()
    res = verify_dkim(raw, lookups, RsaBudget(20))
    cpu = time.process_time() - started
    assert [(r.result, r.reason) for r in res] == [(result, reason)] * signatures
    assert cpu < 1.0, f"{cpu:.2f} s of CPU (a guard against the quadratic selection: ~9 s before)"


def test_header_selection_follows_rfc_6376_from_the_bottom():
    from dkim.canonicalization import CanonicalizationPolicy
    from agentmx.milter.dkimcrypto import Headers
    fields = [(b"From", b" biz\r\n"), (b"Foo", b" bar\r\n"), (b"from", b" baz\r\n"), (b"Subject ", b" boring\r\n")]
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    picked = Headers(fields).select(relaxed, [b"from", b"subject", b"to", b"from", b"from"])
    assert picked == [(b"from", b"baz\r\n"), (b"subject", b"boring\r\n"), (b"from", b"biz\r\n")]
    simple = CanonicalizationPolicy.from_c_value(b"simple/simple")
    assert Headers(fields).select(simple, [b"subject", b"from"]) == [(b"from", b" baz\r\n")]  # "Subject " is not subject
    for sel in ([b"from", b"subject", b"to", b"from"], [b"foo", b"from", b"foo"]):
        assert Headers(fields).select(relaxed, sel) == relaxed.canonicalize_headers(dkim.select_headers(
            relaxed.canonicalize_headers(fields), sel))
