"""agentmx/fromheader.py: which From fields a message has and which domains they name, for every
way an attacker can write them (issue 13, item 10). The milter, `agentmx auth` and deliver all
read the sender here, so one reading holds for DMARC, DKIM signing and the event."""
from __future__ import annotations

import time

import pytest

from agentmx import fromheader as fh

pytestmark = pytest.mark.unit


def domains_of(raw: bytes) -> tuple[int, tuple[str, ...], str]:
    who = fh.authors(fh.from_values(raw))
    return who.fields, who.domains, who.problem


def msg(head: bytes) -> bytes:
    return head + b"To: agent@agentmx.test\r\nSubject: x\r\n\r\nFrom: body@body.example\r\n"


# --- the fields -----------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"From: a@passing.example\r\nFrom : victim@bank.example\r\n",        # obs-from, RFC 5322 4.5.1
    b"From: a@passing.example\r\nFrom\t :victim@bank.example\r\n",
    b"From : victim@bank.example\r\nFrom: a@passing.example\r\n",        # on the first line too
    b"From: a@passing.example\r\nFROM: victim@bank.example\r\n",
    b"From: a@passing.example\r\nfrom:victim@bank.example\r\n",
    b"From: a@passing.example\nX-A: b\nFrom  : victim@bank.example\n",   # LF line ends
    b"From: a@passing.example\rFrom: victim@bank.example\r\n",           # a bare CR: a line end for the stdlib
])
def test_every_from_field_counts_in_any_syntax(head):
    fields, domains, problem = domains_of(msg(head))
    assert fields >= 2 and set(domains) == {"passing.example", "bank.example"}
    assert problem.startswith(f"{fields} From header fields")


def test_stdlib_parser_drops_the_obsolete_field_we_do_not():
    """What the milter used before: compat32 takes `From :` for an mbox From_ line."""
    from email.parser import BytesHeaderParser
    from email.policy import compat32
    raw = msg(b"From: a@passing.example\r\nFrom : victim@bank.example\r\n")
    assert BytesHeaderParser(policy=compat32).parsebytes(raw).get_all("From") == ["a@passing.example"]
    assert fh.from_values(raw) == [" a@passing.example", " victim@bank.example"]


@pytest.mark.parametrize("head,expected", [
    (b"From: a@passing.example,\r\n victim@bank.example\r\n", ("passing.example", "bank.example")),   # folded
    (b"From: a@passing.example\r\n   \r\n victim@bank.example\r\n", ("passing.example", "bank.example")),
    (b"From: a@passing.example\x00victim@bank.example\r\n", ("passing.example",)),   # Postfix cuts at the NUL
    (b"From victim@bank.example Mon Jan  1 00:00:00 2024\r\nFrom: a@passing.example\r\n", ("passing.example",)),
    (b"   \r\nFrom: a@passing.example\r\n", ("passing.example",)),
    (b"X-Foo: bar\r\nno field here\r\nFrom: victim@bank.example\r\n", ()),   # Postfix: the body starts there
    (b"Fr\xc3\xb6m: victim@bank.example\r\nFrom: a@passing.example\r\n", ()),
])
def test_header_block_is_read_as_postfix_reads_it(head, expected):
    assert domains_of(msg(head))[1] == expected


def test_body_and_other_fields_never_count():
    raw = b"Reply-To: victim@bank.example\r\nSender: victim@bank.example\r\nResent-From: v@bank.example\r\n" \
          b"X-From: v@bank.example\r\nFrom: a@passing.example\r\n\r\nFrom: victim@bank.example\r\n"
    assert domains_of(raw) == (1, ("passing.example",), "")


def test_bare_cr_is_read_both_ways():
    """Postfix turns a bare CR into a space (seen on 3.7); the stdlib breaks the line there.
    Both readings count, so neither can hide a domain."""
    fields, domains, _ = domains_of(msg(b"From: a@passing.example,\rX: victim@bank.example\r\n"))
    assert fields == 2 and domains == ("passing.example", "bank.example")


# --- the mailboxes of one field ----------------------------------------------------------------------

