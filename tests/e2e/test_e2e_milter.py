"""End to end: a private Postfix on loopback, the real milter process on its unix socket, real DNS
on loopback, messages sent over SMTP (signed with keys the test publishes in its DNS), and the
delivered copy read from the pipe transport's output.
"""
from __future__ import annotations

import email
import re
import smtplib
import subprocess
import threading
import time
from email.utils import formatdate, make_msgid
from pathlib import Path

import dkim
import pytest

from conftest import report
from e2e_helpers import Ed25519Key, RsaKey, message, our_results, send, sign, verdicts
from support.hostile import dkim_costly_key
from support.postfix import PostfixInstance, agentmx_config, running_with_milter, settled

AUTHSERV = "mx.agentmx.test"


@pytest.fixture(scope="module")
def keys():
    return {"rsa": RsaKey(), "ed": Ed25519Key()}


@pytest.fixture(scope="module")
def mx_zone(keys):
    return {
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "A": ["127.0.0.1"]},
        "mail.sender.test": {"A": ["127.0.0.1"], "TXT": ["v=spf1 a -all"]},
        "1.0.0.127.in-addr.arpa": {"PTR": ["mail.sender.test"]},        # iprev: the client's name maps back
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@sender.test"]},
        "rsa._domainkey.sender.test": {"TXT": [keys["rsa"].txt]},
        "ed._domainkey.sender.test": {"TXT": [keys["ed"].txt]},
        "bank.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
        "_dmarc.bank.test": {"TXT": ["v=DMARC1; p=reject"]},
    }


@pytest.fixture(scope="module")
def stack(dns_server, mx_zone, tmp_path_factory):
    """Postfix (mx.agentmx.test) + `agentmx milter`; yields (postfix, milter)."""
    dns_server.set_zone(mx_zone)
    pf = PostfixInstance("mx", "mx.agentmx.test", relay_domains="agentmx.test, strict.agentmx.test", main={
        "transport_maps": "inline:{ agentmx.test=sink:, strict.agentmx.test=sink: }",
    })
    # the test client is 127.0.0.1: verify it like any outside client (trusted_networks = [])
    config, sock = agentmx_config(pf, AUTHSERV, dns_server.port, dns_timeout=0.5,
                                  server=f'data_dir = "{pf.base / "data-agentmx"}"\nurl_secret = "e2e-milter-url-secret-01"', milter="trusted_networks = []",
                                  rest='[domains."strict.agentmx.test"]\nreject_dmarc = true\nreject_spf_fail = true\n'
                                       # the routes a block's scope names (blocks.json): agent@ and the rest
                                       '[[routes]]\nmatch = "agent@agentmx.test"\nmode = "pull"\n'
                                       '[[routes]]\nmatch = "@agentmx.test"\nmode = "pull"\n')
    with running_with_milter(pf, config, sock) as milter:
        yield pf, milter


@pytest.fixture
def mx(stack, dns_server, mx_zone):
    pf, milter = stack
    dns_server.set_zone(mx_zone)
    dns_server.resolver.silent = False
    for p in pf.delivered():
        p.unlink()
    return pf


def only_ours(path):
    headers = our_results(path, AUTHSERV)
    assert len(headers) == 1, f"expected exactly one Authentication-Results of ours, got {len(headers)}"
    return verdicts(headers[0])


@pytest.mark.parametrize("selector", ["rsa", "ed"])
def test_signed_message_passes_everything(mx, keys, selector):
    raw = sign(message("Alice <alice@sender.test>", "agent@agentmx.test"), "sender.test", selector, keys[selector])
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw)
    (path,) = mx.wait_delivered(1)
    v = only_ours(path)
    assert v["spf"][0].result == "pass" and v["spf"][0].smtp_mailfrom == "alice@sender.test"
    assert v["spf"][1].result == "pass" and v["spf"][1].smtp_helo == "mail.sender.test"
    (d,) = v["dkim"]
    assert (d.result, d.header_d, d.header_s) == ("pass", "sender.test", selector)
    assert d.header_a == keys[selector].algorithm.decode()
    assert v["arc"][0].result == "none"
    assert v["dmarc"][0].result == "pass" and v["dmarc"][0].header_from == "sender.test"
    assert v["dmarc"][0].policy == "reject"
    assert (v["iprev"][0].result, v["iprev"][0].policy_iprev) == ("pass", "127.0.0.1")
    assert "iprev=pass policy.iprev=127.0.0.1 (mail.sender.test)" in " ".join(path.read_text().split())


