"""DKIM (RFC 6376, RFC 8463 ed25519-sha256) and ARC (RFC 8617) with dkimpy, on our DNS session.

dkimpy parses the signatures and runs the ARC chain logic; the key record, the hashes and the
signature check are ours (`_Verifier.verify_sig`, through dkimcrypto: OpenSSL and libsodium).

Every DKIM-Signature is verified and gets its own result with d=, s=, a= and a reason:
  pass        the signature verified
  fail        it did not (bad signature, body hash mismatch)
  neutral     not checked (more signatures than MAX_SIGNATURES, or the message's RSA budget used up)
  permerror   it cannot be checked: malformed header, missing tags, no or unusable key, rsa-sha1,
              an RSA key outside RFC 8301's 1024 to 4096 bits or with an unusual exponent
  temperror   the key could not be fetched (DNS timeout or failure)
"""
from __future__ import annotations

import base64
import logging
import re

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from agentmx import headerblock
from agentmx.resolver import DnsTempError, Lookups

from .dkimcrypto import Bodies, BudgetExhausted, Headers, Refused, RsaBudget, header_digest, parse_key_record, verify
from .results import ArcResult, DkimResult

MAX_SIGNATURES = 8

# dkimpy reports every failed signature at ERROR level; our results carry the reasons instead.
_dkimpy_log = logging.getLogger("agentmx.milter.dkimpy")
_dkimpy_log.setLevel(logging.CRITICAL)
_dkimpy_log.propagate = False


class _KeyFetcher:
    """dkimpy's dnsfunc: the key record (TXT of <s>._domainkey.<d>) or None."""

    def __init__(self, lookups: Lookups):
        self.lookups = lookups

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        records = self.lookups.txt(name)            # DnsTempError propagates: temperror
        keys = [r for r in records if b"p=" in r] or records
        return keys[0] if keys else None


def _tag(fields: dict, name: bytes) -> str:
    value = fields.get(name, b"")
    return re.sub(rb"\s+", b"", value).decode("ascii", "replace") if value else ""


