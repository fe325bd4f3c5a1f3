"""The configuration loader: every error names the file and the key; the example file loads."""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest

from conftest import ROOT

from agentmx.config import ConfigError, load_config, parse_config

P = Path("/etc/agentmx/agentmx.toml")
MIN = '[server]\nauthserv_id = "mx.example.com"\n'


def test_example_config_loads_with_every_section():
    cfg = load_config(ROOT / "config" / "agentmx.toml")
    assert cfg.authserv_id == "mx.example.com"
    assert cfg.dns.timeout > 0 and cfg.dns.lookup_budget > 0
    assert cfg.milter.policy.records_only
    assert cfg.routes and cfg.domains


def test_minimal_config_has_safe_defaults():
    cfg = parse_config(MIN, P)
    assert cfg.milter.policy.records_only           # never rejects unless asked
    assert cfg.milter.is_trusted("127.0.0.1") and not cfg.milter.is_trusted("192.0.2.1")
    assert cfg.dns.servers == ()


def test_config_is_frozen():
    cfg = parse_config(MIN, P)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.authserv_id = "x"


@pytest.mark.parametrize("text,where", [
    ("", "[server] authserv_id: is required"),
    (MIN + "[dns]\ntimeout = 0\n", "[dns] timeout: must be a number > 0"),
    (MIN + "[dns]\ntimout = 2\n", "[dns] timout: unknown key"),
    (MIN + "[dns]\nservers = [\"nonsense\"]\n", "[dns] servers: must be"),
    (MIN + "[milter]\ntrusted_networks = [\"10.0.0.0/33\"]\n", "[milter] trusted_networks: must be"),
    (MIN + "[milter.policy]\nreject_dmarc = \"yes\"\n", "[milter.policy] reject_dmarc: must be true or false"),
    (MIN + "[milter.policy]\nreject_everything = true\n", "[milter.policy] reject_everything: unknown key"),
    (MIN + "[domains.\"a.example\"]\nreject_dmarc = 1\n", '[domains."a.example"] reject_dmarc: must be true or false'),
    (MIN + "bogus = 1\n", "[server] bogus: unknown key"),
    (MIN + "[[routes]]\nmatch = \"agent@example.com\"\n", "[routes[0]] endpoint: is required"),
    (MIN + "[[routes]]\nmatch = \"a+b@example.com\"\nendpoint = \"https://x\"\nsecret = \"whsec_abcdefghijkl\"\n",
     "[routes[0]] match: must be"),
    (MIN + "[[routes]]\nmatch = \"a@example.com\"\nendpoint = \"https://x\"\nsecret = \"plain\"\n",
     "[routes[0]] secret: must be a whsec_ secret"),
    (MIN + "[[routes]]\nmatch = \"a@example.com\"\nendpoint = \"https://x\"\nsecret_file = \"/nonexistent\"\n",
     "[routes[0]] secret_file: /nonexistent: cannot be read"),
    ("[server\n", "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(text, where):
    with pytest.raises(ConfigError) as exc:
        parse_config(text, P)
    assert str(exc.value).startswith(f"{P}: ") and where in str(exc.value)


ROUTE = MIN + 'url_secret = "0123456789abcdef"\n[[routes]]\nmatch = "a@example.com"\nendpoint = "https://x"\n'


@pytest.mark.parametrize("secret,why", [
    ("whsec_not-base64-at-all!!", "not strict base64"),                 # '-' and '!' are not base64
    ("whsec_c2VjcmV0 c2VjcmV0c2VjcmV0", "not strict base64"),           # no whitespace inside
    ("whsec_c2VjcmV0c2VjcmV0c2VjcmV", "not strict base64"),             # not padded
    ("whsec_c2VjcmV0", "fewer than 16"),                                # a 6-byte key
])
def test_a_route_secret_that_is_not_strict_base64_is_refused_at_load(tmp_path, secret, why):
    """The issue: such a secret passed check-config, then every delivery failed (webhook.key_of
    raised at signing): the message never reached the agent and piled up in Postfix's queue."""
    with pytest.raises(ConfigError) as exc:
        parse_config(ROUTE + f'secret = "{secret}"\n', P)
    assert str(exc.value).startswith(f"{P}: [routes[0]] secret: must be a whsec_ secret") and why in str(exc.value)
    assert secret.strip() not in str(exc.value)                          # the secret is never quoted
    path = tmp_path / "webhook.secret"
    path.write_text(secret + "\n")
    with pytest.raises(ConfigError, match=rf"\[routes\[0\]\] secret_file: must be a whsec_ secret \(in {path}\)"):
        parse_config(ROUTE + f'secret_file = "{path}"\n', P)


def test_route_mailkite_signature_is_on_by_default_and_ack_is_an_enum():
    from agentmx.config import AckMode
    good = ROUTE + 'secret = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"\n'
    route = parse_config(good, P).routes[0]
    assert route.mailkite_signature is True and route.ack is AckMode.LENIENT
    off = parse_config(good + 'mailkite_signature = false\nack = "control"\n', P).routes[0]
    assert off.mailkite_signature is False and off.ack is AckMode.CONTROL
    with pytest.raises(ConfigError, match=r'\[routes\[0\]\] ack: must be "lenient" or "ack" or "control"'):
        parse_config(good + 'ack = "strict"\n', P)


def test_unknown_top_level_table():
    with pytest.raises(ConfigError, match=r"\[top level\] mystery: unknown key"):
        parse_config(MIN + "[mystery]\n", P)


def test_secret_never_in_repr(tmp_path):
    secret_file = tmp_path / "s"
    secret_file.write_text("whsec_c2VjcmV0c2VjcmV0c2VjcmV0\n")
    cfg = parse_config(MIN + f'url_secret = "0123456789abcdef"\n[[routes]]\nmatch = "@example.com"\nendpoint = "https://x"\nsecret_file = "{secret_file}"\n', P)
    assert cfg.routes[0].secret == "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"
    assert "whsec_" not in repr(cfg)


def test_per_domain_policy_falls_back_to_global():
    cfg = parse_config(MIN + "[milter.policy]\ndefer_temperror = true\n[domains.\"Strict.Example\"]\nreject_dmarc = true\n", P)
    strict = cfg.policy_for("strict.example")
    assert strict.reject_dmarc and strict.defer_temperror      # inherits the global settings
    assert not cfg.policy_for("other.example").reject_dmarc


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match="/nonexistent.toml: cannot be read"):
        load_config("/nonexistent.toml")


def test_dns_server_forms():
    cfg = parse_config(MIN + '[dns]\nservers = ["127.0.0.1:5353", "192.0.2.1", "[::1]:53"]\n', P)
    assert cfg.dns.servers == (("127.0.0.1", 5353), ("192.0.2.1", 53), ("::1", 53))
    assert ipaddress.ip_network("::1/128") in parse_config(MIN, P).milter.trusted_networks


def test_each_service_reads_only_its_own_secrets(tmp_path):
    """The milter never opens the application's secret files (it could not: they are user
    agentmx's, 0400); deliver, serve and the agent never look for the DKIM keys (group
    agentmx-milter's); the operator's check reads everything."""
    from agentmx.config import Service
    text = (MIN + f'url_secret_file = "{tmp_path}/no-url.secret"\nkey_dir = "{tmp_path}/keys"\n'
            f'[domains."example.com"]\ndkim_selectors = ["s1"]\n'
            f'[[routes]]\nmatch = "@example.com"\nendpoint = "https://x"\nsecret_file = "{tmp_path}/no-webhook.secret"\n'
            f'[[api_keys]]\nkey_file = "{tmp_path}/no-api.key"\nallow = ["@example.com"]\n')
    with pytest.raises(ConfigError, match="no-url.secret|no-webhook.secret|no-api.key|no key for selector"):
        parse_config(text, P)
    with pytest.raises(ConfigError, match="no key for selector 's1'"):
        parse_config(text, P, Service.MILTER)              # the keys are the milter's to check
    with pytest.raises(ConfigError, match="url_secret_file: .*no-url.secret: cannot be read"):
        parse_config(text, P, Service.APP)                 # the secrets are the application's
    (tmp_path / "keys" / "example.com").mkdir(parents=True)
    (tmp_path / "keys" / "example.com" / "s1.ed25519").write_text("x")
    milter = parse_config(text, P, Service.MILTER)
    assert milter.url_secret == "" and milter.routes[0].secret == "" and milter.api_keys[0].key == ""
    for name in ("no-url.secret", "no-webhook.secret", "no-api.key"):
        (tmp_path / name).write_text({"no-url.secret": "u" * 20, "no-api.key": "k" * 30}.get(
            name, "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"))
    app = parse_config(text.replace("s1", "not-there"), P, Service.APP)   # APP never looks at key files
    assert app.routes[0].secret.startswith("whsec_") and app.api_keys[0].key == "k" * 30


def test_listen_forms():
    assert parse_config(MIN + 'listen = "[::1]:8025"\n', P).listen == ("::1", 8025)
    assert parse_config(MIN + 'listen = "0.0.0.0:0"\n', P).listen == ("0.0.0.0", 0)
    for bad in ("::1:8025", "[127.0.0.1]:80", "[::1:80", "127.0.0.1:99999", "127.0.0.1:x"):
        with pytest.raises(ConfigError, match=r"\[server\] listen"):
            parse_config(MIN + f'listen = "{bad}"\n', P)


def test_the_store_section(tmp_path):
    from agentmx.config import Service, StoreBackend
    assert parse_config(MIN, P).store.backend is StoreBackend.EMBEDDED
    with pytest.raises(ConfigError, match=r'\[store\] backend: must be "embedded" or "postgres"'):
        parse_config(MIN + '[store]\nbackend = "mysql"\n', P)
    with pytest.raises(ConfigError, match=r"\[store\] database_url: is required"):
        parse_config(MIN + '[store]\nbackend = "postgres"\n', P)
    url = tmp_path / "db.url"
    url.write_text("postgresql://agentmx:pw@127.0.0.1:5432/agentmx\n")
    pg = MIN + f'[store]\nbackend = "postgres"\ndatabase_url_file = "{url}"\n'
    with pytest.raises(ConfigError, match=r"\[store.s3\] endpoint: is required"):
        parse_config(pg, P)
    full = pg + ('[store.s3]\nendpoint = "http://127.0.0.1:8333"\nbucket = "agentmx-test"\n'
                 f'access_key = "ak"\nsecret_key_file = "{tmp_path}/nope"\n')
    with pytest.raises(ConfigError, match=r"\[store.s3\] secret_key_file: .*nope: cannot be read"):
        parse_config(full, P, Service.APP)
    milter = parse_config(full, P, Service.MILTER)          # the milter reads none of the store's secrets
    assert milter.store.backend is StoreBackend.POSTGRES and milter.store.database_url == ""
    (tmp_path / "nope").write_text("sk\n")
    cfg = parse_config(full, P, Service.APP)
    assert cfg.store.database_url.startswith("postgresql://") and cfg.store.s3.secret_key == "sk"
    assert "pw" not in repr(cfg) and "sk" not in repr(cfg.store)
    assert cfg.store.s3.prefix == ""
    assert parse_config(full.replace("[store.s3]\n", '[store.s3]\nprefix = "mx/a/"\n'), P).store.s3.prefix == "mx/a/"
    for bad in ("mx", "/mx/", "../", "a b/"):
        with pytest.raises(ConfigError, match=r"\[store.s3\] prefix: must be a key prefix"):
            parse_config(full.replace("[store.s3]\n", f'[store.s3]\nprefix = "{bad}"\n'), P)


@pytest.mark.parametrize("text,where", [
    ('[send]\nfetch_allow_networks = ["nonsense"]\n', "[send] fetch_allow_networks: must be a list of networks"),
    ("[send]\nfetch_allow_http = 1\n", "[send] fetch_allow_http: must be true or false"),
    ("[send]\nmax_schedule_days = 400\n", "[send] max_schedule_days: must be a whole number of days, 1 to 365"),
    ("[send]\nmax_upload_bytes = 0\n", "[send] max_upload_bytes: must be"),
    ("[send]\nfetch_timeout = -1\n", "[send] fetch_timeout: must be"),
])
def test_send_fetch_and_schedule_keys_are_checked(text, where):
    with pytest.raises(ConfigError, match=re.escape(f"{P}: {where}")):
        parse_config(MIN + text, P)


def test_fetch_is_closed_by_default_and_opened_by_the_operator():
    s = parse_config(MIN, P).send
    assert (s.fetch_allow_http, s.fetch_allow_networks, s.max_schedule_days) == (False, (), 30)
    s = parse_config(MIN + '[send]\nfetch_allow_networks = ["127.0.0.0/8"]\nfetch_allow_http = true\n', P).send
    assert s.fetch_allow_http and s.fetch_allow_networks == (ipaddress.ip_network("127.0.0.0/8"),)


def test_a_plus_address_is_allowed_by_its_base_address_only():
    from agentmx.config import allows
    assert allows(("agent@example.com",), "Agent+Orders@Example.com")
    assert allows(("@example.com",), "x+y@example.com")
    assert not allows(("agent@example.com",), "agent2+x@example.com")
    assert not allows(("agent@example.com",), "other+agent@example.com")
    assert not allows(("agent+a@example.com",), "agent+b@example.com")


def test_milter_dmarc_mode_is_an_enum_defaulting_to_rfc9989():
    from agentmx.config import DmarcMode
    assert parse_config(MIN, P).milter.dmarc is DmarcMode.RFC9989
    assert parse_config(MIN + '[milter]\ndmarc = "rfc7489"\n', P).milter.dmarc is DmarcMode.RFC7489
    with pytest.raises(ConfigError, match=r'\[milter\] dmarc: must be "rfc9989" or "rfc7489"'):
        parse_config(MIN + '[milter]\ndmarc = "dmarcbis"\n', P)


@pytest.mark.unit
def test_the_console_admin_key_is_a_secret_of_its_own():
    key = "console-key-0123456789abcdef"
    ok = parse_config(MIN + f'admin_key = "{"a" * 24}"\n', Path("c.toml"))
    assert ok.admin_key == "a" * 24 and "a" * 24 not in repr(ok)
    with pytest.raises(ConfigError, match=r"\[server\] admin_key: must be at least 24 characters"):
        parse_config(MIN + 'admin_key = "short"\n', Path("c.toml"))
    with pytest.raises(ConfigError, match=r"\[server\] admin_key: the same as an \[\[api_keys\]\] key"):
        parse_config(MIN + f'admin_key = "{key}"\n[[api_keys]]\nname = "a"\nkey = "{key}"\nallow = ["@x.test"]\n',
                     Path("c.toml"))
