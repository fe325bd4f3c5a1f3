"""DKIM keys (agentmx keygen), the records to publish (agentmx dns) and the check of what is
published (agentmx check), against a real DNS server on loopback."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support.dnszone import zone_from_records

from agentmx import dkimkeys, dnsrecords
from agentmx.config import parse_config
from agentmx.milter.dkim_check import verify_dkim
from agentmx.milter.sign import sign

AGENTMX = str(Path(sys.executable).with_name("agentmx"))


@pytest.fixture
def config(tmp_path):
    key_dir = tmp_path / "keys"
    for sel, alg in (("s1", "rsa"), ("s1e", "ed25519")):
        dkimkeys.write(key_dir, dkimkeys.generate("agents.example", sel, alg))
    text = (f'[server]\nauthserv_id = "mx.agents.example"\nkey_dir = "{key_dir}"\n'
            f'[domains."agents.example"]\ndkim_selectors = ["s1", "s1e"]\n')
    path = tmp_path / "agentmx.toml"
    path.write_text(text)
    return parse_config(text, path)


def zone_from(recs) -> dict:
    return zone_from_records(recs, {"mx.agents.example": {"A": ["192.0.2.25"]}})


def test_keys_are_private_and_never_overwritten(config):
    for path in (config.key_dir / "agents.example").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(dkimkeys.KeyError_, match="exists"):
        dkimkeys.write(config.key_dir, dkimkeys.generate("agents.example", "s1", "rsa"))
    with pytest.raises(dkimkeys.KeyError_):
        dkimkeys.generate("agents.example", "../../etc", "rsa")


def test_missing_key_for_a_configured_selector_names_it(tmp_path):
    from agentmx.config import ConfigError
    with pytest.raises(ConfigError, match=r'\[domains."a.example"\] dkim_selectors: no key for selector \'s9\''):
        parse_config(f'[server]\nauthserv_id = "mx"\nkey_dir = "{tmp_path}"\n[domains."a.example"]\n'
                     f'dkim_selectors = ["s9"]\n', tmp_path / "c.toml")


def test_signed_with_both_keys_verifies_with_the_published_records(config, zone, lookups):
    zone(zone_from(dnsrecords.records(config, "agents.example")))
    keys = dkimkeys.keys_of(config.key_dir, "agents.example")
    message = (b"From: Agent <agent@agents.example>\r\nTo: bob@example.org\r\nSubject: Re: hello\r\n"
               b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <r1@agents.example>\r\n\r\nHi Bob\r\n")
    headers = "".join(f"DKIM-Signature:{v.replace(chr(10), chr(13) + chr(10))}\r\n" for v in sign(message, keys))
    results = verify_dkim(headers.encode() + message, lookups)
    assert sorted((r.result, r.selector, r.algorithm) for r in results) == [
        ("pass", "s1", "rsa-sha256"), ("pass", "s1e", "ed25519-sha256")]
    h = re.search(r"h=([^;]*);", re.sub(r"\s+", "", headers)).group(1).split(":")
    # oversigned: one more than present (an added From, Subject, ... would break the signature)
    assert h.count("from") == 2 and h.count("subject") == 2 and h.count("reply-to") == 1


def test_check_all_ok(config, zone, lookups):
    zone(zone_from(dnsrecords.records(config, "agents.example")))
    findings = dnsrecords.check(config, "agents.example", lookups)
    assert [(f.record, f.status) for f in findings] == [
        ("MX", "ok"), ("SPF", "ok"), ("SPF HELO", "ok"), ("DKIM s1 (rsa)", "ok"), ("DKIM s1e (ed25519)", "ok"), ("DMARC", "ok")]


def test_check_reports_exactly_the_wrong_record(config, zone, tmp_path):
    published = zone_from(dnsrecords.records(config, "agents.example"))
    other = dkimkeys.generate("agents.example", "s1", "rsa")          # a key that is not ours
    published["s1._domainkey.agents.example"]["TXT"] = [other.txt]
    server = zone(published)
    out = subprocess.run([AGENTMX, "--config", str(tmp_path / "agentmx.toml"), "check", "agents.example",
                          "--dns", f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    bad = [line for line in out.stdout.splitlines() if not line.startswith("OK")]
    assert bad == ["WRONG    DKIM s1 (rsa): s1._domainkey.agents.example publishes a key that does not match "
                   "the private key"]


def test_check_missing_dmarc_and_spf_not_covering_us(config, zone, lookups):
    published = zone_from(dnsrecords.records(config, "agents.example"))
    del published["_dmarc.agents.example"]
    published["agents.example"]["TXT"] = ["v=spf1 ip4:198.51.100.1 -all"]
    zone(published)
    status = {f.record: f.status for f in dnsrecords.check(config, "agents.example", lookups)}
    assert status["DMARC"] == "missing" and status["SPF"] == "wrong" and status["MX"] == "ok"


def test_the_helo_name_gets_its_own_spf_record(config, zone, resolver):
    """Issue 17: our replies arrived judged spf=none for HELO mx.agents.example: `agentmx dns`
    published no SPF record at the host name. Now it does, and the milter's own SPF check
    passes for HELO from the host's address."""
    from agentmx.milter.spf_check import check_helo
    recs = dnsrecords.records(config, "agents.example")
    assert dnsrecords.Record("mx.agents.example", "TXT", "v=spf1 a -all", "SPF HELO") in recs
    assert 'mx.agents.example.\t3600\tIN\tTXT\t"v=spf1 a -all"' in dnsrecords.zone_lines(recs)
    zone(zone_from(recs))
    assert check_helo(resolver.session(20), "192.0.2.25", "mx.agents.example").result == "pass"
    assert check_helo(resolver.session(20), "192.0.2.26", "mx.agents.example").result == "fail"