def test_forged_results_are_removed_and_foreign_ones_kept(mx, keys):
    forged = [("Authentication-Results", f"{AUTHSERV}; dkim=pass header.d=bank.test; dmarc=pass header.from=bank.test"),
              ("Authentication-Results", f"(comment) {AUTHSERV.upper()} ; spf=pass smtp.mailfrom=bank.test"),
              ("Authentication-Results", "other.example; spf=fail smtp.mailfrom=x.test")]
    raw = message("Bank <support@bank.test>", "agent@agentmx.test", extra_headers=forged)
    send(mx.port, "support@bank.test", ["agent@agentmx.test"], raw)
    (path,) = mx.wait_delivered(1)
    v = only_ours(path)
    assert v["dmarc"][0].result == "fail" and v["dmarc"][0].header_from == "bank.test"
    assert v["spf"][0].result == "fail"
    assert v["dkim"][0].result == "none"
    all_ar = email.message_from_bytes(path.read_bytes()).get_all("Authentication-Results")
    assert len(all_ar) == 2 and any(a.strip().startswith("other.example;") for a in all_ar)
    assert "dkim=pass" not in path.read_text()


def test_default_policy_records_a_spoof_and_delivers_it(mx):
    raw = message("Bank <support@bank.test>", "agent@agentmx.test", subject="Reset your password")
    send(mx.port, "bounce@sender.test", ["agent@agentmx.test"], raw)
    (path,) = mx.wait_delivered(1)
    v = only_ours(path)
    assert v["spf"][0].result == "pass"           # the envelope domain authorizes us...
    dm = v["dmarc"][0]
    assert dm.result == "fail" and dm.header_from == "bank.test"   # ...but it is not the author's


def test_opt_in_policy_rejects_dmarc_and_spf_failures(mx):
    since = time.time()
    raw = message("Bank <support@bank.test>", "agent@strict.agentmx.test")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mx.port, "bounce@sender.test", ["agent@strict.agentmx.test"], raw)
    assert exc.value.smtp_code == 550 and b"5.7.1" in exc.value.smtp_error
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mx.port, "support@bank.test", ["agent@strict.agentmx.test"],
             message("x <x@elsewhere.test>", "agent@strict.agentmx.test"))
    assert exc.value.smtp_code == 550 and b"5.7.23" in exc.value.smtp_error
    settled(mx, since=since)
    assert mx.delivered() == [] and mx.queue_is_empty()


def test_costly_dkim_key_is_refused_before_any_arithmetic(mx, stack, dns_server, mx_zone, keys):
    """A key record with a 16,384-bit modulus and a 16,384-bit exponent, named by 8 signatures:
    dkimpy's Python-integer RSA spent ~7 s of CPU on each (about a minute, under the GIL). Now the
    key is refused before any arithmetic, and other sessions do not wait behind the message."""
    _, milter = stack
    record, raw = dkim_costly_key("sender.test", "costly", mail_from="alice@sender.test")
    dns_server.set_zone({**mx_zone, "costly._domainkey.sender.test": {"TXT": [record]}})
    cpu = milter.cpu_seconds()
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw)
    (path,) = mx.wait_delivered(1, timeout=120)
    cpu = milter.cpu_seconds() - cpu
    dkim_results = only_ours(path)["dkim"]
    assert [(d.result, d.header_d, d.header_s, d.reason) for d in dkim_results] == [
        ("permerror", "sender.test", "costly", "RSA key of 16384 bits: RFC 8301 allows 1024 to 4096")] * 8
    report(f"milter CPU for the costly-key DKIM message: {cpu * 1000:.0f} ms")
    assert cpu < 2.0, f"{cpu:.1f} s of milter CPU for one message (dkimpy's RSA: ~60 s)"

    # the same message again, and a normal one sent while it is in the milter: not held up
    normal = sign(message("Alice <alice@sender.test>", "agent@agentmx.test", subject="meanwhile"),
                  "sender.test", "rsa", keys["rsa"])
    hostile = threading.Thread(target=send, args=(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw))
    hostile.start()
    time.sleep(0.1)
    started = time.monotonic()
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], normal)
    waited = time.monotonic() - started
    hostile.join(120)
    paths = mx.wait_delivered(3, timeout=120)
    report(f"SMTP transaction of a normal message beside the costly-key one: {waited * 1000:.0f} ms")
    assert waited < 5.0, f"a normal message took {waited:.1f} s beside the costly one"
    (meanwhile,) = [p for p in paths if b"Subject: meanwhile" in p.read_bytes()]
    assert only_ours(meanwhile)["dkim"][0].result == "pass"


