"""The OpenSPF RFC 7208 test suite (all 203 cases), each served by a real DNS server on loopback.

Cases whose names DNS cannot carry (labels over 63 octets, empty labels) never reach DNS: pyspf
answers them before any lookup (RFC 7208 section 4.3), so they run in-process on the same path;
IN_PROCESS names them. A "TIMEOUT" in the zone data is served as SERVFAIL (the same temperror as
a dropped query, without waiting for the resolver's timer).
"""
from __future__ import annotations

import pytest
import yaml

from conftest import SUITES

from agentmx.milter.spf_check import check_mailfrom

SUITE = SUITES / "spf" / "pyspf-rfc7208-tests.yml"


def _zone(zonedata: dict) -> tuple[dict, list[str]]:
    zone, unservable = {}, []
    for name, entries in (zonedata or {}).items():
        name = str(name)
        labels = name.rstrip(".").split(".")
        if any(len(l) == 0 or len(l.encode()) > 63 for l in labels):
            unservable.append(name)
            continue
        rrs: dict = {}
        none_types = set()        # "TXT: NONE": no record of that type (NODATA, or TIMEOUT after it)
        for entry in entries or []:
            if entry == "TIMEOUT":
                # pyspf's driver: types listed before TIMEOUT answer, every other type times out
                rrs["TIMEOUT_OTHERS"] = True
                break
            for rtype, value in entry.items():
                if value == "NONE":
                    none_types.add(rtype)
                    continue
                rrs.setdefault(rtype, [])
                if value == "TIMEOUT":
                    rrs[rtype] = "TIMEOUT"
                elif value == []:
                    # A TXT RR with no strings: RFC 1035 forbids it and a real server cannot
                    # send it; the name is served with its other records (EMPTY_TXT).
                    unservable.append(f"{name} (empty TXT record)")
                else:
                    rrs[rtype].append(value)
        if "SPF" in rrs and "TXT" not in rrs and "TXT" not in none_types and not rrs.get("TIMEOUT_OTHERS"):
            rrs["TXT"] = list(rrs["SPF"])          # the drivers' SPF-as-TXT duplication
        zone[name] = rrs
    return zone, unservable


def _cases():
    for doc in yaml.safe_load_all(SUITE.read_text(encoding="utf-8")):
        if not doc:
            continue
        zone, unservable = _zone(doc.get("zonedata"))
        for test_id, case in doc["tests"].items():
            yield pytest.param(doc["description"], zone, unservable, case,
                               id=f"{doc['description']}/{test_id}")


CASES = list(_cases())
IN_PROCESS = sorted({n for p in CASES for n in p.values[2]})


def test_suite_size():
    assert len(CASES) == 203


@pytest.mark.parametrize("scenario,zone_data,unservable,case", CASES)
def test_rfc7208(zone, lookups, scenario, zone_data, unservable, case):
    zone(zone_data)
    mailfrom = case.get("mailfrom", "") or ""
    res = check_mailfrom(lookups, case["host"], mailfrom, case.get("helo", ""))
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert res.result in expected, f"{case.get('description', '')} spec {case.get('spec')}: {res.reason}"
    if res.result == "fail" and case.get("explanation", "DEFAULT") != "DEFAULT":
        assert res.reason == case["explanation"]
