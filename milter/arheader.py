"""The Authentication-Results header (RFC 8601): rendering ours, recognising forged ones."""
from __future__ import annotations

import re

import authres
from authres.arc import ARCAuthenticationResult
from authres.core import AuthenticationResultProperty as Prop
from authres.dmarc import DMARCAuthenticationResult

from agentmx.config import DmarcMode

from .results import AuthResults, DmarcResult

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')

COMMENT_MAX = 160       # characters of one comment (and of one reason)


def _reason(text: str) -> str | None:
    """A reason fit for a quoted-string: printable ASCII, no quotes or backslashes, short."""
    text = _UNSAFE.sub("?", " ".join((text or "").split()))
    return text[:COMMENT_MAX] or None


def _comment(text: str) -> str | None:
    text = _UNSAFE.sub("?", " ".join((text or "").split())).replace("(", "[").replace(")", "]")
    return text[:COMMENT_MAX] or None


def _names(confirmed: str, names: tuple[str, ...]) -> str | None:
    """iprev's comment: the PTR names checked, the confirmed one first; whole names, within
    _comment's bound. Host names only (iprev_check keeps no other), so no quoting is needed."""
    out = ""
    for name in dict.fromkeys(((confirmed,) if confirmed else ()) + names):
        if len(out) + 1 + len(name) > COMMENT_MAX:
            break
        out = f"{out} {name}" if out else name
    return out or None


def dmarc_comment(dm: DmarcResult) -> str:
    """The DMARC result's comment: the record's policies and what applies to this message (dis=);
    in rfc9989 mode also np and t when the record has them, and where the walk found the record
    and the Organizational Domain (record=, org=), each only when the whole still fits."""
    rec = dm.record
    if rec is None:                 # no record, no policy to tell (render() calls this only with one)
        return ""
    if dm.mode != DmarcMode.RFC9989.value:
        return f"p={rec.p} sp={rec.sp or rec.p} pct={rec.pct} dis={dm.disposition}"
    text = (f"p={rec.p} sp={rec.sp or rec.p}" + (f" np={rec.np}" if rec.np else "")
            + (" t=y" if rec.t == "y" else "") + f" dis={dm.disposition}")
    for key, value in (("record", dm.record_domain), ("org", dm.org_domain)):
        if value and len(text) + len(key) + len(value) + 2 <= COMMENT_MAX:
            text += f" {key}={value}"
    return text


def render(authserv_id: str, res: AuthResults) -> str:
    """The value of our Authentication-Results header (without the field name)."""
    results = [
        authres.SPFAuthenticationResult(
            result=res.spf.result, smtp_mailfrom=res.spf.address or None,
            reason=_reason(res.spf.reason) if res.spf.result not in ("pass", "none") else None),
        authres.SPFAuthenticationResult(
            result=res.spf_helo.result, smtp_helo=res.spf_helo.address or None,
            reason=_reason(res.spf_helo.reason) if res.spf_helo.result not in ("pass", "none") else None),
    ]
    if res.iprev is not None:
        results.append(authres.IPRevAuthenticationResult(
            result=res.iprev.result, policy_iprev=res.iprev.ip or None,
            policy_iprev_comment=_names(res.iprev.confirmed, res.iprev.names),
            reason=_reason(res.iprev.reason) if res.iprev.result != "pass" else None))
    if not res.dkim:
        results.append(authres.DKIMAuthenticationResult(result="none", reason="no signature"))
    for d in res.dkim:
        props = [Prop("header", "b", d.header_b)] if d.header_b else None
        results.append(authres.DKIMAuthenticationResult(
            result=d.result, reason=_reason(d.reason), properties=props,
            header_d=d.domain or None, header_s=d.selector or None, header_a=d.algorithm or None))
    results.append(ARCAuthenticationResult(
        result=res.arc.result, reason=_reason(res.arc.reason) if res.arc.result not in ("pass", "none") else None))
    dm = res.dmarc
    comment = None
    if dm.record is not None:
        comment = dmarc_comment(dm)
    if dm.override is not None:     # a trusted ARC forwarder lifted the policy (milter/arc_override.py)
        comment = f"{comment or ''} override={dm.override.type} arc.sealer={dm.override.sealer}".strip()
    results.append(DMARCAuthenticationResult(
        result=dm.result, result_comment=_comment(comment or ""),
        reason=_reason(dm.reason) if dm.result not in ("pass",) else None,
        header_from=dm.from_domain or None,
        policy=dm.policy if dm.record is not None else None))
    results[-1].properties.extend(_override(dm))
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header).split(":", 1)[1].strip()


def _override(dm: DmarcResult) -> list[Prop]:
    """authentication_milter's properties for an override (the event reads them back: authread)."""
    o = dm.override
    if o is None:
        return []
    return [Prop("policy", "override-reason", o.type), Prop("policy", "evaluated-disposition", o.evaluated),
            Prop("policy", "arc-sealer", o.sealer)]


def _pieces(value: str) -> list[list[str]]:
    """The value's results, each as its words: split at spaces outside quoted strings, a result
    ending at a word that ends in ';' outside one."""
    pieces, words, word, quoted = [], [], "", False
    for ch in value + " ":
        if ch == '"':
            quoted = not quoted
        if ch != " " or quoted:
            word += ch
            continue
        if word:
            words.append(word)
            if word.endswith(";") and not quoted:
                pieces.append(words)
                words = []
        word = ""
    return pieces + ([words] if words else [])


def fold(value: str, width: int = 78) -> str:
    """Fold an Authentication-Results value after its semicolons, for a header field with a
    leading space: ' value' with continuation lines starting with a tab. A result longer than a
    line (DMARC's comment and reason) also folds at its spaces, never inside a quoted string."""
    lines, line = [], ""
    for words in _pieces(value):
        piece = " ".join(words)
        for word in words if len(piece) > width else [piece]:
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
    lines.append(line)
    return " " + "\n\t".join(lines)

