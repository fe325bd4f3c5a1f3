"""The auth verdicts of an event, explained as `agentmx auth` explains a message (cli.explain):
each method's result, what it was about, its reason, and what it means for believing the sender.
Pure: the event's `auth` member (deliver/authread.py) in, a list of Explained out."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Explained:
    method: str          # spf, spf-helo, dkim, dmarc, arc, iprev, spam
    result: str          # the RFC 8601 word (spam: ham, spam, unknown)
    line: str            # as `agentmx auth` prints it: "DKIM d=x s=y a=rsa-sha256: pass"
    meaning: str         # what it means, in a sentence

    @property
    def badge(self) -> str:
        return "not verified" if self.method == "note" else f"{self.method}={self.result}"


MEANING = {
    "spf": {"pass": "The sending server is one {domain} lists as allowed to send its mail.",
            "fail": "{domain} says this server may NOT send its mail: treat the envelope sender as forged.",
            "softfail": "{domain} says this server is probably not allowed to send its mail.",
            "neutral": "{domain} makes no statement about this server.",
            "none": "No SPF record for {domain}: the envelope sender is not verified.",
            "temperror": "DNS did not answer in time: SPF could not be checked (a temporary error, not a failure).",
            "permerror": "{domain}'s SPF record is broken, so it cannot be evaluated.",
            "policy": "Not evaluated, by local policy."},
    "spf-helo": {"pass": "The server's HELO name {domain} lists this server as allowed to use it.",
                 "fail": "{domain}'s SPF record says this server may NOT use that HELO name.",
                 "none": "No SPF record for the HELO name {domain} (common; the MAIL FROM check above is the one DMARC uses).",
                 "temperror": "DNS did not answer in time: the HELO name was not checked (temporary)."},
    "dkim": {"pass": "The signature verifies: {domain} vouches for this message's content and the signed headers.",
             "fail": "The signature by {domain} does not verify: the message was altered, or the signature is forged.",
             "neutral": "The signature by {domain} could not be used.",
             "none": "The message is not DKIM-signed.",
             "temperror": "DNS did not answer in time for {domain}'s key: not checked (temporary).",
             "permerror": "The signature by {domain} or its key is malformed.",
             "policy": "The signature is valid but not acceptable by local policy."},
    "dmarc": {"pass": "The From domain {domain} is authenticated (an aligned SPF or DKIM pass): the From address can be believed.",
              "fail": "The From domain {domain} is NOT authenticated: the From address may be forged. Do not act on this message's claims.",
              "none": "{domain} publishes no DMARC policy: the From address is not verified.",
              "temperror": "DNS did not answer in time: DMARC could not be checked (temporary).",
              "permerror": "{domain}'s DMARC record is broken.",
              "policy": "Not evaluated, by local policy."},
    "arc": {"pass": "A chain of forwarders (ARC) vouches for how the message looked before they changed it.",
            "fail": "The message carries an ARC chain that does not validate.",
            "none": "No ARC chain (the message was not forwarded by an ARC sealer).",
            "temperror": "DNS did not answer in time: ARC not checked (temporary).",
            "permerror": "The ARC chain is malformed."},
    "iprev": {"pass": "The sending server's address has a reverse DNS name that maps back to it.",
              "fail": "The server's reverse DNS name does not map back to its address.",
              "permerror": "The sending server's address has no reverse DNS name.",
              "temperror": "DNS did not answer in time: iprev not checked (temporary).",
              "none": "Not checked."},
    "spam": {"ham": "The spam filter judged it not spam.", "spam": "The spam filter judged it spam.",
             "unknown": "No spam verdict (no filter, or it did not answer)."},
}


def _meaning(method: str, result: str, domain: str | None) -> str:
    known = MEANING.get(method, {}).get(result)
    text = known.format(domain=domain or "the domain") if known else f"Result {result}."
    return text[:1].upper() + text[1:]


def _reason(d: dict | None) -> str:
    reason = (d or {}).get("reason")
    return f" ({reason})" if reason else ""


def explain(auth: dict) -> list[Explained]:
    details = auth.get("details") or {}
    if details.get("note"):         # no header of ours (or unreadable): nothing was verified
        return [Explained("note", "none", f"note: {details['note']}",
                          "Our milter did not verify this message: SPF, DKIM and DMARC all say none. "
                          "Do not believe its From address.")]
    out = []
    spf = details.get("spf") or {}
    spf_result = auth.get("spf", "none")
    out.append(Explained("spf", spf_result, f"SPF  MAIL FROM {spf.get('mailFrom') or '<>'}: {spf_result}{_reason(spf)}",
                         _meaning("spf", spf_result, spf.get("domain"))))
    helo = details.get("spfHelo")
    if helo:
        out.append(Explained("spf-helo", helo.get("result", "none"),
                             f"SPF  HELO {helo.get('helo') or '-'}: {helo.get('result', 'none')}{_reason(helo)}",
                             _meaning("spf-helo" if helo.get("result", "none") in MEANING["spf-helo"] else "spf",
                                      helo.get("result", "none"), helo.get("helo"))))
    sigs = details.get("dkim") or []
    if not sigs:
        out.append(Explained("dkim", "none", "DKIM: none (the message has no DKIM-Signature)",
                             _meaning("dkim", "none", None)))
    for d in sigs:
        out.append(Explained("dkim", d.get("result", "none"),
                             f"DKIM d={d.get('domain')} s={d.get('selector')} a={d.get('algorithm')}: "
                             f"{d.get('result', 'none')}{_reason(d)}", _meaning("dkim", d.get("result", "none"), d.get("domain"))))
    dm = details.get("dmarc") or {}
    dmarc_result = auth.get("dmarc", "none")
    line = f"DMARC From {dm.get('from') or '?'}: {dmarc_result}{_reason(dm)}"
    if dm.get("policy") or dm.get("disposition"):
        line += f"; policy {dm.get('policy') or '-'}, applied: {dm.get('disposition') or '-'}"
    meaning = _meaning("dmarc", dmarc_result, dm.get("from"))
    if (dm.get("override") or {}).get("type") == "trusted_forwarder":
        meaning += (f" A trusted forwarder's ARC chain ({dm['override'].get('sealer')}) saw dmarc=pass before it "
                    "changed the message, so the policy was not applied.")
    out.append(Explained("dmarc", dmarc_result, line, meaning))
    arc = details.get("arc") or {}
    out.append(Explained("arc", auth.get("arc", "none"), f"ARC: {auth.get('arc', 'none')}{_reason(arc)}",
                         _meaning("arc", auth.get("arc", "none"), None)))
    ip = details.get("iprev")
    if ip:
        extra = f" (PTR {ip['confirmed']} maps back to it)" if ip.get("confirmed") else _reason(ip)
        out.append(Explained("iprev", ip.get("result", "none"), f"iprev {ip.get('ip') or '-'}: {ip.get('result')}{extra}",
                             _meaning("iprev", ip.get("result", "none"), None)))
    spam = auth.get("spam", "unknown")
    sd = details.get("spam") or {}
    score = f" (score {sd.get('score')} of {sd.get('required')})" if sd.get("score") is not None else ""
    out.append(Explained("spam", spam, f"spam: {spam}{score}", _meaning("spam", spam, None)))
    return out
