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


# --- issue 20: one small function per section, each tested on its own (unit) -------------------

from agentmx import config as C  # noqa: E402  (the section functions are the loader's own)
from agentmx.config import Service  # noqa: E402


def section(name: str, table: dict, service: Service = Service.ALL) -> "C._Section":
    return C._Section(P, name, table, service)


def refused(where: str):
    """pytest.raises for a ConfigError whose message starts with the file and then `where`."""
    return pytest.raises(ConfigError, match="^" + re.escape(f"{P}: {where}"))


@pytest.mark.unit
def test_server_section_gives_the_configs_own_keys():
    cfg = C._server(section("server", {"authserv_id": "mx.example.com", "max_streams": 5, "url_ttl": 60}))
    assert (cfg.authserv_id, cfg.mail_host, cfg.url_ttl, cfg.limits.max_streams) == ("mx.example.com",
                                                                                      "mx.example.com", 60, 5)
    assert cfg.routes == () and cfg.dns == C.DnsConfig() and cfg.path == P
    with refused("[server] authserv_id: is required"):
        C._server(section("server", {}))
    with refused("[server] read_timeout: must be a number of seconds > 0"):
        C._server(section("server", {"authserv_id": "mx.example.com", "read_timeout": 0}))


@pytest.mark.unit
def test_dns_worker_and_agent_sections():
    assert C._dns(section("dns", {"servers": ["[::1]:5353"], "cache_size": 0})) == C.DnsConfig(
        servers=(("::1", 5353),), cache_size=0)
    with refused("[dns] cache_size: must be a whole number >= 0"):
        C._dns(section("dns", {"cache_size": -1}))
    assert C._worker(section("worker", {"socket_mode": "0600"})).socket_mode == 0o600
    with refused("[worker] sockt: unknown key"):
        C._worker(section("worker", {"sockt": "/x"}))
    agent = C._agent(section("agent", {"base_url": "http://127.0.0.1:8080/v1/", "model": "m", "api_key": "k"}))
    assert (agent.base_url, agent.model, agent.api_key) == ("http://127.0.0.1:8080/v1", "m", "k")
    with refused("[agent] max_rounds: must be a whole number > 0"):
        C._agent(section("agent", {"max_rounds": 0}))


@pytest.mark.unit
def test_milter_section_with_its_policy():
    m = C._milter(section("milter", {"dmarc": "rfc7489", "processes": 3, "policy": {"reject_dmarc": True}}))
    assert m.dmarc is C.DmarcMode.RFC7489 and m.processes == 3 and m.policy == C.PolicyConfig(reject_dmarc=True)
    with refused('[milter] dmarc: must be "rfc9989" or "rfc7489"'):
        C._milter(section("milter", {"dmarc": 9989}))
    with refused(f"[milter] processes: must be a whole number from 1 to {C.MAX_MILTER_PROCESSES}"):
        C._milter(section("milter", {"processes": C.MAX_MILTER_PROCESSES + 1}))
    with refused("[milter.policy] reject: unknown key"):
        C._milter(section("milter", {"policy": {"reject": True}}))


@pytest.mark.unit
def test_domains_section_over_the_default_policy(tmp_path):
    default = C.PolicyConfig(defer_temperror=True)
    (d,) = C._domains(section("domains", {"A.Example.": {"reject_dmarc": True, "mta_sts": "enforce",
                                                        "tls_rpt": "mailto:tls@a.example"}}), tmp_path, default)
    assert d.name == "a.example" and d.mta_sts is C.MtaStsMode.ENFORCE
    assert d.policy == C.PolicyConfig(reject_dmarc=True, defer_temperror=True)
    assert C._domains(section("domains", {"b.example": {}}), tmp_path, default)[0].mta_sts is None
    with refused('[domains."a.example"] mta_sts: must be "testing" or "enforce"'):
        C._domains(section("domains", {"a.example": {"mta_sts": "on"}}), tmp_path, default)
    with refused("[domains]: must be a table of domain names"):
        parse_config('domains = ["a.example"]\n' + MIN, P)