def test_big_mail_is_hashed_as_it_streams_in_every_canonicalization(mx, stack, keys):
    """3 MB through Postfix, which hands it to the milter in 64 KB chunks cut anywhere (in runs of
    white space, between the CR and LF of a line end, in the empty lines at the end): signatures
    in simple and relaxed, each with and without l=, all pass; one over another body fails. The
    body is hashed per chunk and not kept (bodyhash.py): the milter's peak memory grows by less than
    twice the body (libmilter's chunks, a thread), where it grew by ~40 times the body when the
    milter held it and dkimpy split and canonicalized the whole message."""
    _, milter = stack

    def peak_kb() -> int:
        return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{milter.proc.pid}/status").read_text()).group(1))

    line = b"The quick  brown\tfox \t jumps over the lazy dog  \r\n \t\r\n"
    head = (f"From: Alice <alice@sender.test>\r\nTo: agent@agentmx.test\r\nSubject: big\r\nDate: {formatdate()}\r\n"
            f"Message-ID: {make_msgid(domain='sender.test')}\r\n\r\n").encode()
    prefix = line * 30_000                                     # what the l= signatures cover
    body = prefix + b"tail \t\r\n" + line * 10_000 + b"\r\n \r\n\t\r\n\r\n"
    signatures = b""
    for canon in (b"simple", b"relaxed"):
        for covered, length in ((body, False), (prefix, True)):
            signatures += dkim.sign(head + covered, b"rsa", b"sender.test", keys["rsa"].private,
                                    canonicalize=(canon, canon), length=length, linesep=b"\r\n",
                                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    other = dkim.sign(head + b"another body\r\n", b"rsa", b"sender.test", keys["rsa"].private, linesep=b"\r\n",
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert signatures.count(b"; l=") == 2
    warm = sign(message("Alice <alice@sender.test>", "agent@agentmx.test"), "sender.test", "rsa", keys["rsa"])
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], warm)    # what a first message loads
    (warmed,) = mx.wait_delivered(1)
    warmed.unlink()
    cpu, peak = milter.cpu_seconds(), peak_kb()
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], signatures + other + head + body)
    (path,) = mx.wait_delivered(1, timeout=120)
    cpu, grown = milter.cpu_seconds() - cpu, peak_kb() - peak
    assert [d.result for d in only_ours(path)["dkim"]] == ["pass"] * 4 + ["fail"]
    assert "dkim=pass,pass,pass,pass,fail " in milter.log()
    report(f"milter CPU for a 3 MB message with 5 signatures: {cpu * 1000:.0f} ms, peak memory grown {grown} kB")
    assert grown < 2 * len(body) // 1024, f"the milter's peak memory grew by {grown} kB for a {len(body) // 1024} kB body"


def _spoof(from_lines: bytes, to: str, keys) -> bytes:
    """A message from sender.test (SPF and DKIM pass, aligned) whose From field(s) also name
    bank.test. Every From field is signed (dkimpy's h=from once does not verify with two)."""
    raw = from_lines + (f"To: {to}\r\nSubject: Reset your password\r\nDate: {formatdate()}\r\n"
                        f"Message-ID: {make_msgid(domain='sender.test')}\r\n\r\nClick here.\r\n").encode()
    signed = [b"from"] * from_lines.lower().count(b"from:") + [b"to", b"subject", b"date", b"message-id"]
    return dkim.sign(raw, b"rsa", b"sender.test", keys["rsa"].private, canonicalize=(b"relaxed", b"relaxed"),
                     include_headers=signed, linesep=b"\r\n") + raw


