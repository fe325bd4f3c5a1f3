"""Coverage-guided fuzzing with atheris (libFuzzer) of one target in fuzz/targets.py.

    python tests/fuzz/run.py TARGET [libFuzzer options] [CORPUS_DIR ...]
    TARGET: event | authres | config | send | dsn

Bytes become the target's input: `event` and `dsn` take them as the raw message; `authres` and `config`
as UTF-8 text (surrogateescape); `send` as JSON when they parse, else as the `from` field of an
otherwise valid request. A crash is printed with the input's path (crash-<sha1>): turn it into a
regression test in tests/fuzz/test_fuzz.py (REGRESSIONS) with that input.
"""
import json
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["agentmx", "email", "authres", "tomllib"]):
    import targets
    import agentmx.deliver.core  # noqa: F401  (instrumented before the first input)
    import agentmx.deliver.authread  # noqa: F401
    import agentmx.config  # noqa: F401
    import agentmx.send  # noqa: F401
    import agentmx.deliver.dsn  # noqa: F401
    import email.feedparser  # noqa: F401
    import email._header_value_parser  # noqa: F401
    import authres as _authres  # noqa: F401
    import tomllib  # noqa: F401


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _send(data: bytes):
    """JSON when the input starts with '{', else a request whose fields come from the bytes: the
    shapes an agent sends, with any text (line breaks, NULs, surrogates) in every field."""
    if data[:1] == b"{":
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    fdp = atheris.FuzzedDataProvider(data)
    text = lambda n: fdp.ConsumeUnicode(n)  # noqa: E731
    req = {"from": {"address": "agent@agentmx.test", "name": text(30)} if fdp.ConsumeBool()
           else f"{text(20)} <agent@agentmx.test>",
           "to": [text(30) + ("@example.org" if fdp.ConsumeBool() else "")], "text": text(200)}
    if fdp.ConsumeBool():
        req["subject"] = text(100)
    if fdp.ConsumeBool():
        req["html"] = text(200)
    if fdp.ConsumeBool():
        req["headers"] = {"X-" + text(12): text(60)}
    if fdp.ConsumeBool():
        req["inReplyTo"] = "<" + text(30) + ">"
    if fdp.ConsumeBool():
        req["replyTo"] = {"address": text(20) + "@example.org", "name": text(20)}
    if fdp.ConsumeBool():
        import base64
        req["attachments"] = [{"filename": text(40), "contentType": text(20) or "text/plain",
                               "content": base64.b64encode(fdp.ConsumeBytes(64)).decode()}]
    return req


ADAPT = {
    "event": lambda data: targets.event(data),
    "authres": lambda data: targets.authres(_text(data)),
    "config": lambda data: targets.config_text(_text(data)),
    "send": lambda data: targets.send(_send(data)),
    "dsn": lambda data: targets.dsn(data),
}


def main() -> None:
    target = ADAPT[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
