"""The published OpenAPI document is valid, and says what the code does."""
from __future__ import annotations

import json
import re

import pytest

from openapi_spec_validator import validate

from conftest import ROOT

from agentmx import send

pytestmark = pytest.mark.unit

DOC = json.loads((ROOT / "docs" / "openapi.json").read_text())


def test_valid_openapi():
    validate(DOC)


def test_send_request_fields_match_the_code():
    props = set(DOC["components"]["schemas"]["SendRequest"]["properties"])
    assert props == send._FIELDS


def test_every_error_code_the_code_raises_is_documented():
    source = (ROOT / "agentmx" / "send.py").read_text() + (ROOT / "agentmx" / "api" / "sending.py").read_text()
    raised = set(re.findall(r'SendError\(\d+, "([a-z_]+)"', source)) | {"too_large"}
    documented = set()
    for response in DOC["paths"]["/v1/send"]["post"]["responses"].values():
        m = re.search(r"\(error codes: ([^)]*)\)", response["description"])
        if m:
            documented |= set(m.group(1).split(", "))
    assert raised <= documented, raised - documented


def _documented(paths) -> set:
    documented = set()
    for path in paths:
        assert path in DOC["paths"], path
        for op in DOC["paths"][path].values():
            for response in op.get("responses", {}).values() if isinstance(op, dict) else ():
                m = re.search(r"\(error codes: ([^)]*)\)", response["description"])
                if m:
                    documented |= set(m.group(1).split(", "))
    return documented


def test_inbox_routes_and_their_error_codes_are_documented():
    source = (ROOT / "agentmx" / "api" / "inbox.py").read_text()
    raised = set(re.findall(r'ApiError\(\d+, f?"([a-z_]+)', source))
    raised = {r for r in raised if not r.endswith("_")}        # f"bad_{name}": the names come below
    raised |= {f"bad_{n}" for n in re.findall(r'_int\([^)]*"([a-z]+)"\)', source)}
    documented = _documented(("/v1/messages", "/v1/messages/wait", "/v1/messages/{id}", "/v1/messages/{id}/ack",
                              "/v1/threads/{threadId}", "/v1/events"))
    assert raised <= documented, raised - documented


def test_reading_routes_and_their_error_codes_are_documented():
    """Issue 15, reading: every path of messages.py, deliveries.py and domains.py is in the document,
    and every error code they raise (or answer per id) is named in one of their responses."""
    from agentmx.api import deliveries, domains, messages
    sources = "".join((ROOT / "agentmx" / "api" / f"{m}.py").read_text() for m in ("messages", "deliveries", "domains"))
    raised = set(re.findall(r'ApiError\(\d+, (?:f?"|"[a-z_]+" if [^"]+ else ")([a-z_]+)', sources))
    raised |= set(re.findall(r'"code": "([a-z_]+)"', sources)) | {"bad_limit"}
    paths = []
    for module in (messages, deliveries, domains):
        source = (ROOT / "agentmx" / "api" / f"{module.__name__.rpartition('.')[2]}.py").read_text()
        paths += [re.sub(r"\{(\w+):\w+\}", r"{\1}", path) for path in re.findall(r'Route\("([^"]+)"', source)]
    documented = _documented(paths)
    documented |= set(DOC["components"]["schemas"]["RetryResult"]["properties"]["code"]["description"]
                      .partition(": ")[2].split(", "))
    assert raised and raised <= documented, raised - documented
def test_sending_routes_and_their_error_codes_are_documented():
    api = ROOT / "agentmx" / "api"
    source = "".join((api / f).read_text() for f in ("sending.py", "batch.py", "attachments.py", "idempotency.py",
                                                     "scheduling.py")) + (ROOT / "agentmx" / "send.py").read_text()
    raised = set(re.findall(r'(?:SendError|ApiError)\(\d+, "([a-z_]+)"', source))
    documented = _documented(("/v1/send", "/v1/send/batch", "/v1/send/{id}", "/v1/attachments"))
    assert raised <= documented, raised - documented
    assert {"not_supported", "url_refused", "idempotency_key_reused", "unknown_send", "not_cancelable",
            "bad_retention"} <= raised
