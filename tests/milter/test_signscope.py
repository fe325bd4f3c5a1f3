"""Whose mail the milter signs (milter/signscope.py), as pure functions: who submitted, what they
may send as, sign or not and why. And the [signing] and [send] configuration behind it."""
from __future__ import annotations

from pathlib import Path

import pytest

from agentmx.config import ConfigError, SubmitVia, parse_config
from agentmx.milter.signscope import Client, Submitter, decide, single_from, submitter

pytestmark = pytest.mark.unit

P = Path("/etc/agentmx/agentmx.toml")
MIN = '[server]\nauthserv_id = "mx.example.com"\nurl_secret = "0123456789abcdef"\n'
CONFIG = parse_config(MIN + """
[milter]
trusted_networks = ["127.0.0.0/8", "192.0.2.0/24"]
[[api_keys]]
name = "agent"
key = "amx_0123456789abcdef01234567"
allow = ["agent@api.example", "@apidomain.example"]
[[routes]]
match = "@bot.example"
action = "agent"
prompt = "Be brief."
[agent]
base_url = "http://127.0.0.1:9/v1"
model = "m"
[signing]
local_from = ["noreply@a.example", "@cron.example"]
[[signing.sasl]]
login = "alice"
allow = ["alice@a.example", "@b.example"]
""", P)
KEYED = {"a.example", "b.example", "api.example", "apidomain.example", "bot.example", "cron.example", "c.example"}


def client(inet=True, ip="198.51.100.7", daemon_name="mx.example.com", login=""):
    return Client(inet=inet, ip=ip, daemon_name=daemon_name, login=login)


@pytest.mark.parametrize("c,expected", [
    (client(), Submitter.OUTSIDE),
    (client(ip="192.0.2.9"), Submitter.TRUSTED),
    (client(ip="127.0.0.1"), Submitter.TRUSTED),
    (client(inet=False, ip="127.0.0.1"), Submitter.LOCAL),                       # sendmail/pickup, unix smtpd
    (client(inet=False, ip="127.0.0.1", daemon_name="agentmx-api"), Submitter.API),
    (client(login="alice"), Submitter.SASL),                                     # a login from anywhere
    (client(inet=False, daemon_name="agentmx-api", login="alice"), Submitter.SASL),  # the login decides
    (client(daemon_name=""), Submitter.OUTSIDE),
])
def test_who_submitted(c, expected):
    assert submitter(c, CONFIG) is expected


def from_(value: str) -> list[str]:
    return [value]


@pytest.mark.parametrize("who,login,from_values,sign,domain,reason", [
    # SASL: its own entry only
    (Submitter.SASL, "alice", from_("Alice <alice@a.example>"), True, "a.example", "may send as alice@a.example"),
    (Submitter.SASL, "alice", from_("boss@B.Example"), True, "b.example", "may send as boss@b.example"),
    (Submitter.SASL, "alice", from_("ceo@c.example"), False, "c.example",
     "SASL login 'alice' may not send as ceo@c.example (allowed: alice@a.example, @b.example)"),
    (Submitter.SASL, "alice", from_("bob@a.example"), False, "a.example", "may not send as bob@a.example"),
    (Submitter.SASL, "Alice", from_("alice@a.example"), False, "a.example",
     "SASL login 'Alice' has no [[signing.sasl]] entry"),
    (Submitter.SASL, "bob", from_("alice@a.example"), False, "a.example", "has no [[signing.sasl]] entry"),
    # the send API: any API key's allow, any agent route's match
    (Submitter.API, "", from_("agent@api.example"), True, "api.example", "the send API"),
    (Submitter.API, "", from_("x@apidomain.example"), True, "apidomain.example", "may send as x@apidomain.example"),
    (Submitter.API, "", from_("support@bot.example"), True, "bot.example", "may send as support@bot.example"),
    (Submitter.API, "", from_("alice@a.example"), False, "a.example", "the send API (service agentmx-api) may not"),
    # local submission and trusted networks: local_from
    (Submitter.LOCAL, "", from_("noreply@a.example"), True, "a.example", "local submission may send as"),
    (Submitter.LOCAL, "", from_("root@cron.example"), True, "cron.example", "may send as root@cron.example"),
    (Submitter.LOCAL, "", from_("alice@a.example"), False, "a.example", "local submission may not send as alice@a.example"),
    (Submitter.TRUSTED, "", from_("noreply@a.example"), True, "a.example", "a trusted_networks client may send"),
    (Submitter.TRUSTED, "", from_("agent@api.example"), False, "api.example", "may not send as agent@api.example"),
    # outside: never
    (Submitter.OUTSIDE, "", from_("noreply@a.example"), False, None, "an outside client"),
    # exactly one From address
    (Submitter.SASL, "alice", [], False, None, "not exactly one From address (0 From field(s))"),
    (Submitter.SASL, "alice", ["alice@a.example", "alice@a.example"], False, None, "not exactly one From address"),
    (Submitter.SASL, "alice", from_("alice@a.example, boss@b.example"), False, None, "not exactly one From address"),
    (Submitter.SASL, "alice", from_("alice@a.example, alice@a.example"), False, None, "not exactly one From address"),
    (Submitter.SASL, "alice", from_("undisclosed-recipients:;"), False, None, "not exactly one From address"),
    (Submitter.SASL, "alice", from_("alice"), False, None, "not exactly one From address"),
    # allowed but no key
    (Submitter.LOCAL, "", from_("noreply@cron.example"), True, "cron.example", "may send as"),
])
def test_decide(who, login, from_values, sign, domain, reason):
    d = decide(who, login, from_values, CONFIG, KEYED)
    assert (d.sign, d.domain) == (sign, domain) and reason in d.reason, d