@pytest.mark.unit
def test_a_domains_keys_are_checked_only_by_the_services_that_sign(tmp_path):
    table = {"a.example": {"dkim_selectors": ["s1"]}}
    with refused("[domains.\"a.example\"] dkim_selectors: no key for selector 's1' in "
                 f"{tmp_path / 'a.example'} (make one: agentmx keygen a.example --selector s1)"):
        C._domains(section("domains", table, Service.MILTER), tmp_path, C.PolicyConfig())
    assert C._domains(section("domains", table, Service.APP), tmp_path, C.PolicyConfig())[0].dkim_selectors == ("s1",)
    (tmp_path / "a.example").mkdir()
    (tmp_path / "a.example" / "s1.rsa.pem").write_text("x")
    assert C._domains(section("domains", table, Service.MILTER), tmp_path, C.PolicyConfig())


def test_a_key_folder_this_user_cannot_read_is_an_error_not_a_skip(tmp_path):
    """Service.MILTER and ALL check the DKIM keys. A user who cannot read the key folder (the
    operator's check run as someone else) is told so, naming the key and the folder: the check is
    never skipped in silence (issue 20). Run as a user without the folder's permission: nobody."""
    import os
    import subprocess
    import sys
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="agentmx-keys-"))
    try:
        top.chmod(0o755)
        (top / "keys" / "a.example").mkdir(parents=True)
        (top / "keys" / "a.example" / "s1.rsa.pem").write_text("x")
        (top / "keys" / "a.example").chmod(0o700 if os.geteuid() == 0 else 0o000)
        text = MIN + f'key_dir = "{top}/keys"\n[domains."a.example"]\ndkim_selectors = ["s1"]\n'
        code = ("import sys\nfrom pathlib import Path\nfrom agentmx.config import ConfigError, Service, parse_config\n"
                f"try:\n    parse_config({text!r}, Path({str(P)!r}), Service.MILTER)\n"
                "except ConfigError as exc:\n    print(exc)\n    sys.exit(3)\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=top, capture_output=True, text=True, timeout=60,
                             user=65534 if os.geteuid() == 0 else None)
        assert out.returncode == 3, out.stderr
        assert out.stdout.strip() == (f'{P}: [domains."a.example"] dkim_selectors: {top}/keys/a.example: not '
                                      "readable by this user (the keys are for the milter's user: docs/operator.md)")
    finally:
        (top / "keys" / "a.example").chmod(0o700)
        import shutil
        shutil.rmtree(top)


ROUTE_TABLE = {"match": "a@example.com", "endpoint": "https://x", "secret": "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"}


@pytest.mark.unit
def test_route_section_loads_its_words_as_enums():
    r = C._route(section("routes[0]", ROUTE_TABLE))
    assert (r.mode, r.action, r.trust, r.attachments, r.ack) == (
        C.RouteMode.PUSH, C.RouteAction.POST, C.TrustPolicy.DELIVER, C.AttachmentMode.URL, C.AckMode.LENIENT)
    assert r.pushes
    r = C._route(section("routes[0]", ROUTE_TABLE | {"mode": "both", "trust": "require-dmarc",
                                                     "attachments": "inline"}))
    assert (r.mode, r.trust, r.attachments) == (C.RouteMode.BOTH, C.TrustPolicy.REQUIRE_DMARC,
                                               C.AttachmentMode.INLINE) and r.pushes
    for key, words in (("mode", '"push" or "pull" or "both"'), ("action", '"post" or "agent"'),
                       ("trust", '"deliver" or "require-dmarc" or "flag"'), ("attachments", '"url" or "inline"')):
        with refused(f"[routes[0]] {key}: must be {words}"):
            C._route(section("routes[0]", ROUTE_TABLE | {key: "Push"}))


@pytest.mark.unit
def test_an_agent_route_is_a_pull_route_with_a_prompt():
    agent = {"match": "a@example.com", "action": "agent", "prompt": "be brief", "sends_per_hour": 3}
    r = C._route(section("routes[0]", agent | {"mode": "push"}))
    assert (r.action, r.mode, r.endpoint, r.secret, r.prompt, r.sends_per_hour) == (
        C.RouteAction.AGENT, C.RouteMode.PULL, None, "", "be brief", 3) and not r.pushes
    with refused('[routes[0]] prompt: is required with action = "agent"'):
        C._route(section("routes[0]", {"match": "a@example.com", "action": "agent"}))
    with refused('[routes[0]] endpoint: is not used with mode = "pull"'):
        C._route(section("routes[0]", agent | {"endpoint": "https://x"}))
    with refused("[routes[0]] prompt: unknown key"):
        C._route(section("routes[0]", ROUTE_TABLE | {"prompt": "only for agents"}))


