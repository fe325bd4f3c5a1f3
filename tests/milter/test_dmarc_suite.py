"""mailauth's DMARC cases (88), their DNS served by a real DNS server on loopback, in both DMARC
modes ([milter] dmarc), and the public suffix list's own test file (organizational domains).

Each mailauth call becomes one of ours: verifyDmarc -> dmarc_check.evaluate() with the given
passing DKIM and SPF domains; getDmarcRecord -> dmarc_check.discover_record(). Their assertions
read mailauth's result object; RESULT_PATHS maps each path to our values. Assertions on things
mailauth has and we do not (its `info` string, `underSized` counters, the exact query order, the
text of an error) are counted as not applicable and listed. Cases whose expectation the mode
does not meet are strict xfails with the reason (KNOWN_DIFFERENCES, per mode): if one starts to
pass, the test says so.
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import SUITES

from agentmx.config import DmarcMode
from agentmx.milter import dmarc_check
from agentmx.orgdomain import registrable
from agentmx.milter.results import DkimResult, SpfResult
from agentmx.resolver import DnsTempError

CASES_FILE = SUITES / "dmarc" / "mailauth" / "mailauth-dmarc-cases.json"
PSL_TESTS = SUITES / "dmarc" / "psl" / "test_psl.txt"

ONLY_9989 = "RFC 9989 behaviour, which rfc7489 mode does not have"
PCT_ON_RESULT = ("asserts the RFC 7489 pct on the verify result; RFC 9989 A.6 removes pct, and the suite's own "
                 "'does not expose a pct property on the result' asserts the opposite")
# Keys: the case name, or "file:name" where two files have a case of that name.
KNOWN_DIFFERENCES = {
    DmarcMode.RFC7489: {
        "uses a record published at an intermediate label marked psd=n as the org domain":
            f"{ONLY_9989}: the DNS tree walk and psd= tag; RFC 7489 uses the public suffix list",
        "applies np for a non-existent (NXDOMAIN) author subdomain": f"{ONLY_9989}: the np= tag",
        "B.4.3: psd=y stops the walk and the org domain is one label below the PSD":
            f"{ONLY_9989}: psd=y public suffix domains",
        "t=y downgrades reject to quarantine for a failing message": f"{ONLY_9989}: the t= (testing) tag",
        "t=y downgrades quarantine to none for a failing message": f"{ONLY_9989}: the t= (testing) tag",
        "does not expose a pct property on the result":
            f"{ONLY_9989}: RFC 9989 drops pct; RFC 7489 section 6.6.4 applies it, so our result keeps it",
        "Should handle invalid pct value as 0":
            "RFC 7489 section 6.3: a value with a syntax error takes the default (pct=100), not 0",
    },
    DmarcMode.RFC9989: {
        "dmarc-verify-test:Should parse all common tags": PCT_ON_RESULT,
        "dmarc-verify-test:Should handle split TXT records": PCT_ON_RESULT,
        "Should handle invalid pct value as 0":
            "pct is no RFC 9989 tag (A.6: unknown tags are ignored), so no RFC 9989 value of it is 0; "
            "the record keeps RFC 7489's reading of it (100 on a syntax error), which nothing applies",
    },
}
# An expectation of the case file corrected, as the public suffix list's ERRATA below: RFC 9989
# B.4.3 aligns the SPF identifier mail.giant.bank.example through its Organizational Domain
# giant.bank.example; alignment.spf.result names the aligned identifier (in mailauth's own code
# too: spfAlignment.domain), not the Organizational Domain the case file expects.
CASE_ERRATA = {("B.4.3: psd=y stops the walk and the org domain is one label below the PSD",
                "result.alignment.spf.result"): "mail.giant.bank.example"}
NOT_APPLICABLE_PATHS = {
    "result.alignment.dkim.underSized": "mailauth counts undersized keys; we report the key size in the DKIM result",
    "result.info": "mailauth's formatted header text; ours is rendered by arheader.render()",
    "result.status.comment": "mailauth's comment text",
    "result.error": "mailauth's error string (the temperror itself is checked)",
    "result.tagonly": "mailauth keeps unknown valueless tags; RFC 7489 ignores unknown tags",
    "result.false": "mailauth keeps a tag named from a malformed '=value' part; we ignore it",
    "literal": "mailauth's exact DNS query sequence",
}


def _zone(dns: dict) -> dict:
    zone = {}
    for name, types in dns.items():
        entry, exists = {}, False
        for rtype, data in types.items():
            if isinstance(data, dict):
                err = data.get("error")
                if err == "ETIMEOUT":
                    entry[rtype], exists = "TIMEOUT", True
                elif err == "ENODATA":
                    exists = True
                continue
            exists = True
            entry[rtype] = [list(r) if isinstance(r, list) else r for r in data]
        if exists:
            zone[name] = entry
    return zone


def _domain(item) -> str:
    return item["domain"] if isinstance(item, dict) else str(item)


class Missing:
    """A property mailauth's result does not have."""


