"""Hostile input: messages built to hurt a parser (tests/support/hostile.py). Each is delivered by
the real `agentmx deliver` process to a real endpoint: it must exit 0 with a schema-valid event
that keeps the headers and names what it could not do, store the raw bytes, and stay inside the
stated memory bound. CPU and peak memory per case are printed as REPORT lines (bench/hostile-input
measures them by hand on bigger inputs)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT, report
from support import hostile
from support.receiver import Receiver
from test_cli_deliver import write_config

from agentmx.deliver.parse import MAX_BOUNDARY_LINES, MAX_DEPTH, MAX_PARTS, parse

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
PEAK = Path(__file__).parents[1] / "support" / "peak.py"
SCHEMA = json.loads((ROOT / "docs" / "email.received.v1.schema.json").read_text())
# Peak resident memory of one deliver process: the interpreter and imports (~30 MB) plus this
# many times the message's size. Issue 7 tightens this for large attachments.
RSS_BASE_MB, RSS_PER_BYTE = 80, 12


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


def deliver_measured(cfg: Path, raw: bytes, queue_id: str) -> tuple[int, bytes, float, int]:
    """Run `agentmx deliver` on raw; return (exit code, stderr, CPU seconds, peak RSS bytes) of
    that one process, measured by support/peak.py."""
    out = subprocess.run(["/usr/bin/python3", "-I", "-S", str(PEAK), AGENTMX, "--config", str(cfg), "deliver",
                          "--sender=m@evil.test", "--recipient=agent@agentmx.test", f"--queue-id={queue_id}"],
                         input=raw, capture_output=True, timeout=300)
    usage = json.loads(out.stdout)
    return usage["exit"], out.stderr, usage["cpu"], usage["maxrss"]


@pytest.mark.parametrize("case", list(hostile.CASES))
def test_hostile_message_is_delivered_whole_and_bounded(tmp_path, receiver, case):
    builder, arg = hostile.CASES[case]
    raw = builder(arg)
    cfg = write_config(tmp_path, receiver.url)
    receiver.requests.clear()
    code, err, cpu, rss = deliver_measured(cfg, raw, "HOSTILE")
    assert code == 0, err.decode(errors="replace")[-2000:]
    (req,) = receiver.requests
    event = json.loads(req.body)
    jsonschema.validate(event, SCHEMA)
    assert event["from"]["address"] in ("m@evil.test",) and event["size"] == len(raw)
    blob = tmp_path / "data" / "blobs" / event["raw"]["sha256"][:2] / event["raw"]["sha256"]
    assert blob.read_bytes() == raw                       # the original is kept, byte for byte
    assert rss < RSS_BASE_MB * 2**20 + RSS_PER_BYTE * len(raw), f"{rss / 2**20:.0f} MB for {len(raw)} bytes"
    if case == "attachment-25MB":      # large base64 parts are decoded from the raw bytes, not parsed
        assert rss < 3 * len(raw), f"{rss / 2**20:.0f} MB for a {len(raw) / 2**20:.0f} MB message"
    report(f"hostile {case}: {len(raw) / 2**20:.1f} MB in, exit {code}, {cpu:.2f} s CPU, "
           f"peak RSS {rss / 2**20:.0f} MB, {len(event['attachments'])} attachments, "
           f"defects: {'; '.join(d for d in event_defects(tmp_path, event)) or 'none'}")


def event_defects(tmp_path: Path, event: dict) -> list[str]:
    """The event does not carry parser defects; the parse of the stored raw copy says them."""
    blob = tmp_path / "data" / "blobs" / event["raw"]["sha256"][:2] / event["raw"]["sha256"]
    return [d for d in parse(blob.read_bytes()).defects if "MIME" in d or "attachments" in d
            or "could not" in d][:2]


def test_limits_are_named_not_silent():
    deep = parse(hostile.nested(MAX_DEPTH + 10))
    assert any(f"deeper than {MAX_DEPTH}" in d for d in deep.defects) and deep.text.startswith("hello")
    deeper = parse(hostile.nested(3000))        # the stdlib parser recurses: RecursionError
    assert any("headers only" in d for d in deeper.defects)
    assert ("Subject", "deep") in deeper.headers
    many = parse(hostile.many_parts(MAX_PARTS + 5))
    assert len(many.attachments) == MAX_PARTS and many.parts_truncated
    assert sum("more than" in d for d in many.defects) == 1
    flood = parse(hostile.many_parts(MAX_BOUNDARY_LINES + 1))
    assert flood.attachments == [] and any("body not split" in d for d in flood.defects)
    assert ("Subject", "many") in flood.headers


def test_nothing_is_decompressed():
    parsed = parse(hostile.gzip_claim())
    sizes = sorted(len(a.data) for a in parsed.attachments)
    assert len(sizes) == 2 and max(sizes) < 100_000         # 10 MB of zeros each, compressed


def test_attachment_names_never_reach_the_filesystem(tmp_path, receiver):
    cfg = write_config(tmp_path, receiver.url)
    receiver.requests.clear()
    code, err, _, _ = deliver_measured(cfg, hostile.bad_names(), "NAMES")
    assert code == 0, err
    event = receiver.events()[-1]
    names = [a["filename"] for a in event["attachments"]]
    assert "../../etc/passwd" in names                    # told to the agent as sent ...
    assert all("\x00" not in (n or "") and "\r" not in (n or "") and "\n" not in (n or "") for n in names)
    data = tmp_path / "data"
    for path in data.rglob("*"):                          # ... but no path is made from it
        rel = path.relative_to(data).parts
        assert rel[0] == "blobs" or rel[0].startswith("agentmx.sqlite"), path
        if rel[0] == "blobs" and path.is_file():
            assert path.name == hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_base64_parts_are_lifted_and_decoded_from_the_raw_bytes():
    import email.policy
    from email.message import EmailMessage
    data = os.urandom(600_000)
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner text")
    inner.add_attachment(data, maintype="application", subtype="pdf", filename="inner.pdf")
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "a@b.test", "lifted"
    msg.set_content("see the attachments")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename="big.bin")
    msg.add_attachment(inner)                                  # a forwarded message with the same big part
    looks_b64 = ("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n" * 8000)  # 7bit text that looks like base64
    msg.add_attachment(looks_b64, subtype="plain", filename="notes.txt", cte="7bit")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    parsed = parse(raw)
    assert parsed.lifted and not any(d.startswith("internal") for d in parsed.defects)
    by_name = {a.filename: a for a in parsed.attachments}
    assert by_name["big.bin"].data == data
    assert by_name["notes.txt"].data.replace(b"\r\n", b"\n") == looks_b64.encode()
    forwarded = email.message_from_bytes(by_name[[n for n in by_name if n.endswith(".eml")][0]].data)
    (pdf,) = [p for p in forwarded.walk() if p.get_filename() == "inner.pdf"]
    assert pdf.get_payload(decode=True) == data               # the lifted run put back in the .eml
    # A sender cannot name a placeholder: each message gets its own.
    forged = raw.replace(b"see the attachments", b"AGENTMXLIFTED000000000000X0")
    assert parse(forged).text.strip() == "AGENTMXLIFTED000000000000X0"


def test_lifting_finds_the_runs_a_line_at_a_time_would():
    """parse._lift matches up to 256 base64 lines at once (issue 18: a Python iteration per 76
    bytes cost 3 ms a megabyte): the runs lifted are those of the one-line-a-match reading."""
    import base64
    import re

    from agentmx.deliver import parse as p
    one = re.compile(rb"(?m)^[A-Za-z0-9+/]{1,998}={0,2}\r?\n")

    def runs_one_at_a_time(raw: bytes) -> list[tuple[int, int]]:
        out, start, end = [], -1, -1
        for m in one.finditer(raw):
            if m.start() == end:
                end = m.end()
                continue
            if end - start >= p.LIFT_MIN:
                out.append((start, end))
            start, end = m.span()
        if end - start >= p.LIFT_MIN:
            out.append((start, end))
        return out

    b64 = base64.encodebytes(os.urandom(400_000))
    shapes = [
        b"Subject: x\r\n\r\n" + b64.replace(b"\n", b"\r\n"),                                   # CRLF
        b"Subject: x\n\n" + b64 + b"not base64 here\n" + b64[:-1],                               # LF, no final EOL
        b"Subject: x\n\n" + b64[: p.LIFT_MIN - 3] + b"\n" + b64,                                  # one just under
        b"Subject: x\n\n" + b64.replace(b"\n", b"\n\n", 1) + b"--b\n" + b64 + b"=\n==\nA" * 3,  # blank line, padding
        b"Subject: x\n\n" + (b"A" * 997 + b"\n") * 600 + b"A" * 999 + b"\n" + (b"B" * 998 + b"\r\n") * 300,
    ]
    for raw in shapes:
        out = p.Parsed()
        p._lift(raw, out)
        assert sorted(out.lifted.values()) == runs_one_at_a_time(raw)
    # And the boundary-line count (a C count, not a regex scan): the same number.
    for raw in [*shapes, b"--a\n--b\r\n---\n x--\n\r--\n--", b"", b"-", b"\n--\n--\n"]:
        assert raw.startswith(b"--") + raw.count(b"\n--") == len(re.findall(rb"(?m)^--", raw))
