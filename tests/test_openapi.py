"""The published OpenAPI document is valid, and says what the code does."""
from __future__ import annotations

import json
import re

from openapi_spec_validator import validate

from conftest import ROOT

from agentmx import send

DOC = json.loads((ROOT / "docs" / "openapi.json").read_text())


def test_valid_openapi():
    validate(DOC)


def test_send_request_fields_match_the_code():
    props = set(DOC["components"]["schemas"]["SendRequest"]["properties"])
    assert props == send._FIELDS


def test_every_error_code_the_code_raises_is_documented():
    source = (ROOT / "agentmx" / "send.py").read_text() + (ROOT / "agentmx" / "serve.py").read_text()
    raised = set(re.findall(r'SendError\(\d+, "([a-z_]+)"', source)) | {"too_large"}
    documented = set()
    for response in DOC["paths"]["/v1/send"]["post"]["responses"].values():
        m = re.search(r"\(error codes: ([^)]*)\)", response["description"])
        if m:
            documented |= set(m.group(1).split(", "))
    assert raised <= documented, raised - documented