@pytest.mark.parametrize("value,domains", [
    ('a@passing.example', ["passing.example"]),
    ('"victim@bank.example" <a@passing.example>', ["passing.example"]),     # a name is no address
    ('victim@bank.example <a@passing.example>', ["passing.example"]),
    ('=?utf-8?q?victim=40bank.example?= <a@passing.example>', ["passing.example"]),
    ('a@passing.example (victim@bank.example)', ["passing.example"]),        # comments never count
    ('a@passing.example (x (victim@bank.example) y)', ["passing.example"]),
    ('a@passing.example, victim@bank.example', ["passing.example", "bank.example"]),
    ('a@passing.example victim@bank.example', ["passing.example", "bank.example"]),   # no comma
    ('Staff: a@passing.example, victim@bank.example;', ["passing.example", "bank.example"]),
    ('victim@bank.example From: a@passing.example', ["bank.example", "passing.example"]),  # a group name with an @
    ('alice@passing.example)<bob@bank.example>', ["bank.example"]),          # CVE-2023-27043's shape
    ('Bob <a@passing.example> Eve <victim@bank.example>', ["passing.example", "bank.example"]),
    ('<a@passing.example> victim@bank.example', ["passing.example", "bank.example"]),
    ('Bob <a@passing.example, victim@bank.example', ["passing.example", "bank.example"]),  # never closed
    ('"never closed <victim@bank.example>', ["bank.example"]),
    ('a@passing.example (never closed victim@bank.example', ["passing.example", "bank.example"]),
    ('<@relay.example,@hop.example:a@passing.example>', ["passing.example"]),   # obs-route
    ('<victim@bank.example:a@passing.example>', ["bank.example", "passing.example"]),
    ('Bank <@bank.example>', ["bank.example"]),
    ('a @ passing . example', ["passing.example"]),                          # obs CFWS
    ('a@PASSING.Example.', ["passing.example"]),
    ('a@b\u00e4nk.example', ["xn--bnk-qla.example"]),                        # U-label to A-label
    ('undisclosed-recipients:;', []),
    ('Bank Support', []),
    ('<>', []),
])
def test_mailbox_domains(value, domains):
    assert [m.domain for m in fh.mailboxes(value) if m.domain] == domains


@pytest.mark.parametrize("value", ['a@[192.0.2.1]', 'a@b\udcffnk.example', 'a@bank_example!.com', 'a@-bank.example'])
def test_a_domain_that_is_no_domain_name_is_unusable(value):
    who = fh.authors([value])
    assert who.domains == () and who.unusable and who.problem.startswith("From has a domain that is no domain name")
    assert fh.authors([f"x@passing.example, {value}"]).single_domain is None


def test_names_and_addresses_for_the_event():
    (m,) = fh.mailboxes('=?utf-8?q?J=C3=B6rg?= "the" Smith <j@x.example>')
    assert (m.address, m.name) == ("j@x.example", "Jörg the Smith")
    (m,) = fh.mailboxes('J. Smith <j@x.example>')
    assert m.name == "J. Smith"
    (m,) = fh.mailboxes('Big Bug bb@bug.com')
    assert m.address == '"Big Bug bb"@bug.com'
    (m,) = fh.mailboxes('Moderator <moderator>')
    assert (m.address, m.name, m.domain) == ("moderator", "Moderator", "")
    (m,) = fh.mailboxes('Caf\udce9 <c@x.example>')                          # 8-bit, not UTF-8: windows-1252
    assert m.name == "Café"


@pytest.mark.parametrize("values,problem,single", [
    ([], "no From header", None),
    (["a@x.example"], "", "x.example"),
    (["a@x.example, b@x.example"], "", "x.example"),
    (["a@x.example, MAILER-DAEMON"], "", "x.example"),
    (["a@x.example", "b@x.example"], "2 From header fields (x.example)", None),
    (["a@x.example, b@y.example"], "From has addresses in several domains (x.example, y.example)", None),
    (["undisclosed-recipients:;"], "From has no usable domain", None),
])
def test_problem_and_single_domain(values, problem, single):
    who = fh.authors(values)
    assert (who.problem, who.single_domain) == (problem, single)


# --- bounds ---------------------------------------------------------------------------------------

def test_many_fields_are_counted_but_only_some_read():
    raw = b"".join(b"From: u@d%d.example\r\n" % i for i in range(2000)) + b"\r\n"
    who = fh.authors(fh.from_values(raw))
    assert who.fields == 2000 and who.incomplete and len(who.domains) == fh.MAX_FIELDS


def test_a_long_field_is_read_up_to_the_bound():
    who = fh.authors(["a@x.example, " + "b" * (fh.MAX_CHARS + 10) + "@bank.example"])
    assert who.incomplete and who.problem == "From header too long to read in full" and who.single_domain is None


@pytest.mark.parametrize("value", ['"\\"' * 50000, "(" * 100000, "[\\]" * 40000, "<" * 100000, "@" * 100000,
                                   '"(<[' * 25000, "a@" + "b." * 50000, "(\\" * 50000])
def test_hostile_values_cost_little(value):
    started = time.process_time()
    fh.authors([value])
    assert time.process_time() - started < 1.0


def test_the_problem_names_ten_domains_at_most():
    who = fh.authors([", ".join(f"u@d{i}.example" for i in range(30))])
    assert who.problem.endswith("d9.example and 20 more)")


def test_text_to_show_never_holds_lone_surrogates():
    """Found by fuzzing (tests/fuzz/regressions/event-from-8bit-address): an 8-bit byte that is no
    UTF-8 in the address reached the event as a lone surrogate, which JSON cannot carry."""
    (m,) = fh.mailboxes("Caf\udce9 <postmaster@\udcffxample.com>")
    assert (m.address, m.name, m.domain, m.domain_text) == ("postmaster@ÿxample.com", "Café", "", "ÿxample.com")
    (m,) = fh.mailboxes("b\udcffre")
    assert m.address == "bÿre"
    assert fh.authors(["x@\udcffxample.com"]).problem == "From has a domain that is no domain name (ÿxample.com)"
