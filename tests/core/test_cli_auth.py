"""`agentmx auth`: a postmaster asks why a real message failed DMARC, offline, against DNS."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import CORPUS

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
GMAIL_BOUNCE = CORPUS / "sisimai-set-of-emails" / "maildir" / "bsd" / "lhost-gmail-01.eml"
# Google's published 2012 key (as in dkimpy's tests) for the real message's d=googlemail.com s=20120113.
GOOGLE_2012_KEY = (
    "k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1Kd87/UeJjenpabgbFwh+eBCsSTrqmwIYYvywlbhbqoo2DymndFkbjOVIPIldNs/"
    "m40KF+yzMn1skyoxcTUGCQs8g3FgD2Ap3ZB5DekAo5wMmk4wimDO+U8QzI3SD07y2+07wlNWwIt8svnxgdxGkVbbhzY8i+RQ9DpSVpPbF7ykQxtKXkv/"
    "ahW3KjViiAH+ghvvIhkx4xYSIc9oSwVmAl5OctMEeWUwg8Istjqz8BZeTWbf41fbNhte7Y+YqZOwq1Sd0DbvYAD9NOZK9vlfuac0598HY+vtSBczUiKER"
    "Hv1yRbcaQtZFh5wtiRrN04BLUTD21MycBX5jYchHjPY/wIDAQAB")
ZONE = {
    "20120113._domainkey.googlemail.com": {"TXT": [GOOGLE_2012_KEY]},
    "googlemail.com": {"TXT": ["v=spf1 ip4:209.85.128.0/17 ~all"]},
    "_dmarc.googlemail.com": {"TXT": ["v=DMARC1; p=quarantine; rua=mailto:mailauth-reports@google.com"]},
}


def run(dns_port: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTMX, "--config", "/nonexistent-is-fine-without-it.toml", "auth", str(GMAIL_BOUNCE),
                           "--client-ip", "209.85.220.41", "--helo", "mail-qk0-f41.google.com",
                           "--mail-from", "", "--dns", f"127.0.0.1:{dns_port}", "--timeout", "1", *extra],
                          capture_output=True, text=True, timeout=60)


def test_auth_needs_a_readable_config_when_one_is_named(zone):
    out = run(zone(ZONE).port)
    assert out.returncode == 78 and "/nonexistent-is-fine-without-it.toml: cannot be read" in out.stderr


def _run_without_config(dns_port, *extra):
    return subprocess.run([AGENTMX, "auth", str(GMAIL_BOUNCE), "--client-ip", "209.85.220.41",
                           "--helo", "mail-qk0-f41.google.com", "--mail-from", "",
                           "--dns", f"127.0.0.1:{dns_port}", "--timeout", "1", *extra],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "AGENTMX_CONFIG": "/nonexistent/agentmx.toml"})


def test_auth_explains_a_dmarc_failure_of_a_real_message(zone):
    out = _run_without_config(zone(ZONE).port)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "DKIM d=googlemail.com s=20120113 a=rsa-sha256: fail (body hash did not verify)" in lines
    assert "SPF  MAIL FROM postmaster@mail-qk0-f41.google.com: none (null sender: checked as postmaster@HELO)" in lines
    dmarc = next(line for line in lines if line.startswith("DMARC "))
    assert dmarc.startswith("DMARC From googlemail.com: fail (")
    assert "DKIM d=googlemail.com fail (body hash did not verify)" in dmarc
    assert "  record at _dmarc.googlemail.com: v=DMARC1; p=quarantine; rua=mailto:mailauth-reports@google.com" in lines
    assert any("applies to this message: quarantine" in line for line in lines)
    assert lines[-1].startswith("Authentication-Results: agentmx.local; ")


def test_auth_json(zone):
    out = _run_without_config(zone(ZONE).port, "--json")
    data = json.loads(out.stdout)
    assert data["dmarc"]["result"] == "fail" and data["dmarc"]["record"]["p"] == "quarantine"
    assert data["dkim"][0]["domain"] == "googlemail.com" and data["dkim"][0]["result"] == "fail"
    assert "dmarc=fail" in data["authenticationResults"]


def test_auth_explains_iprev(zone):
    out = _run_without_config(zone({**ZONE, "41.220.85.209.in-addr.arpa": {"PTR": ["mail-qk0-f41.google.com"]},
                                    "mail-qk0-f41.google.com": {"A": ["209.85.220.41"]}}).port)
    lines = out.stdout.splitlines()
    assert "iprev 209.85.220.41: pass (PTR mail-qk0-f41.google.com maps back to it)" in lines
    assert "  PTR names checked: mail-qk0-f41.google.com" in lines
    assert "iprev=pass policy.iprev=209.85.220.41 (mail-qk0-f41.google.com)" in lines[-1]
    out = _run_without_config(zone(ZONE).port)
    assert "iprev 209.85.220.41: permerror (no PTR record for 209.85.220.41)" in out.stdout.splitlines()


def test_auth_with_dns_down_says_temperror(zone, dns_server):
    zone(ZONE)
    dns_server.resolver.silent = True
    out = _run_without_config(dns_server.port)
    assert out.returncode == 0
    assert "DKIM d=googlemail.com s=20120113 a=rsa-sha256: temperror" in out.stdout
    assert "DMARC From googlemail.com: temperror" in out.stdout
    assert "iprev 209.85.220.41: temperror (PTR lookup: " in out.stdout


def test_auth_reads_a_second_from_in_obsolete_syntax(zone, tmp_path):
    """Issue 13 item 10: `From :` was dropped, and `agentmx auth` said pass for the first From."""
    port = zone({"sender.example": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
                 "_dmarc.sender.example": {"TXT": ["v=DMARC1; p=none"]},
                 "_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject"]}}).port
    raw = tmp_path / "spoof.eml"
    raw.write_bytes(b"From: News <news@sender.example>\nFrom : Bank <security@bank.example>\n"
                    b"To: agent@agentmx.test\nSubject: Reset your password\n\nClick here.\n")
    out = subprocess.run([AGENTMX, "auth", str(raw), "--client-ip", "192.0.2.10", "--helo", "mail.sender.example",
                          "--mail-from", "news@sender.example", "--dns", f"127.0.0.1:{port}", "--timeout", "1"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "AGENTMX_CONFIG": "/nonexistent/agentmx.toml"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    dmarc = next(line for line in lines if line.startswith("DMARC "))
    assert dmarc.startswith("DMARC From bank.example: fail (2 From header fields (sender.example, bank.example); ")
    assert "  2 From domain(s) checked; the result above is the one that applies:" in lines
    assert "  DMARC From sender.example: pass (aligned SPF sender.example)" in lines
    assert any(line.startswith("  DMARC From bank.example: fail (") for line in lines)
    assert "    policy reject (p=reject sp=- np=- t=n adkim=r aspf=r); applies to this message: reject" in lines
    assert "    tree walk: records at bank.example; Organizational Domain bank.example" in lines
    assert "dmarc=fail" in lines[-1] and "header.from=bank.example" in lines[-1]


def test_auth_dmarc_mode_option(zone):
    """--dmarc rfc7489 explains the RFC 7489 way (pct, no tree walk); the default is RFC 9989."""
    port = zone(ZONE).port
    old = _run_without_config(port, "--dmarc", "rfc7489").stdout.splitlines()
    assert "  policy quarantine (p=quarantine sp=- pct=100 adkim=r aspf=r); applies to this message: quarantine" in old
    assert not any("tree walk" in line for line in old)
    assert "(p=quarantine sp=quarantine pct=100 dis=quarantine)" in old[-1]
    new = _run_without_config(port).stdout.splitlines()
    assert "  tree walk: records at googlemail.com; Organizational Domain googlemail.com" in new
    assert "(p=quarantine sp=quarantine dis=quarantine record=googlemail.com org=googlemail.com)" in new[-1]
