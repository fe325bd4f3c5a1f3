"""Fuzzing in CI: a short coverage-guided atheris run of each target (tests/fuzz/run.py), the
hypothesis variants where a grammar fits (Authentication-Results, the config file, the send
API's JSON), and every input a fuzzer ever crashed on (tests/fuzz/regressions/), replayed.
The long runs and their counts are in docs/hardening.md."""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CORPUS, report

sys.path.insert(0, str(Path(__file__).parent))
import targets  # noqa: E402

FUZZ = Path(__file__).parent
RUNS = {"event": 1000, "authres": 15000, "config": 15000, "send": 6000, "dsn": 4000}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- regressions: inputs that once crashed a target --------------------------------------------

REGRESSIONS = sorted((FUZZ / "regressions").iterdir())


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_regression_inputs_through_the_atheris_runner(path):
    target = path.name.split("-", 1)[0]
    out = subprocess.run([sys.executable, str(FUZZ / "run.py"), target, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def test_regression_send_header_break_characters():
    """Found by fuzzing: \\x1c, \\x85, \\u2028... are line breaks to the email package (a ValueError,
    a 500); they are refused as header injection (400) like CR and LF."""
    from agentmx.send import SendError, parse_request
    for ch in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
        for field in ({"subject": f"a{ch}Bcc: x@evil.test"}, {"from": {"address": "agent@agentmx.test", "name": f"x{ch}"}},
                      {"headers": {"X-A": f"v{ch}"}}):
            req = {"from": "agent@agentmx.test", "to": "bob@example.org", "text": "hi", **field}
            with pytest.raises(SendError) as err:
                parse_request(req)
            assert err.value.status == 400 and err.value.code == "header_injection"


def test_regression_send_lone_surrogate():
    """Found by fuzzing: JSON may carry "\\udc41"; the email package raised UnicodeEncodeError."""
    from agentmx.send import SendError, parse_request
    with pytest.raises(SendError) as err:
        parse_request(json.loads('{"from": "agent@agentmx.test", "to": "b@example.org", "text": "x\\udc41"}'))
    assert err.value.status == 400 and err.value.code == "bad_text" and "text" in err.value.message


# --- atheris, short runs ------------------------------------------------------------------------

def _seeds(target: str, tmp: Path) -> Path:
    seeds = tmp / f"seeds-{target}"
    seeds.mkdir()
    if target == "event":
        messages = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".eml", ".msg", ".txt")
                          and p.stat().st_size < 20_000)
        for p in random.Random(7).sample(messages, min(40, len(messages))):
            shutil.copy(p, seeds / p.name)
    elif target == "authres":
        (seeds / "ours").write_text("mx.agentmx.test; spf=pass smtp.mailfrom=a@b.test; dkim=pass header.d=b.test "
                                    "header.s=s1; dmarc=pass (p=reject dis=none) header.from=b.test; arc=none")
        (seeds / "theirs").write_text("evil.test; dkim=pass header.d=bank.test")
    elif target == "config":
        shutil.copy(Path(__file__).parents[2] / "config" / "agentmx.toml", seeds / "example.toml")
    elif target == "dsn":
        reports = sorted(p for p in (CORPUS / "flufl-bounce").rglob("*.txt")) + \
            sorted((CORPUS / "sisimai-set-of-emails").rglob("*.eml"))
        for i, p in enumerate(random.Random(7).sample([p for p in reports if p.stat().st_size < 20_000], 40)):
            shutil.copy(p, seeds / f"{i}-{p.name}")
    elif target == "send":
        (seeds / "reply.json").write_text(json.dumps({"from": "agent@agentmx.test", "to": ["b@example.org"],
                                                      "subject": "hi", "text": "t", "html": "<p>t</p>",
                                                      "headers": {"X-A": "b"}, "inReplyTo": "<m@x>"}))
    return seeds