class _Verifier:
    """verify_sig for dkim.DKIM and dkim.ARC (DKIM.verify and ARC.verify_instance both call it):
    the key record parsed and judged by dkimcrypto before any arithmetic, dkimpy's own
    canonicalization, the signature checked by OpenSSL or libsodium against the message's budget."""

    def __init__(self, message: bytes, budget: RsaBudget, timeout: float, bodies: Bodies | None = None):
        super().__init__(message, logger=_dkimpy_log, timeout=timeout)
        self.rsa_budget = budget
        self._fields: Headers | None = None
        self._bodies = bodies if bodies is not None else Bodies(body=self.body)

    @property
    def fields(self) -> Headers:
        if self._fields is None:          # Refused past MAX_HEADER_FIELDS: permerror, reason given
            self._fields = Headers(self.headers)
        return self._fields

    def verify_sig(self, sig, include_headers, sig_header, dnsfunc):
        if sig[b"a"] == b"rsa-sha1":
            raise Refused("rsa-sha1 is not accepted (RFC 8301)")
        key = parse_key_record(dnsfunc(sig[b"s"] + b"._domainkey." + sig[b"d"] + b".", timeout=self.timeout))
        if not sig[b"a"].startswith(key.kind + b"-"):
            raise dkim.KeyFormatError(f"key unusable: k={key.kind.decode()} does not sign a={sig[b'a'].decode()}")
        try:
            canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as exc:
            raise dkim.MessageFormatError(f"invalid c= value: {exc.args[0]}") from None
        if b"bh" in sig:
            length = int(sig[b"l"]) if b"l" in sig else None
            if self._bodies.hash(canon, length) != base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"])):
                raise dkim.ValidationError("body hash mismatch")
        if b"from" in include_headers:      # dkimpy's bug#644046: a second From breaks the signature
            include_headers.append(b"from")
        digest = header_digest(self.fields, canon, include_headers, sig_header)
        return verify(key, digest, base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"])), self.rsa_budget)


class _DKIM(_Verifier, dkim.DKIM):
    pass


class _ARC(_Verifier, dkim.ARC):
    pass


def verify_dkim(message: bytes, lookups: Lookups, budget: RsaBudget | None = None,
                bodies: Bodies | None = None) -> tuple[DkimResult, ...]:
    """One result for every DKIM-Signature header of the message, in header order. With `bodies`
    (the body hashes, streamed: body_wants), `message` may be the header block alone."""
    d = _DKIM(message, budget if budget is not None else RsaBudget(), lookups.timeout, bodies)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    results = []
    for idx in range(count):
        if idx >= MAX_SIGNATURES:
            results.append(DkimResult("neutral", reason=f"not checked: more than {MAX_SIGNATURES} signatures"))
            continue
        results.append(_verify_one(d, idx, lookups))
    return tuple(results)


def _verify_one(d: _DKIM, idx: int, lookups: Lookups) -> DkimResult:
    d.signature_fields = {}
    try:
        ok = d.verify(idx=idx, dnsfunc=_KeyFetcher(lookups))
    except DnsTempError as exc:
        return _result(d, "temperror", f"key lookup failed: {exc}")
    except Refused as exc:
        return _result(d, "permerror", str(exc))
    except BudgetExhausted as exc:
        return _result(d, "neutral", str(exc))
    except dkim.ValidationError as exc:
        text = str(exc)
        if "body hash mismatch" in text:
            return _result(d, "fail", "body hash did not verify")
        return _result(d, "permerror", text)
    except dkim.DKIMException as exc:
        return _result(d, "permerror", str(exc) or exc.__class__.__name__)
    except Exception as exc:   # dkimpy on hostile input (bad base64, odd tags): never a crash
        return _result(d, "permerror", f"malformed signature ({exc.__class__.__name__})")
    return _result(d, "pass", "") if ok else _result(d, "fail", "signature did not verify")


def _result(d: dkim.DKIM, result: str, reason: str) -> DkimResult:
    f = d.signature_fields or {}
    return DkimResult(
        result=result,
        domain=_tag(f, b"d").lower(),
        selector=_tag(f, b"s"),
        algorithm=_tag(f, b"a"),
        header_b=_tag(f, b"b")[:8],
        reason=reason,
    )


def verify_arc(message: bytes, lookups: Lookups, budget: RsaBudget | None = None,
               bodies: Bodies | None = None) -> ArcResult:
    """The ARC chain validation status (cv) of the message: pass, fail or none (`bodies` as for
    verify_dkim)."""
    head = headerblock.split(message)[0]
    if not _ARC_ANY.search(head):
        # No ARC header at all: none, without dkimpy splitting the whole message into lines
        # again (~30 ms for a 1 MB attachment, bench/pipeline).
        return ArcResult("none")
    if _past_the_limit(head):
        # fail on every path: the milter streams no body hash for such a set, a whole message would
        return ArcResult("fail", reason=f"an ARC set beyond i={ARC_MAX_INSTANCES} (RFC 8617 4.2.1)")
    try:
        a = _ARC(message, budget if budget is not None else RsaBudget(), lookups.timeout, bodies)
        cv, results, comment = a.verify(dnsfunc=_KeyFetcher(lookups))
    except DnsTempError as exc:
        return ArcResult("temperror", reason=f"key lookup failed: {exc}")
    except (Refused, BudgetExhausted) as exc:
        return ArcResult("fail", reason=str(exc))
    except dkim.DKIMException as exc:
        return ArcResult("fail", reason=str(exc))
    except Exception as exc:   # hostile ARC headers must not crash the milter
        return ArcResult("fail", reason=f"malformed ARC set ({exc.__class__.__name__})")
    word = (cv.decode("ascii", "replace").lower() if isinstance(cv, bytes) else str(cv).lower()) or "none"
    if word == "none" and _ARC_SEAL.search(head):
        # dkimpy says "none" when a seal carries cv=fail; RFC 8617 section 5.2 step 2 says fail
        # ("none" is for a message without ARC sets).
        word = "fail"
    sealers, earliest = _chain(results or ())
    return ArcResult(word, instances=len(results or ()), reason=comment if isinstance(comment, str) else "",
                     sealers=sealers, earliest_aar=earliest)


MAX_AAR = 4096      # characters of the earliest ARC-Authentication-Results kept (arc_override reads it)


def _chain(results: list) -> tuple[tuple[str, ...], str]:
    """The sealers' d= (i=1 first) and the i=1 ARC-Authentication-Results value, as dkimpy
    verified them (so they are the very fields the chain's seals cover)."""
    ordered = sorted((r for r in results if isinstance(r, dict) and isinstance(r.get("instance"), int)),
                     key=lambda r: r["instance"])
    sealers = tuple(_text(r.get("as-domain")).strip().lower() for r in ordered)
    aar = _text(ordered[0].get("aar-value")) if ordered and ordered[0]["instance"] == 1 else ""
    return sealers, aar if len(aar) <= MAX_AAR else ""


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


_ARC_SEAL = re.compile(rb"^arc-seal[ \t]*:", re.I | re.M)
_ARC_ANY = re.compile(rb"^arc-(?:seal|message-signature|authentication-results)[ \t]*:", re.I | re.M)


# --- what the body hashes will be needed for, known at the end of the headers -------------------

ARC_MAX_INSTANCES = 50      # RFC 8617 4.2.1 (dkimpy's INSTANCE_LIMIT): no ARC set beyond i=50
_ARC_SIGNED = {b"arc-message-signature", b"arc-seal"}
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")    # as dkimpy reads ARC fields


def _instance(value: bytes) -> int:
    """The i= of an ARC field's (relaxed) value as dkimpy reads it: i=0...07 is 7; 0 when there is
    none, and past 4 digits (int() refuses over 4,300 of them) a number over the limit."""
    m = dkim.ARC.INSTANCE_RE.search(value)
    if not m:
        return 0
    return int(m.group(1)[-4:]) if not m.group(1)[:-4].strip(b"0") else ARC_MAX_INSTANCES + 1


def _parse(head: bytes) -> list | None:
    """The header fields as dkimpy reads them; None when dkimpy refuses the block (the verifier
    meets the same error and reports it)."""
    try:
        return dkim.rfc822_parse(head)[0]
    except (dkim.DKIMException, IndexError):    # IndexError: dkimpy on a first line that is folded
        return None


def _arc_fields(headers: list) -> list:
    """The ARC-Message-Signature and ARC-Seal fields, (relaxed) canonicalized as dkimpy reads them."""
    return _RELAXED.canonicalize_headers([h for h in headers if h[0].lower() in _ARC_SIGNED])


def _past_the_limit(head: bytes) -> bool:
    """Whether an ARC field names an instance over i=50 (RFC 8617 4.2.1), which dkimpy verifies
    anyway (its limit is for sealing only)."""
    headers = _parse(head)
    return headers is not None and any(_instance(v) > ARC_MAX_INSTANCES for _, v in _arc_fields(headers))


def body_wants(head: bytes) -> set[tuple[bytes, int | None]]:
    """The (body canonicalization, l=) pairs the verification of this header block can hash the
    body for, read as dkimpy reads them for verify_sig: the first MAX_SIGNATURES DKIM-Signature
    fields, and the ARC-Message-Signature (and, if it names bh=, ARC-Seal) of each ARC instance
    1 to 50 that has one only (dkimpy refuses a duplicate before any hash). Fields that do not
    parse are left out: dkimpy refuses them before hashing too."""
    headers = _parse(head)
    if headers is None:
        return set()
    values = [v for n, v in headers if n.lower() == b"dkim-signature"][:MAX_SIGNATURES]
    defaults = [b"simple/simple"] * len(values)
    per_instance: dict[tuple[int, bytes], list[bytes]] = {}
    for name, value in _arc_fields(headers):
        instance = _instance(value)
        if 1 <= instance <= ARC_MAX_INSTANCES:
            per_instance.setdefault((instance, name), []).append(value)
    for found in per_instance.values():
        if len(found) == 1:
            values.append(found[0])
            defaults.append(b"relaxed/relaxed")
    wants = set()
    for value, default in zip(values, defaults):
        try:
            tags = dkim.util.parse_tag_value(value)
            canon = CanonicalizationPolicy.from_c_value(tags.get(b"c", default))
            length = int(tags[b"l"]) if b"l" in tags else None
        except (dkim.util.InvalidTagValueList, InvalidCanonicalizationPolicyError, ValueError):
            continue
        if b"bh" in tags and (length is None or length >= 0):
            wants.add((canon.body_algorithm.name, length))
    return wants