def _values(call, lookups, mode: DmarcMode) -> dict:
    """Run one mailauth call on our code; return mailauth's result paths with our values."""
    inputs = call["inputs"]
    if call["fn"] == "getDmarcRecord":
        try:
            found = dmarc_check.discover_record(lookups, inputs["domain"], mode)
        except DnsTempError:
            return {"throws": "ETIMEOUT"}
        rec = found.record
        if rec is None:
            return {"result": False}
        return {"result": {"object": True}, "result.v": "DMARC1", "result.p": rec.p,
                "result.sp": rec.sp or Missing, "result.pct": rec.pct, "result.adkim": rec.adkim,
                "result.aspf": rec.aspf, "result.fo": rec.fo, "result.rua": rec.rua, "result.ruf": rec.ruf,
                "result.ri": rec.ri, "result.rr": rec.raw, "result.isOrgRecord": found.is_org}
    header_from = inputs["headerFrom"]
    values = header_from if isinstance(header_from, list) else [header_from]
    from_values = [v if "@" in v else f"user@{v}" for v in values]   # an array: several From fields
    dkim = [DkimResult("pass", domain=_domain(d)) for d in inputs.get("dkimDomains") or []]
    spf_domains = [_domain(d) for d in inputs.get("spfDomains") or []]
    spf = SpfResult("pass", "mailfrom", spf_domains[0], f"x@{spf_domains[0]}") if spf_domains else \
        SpfResult("none", "mailfrom", "", "")
    res = dmarc_check.evaluate(lookups, from_values, spf, dkim, mode=mode)
    if res.result == "permerror":
        return {"result": False}
    rec = res.record
    out = {"result": {"object": True}, "result.status.result": res.result,
           "result.domain": res.record_domain or Missing,
           "result.status.header.from": res.from_domain,
           "result.status.header.d": res.record_domain or Missing,
           "result.alignment.dkim.result": res.dkim_aligned or Missing,
           "result.alignment.spf.result": res.spf_aligned or Missing}
    if rec is not None:
        out.update({"result.policy": res.policy, "result.p": rec.p, "result.sp": rec.sp or Missing,
                    "result.pct": rec.pct if mode is DmarcMode.RFC7489 else Missing, "result.rr": rec.raw,
                    "result.alignment.dkim.strict": rec.adkim == "s",
                    "result.alignment.spf.strict": rec.aspf == "s"})
    return out


