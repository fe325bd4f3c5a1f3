"""DKIM's cryptography through C libraries: key records parsed and judged by us, header hashes with
dkimpy's header canonicalization, body hashes streamed by bodyhash.py, RSA through OpenSSL
(`cryptography`), ed25519 through libsodium (PyNaCl).

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

from . import bodyhash

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


MAX_SIGNED_FIELDS = 256      # h= entries (oversigned names included); real signers use 10 to 40
MAX_HEADER_FIELDS = 5000     # header fields of a message we hash for DKIM and ARC; real mail has < 200


class Headers:
    """The message's header fields, indexed by name once per canonicalization, so that selecting
    the fields a signature's h= names costs as many steps as h= has names, whatever the number
    of fields (dkimpy's select_headers scans every field for each name it does not find: 7,000
    absent names over 50,000 fields were 24 s of milter CPU). Fields are canonicalized only once
    selected. Selection follows RFC 6376 5.4.2, as dkimpy does: the n-th occurrence of a name
    in h= is the n-th field of that name from the bottom; past the last, nothing."""

    def __init__(self, fields: list[tuple[bytes, bytes]]):
        if len(fields) > MAX_HEADER_FIELDS:
            raise Refused(f"{len(fields)} header fields: at most {MAX_HEADER_FIELDS} are checked")
        self.fields = fields
        self._index: dict[bytes, dict[bytes, list[int]]] = {}

    def _positions(self, header_algorithm: bytes) -> dict[bytes, list[int]]:
        if header_algorithm not in self._index:
            # the name as dkimpy compares it after canonicalization: relaxed lower-cases and drops
            # white space before the colon; simple keeps the name, compared lower-cased
            relaxed = header_algorithm == b"relaxed"
            index: dict[bytes, list[int]] = {}
            for i, (name, _) in enumerate(self.fields):
                key = name.lower().rstrip() if relaxed else name.lower()
                index.setdefault(key, []).append(i)
            self._index[header_algorithm] = index
        return self._index[header_algorithm]

    def select(self, canon: CanonicalizationPolicy, include_headers) -> list[tuple[bytes, bytes]]:
        if len(include_headers) > MAX_SIGNED_FIELDS:
            raise Refused(f"h= names {len(include_headers)} header fields (at most {MAX_SIGNED_FIELDS} are checked)")
        positions = self._positions(canon.header_algorithm.name)
        taken: dict[bytes, int] = {}
        chosen = []
        for name in include_headers:
            found = positions.get(name, ())
            n = taken.get(name, 0)
            if n < len(found):
                chosen.append(self.fields[found[-1 - n]])
            taken[name] = n + 1
        return canon.canonicalize_headers(chosen)


class Bodies:
    """The body hashes of a message's signatures, by (body canonicalization, l=): streamed by the
    milter as the body came (bodyhash.py), or computed here from the body when one was not, with
    the same hasher. Without the body (the milter keeps none), a hash not streamed is Refused."""

    def __init__(self, digests: dict | None = None, body: bytes | None = None):
        self.digests = dict(digests or {})
        self.body = body

    def hash(self, canon: CanonicalizationPolicy, length: int | None = None) -> bytes:
        """SHA-256 of the canonicalized body (truncated to l= octets when given)."""
        want = (canon.body_algorithm.name, length)
        if want not in self.digests:
            if self.body is None:
                raise Refused("body hash not computed for this signature (body not kept)")
            self.digests[want] = bodyhash.digests(self.body, [want])[want]
        return self.digests[want]


def header_digest(headers: "Headers | list", canon: CanonicalizationPolicy, include_headers,
                  sig_header: tuple) -> bytes:
    """SHA-256 over the signed header fields and the signature header with an empty b=, as
    RFC 6376 3.7 (and dkimpy) hash them."""
    if not isinstance(headers, Headers):
        headers = Headers(headers)
    h = hashlib.sha256()
    for name, value in headers.select(canon, include_headers):
        h.update(name)
        h.update(b":")
        h.update(value)
    for name, value in canon.canonicalize_headers([(sig_header[0], dkim.RE_BTAG.sub(b"\\1", sig_header[1]))]):
        h.update(name)
        h.update(b":")
        h.update(value.rstrip())        # the signature header is hashed without its line end
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