@pytest.mark.parametrize("txt,status", [
    (None, "missing"),
    (["v=spf1 ip4:198.51.100.1 -all"], "wrong"),
    (["v=spf1 a -all", "v=spf1 -all"], "wrong"),
    (["v=spf1 a:mx.agents.example -all"], "ok"),
    (["v=spf1 a/24 ~all"], "ok"),
])
def test_check_of_the_helo_record(config, zone, lookups, txt, status):
    published = zone_from(dnsrecords.records(config, "agents.example"))
    if txt is None:
        del published["mx.agents.example"]["TXT"]
    else:
        published["mx.agents.example"]["TXT"] = txt
    zone(published)
    found = {f.record: f for f in dnsrecords.check(config, "agents.example", lookups)}
    assert found["SPF HELO"].status == status and found["SPF"].status == "ok"
    if status != "ok":
        assert "v=spf1 a -all" in found["SPF HELO"].detail


def test_a_host_named_as_the_domain_gets_no_second_spf_record(tmp_path, zone, lookups):
    config = parse_config(f'[server]\nauthserv_id = "agents.example"\nkey_dir = "{tmp_path}"\n', tmp_path / "c.toml")
    recs = dnsrecords.records(config, "agents.example")
    assert [r.what for r in recs if r.what.startswith("SPF")] == ["SPF"]
    zone(zone_from_records(recs))
    assert "SPF HELO" not in {f.record for f in dnsrecords.check(config, "agents.example", lookups)}


