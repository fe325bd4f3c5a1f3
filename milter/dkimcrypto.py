"""DKIM's cryptography through C libraries: key records parsed and judged by us, hashes with
dkimpy's canonicalization, RSA through OpenSSL (`cryptography`), ed25519 through libsodium (PyNaCl).

dkimpy verifies RSA with Python integers and takes any modulus of 1024 bits or more and any
exponent: one key record with a 16,384-bit modulus and exponent costs seconds of CPU per
signature, under the GIL. Here a key is refused before any arithmetic (`Refused`) unless RFC
8301's range and a small exponent hold, and the RSA verifications of one message are counted
against a budget (`RsaBudget`, one per message, passed in like the DNS session).
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import dkim
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import InvalidTagValueList, parse_tag_value

from agentmx.config import MilterConfig

RSA_MIN_BITS = 1024             # RFC 8301 3.2: verifiers MUST handle 1024 to 4096 bits
RSA_MAX_BITS = 4096
RSA_MAX_EXPONENT_BITS = 33      # odd, 3 <= e < 2**33: 3, 17, 65537 and every 32-bit prime


class Refused(Exception):
    """A signature or key we do not do arithmetic for (RFC 8301); the message is the reason.
    Not a dkim.DKIMException on purpose: dkimpy's ARC code swallows those into "did not validate"."""


class BudgetExhausted(Exception):
    """More RSA verifications than this message's budget allows."""


class RsaBudget:
    """The RSA verifications of one message, DKIM and ARC together. Not shared by threads.
    ed25519 verifications do not count: fixed-size keys, ~0.04 ms each in libsodium, and at most
    MAX_SIGNATURES of them (ARC is rsa-sha256 only)."""

    def __init__(self, limit: int = MilterConfig.max_rsa_verifications):
        self.limit = limit
        self.used = 0

    def take(self) -> None:
        if self.used >= self.limit:
            raise BudgetExhausted(f"not checked: more than {self.limit} RSA verifications in this message")
        self.used += 1


@dataclass(frozen=True)
class PublicKey:
    kind: bytes                 # b"rsa" or b"ed25519" (the k= tag)
    key: object                 # cryptography RSAPublicKey, or nacl VerifyKey
    bits: int


def parse_key_record(record: bytes | None) -> PublicKey:
    """A DKIM key record (RFC 6376 3.6.1) -> the key. dkim.KeyFormatError for a missing or unusable
    key; Refused for an RSA key outside RFC 8301's range or with an unusual exponent. Parsing is
    OpenSSL's ASN.1; no arithmetic is done on the key here."""
    if not record:
        raise dkim.KeyFormatError("no key for signature")
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList as exc:
        raise dkim.KeyFormatError(f"key unusable: bad tag list ({exc.__class__.__name__})") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise dkim.KeyFormatError("key unusable: v= is not DKIM1")
    services = {s.strip() for s in tags.get(b"s", b"*").split(b":")}
    if not services & {b"*", b"email"}:
        raise dkim.KeyFormatError(f"key unusable: service type s={_text(tags[b's'])} is not email")
    kind = tags.get(b"k", b"rsa")
    if b"p" not in tags:
        raise dkim.KeyFormatError("key unusable: no p= tag")
    try:
        data = base64.b64decode(re.sub(rb"\s+", b"", tags[b"p"]))
    except ValueError:
        raise dkim.KeyFormatError("key unusable: p= is not base64") from None
    if not data:
        raise dkim.KeyFormatError("key unusable: revoked (empty p=)")
    if kind == b"ed25519":
        try:
            return PublicKey(kind, nacl.signing.VerifyKey(data), 256)
        except (nacl.exceptions.ValueError, TypeError) as exc:
            raise dkim.KeyFormatError(f"key unusable: {exc}") from None
    if kind != b"rsa":
        raise dkim.KeyFormatError(f"key unusable: unknown key type k={_text(kind)}")
    try:
        key = serialization.load_der_public_key(data)    # SubjectPublicKeyInfo or bare RSAPublicKey
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise dkim.KeyFormatError(f"key unusable: not an RSA public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise dkim.KeyFormatError("key unusable: k=rsa but not an RSA public key")
    check_rsa(key.key_size, key.public_numbers().e)
    return PublicKey(kind, key, key.key_size)


def check_rsa(bits: int, exponent: int) -> None:
    """Refused unless 1024 <= bits <= 4096 and the exponent is odd, >= 3 and under 2**33."""
    if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        raise Refused(f"RSA key of {bits} bits: RFC 8301 allows {RSA_MIN_BITS} to {RSA_MAX_BITS}")
    if exponent < 3 or exponent % 2 == 0 or exponent.bit_length() > RSA_MAX_EXPONENT_BITS:
        shown = exponent if exponent.bit_length() <= 64 else f"of {exponent.bit_length()} bits"
        raise Refused(f"RSA key with exponent {shown}: only odd exponents from 3 to 2^{RSA_MAX_EXPONENT_BITS}-1"
                      " are accepted")


def body_hash(body: bytes, canon: CanonicalizationPolicy, length: int | None = None) -> bytes:
    """SHA-256 of the canonicalized body (truncated to l= octets when given)."""
    canonical = canon.canonicalize_body(body)
    if length is not None:
        canonical = canonical[:length]
    return hashlib.sha256(canonical).digest()


def header_digest(headers: list, canon: CanonicalizationPolicy, include_headers, sig_header: tuple) -> bytes:
    """SHA-256 over the signed header fields and the signature header with an empty b=, as
    dkimpy hashes them (RFC 6376 3.7)."""
    h = hashlib.sha256()
    dkim.hash_headers(h, canon, canon.canonicalize_headers(headers), include_headers, sig_header, None)
    return h.digest()


def verify(key: PublicKey, digest: bytes, signature: bytes, budget: RsaBudget) -> bool:
    """Whether `signature` signs the SHA-256 `digest` with `key`; RSA counts against the budget."""
    if key.kind == b"ed25519":
        try:
            key.key.verify(digest, signature)
            return True
        except nacl.exceptions.BadSignatureError:
            return False
    budget.take()
    try:
        key.key.verify(signature, digest, PKCS1v15(), Prehashed(SHA256()))
        return True
    except InvalidSignature:
        return False


def sign(private, digest: bytes) -> bytes:
    """The signature of a SHA-256 digest: RSA PKCS#1 v1.5 through OpenSSL, or ed25519 (RFC 8463)."""
    if isinstance(private, nacl.signing.SigningKey):
        return private.sign(digest).signature
    return private.sign(digest, PKCS1v15(), Prehashed(SHA256()))


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")[:40]