def test_a_second_from_in_obsolete_syntax_cannot_hide_a_rejecting_domain(mx, keys):
    """Issue 13 item 10 through Postfix and the milter process. Postfix 3.7 hands the milter
    `From :` as a field named From (and stores it as `From:`), so the milter saw two From
    fields: dmarc=permerror, which no policy rejects, and the mail client shows the bank. Now
    each domain is checked (RFC 9989 11.5) and bank.test's p=reject applies."""
    def spoof(to):       # signed as Postfix will store it (dkimpy does not read `From :`), sent obsolete
        raw = _spoof(b"From: Alice <alice@sender.test>\r\nFrom: Bank <support@bank.test>\r\n", to, keys)
        return raw.replace(b"\r\nFrom: Bank", b"\r\nFrom : Bank")

    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], spoof("agent@agentmx.test"))
    (path,) = mx.wait_delivered(1)
    v = only_ours(path)
    assert v["dkim"][0].result == "pass" and v["spf"][0].result == "pass"
    dm = v["dmarc"][0]
    assert (dm.result, dm.header_from, dm.policy) == ("fail", "bank.test", "reject")
    assert "2 From header fields (sender.test, bank.test)" in dm.reason
    assert b"\nFrom: Bank <support@bank.test>" in path.read_bytes()     # as Postfix stored it
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mx.port, "alice@sender.test", ["agent@strict.agentmx.test"], spoof("agent@strict.agentmx.test"))
    assert exc.value.smtp_code == 550 and b"5.7.1" in exc.value.smtp_error and b"bank.test" in exc.value.smtp_error
    time.sleep(0.5)
    assert len(mx.delivered()) == 1


@pytest.mark.parametrize("lines", [
    b"From: Alice <alice@sender.test>, Bank <support@bank.test>\r\n",
    b"From: Staff: alice@sender.test, support@bank.test;\r\n",
    b"From: alice@sender.test support@bank.test\r\n",
    b"From: alice@sender.test\r\nFROM: support@bank.test\r\n",
], ids=["mailbox-list", "group", "no-comma", "upper-case"])
def test_every_from_domain_counts_through_postfix(mx, keys, lines):
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mx.port, "alice@sender.test", ["agent@strict.agentmx.test"],
             _spoof(lines, "agent@strict.agentmx.test", keys))
    assert exc.value.smtp_code == 550 and b"bank.test" in exc.value.smtp_error


def test_an_address_in_the_display_name_is_no_author(mx, keys):
    lines = b'From: "support@bank.test" <alice@sender.test>\r\n'
    send(mx.port, "alice@sender.test", ["agent@strict.agentmx.test"], _spoof(lines, "agent@strict.agentmx.test", keys))
    (path,) = mx.wait_delivered(1)
    dm = only_ours(path)["dmarc"][0]
    assert (dm.result, dm.header_from) == ("pass", "sender.test")


def test_null_sender_is_checked_as_postmaster_at_helo(mx):
    raw = message("MAILER-DAEMON <postmaster@sender.test>", "agent@agentmx.test", subject="Undelivered")
    send(mx.port, "", ["agent@agentmx.test"], raw)
    (path,) = mx.wait_delivered(1)
    v = only_ours(path)
    assert v["spf"][0].result == "pass" and v["spf"][0].smtp_mailfrom == "postmaster@mail.sender.test"


def test_dns_silent_gives_temperror_not_fail_and_no_crash(mx, keys, stack, dns_server):
    _, milter = stack
    raw = sign(message("Alice <alice@sender.test>", "agent@agentmx.test"), "sender.test", "rsa", keys["rsa"])
    dns_server.resolver.silent = True          # from here on every lookup times out
    try:
        send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw)
        (path,) = mx.wait_delivered(1, timeout=60)
    finally:
        dns_server.resolver.silent = False
    v = only_ours(path)
    assert v["spf"][0].result == "temperror"
    assert v["dkim"][0].result == "temperror" and v["dkim"][0].header_d == "sender.test"
    assert v["dmarc"][0].result == "temperror"
    assert v["iprev"][0].result == "temperror"
    assert "fail" not in {r.result for rs in v.values() for r in rs}
    assert milter.proc.poll() is None, "the milter must survive"
    # and it verifies the next message normally
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw)
    paths = mx.wait_delivered(2)
    assert only_ours(paths[-1])["dkim"][0].result == "pass"


