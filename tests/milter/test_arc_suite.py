"""The ValiMail ARC validation suite (171 cases), keys served by a real DNS server on loopback.

Each case's message goes through verify_arc() (dkimpy's ARC validator on our DNS session), with
LF line ends turned into CRLF as on the wire. Expected cv "Pass"/"Fail"/"None" compare with our
word; the suite's 3 cases with an empty cv are messages whose chain must not validate: upstream's
driver leaves them open; a chain whose seal says cv=fail must itself be "fail" here.
"""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import SUITES

from agentmx.milter.dkim_check import verify_arc

SUITE = SUITES / "arc" / "arc-draft-validation-tests.yml"


def _cases():
    for doc in yaml.safe_load_all(SUITE.read_text(encoding="utf-8")):
        if not doc:
            continue
        zone = {name: {"TXT": [value]} for name, value in (doc.get("txt-records") or {}).items()}
        for test_id, case in doc["tests"].items():
            yield pytest.param(zone, case, id=f"{test_id}")


CASES = list(_cases())


def test_suite_size():
    assert len(CASES) == 171


@pytest.mark.parametrize("zone_data,case", CASES)
def test_arc_validation(zone, lookups, zone_data, case):
    zone(zone_data)
    message = re.sub(rb"(?<!\r)\n", b"\r\n", (case["message"] or "").encode("utf-8"))
    res = verify_arc(message, lookups)
    expected = (case["cv"] or "").lower()
    allowed = {"fail"} if expected == "" else {expected}
    assert res.result in allowed, f"{case.get('description')}: {res.reason}"