def _check(assertion, values, name: str = "") -> tuple[bool, str]:
    """(applicable, message): message is '' when the assertion holds."""
    if (name, assertion.get("actual")) in CASE_ERRATA:
        assertion = {**assertion, "chain": [*assertion["chain"][:-1],
                                            {"args": [CASE_ERRATA[name, assertion["actual"]]]}]}
    if "literal" in assertion:
        return False, ""
    if "actual" not in assertion:                          # expect(fn).to.throw(): the error code
        expected = assertion["chain"][-1]["args"][0]
        return True, "" if values.get("throws") == expected else f"expected a throw of {expected}"
    path = assertion["actual"]
    if path in NOT_APPLICABLE_PATHS:
        return False, ""
    actual = values.get(path, Missing) if path != "result" else values.get("result", Missing)
    chain = assertion["chain"]
    words = [c for c in chain if isinstance(c, str)]
    args = next((c["args"] for c in chain if isinstance(c, dict)), [])
    negate = "not" in words
    if "equal" in words:
        ok = actual == args[0]
    elif words[-1] == "false":
        ok = actual is False
    elif words[-1] == "true":
        ok = actual is True
    elif words[-1] == "ok":
        ok = actual not in (Missing, None, False, "", 0)
    elif words[-1] == "undefined":
        ok = actual is Missing
    elif "include" in words or "contain" in words:
        ok = isinstance(actual, str) and args[0] in actual
    elif "property" in words:
        ok = values.get(f"{path}.{args[0]}", Missing) is not Missing
    elif words[-1] in ("an", "a"):
        ok = (args[0] == "object" and isinstance(actual, dict)) or (args[0] == "string" and isinstance(actual, str))
    else:
        raise AssertionError(f"unhandled chain {chain}")
    if negate:
        ok = not ok
    return True, "" if ok else f"{path}: {' '.join(words)} {args} but ours is {actual!r}"


def _cases():
    for case in json.loads(CASES_FILE.read_text()):
        stem = case["file"].split(".")[0]
        for mode in DmarcMode:
            known = KNOWN_DIFFERENCES[mode]
            reason = known.get(f"{stem}:{case['name']}") or known.get(case["name"])
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(case, mode, id=f"{mode}:{stem}:{case['name'][:70]}", marks=marks)


CASES = list(_cases())


def test_suite_size():
    assert len(CASES) == 88 * len(DmarcMode)


def test_known_differences_name_cases():
    names = {c["name"] for c in json.loads(CASES_FILE.read_text())}
    names |= {f"{c['file'].split('.')[0]}:{c['name']}" for c in json.loads(CASES_FILE.read_text())}
    for mode, known in KNOWN_DIFFERENCES.items():
        assert set(known) <= names, f"{mode}: {set(known) - names}"


@pytest.mark.parametrize("case,mode", CASES)
def test_mailauth_dmarc(zone, resolver, case, mode):
    failures, applicable = [], 0
    calls = case["calls"]
    checked = [a for a in case["assertions"] if "literal" not in a]
    per_call = len(checked) // len(calls) if len(checked) % len(calls) == 0 else None
    for n, call in enumerate(calls):
        zone(_zone(call["dns"]))
        values = _values(call, resolver.session(50), mode)
        # several calls: the JS test asserts on each result in turn, in equal shares
        mine = checked[n * per_call:(n + 1) * per_call] if per_call is not None else checked
        for assertion in mine:
            ok, message = _check(assertion, values, case["name"])
            applicable += ok
            if message:
                failures.append(message)
    assert not failures, "; ".join(failures)
    if not applicable:
        pytest.skip("no assertion of this case is about DMARC results we produce: "
                    + ", ".join(sorted({a.get("actual", "literal") for a in case["assertions"]})))


# --- the public suffix list's own tests ----------------------------------------------------------

_PSL_LINE = re.compile(r"^checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);")


def _psl_cases():
    for line in PSL_TESTS.read_text(encoding="utf-8").splitlines():
        m = _PSL_LINE.match(line.strip())
        if m:
            arg, want = (None if g == "null" else g.strip("'") for g in m.groups())
            yield pytest.param(arg, want, id=f"{arg}->{want}")


PSL_CASES = list(_psl_cases())


def test_psl_suite_size():
    assert len(PSL_CASES) == 78


# The shared copy of test_psl.txt differs from upstream's (the copy that publicsuffixlist ships) on
# two lines: it expects 'kobe.jp' where the list's exception rule !city.kobe.jp makes city.kobe.jp
# itself registrable. We assert the list's rule, as upstream's file does.
ERRATA = {"city.kobe.jp": "city.kobe.jp", "www.city.kobe.jp": "city.kobe.jp"}


@pytest.mark.parametrize("domain,expected", PSL_CASES)
def test_public_suffix_list(domain, expected):
    expected = ERRATA.get(domain, expected)
    got = registrable(domain) if domain is not None else None
    if expected is not None and got is not None:
        # the list's expectations are in the form given (U-labels stay U-labels)
        got = got if expected.isascii() else got.encode("ascii").decode("idna")
    assert got == expected
