"""What each fuzz target checks for one input. Shared by the atheris runner (fuzz/run.py, bytes in)
and the hypothesis tests (test_fuzz.py, structured inputs). A target returns normally when the
input was handled as promised and raises AssertionError (or whatever escaped) when it was not.

  event     bytes -> build_event -> JSON: never raises, schema-valid, headers kept
  authres   an Authentication-Results value -> read_auth: never raises, only RFC 8601 words,
            and nothing is trusted from a header that does not carry our authserv-id
  config    TOML text -> parse_config: a Config or a ConfigError naming the file, nothing else
  send      a JSON value -> parse_request -> build -> bytes: a SendError (4xx) or a message whose
            header block has only the headers we write: no field becomes a header of its own
  dsn       bytes -> parse_report: never raises; None or a Report whose every value is one bounded
            line of valid Unicode, at most MAX_RECIPIENTS recipients, actions from RFC 3464's list
"""
from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import jsonschema

from agentmx.authservid import RESULT_WORDS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "email.received.v1.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA) if "2020-12" in SCHEMA.get("$schema", "") \
    else jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
OURS = "mx.agentmx.test"
WORDS = RESULT_WORDS                 # RFC 8601 section 2.7, as agentmx defines them once
CONFIG_PATH = Path("/etc/agentmx/fuzz.toml")
NOW = 1_795_000_000.0


def _config():
    from agentmx.config import parse_config
    return parse_config(f'[server]\nauthserv_id = "{OURS}"\n'
                        '[[api_keys]]\nkey = "amx_fuzzfuzzfuzzfuzzfuzzfuzz"\nname = "fuzz"\nallow = ["@agentmx.test"]\n',
                        CONFIG_PATH)


_CONFIG = None


def config():
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = _config()
    return _CONFIG


def event(data: bytes) -> None:
    from agentmx.deliver.core import Envelope, build_event
    from agentmx.deliver.parse import INTERNAL, parse
    internal = [d for d in parse(data).defects if d.startswith(INTERNAL)]
    assert not internal, internal          # parse() hides its own bugs from deliver; not from us
    ev, _ = build_event(data, Envelope("a@b.test", "agent@agentmx.test", "FUZZ"), config(), None, NOW, None)
    body = json.dumps(ev, ensure_ascii=False).encode("utf-8")      # lone surrogates would raise here
    VALIDATOR.validate(json.loads(body))
    assert ev["size"] == len(data)


def authres(value: str, ours_first: bool = True) -> None:
    from agentmx.deliver.authread import read_auth
    headers = [("Authentication-Results", value), ("Received", "from x by y")]
    auth = read_auth(headers, OURS)
    for method in ("spf", "dkim", "dmarc", "arc"):
        assert auth[method] in WORDS, (method, auth[method])
    from agentmx.authservid import authserv_id_of
    if authserv_id_of(value) != OURS:
        assert all(auth[m] == "none" for m in ("spf", "dkim", "dmarc", "arc")), auth
    # Below a Received header nothing is ours, whatever it claims.
    below = read_auth([("Received", "from x by y"), ("Authentication-Results", value)], OURS)
    assert all(below[m] == "none" for m in ("spf", "dkim", "dmarc", "arc")), below
    json.dumps(auth)


def config_text(text: str) -> None:
    from agentmx.config import Config, ConfigError, parse_config
    try:
        cfg = parse_config(text, CONFIG_PATH)
    except ConfigError as exc:
        assert str(CONFIG_PATH) in str(exc), str(exc)
        return
    assert isinstance(cfg, Config)


_WRITTEN = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
            "auto-submitted", "mime-version", "content-type", "content-transfer-encoding", "content-disposition"}


def send(value) -> None:
    from agentmx import send as api
    try:
        req = api.parse_request(value)
        out = api.build(req, None, config(), now=NOW)
        raw = out.message.as_bytes(policy=email.policy.SMTP)
    except api.SendError as exc:
        assert 400 <= exc.status < 500, exc.status
        return
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].decode("ascii", "replace").lower()
             for line in head.split(b"\r\n") if line and line[:1] not in (b" ", b"\t")]
    allowed = _WRITTEN | {h.lower() for h, _ in req.headers}
    assert set(names) <= allowed, (set(names) - allowed, head[:2000])
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] is not None and all(b"\n" not in line for line in head.split(b"\r\n"))


_DSN_ACTIONS = {"failed", "delayed", "delivered", "relayed", "expanded", "complained", ""}


def dsn(data: bytes) -> None:
    from agentmx.deliver import dsn as reader
    from agentmx.deliver.dsn import MAX_RECIPIENTS, Report, ReportKind
    r = reader._parse(data)        # parse_report hides its own bugs from deliver (None); not from us
    if r is None:
        return
    assert isinstance(r, Report) and isinstance(r.kind, ReportKind)
    assert len(r.recipients) <= MAX_RECIPIENTS
    bounded = [(r.envelope_id, 100), (r.reporting_mta, 255), (r.original_message_id, 998),
               (r.original_mail_from, 320), (r.feedback_type, 64), (r.arrival_date, 100)]
    for s in r.recipients:
        assert s.action in _DSN_ACTIONS, s.action
        assert s.status == "" or s.status[:1] in "245", s.status
        bounded += [(s.recipient, 320), (s.diagnostic, 1000), (s.remote_mta, 255), (s.original_recipient, 320),
                    (s.status, 11)]
    for value, limit in bounded:
        if value is None:
            continue
        assert isinstance(value, str) and len(value) <= limit, (value[:80], limit)
        assert not any(ch < " " or ch == "\x7f" for ch in value), value[:80]
        value.encode("utf-8")                      # a lone surrogate would raise here