def test_milter_down_means_4xx_and_nothing_accepted_unverified(mx, stack):
    since = time.time()
    _, milter = stack
    milter.kill()
    try:
        raw = message("Alice <alice@sender.test>", "agent@agentmx.test")
        with pytest.raises(smtplib.SMTPResponseException) as exc:
            send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw)
        assert 400 <= exc.value.smtp_code < 500
        settled(mx, since=since)
        assert mx.delivered() == [] and mx.queue_is_empty()
    finally:
        milter.start()
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], message("Alice <alice@sender.test>", "agent@agentmx.test"))
    (path,) = mx.wait_delivered(1)
    assert only_ours(path)["spf"][0].result == "pass"


def test_local_submission_is_not_verified_but_forged_results_still_go(mx):
    raw = message("Agent <agent@agentmx.test>", "agent@agentmx.test",
                  extra_headers=[("Authentication-Results", f"{AUTHSERV}; dmarc=pass header.from=bank.test")])
    subprocess.run(["sendmail", "-C", str(mx.etc), "-f", "agent@agentmx.test", "agent@agentmx.test"],
                   input=raw, check=True, timeout=30)
    (path,) = mx.wait_delivered(1)
    assert our_results(path, AUTHSERV) == []
    assert "dmarc=pass" not in path.read_text()


def test_milter_counters_reach_metrics(mx, stack):
    from agentmx.config import load_config
    from agentmx.ops import metrics
    from support.postfix import wait_for
    send(mx.port, "alice@sender.test", ["agent@agentmx.test"], message("Alice <alice@sender.test>", "agent@agentmx.test"))
    mx.wait_delivered(1)
    config = load_config(mx.base / "agentmx.toml")
    stats = config.data_dir / "stats"
    wait_for(lambda: list(stats.glob("milter-*.json")), timeout=10, what="the milter's stats file")
    from agentmx.store import open_store
    text = metrics(config, open_store(config))
    assert 'agentmx_milter_messages_total{action="accept"}' in text
    assert 'agentmx_milter_verdicts_total{check="spf",result="pass"}' in text
    assert "agentmx_milter_latency_seconds_count" in text


def test_a_blocked_sender_is_refused_at_rcpt_for_the_blocked_addresses_only(mx, stack, keys):
    """An agent's block-sender answer (deliver writes <data_dir>/blocks.json): the milter refuses
    that MAIL FROM at RCPT with 550 5.7.1 for the route's addresses (agent+tag@ too), and takes it
    for others; the file is re-read when it changes; a malformed file fails open (never a 5xx
    of ours)."""
    from agentmx import blocklist
    pf, milter = stack
    path = blocklist.path_in(pf.base / "data-agentmx")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sign(message("Alice <alice@sender.test>", "agent@agentmx.test"), "sender.test", "rsa", keys["rsa"])
    try:
        blocklist.write(path, [("alice@sender.test", "agent@agentmx.test")])
        refused = send(mx.port, "Alice@Sender.test", ["agent@agentmx.test", "agent+x@agentmx.test", "other@agentmx.test"],
                       raw)
        assert set(refused) == {"agent@agentmx.test", "agent+x@agentmx.test"}
        code, text = refused["agent@agentmx.test"]
        assert code == 550 and text.startswith(b"5.7.1") and b"blocked" in text
        mx.wait_delivered(1)                                                         # other@ took it
        assert "refused RCPT agent@agentmx.test: sender Alice@Sender.test is blocked for agent@agentmx.test" in milter.log()
        blocklist.write(path, [("alice@sender.test", "@agentmx.test")])               # the catch-all's agent now
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(mx.port, "alice@sender.test", ["other@agentmx.test"], raw)
        assert send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw) == {}    # agent@'s own route: not its
        assert send(mx.port, "bob@sender.test", ["agent@agentmx.test"], raw) == {}      # another sender
        path.write_bytes(b'{"version": 1, "blocks": [["alice@sender.test"')           # torn or garbled: fail open
        assert send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw) == {}
        assert "no sender blocked" in milter.log()
    finally:
        path.unlink(missing_ok=True)
    assert send(mx.port, "alice@sender.test", ["agent@agentmx.test"], raw) == {}        # no file: no block