def test_an_allowed_address_without_a_key_is_not_signed():
    d = decide(Submitter.LOCAL, "", ["x@cron.example"], CONFIG, {"a.example"})
    assert (d.sign, d.reason) == (False, "no DKIM key for cron.example")


def test_the_display_name_is_not_the_address():
    d = decide(Submitter.SASL, "alice", ['"alice@a.example" <ceo@c.example>'], CONFIG, KEYED)
    assert not d.sign and "may not send as ceo@c.example" in d.reason


def test_single_from():
    assert single_from(["Alice <Alice@A.Example.>"]) == "alice@a.example"
    assert single_from(["a@x.example", "b@x.example"]) is None
    assert single_from(["@x.example"]) is None


def test_nothing_is_signed_by_default():
    cfg = parse_config(MIN, P)
    assert cfg.signing.local_from == () and cfg.signing.sasl == () and cfg.signing.api_service == "agentmx-api"
    assert not decide(Submitter.LOCAL, "", ["root@a.example"], cfg, KEYED).sign
    assert cfg.send.submit.via is SubmitVia.UNIX
    assert str(cfg.send.submit) == "unix:/var/spool/postfix/public/agentmx-submit"


def test_submit_forms():
    tcp = parse_config(MIN + '[send]\nsubmit = "127.0.0.1:10587"\n', P).send.submit
    assert (tcp.via, tcp.host, tcp.port) == (SubmitVia.TCP, "127.0.0.1", 10587)
    unix = parse_config(MIN + '[send]\nsubmit = "unix:/srv/pf/public/agentmx-submit"\n', P).send.submit
    assert (unix.via, str(unix.path)) == (SubmitVia.UNIX, "/srv/pf/public/agentmx-submit")


@pytest.mark.parametrize("text,where", [
    ('[send]\nsmtp_port = 25\n', "[send] smtp_port: is replaced by submit"),
    ('[send]\nsmtp_host = "127.0.0.1"\n', "[send] smtp_host: is replaced by submit"),
    ('[send]\nsubmit = "unix:relative/sock"\n', "[send] submit: must be"),
    ('[send]\nsubmit = "mail.example.com"\n', "[send] submit: must be"),
    ('[signing]\nlocal_from = ["a+b@example.com"]\n', "[signing] local_from: must be"),
    ('[signing]\nlocal_from = "@example.com"\n', "[signing] local_from: must be"),
    ('[signing]\napi_service = "two words"\n', "[signing] api_service: must be a Postfix service name"),
    ('[signing]\nsurprise = 1\n', "[signing] surprise: unknown key"),
    ('[signing]\nsasl = 1\n', "[signing] sasl: must be an array of tables"),
    ('[[signing.sasl]]\nallow = ["a@example.com"]\n', "[signing.sasl[0]] login: is required"),
    ('[[signing.sasl]]\nlogin = "alice"\n', "[signing.sasl[0]] allow: is required"),
    ('[[signing.sasl]]\nlogin = "alice"\nallow = []\n', "[signing.sasl[0]] allow: must be a non-empty list"),
    ('[[signing.sasl]]\nlogin = " alice"\nallow = ["a@example.com"]\n', "[signing.sasl[0]] login: must be"),
    ('[[signing.sasl]]\nlogin = "alice"\nallow = ["a@example.com"]\nextra = 1\n', "[signing.sasl[0]] extra: unknown key"),
    ('[[signing.sasl]]\nlogin = "alice"\nallow = ["a@example.com"]\n[[signing.sasl]]\nlogin = "alice"\nallow = ["b@example.com"]\n',
     "[signing.sasl[1]] login: 'alice' is listed twice"),
])
def test_config_errors_name_the_file_and_the_key(text, where):
    with pytest.raises(ConfigError) as exc:
        parse_config(MIN + text, P)
    assert str(exc.value).startswith(f"{P}: ") and where in str(exc.value), str(exc.value)
