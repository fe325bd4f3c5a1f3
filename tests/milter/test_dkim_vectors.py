"""DKIM vectors: dkimpy 1.1.8's data (RFC 6376, RFC 8463 ed25519) and mailauth's RFC 8463
Appendix A message, with every key served by a real DNS server on loopback.

Pre-signed messages are verified as shipped; the others are signed here with the suite's keys
(relaxed and simple canonicalization, RSA and ed25519) and then verified, altered and verified
again. Each case checks the per-signature result, d=, s=, a= and the reason.
"""
from __future__ import annotations

import json
import re

import dkim
import pytest

from conftest import SUITES

from agentmx.milter.dkim_check import verify_dkim

DATA = SUITES / "dkim" / "dkimpy-1.1.8" / "data"
EC = SUITES / "dkim" / "mailauth-ec"


def crlf(b: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", b)


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def txt(name: str) -> str:
    return read(name).decode().strip()


RFC8463_ZONE = {
    "brisbane._domainkey.football.example.com": {"TXT": ["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]},
    "test._domainkey.football.example.com": {"TXT": [
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/"
        "J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kry"
        "OTIKT+l/K4w3QIDAQAB"]},
}


def summary(results):
    return [(r.result, r.domain, r.selector, r.algorithm) for r in results]


def test_rfc8463_appendix_a_dual_signature(zone, lookups):
    zone(RFC8463_ZONE)
    res = verify_dkim(crlf(read("rfc6376.signed.msg")), lookups)
    assert summary(res) == [("pass", "football.example.com", "brisbane", "ed25519-sha256"),
                            ("pass", "football.example.com", "test", "rsa-sha256")]


def test_signature_without_t_is_judged_not_crashed(zone, lookups):
    # dkimpy's test_no_t: no t= tag, a signature that does not verify (as upstream expects).
    zone(RFC8463_ZONE)
    assert summary(verify_dkim(crlf(read("rfc6376.signed.no_t.msg")), lookups)) == [
        ("fail", "football.example.com", "test", "rsa-sha256")]


def test_rfc8463_rsa_only(zone, lookups):
    zone(RFC8463_ZONE)
    res = verify_dkim(crlf(read("rfc6376.signed.rsa.msg")), lookups)
    assert [r.result for r in res] and all(r.result == "pass" for r in res)
    assert {r.algorithm for r in res} == {"rsa-sha256"}


def test_mailauth_rfc8463_message(zone, lookups):
    dns_json = json.loads(EC.joinpath("dns.json").read_text())
    zone({name: {rtype: [list(rec) for rec in recs] for rtype, recs in types.items()}
          for name, types in dns_json.items()})
    res = verify_dkim(crlf(EC.joinpath("signed.eml").read_bytes()), lookups)
    assert summary(res) == [("pass", "football.example.com", "brisbane", "ed25519-sha256"),
                            ("pass", "football.example.com", "test", "rsa-sha256")]


def test_exim_ed25519_third_party(zone, lookups):
    zone({"sed._domainkey.test.ex": {"TXT": [txt("eximtest.dns")]}})
    res = verify_dkim(crlf(read("ed25519test2.msg")), lookups)
    assert summary(res) == [("pass", "test.ex", "sed", "ed25519-sha256")]


# --- signed here with the suite's keys ----------------------------------------------------------

RSA_ZONE = {"test._domainkey.example.com": {"TXT": [txt("test.txt")]}}
ED_ZONE = {"test._domainkey.example.com": {"TXT": [txt("ed25519test.dns")]}}


def sign(message: bytes, algorithm: bytes, key: bytes, canon=(b"relaxed", b"relaxed"), **kw) -> bytes:
    sig = dkim.sign(message, b"test", b"example.com", key, signature_algorithm=algorithm,
                    canonicalize=canon, include_headers=[b"from", b"to", b"subject"], linesep=b"\r\n", **kw)
    return sig + message


@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")])
@pytest.mark.parametrize("algorithm,key,zone_data", [
    (b"rsa-sha256", "test.private", RSA_ZONE),
    (b"ed25519-sha256", "ed25519test.key", ED_ZONE),
])
def test_sign_verify_alter(zone, resolver, canon, algorithm, key, zone_data):
    zone(zone_data)
    message = crlf(read("test.message"))
    signed = sign(message, algorithm, read(key), canon)
    assert summary(verify_dkim(signed, resolver.session(20))) == [
        ("pass", "example.com", "test", algorithm.decode())]

    body_altered = signed + b"tampered\r\n"
    res = verify_dkim(body_altered, resolver.session(20))
    assert [(r.result, r.reason) for r in res] == [("fail", "body hash did not verify")]

    header_altered = signed.replace(b"Subject: ", b"Subject: Re: ", 1)
    assert header_altered != signed
    res = verify_dkim(header_altered, resolver.session(20))
    assert [(r.result, r.reason) for r in res] == [("fail", "signature did not verify")]


def test_every_signature_gets_its_result(zone, lookups):
    zone({**RSA_ZONE, "missing._domainkey.example.com": {"A": ["192.0.2.1"]}})
    message = crlf(read("test.message"))
    good = sign(message, b"rsa-sha256", read("test.private"))
    no_key = dkim.sign(good, b"missing", b"example.com", read("test.private"),
                       include_headers=[b"from", b"subject"], linesep=b"\r\n")
    res = verify_dkim(no_key + good, lookups)
    assert [(r.result, r.selector, r.reason) for r in res] == [
        ("permerror", "missing", "no key for signature"), ("pass", "test", "")]
    assert res[0].header_b and res[0].header_b != res[1].header_b


@pytest.mark.parametrize("keyfile,reason_part", [("badversion.txt", "key unusable"), ("badk.txt", "key unusable")])
def test_unusable_key_is_permerror(zone, lookups, keyfile, reason_part):
    zone({"test._domainkey.example.com": {"TXT": [txt(keyfile)]}})
    signed = sign(crlf(read("test.message")), b"rsa-sha256", read("test.private"))
    (res,) = verify_dkim(signed, lookups)
    assert res.result == "permerror" and reason_part in res.reason


def test_dns_failure_is_temperror_never_fail(zone, lookups):
    zone({"test._domainkey.example.com": {"TXT": "TIMEOUT"}})
    signed = sign(crlf(read("test.message")), b"rsa-sha256", read("test.private"))
    (res,) = verify_dkim(signed, lookups)
    assert res.result == "temperror" and "key lookup failed" in res.reason


def test_rsa_sha1_is_not_accepted(zone, lookups):
    zone(RSA_ZONE)
    signed = sign(crlf(read("test.message")), b"rsa-sha1", read("test.private"))
    (res,) = verify_dkim(signed, lookups)
    assert (res.result, res.algorithm) == ("permerror", "rsa-sha1") and "RFC 8301" in res.reason


@pytest.mark.parametrize("header", [
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=test; h=from; bh=AAAA\r\n",   # no b=
    b"DKIM-Signature: garbage without tags\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=test; h=from; bh=!!; b=%%%\r\n",
])
def test_malformed_signature_is_permerror(zone, lookups, header):
    zone(RSA_ZONE)
    (res,) = verify_dkim(header + crlf(read("test.message")), lookups)
    assert res.result == "permerror" and res.reason


def test_no_signature(zone, lookups):
    assert verify_dkim(crlf(read("test.message")), lookups) == ()