@pytest.mark.unit
def test_a_pushing_route_needs_its_endpoint_and_secret():
    with refused('[routes[0]] endpoint: is required with mode = "both"'):
        C._route(section("routes[0]", {"match": "a@example.com", "mode": "both"}))
    with refused("[routes[0]] secret: give exactly one of secret or secret_file"):
        C._route(section("routes[0]", {"match": "a@example.com", "endpoint": "https://x"}))
    assert C._route(section("routes[0]", {"match": "a@example.com", "mode": "pull"})).secret == ""


@pytest.mark.unit
def test_send_section():
    s = C._send(section("send", {"bounce_local": "Bounce-Reports", "submit": "127.0.0.1:2525"}))
    assert s.bounce_local == "bounce-reports" and s.submit == C.SubmitTarget(C.SubmitVia.TCP, host="127.0.0.1",
                                                                              port=2525)
    with refused("[send] smtp_host: is replaced by submit"):
        C._send(section("send", {"smtp_host": "127.0.0.1"}))
    with refused("[send] bounce_local: must be a local part"):
        C._send(section("send", {"bounce_local": "a+b"}))


@pytest.mark.unit
def test_api_keys_section(tmp_path):
    key = "k" * 24
    keys = C._api_keys([section("api_keys[0]", {"key": key, "allow": ["@Example.com"]})])
    assert keys == (C.ApiKey(name="key0", key=key, allow=("@example.com",)),)
    with refused("[api_keys[0]] key: give key or key_file (24 characters or more)"):
        C._api_keys([section("api_keys[0]", {"allow": ["@example.com"]})])
    with refused("[api_keys[0]] allow: is required"):
        C._api_keys([section("api_keys[0]", {"key": key})])
    two = [{"key": key, "allow": ["@a.example"]}, {"key": key, "allow": ["@b.example"]}]
    with refused("[[api_keys]]: two keys are the same"):
        C._api_keys([section(f"api_keys[{i}]", t) for i, t in enumerate(two)])
    files = [{"key_file": str(tmp_path / "unread"), "allow": ["@a.example"]}] * 2
    milter = C._api_keys([section(f"api_keys[{i}]", t, Service.MILTER) for i, t in enumerate(files)])
    assert [k.key for k in milter] == ["", ""]            # the milter reads no API key, so compares none


@pytest.mark.unit
def test_signing_and_store_sections():
    s = C._signing(section("signing", {"local_from": ["@a.example"], "sasl": [{"login": "bob", "allow": ["@a.example"]}]}))
    assert s.sasl_allow("bob") == ("@a.example",) and s.local_from == ("@a.example",)
    with refused("[signing.sasl[1]] login: 'bob' is listed twice"):
        C._signing(section("signing", {"sasl": [{"login": "bob", "allow": ["@a.example"]}] * 2}))
    with refused("[signing.sasl[0]] allow: is required"):
        C._signing(section("signing", {"sasl": [{"login": "bob"}]}))
    assert C._store(section("store", {})) == C.StoreConfig()
    with refused('[store] backend: must be "embedded" or "postgres"'):
        C._store(section("store", {"backend": "Postgres"}))
    with refused("[store.s3] bucket: must be an S3 bucket name"):
        C._store(section("store", {"s3": {"bucket": "A"}}))