def test_keygen_and_dns_commands(tmp_path):
    out = subprocess.run([AGENTMX, "keygen", "new.example", "--selector", "k1", "--algorithm", "both",
                          "--key-dir", str(tmp_path / "k")], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "AGENTMX_CONFIG": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert 'k1r._domainkey.new.example.\t3600\tIN\tTXT\t"v=DKIM1; k=rsa; p=' in out.stdout
    assert 'k1e._domainkey.new.example.\t3600\tIN\tTXT\t"v=DKIM1; k=ed25519; p=' in out.stdout
    again = subprocess.run([AGENTMX, "keygen", "new.example", "--selector", "k1r", "--key-dir", str(tmp_path / "k")],
                           capture_output=True, text=True, timeout=30, env={**os.environ, "AGENTMX_CONFIG": "/x"})
    assert again.returncode == 1 and "exists" in again.stderr


def test_rotation_publishes_every_key_but_signs_with_the_configured_ones(config, tmp_path):
    from agentmx.milter.service import signing_keys
    dkimkeys.write(config.key_dir, dkimkeys.generate("agents.example", "s2", "rsa"))      # the next key
    published = [r.what for r in dnsrecords.records(config, "agents.example") if r.what.startswith("DKIM")]
    assert published == ["DKIM s1 (rsa)", "DKIM s1e (ed25519)", "DKIM s2 (rsa)"]
    assert [k.selector for k in signing_keys(config)["agents.example"]] == ["s1", "s1e"]


def test_mta_sts_and_tls_rpt_where_configured(tmp_path):
    cfg = parse_config(f'[server]\nauthserv_id = "mx.agents.example"\nkey_dir = "{tmp_path}"\n'
                       '[domains."agents.example"]\nmta_sts = "enforce"\ntls_rpt = "mailto:tls@agents.example"\n',
                       tmp_path / "c.toml")
    lines = dnsrecords.zone_lines(dnsrecords.records(cfg, "agents.example"))
    assert '_mta-sts.agents.example.\t3600\tIN\tTXT\t"v=STSv1; id=' in lines
    assert "mode: enforce / mx: mx.agents.example" in lines
    assert '_smtp._tls.agents.example.\t3600\tIN\tTXT\t"v=TLSRPTv1; rua=mailto:tls@agents.example"' in lines
    assert "_mta-sts" not in dnsrecords.zone_lines(dnsrecords.records(cfg, "other.example"))



def test_check_as_serves_user_who_may_not_read_the_keys(config, zone):
    """serve runs as agentmx and loads the config as the application (Service.APP), which does
    not read the DKIM keys: they are the milter's (docs/operator.md). dnsrecords.records and
    check, which GET /api/domains calls, read them anyway and raised PermissionError on the key
    folder. Now each configured selector is checked for a published key, not compared."""
    import shutil
    import tempfile
    published = zone_from(dnsrecords.records(config, "agents.example"))
    del published["s1e._domainkey.agents.example"]
    server = zone(published)
    where = Path(tempfile.mkdtemp(prefix="amx-nokeys-"))
    try:
        os.chmod(where, 0o755)
        shutil.copytree(config.key_dir, where / "keys")
        os.chmod(where / "keys", 0o700)                       # root's alone, as the milter's are not agentmx's
        cfg = where / "agentmx.toml"
        cfg.write_text(config.path.read_text().replace(str(config.key_dir), str(where / "keys")))
        os.chmod(cfg, 0o644)
        script = ("import json, sys\n"
                  "from agentmx import dnsrecords\n"
                  "from agentmx.config import Service, load_config\n"
                  "from agentmx.resolver import Resolver\n"
                  "config = load_config(sys.argv[1], Service.APP)\n"
                  "recs = dnsrecords.records(config, 'agents.example')\n"
                  "found = dnsrecords.check(config, 'agents.example', Resolver((('127.0.0.1', int(sys.argv[2])),)).session(50))\n"
                  "print(json.dumps([[[r.what, r.value] for r in recs], [[f.record, f.status] for f in found]]))\n")
        out = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", sys.executable,
                              "-c", script, str(cfg), str(server.port)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr[-2000:]
        recs, found = json.loads(out.stdout)
        assert ["DKIM s1", ""] in recs and ["DKIM s1e", ""] in recs
        assert dict(found) == {"MX": "ok", "SPF": "ok", "SPF HELO": "ok", "DKIM s1": "published", "DKIM s1e": "missing", "DMARC": "ok"}
    finally:
        shutil.rmtree(where)