@pytest.mark.parametrize("target", list(RUNS))
def test_atheris_short_run(target, tmp_path):
    seeds = _seeds(target, tmp_path)
    out = subprocess.run([sys.executable, str(FUZZ / "run.py"), target, f"-runs={RUNS[target]}", "-rss_limit_mb=3072",
                          "-timeout=30", f"-artifact_prefix={tmp_path}/", "-seed=1", str(seeds)],
                         capture_output=True, text=True, timeout=170, cwd=tmp_path)
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*")) + list(tmp_path.glob("oom-*"))
    assert out.returncode == 0 and not crashes, out.stderr[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", out.stderr)
    assert done and int(done.group(1)) >= RUNS[target]
    report(f"fuzz {target}: {done.group(1)} atheris executions in {done.group(2)} s, 0 crashes")


# --- hypothesis, where a grammar fits ------------------------------------------------------------

token = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
word = st.sampled_from(sorted(targets.WORDS) + ["PASS", "bogus", "", "pass;", "fail (x)"])
method = st.sampled_from(["spf", "dkim", "dmarc", "arc", "iprev", "auth", "x-foo", "dkim-atps", ""])
prop = st.tuples(st.sampled_from(["header.d", "header.s", "smtp.mailfrom", "header.from", "policy.dmarc", "x.y"]),
                 token).map(lambda t: f"{t[0]}={t[1]}")
result = st.tuples(method, word, st.lists(prop, max_size=3), st.one_of(st.just(""), token.map(lambda t: f" ({t})")))
authserv = st.sampled_from([targets.OURS, targets.OURS.upper(), "evil.test", f"{targets.OURS}.evil.test",
                            f"x{targets.OURS}", f"{targets.OURS} 1", f'"{targets.OURS}"', ""])


@FAST
@given(authserv, st.lists(result, max_size=6), st.booleans())
def test_hypothesis_authentication_results(sid, results, version):
    parts = [f"{m}={w}{c} {' '.join(props)}".strip() for m, w, props, c in results]
    value = sid + (" 1" if version else "") + "".join(f"; {p}" for p in parts) if parts else f"{sid}; none"
    targets.authres(value)


toml_key = st.sampled_from(["authserv_id", "data_dir", "listen", "public_url", "url_secret", "servers", "timeout",
                            "socket", "socket_mode", "trusted_networks", "match", "endpoint", "secret", "trust",
                            "key", "allow", "selectors", "lookup_budget", "bogus"])
toml_scalar = st.one_of(st.text(max_size=30), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                        st.booleans(), st.lists(st.text(max_size=20), max_size=3))
toml_table = st.dictionaries(toml_key, toml_scalar, max_size=6)
toml_section = st.sampled_from(["server", "dns", "milter", "milter.policy", "send", "domains.example.com"])


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else str(v)


@FAST
@given(st.dictionaries(toml_section, toml_table, max_size=4),
       st.lists(st.tuples(st.sampled_from(["routes", "api_keys"]), toml_table), max_size=3))
def test_hypothesis_config(sections, arrays):
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for name, table in arrays:
        lines.append(f"[[{name}]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    targets.config_text("\n".join(lines) + "\n")


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                          max_leaves=8)
hostile_text = st.text(alphabet=st.sampled_from(list("ab <>@.,;:\"\\\r\n\x00\x1c\x85\u2028=?") + ["\udc41"]),
                       max_size=30)
mailbox = st.one_of(st.just("agent@agentmx.test"), hostile_text.map(lambda t: f"{t} <agent@agentmx.test>"),
                    st.fixed_dictionaries({"address": st.just("agent@agentmx.test"), "name": hostile_text}),
                    hostile_text, json_value)
send_field = {"from": mailbox, "to": st.one_of(mailbox, st.lists(mailbox, max_size=3)), "cc": mailbox,
              "replyTo": mailbox, "subject": st.one_of(hostile_text, json_value), "text": hostile_text,
              "html": hostile_text, "headers": st.dictionaries(st.one_of(st.just("X-A"), hostile_text), hostile_text,
                                                               max_size=2),
              "inReplyTo": st.one_of(hostile_text, hostile_text.map(lambda t: f"<{t}@x>")),
              "attachments": st.lists(st.fixed_dictionaries({"filename": hostile_text, "contentType": hostile_text,
                                                             "content": st.sampled_from(["aGk=", "!!", ""])}),
                                      max_size=2),
              "force": json_value, "bogus": json_value}


@FAST
@given(st.fixed_dictionaries({"from": mailbox, "to": mailbox, "text": hostile_text},
                             optional={k: v for k, v in send_field.items() if k not in ("from", "to", "text")}))
def test_hypothesis_send_request(request_body):
    targets.send(request_body)