@pytest.mark.unit
def test_the_one_secret_reader(tmp_path):
    secret = tmp_path / "s"
    secret.write_text("  s3cret-value  \n")
    assert C._secret(section("x", {"t_file": str(secret)}), "t", min_len=1) == "s3cret-value"
    assert C._secret(section("x", {"t_file": str(secret)}, Service.MILTER), "t", min_len=1) == ""
    assert C._secret(section("x", {}), "t", min_len=1) is None
    with refused("[x] t: give t or t_file, not both"):
        C._secret(section("x", {"t": "a", "t_file": str(secret)}), "t", min_len=1)
    with refused("[x] t: say it"):
        C._secret(section("x", {}), "t", min_len=1, required="say it")
    with refused("[x] t_file: must be at least 20 characters"):
        C._secret(section("x", {"t_file": str(secret)}), "t", min_len=20)
    with refused(f"[x] t_file: must be a whsec_ secret (in {secret})"):
        C._secret(section("x", {"t_file": str(secret)}), "t", min_len=1, whsec=True)
    assert "s3cret" not in str(pytest.raises(ConfigError, C._secret, section("x", {"t_file": str(secret)}),
                                             "t", min_len=1, whsec=True).value)


@pytest.mark.unit
def test_rules_across_sections_name_the_section_they_ask_to_change():
    agent_route = '[[routes]]\nmatch = "a@example.com"\naction = "agent"\nprompt = "p"\n'
    with refused('[agent] base_url: is required when a route has action = "agent"'):
        parse_config(MIN + 'url_secret = "0123456789abcdef"\n' + agent_route, P)
    with refused("[server] url_secret: is required with routes"):
        parse_config(MIN + agent_route + '[agent]\nbase_url = "http://127.0.0.1:1/v1"\nmodel = "m"\n', P)
    ok = parse_config(MIN + 'url_secret_file = "/nonexistent"\n' + agent_route
                      + '[agent]\nbase_url = "http://127.0.0.1:1/v1"\nmodel = "m"\n', P, Service.MILTER)
    assert ok.url_secret == "" and ok.routes[0].action is C.RouteAction.AGENT   # given, not this service's to read
    with refused("[send] bounce_local: bounces@ is where delivery reports"):
        parse_config(MIN + 'url_secret = "0123456789abcdef"\n[[routes]]\nmatch = "bounces@example.com"\nmode = "pull"\n', P)


# Every str field of the config's dataclasses is free text (a name, an address, a URL, a secret, a
# path-like value): a word from a fixed set is a Choice (an enum) instead, loaded by _Section.choice.
FREE_TEXT = {
    "Config": {"authserv_id", "public_url", "metrics_token", "admin_key", "url_secret", "mail_host"},
    "MilterConfig": {"rspamd_url"},
    "DomainConfig": {"name", "tls_rpt"},
    "Route": {"match", "endpoint", "secret", "prompt"},
    "ApiKey": {"name", "key"},
    "SubmitTarget": {"host"},
    "SendConfig": {"bounce_local"},
    "SaslSigner": {"login"},
    "SigningConfig": {"api_service"},
    "AgentConfig": {"base_url", "model", "api_key"},
    "S3Config": {"endpoint", "bucket", "region", "access_key", "secret_key", "prefix"},
    "StoreConfig": {"database_url"},
}


@pytest.mark.unit
def test_every_word_from_a_fixed_set_in_the_config_is_an_enum():
    import enum
    import types
    import typing
    classes = [c for c in vars(C).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
               and c.__module__ == C.__name__]
    assert len(classes) >= 15
    strings, choices = {}, set()
    for cls in classes:
        for name, hint in typing.get_type_hints(cls).items():
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            kinds = set(typing.get_args(hint)) if union else {hint}       # X | None: X
            if str in kinds:
                strings.setdefault(cls.__name__, set()).add(name)
            if any(isinstance(k, type) and issubclass(k, enum.Enum) for k in kinds):
                assert any(isinstance(k, type) and issubclass(k, C.Choice) for k in kinds), (cls, name)
                choices.add(f"{cls.__name__}.{name}")
    assert strings == FREE_TEXT, "a new str field: free text (add it above) or a Choice enum"
    assert {"Route.mode", "Route.action", "Route.trust", "Route.attachments", "Route.ack", "DomainConfig.mta_sts",
            "MilterConfig.dmarc", "StoreConfig.backend", "SubmitTarget.via"} <= choices
    assert str(C.TrustPolicy.REQUIRE_DMARC) == "require-dmarc"      # the word as the file spells it
