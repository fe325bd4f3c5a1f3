"""The configuration: one TOML file, loaded once into a frozen, validated object.

Every key is documented in config/agentmx.toml. An unknown key or a bad value raises ConfigError,
whose message names the file and the key (``agentmx.toml: [dns] timeout: must be a number > 0``),
so that a service refuses to start rather than run with a setting it misread.
"""
from __future__ import annotations

import enum
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar, overload

from .address import split
from .webhook import key_of

log = logging.getLogger("agentmx.config")

DEFAULT_PATH = Path("/etc/agentmx/agentmx.toml")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


class Choice(enum.Enum):
    """A word the file chooses from a fixed set (a mode, an action, a policy): loaded into a member
    (`_Section.choice`), compared by identity where it is used, never as a string; str() is the word
    as the file spells it (messages, records, JSON)."""

    def __str__(self) -> str:
        return self.value


class Service(Choice):
    """Who loads the config, and so which files it may read (docs/operator.md, "Who may read what").

    Each service reads only its own secrets: the milter (user agentmx-milter) the DKIM keys and
    none of the application's secrets, which it cannot read; deliver, serve and the agent (user
    agentmx) their secrets and not the keys, which they cannot read; the operator (root)
    everything. A secret file a service does not read is still required where it is required."""
    ALL = "all"
    APP = "app"
    MILTER = "milter"

    @property
    def reads_secrets(self) -> bool:
        return self is not Service.MILTER

    @property
    def checks_keys(self) -> bool:
        return self is not Service.APP


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[tuple[str, int], ...] = ()   # empty: the system's /etc/resolv.conf
    timeout: float = 2.0                        # seconds for one lookup, retries included
    lookup_budget: int = 40                     # lookups per message over SPF, DKIM, ARC, DMARC
    cache_size: int = 10000                     # answers kept across messages for their TTL (0: none)


@dataclass(frozen=True)
class PolicyConfig:
    reject_dmarc: bool = False     # 550 5.7.1 for a DMARC fail whose policy (after pct) is reject
    reject_spf_fail: bool = False  # 550 5.7.23 for an SPF fail of the MAIL FROM identity
    defer_temperror: bool = False  # 451 4.7.24 when SPF or DMARC is temperror

    @property
    def records_only(self) -> bool:
        return not (self.reject_dmarc or self.reject_spf_fail or self.defer_temperror)


class DmarcMode(Choice):
    """How the milter verifies DMARC ([milter] dmarc; milter/dmarc_check.py)."""
    RFC9989 = "rfc9989"      # DMARCbis: DNS Tree Walk, psd, np, t; pct ignored (the default)
    RFC7489 = "rfc7489"      # the public suffix list and pct, as before RFC 9989


@dataclass(frozen=True)
class MilterConfig:
    socket: Path = Path("/var/spool/postfix/agentmx/milter.sock")
    socket_mode: int = 0o660
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    timeout: int = 600             # libmilter's I/O timeout towards Postfix, seconds
    policy: PolicyConfig = PolicyConfig()
    rspamd_url: str = ""           # rspamd's normal worker, e.g. http://127.0.0.1:11333; "" = no spam check
    rspamd_timeout: float = 2.0    # seconds; past it the verdict is unknown and the message goes on
    max_rsa_verifications: int = 20   # per message, DKIM and ARC together (milter/dkimcrypto.py)
    arc_trusted_sealers: tuple[str, ...] = ()   # ARC sealers whose chain may lift a DMARC policy (milter/arc_override.py)
    dmarc: DmarcMode = DmarcMode.RFC9989
    processes: int = 1             # milter processes on the one socket (milter/procs.py); the file's default: default_processes()

    def is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_networks)


class MtaStsMode(Choice):
    """The MTA-STS mode `agentmx dns` publishes for a domain ([domains."..."] mta_sts; RFC 8461)."""
    TESTING = "testing"
    ENFORCE = "enforce"


@dataclass(frozen=True)
class DomainConfig:
    name: str
    policy: PolicyConfig           # the inbound policy for mail to this domain
    dkim_selectors: tuple[str, ...] = ()   # keys that sign mail from this domain (rotation: edit the list)
    mta_sts: MtaStsMode | None = None      # MTA-STS mode to publish (`agentmx dns`); None: no MTA-STS record
    tls_rpt: str | None = None             # TLS-RPT report address (mailto: or https:)


class TrustPolicy(Choice):
    """What a route does with a message by its DMARC verdict ([[routes]] trust; deliver/core.py)."""
    DELIVER = "deliver"              # every message goes to the agent
    REQUIRE_DMARC = "require-dmarc"  # only a DMARC pass; the others are kept aside (held), not sent
    FLAG = "flag"                    # every message, flagged in the event unless DMARC passed


class AttachmentMode(Choice):
    """How a route's events carry attachments ([[routes]] attachments)."""
    URL = "url"                      # signed links to GET
    INLINE = "inline"                # base64 in the event, each up to inline_max_bytes (else a link)


class RouteMode(Choice):
    """Whether a route POSTs its events ([[routes]] mode)."""
    PUSH = "push"                    # POST to the endpoint
    PULL = "pull"                    # kept for GET /v1/messages only
    BOTH = "both"                    # POST, and kept for GET /v1/messages


class RouteAction(Choice):
    """Who handles a route's mail ([[routes]] action)."""
    POST = "post"                    # the agent at the endpoint, as mode says
    AGENT = "agent"                  # agentmx runs the model loop itself (`agentmx agent`); mode is then pull


class AckMode(Choice):
    """What an endpoint's 2xx answer must say (MailKite's ackMode; docs/agent-developer.md)."""
    LENIENT = "lenient"      # any 2xx is delivered; the body is not read
    ACK = "ack"              # delivered only for {"status": "ok"} (or x-mailkite-ack: ok); else retried
    CONTROL = "control"      # the body decides: ok, drop, spam, and the block-sender action


@dataclass(frozen=True)
class Route:
    match: str                     # "agent@example.com", or "@example.com" for the whole domain
    endpoint: str | None           # None only for mode = "pull"
    secret: str = field(repr=False)
    timeout: float = 10.0
    attachments: AttachmentMode = AttachmentMode.URL
    inline_max_bytes: int = 1_000_000
    mailkite_signature: bool = True    # x-mailkite-signature beside the Standard Webhooks headers
    ack: AckMode = AckMode.LENIENT
    trust: TrustPolicy = TrustPolicy.DELIVER
    mode: RouteMode = RouteMode.PUSH
    action: RouteAction = RouteAction.POST
    prompt: str = ""               # action = "agent": the instructions for this address
    forward_to: tuple[str, ...] = ()   # action = "agent": the only addresses the forward tool may use
    sends_per_hour: int = 30           # action = "agent": replies and forwards in any hour, counted in the job queue
    block_senders: tuple[str, ...] = ()  # envelope senders refused at RCPT for this route: addresses and @domains

    @property
    def pushes(self) -> bool:
        return self.action is RouteAction.POST and self.mode is not RouteMode.PULL


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str = field(repr=False)
    allow: tuple[str, ...] = ()     # addresses ("agent@example.com") and domains ("@example.com")

    def may_send_as(self, address: str) -> bool:
        return allows(self.allow, address)


def allows(allow: tuple[str, ...], address: str) -> bool:
    """An address is allowed by a list of addresses ("agent@example.com") and domains ("@example.com");
    a plus address (agent+tag@example.com) by its base address's entry: it is the same mailbox
    (agentmx/address.py), what a handler answering `event.to[0].address` sends from."""
    address = address.lower()
    return (address in allow or ("@" + address.rpartition("@")[2]) in allow
            or split(address)[0] in allow)


class SubmitVia(Choice):
    UNIX = "unix"        # a unix-domain smtpd service (postfix/master.cf.submit.fragment)
    TCP = "tcp"          # an smtpd service on host:port


@dataclass(frozen=True)
class SubmitTarget:
    """Where the send path hands its mail to Postfix: the send API's own submission service."""
    via: SubmitVia
    path: Path | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.via is SubmitVia.UNIX else f"{self.host}:{self.port}"


DEFAULT_SUBMIT = SubmitTarget(SubmitVia.UNIX, Path("/var/spool/postfix/public/agentmx-submit"))


@dataclass(frozen=True)
class SendConfig:
    submit: SubmitTarget = DEFAULT_SUBMIT  # the send API's submission service, which the milter knows
    auto_submitted: bool = True          # replies to an event carry Auto-Submitted: auto-replied
    per_correspondent_per_hour: int = 30  # messages to one address in any hour
    per_thread_per_hour: int = 10         # replies into one thread in any hour
    max_request_bytes: int = 30_000_000
    max_upload_bytes: int = 40_000_000    # one file through POST /v1/attachments (raw; base64 JSON may be 4/3 of it)
    max_schedule_days: int = 30           # scheduledAt at most this far ahead
    fetch_allow_http: bool = False        # attachments by http:// URL (https only when false)
    fetch_allow_networks: tuple = ()      # networks fetched from beyond public unicast (tests: 127.0.0.0/8)
    fetch_max_bytes: int = 25_000_000     # one attachment fetched by URL
    fetch_timeout: float = 20.0           # seconds for one fetch: DNS, connects, redirects, body
    verp: bool = True                     # each send its own envelope sender (bounces+<token>@domain) and DSNs
    bounce_local: str = "bounces"         # that envelope sender's local part: reports to it go to deliver


@dataclass(frozen=True)
class SaslSigner:
    login: str                      # the SASL login, exactly as Postfix reports it ({auth_authen})
    allow: tuple[str, ...]          # addresses and @domains whose mail it may have signed


@dataclass(frozen=True)
class SigningConfig:
    """Whose mail the milter DKIM-signs, for which From addresses (milter/signscope.py)."""
    local_from: tuple[str, ...] = ()        # local submission and trusted_networks clients
    api_service: str = "agentmx-api"        # milter_macro_daemon_name of the send API's service
    sasl: tuple[SaslSigner, ...] = ()

    def sasl_allow(self, login: str) -> tuple[str, ...] | None:
        """What a SASL login may have signed; None when it has no entry."""
        return next((s.allow for s in self.sasl if s.login == login), None)


@dataclass(frozen=True)
class AgentConfig:
    """The model behind action = "agent" routes: any OpenAI-compatible chat-completions server."""
    base_url: str = ""                   # e.g. http://127.0.0.1:8080/v1 (llama.cpp, vLLM, Ollama) or a hosted one
    model: str = ""
    api_key: str = field(default="", repr=False)
    timeout: float = 60.0                # seconds for one model call
    max_rounds: int = 6                  # model calls per message, tools included
    max_attempts: int = 6                # model failures before the job is parked
    retry_base: float = 30.0             # seconds before the first retry, doubled each time
    lease: float = 600.0                 # a job a dead worker held is taken up again after this


class StoreBackend(Choice):
    EMBEDDED = "embedded"     # SQLite + a blob folder in data_dir: one host
    POSTGRES = "postgres"     # PostgreSQL + an S3-compatible bucket: several MX hosts


@dataclass(frozen=True)
class S3Config:
    endpoint: str = ""                           # https://s3.example.com, or http://127.0.0.1:8333 on loopback
    bucket: str = ""
    region: str = "us-east-1"
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    prefix: str = ""                             # a key prefix: several installs (or tests) share one bucket


@dataclass(frozen=True)
class StoreConfig:
    backend: StoreBackend = StoreBackend.EMBEDDED
    database_url: str = field(default="", repr=False)   # postgresql://user:password@host:5432/agentmx
    s3: S3Config = S3Config()


@dataclass(frozen=True)
class WorkerConfig:
    """`agentmx worker`: deliver resident behind the lean pipe client (docs/performance.md)."""
    socket: Path = Path("/run/agentmx/deliver.sock")      # `agentmx worker`, for the lean pipe client
    lmtp_socket: Path = Path("/run/agentmx/lmtp.sock")    # `agentmx lmtp`, for Postfix's lmtp(8)
    socket_mode: int = 0o660            # the pipe user (agentmx) or Postfix must be able to connect
    processes: int = 2                  # one per core: deliver holds the GIL while it parses


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of `agentmx serve` (docs/hardening.md, "serve")."""
    read_timeout: float = 10.0          # an idle connection, or a request head not complete, is dropped after it
    request_timeout: float = 60.0       # the whole request body must arrive within it
    write_timeout: float = 30.0         # each write to a client that stopped reading
    max_requests: int = 64              # ordinary requests at once (then 503)
    max_streams: int = 1000             # open long-polls and event streams in all (then 503)
    max_streams_per_key: int = 8        # ... per API key (then 429)


@dataclass(frozen=True)
class Config:
    path: Path
    authserv_id: str
    data_dir: Path = Path("/var/lib/agentmx")
    public_url: str = "http://127.0.0.1:8025"     # how agents reach `agentmx serve` (attachment URLs)
    listen: tuple[str, int] = ("127.0.0.1", 8025)  # where `agentmx serve` listens
    limits: ServerLimits = ServerLimits()
    metrics_token: str = field(default="", repr=False)  # Bearer token for GET /metrics ("" : /metrics is off)
    admin_key: str = field(default="", repr=False)     # signs in to the web console with every key's view ("" : none)
    postfix_config: Path | None = None              # Postfix's config dir for postqueue -c (None: Postfix's default)
    proxy_hops: int = 0                             # reverse proxies in front of serve whose X-Forwarded-* it believes
    service: Service = Service.ALL                  # who loaded it: which secrets and keys were read
    url_secret: str = field(default="", repr=False)  # HMAC key of signed attachment URLs
    url_ttl: int = 7 * 24 * 3600                    # seconds an attachment URL stays valid
    key_dir: Path = Path("/etc/agentmx/keys")       # DKIM private keys: <key_dir>/<domain>/<selector>.*
    mail_host: str = ""                             # this server's MX name for `agentmx dns` (default authserv_id)
    retention_days: int = 30                        # `agentmx gc` removes stored mail older than this
    status_first_retry: float = 30.0                # seconds before a send event's first POST is tried again
    status_retry_hours: float = 120.0               # a send event not taken (2xx, 406) this long is given up
    dns: DnsConfig = DnsConfig()
    milter: MilterConfig = MilterConfig()
    domains: tuple[DomainConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    send: SendConfig = SendConfig()
    api_keys: tuple[ApiKey, ...] = ()
    signing: SigningConfig = SigningConfig()
    store: StoreConfig = StoreConfig()
    worker: WorkerConfig = WorkerConfig()
    agent: AgentConfig = AgentConfig()

    def domain(self, name: str) -> DomainConfig | None:
        name = name.lower().rstrip(".")
        return next((d for d in self.domains if d.name == name), None)

    def policy_for(self, domain: str) -> PolicyConfig:
        """The inbound policy for a recipient domain: its own section, else [milter.policy]."""
        domain = domain.lower().rstrip(".")
        for d in self.domains:
            if d.name == domain:
                return d.policy
        return self.milter.policy


# --- loading -----------------------------------------------------------------------------------
#
# parse_config reads each section with a function of its own (below it, in the file's order), each
# returning that section's frozen dataclass; the rules that span sections are _check_across's. A
# word from a fixed set becomes its Choice member here, so no code after the loader compares
# strings. Files are read only where the Service that loads the config can and must read them
# (Service.reads_secrets, Service.checks_keys); a file it must read and cannot is an error naming
# the key, never a silent skip.

SECTIONS = ("server", "dns", "milter", "domains", "routes", "send", "api_keys", "worker", "agent", "signing",
            "store")


def parse_config(text: str, path: Path, service: Service = Service.ALL) -> Config:
    """Validate the TOML text of a configuration file; `path` is only used in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _Section(path, "top level", doc, service).finish(*SECTIONS)

    def table(name: str, what: str = "a table") -> _Section:
        return _Section(path, name, doc.get(name, {}), service, what)

    server = _server(table("server"))
    milter = _milter(table("milter"))
    config = replace(
        server, agent=_agent(table("agent")), worker=_worker(table("worker")), dns=_dns(table("dns")),
        milter=milter,
        domains=_domains(table("domains", "a table of domain names"), server.key_dir, milter.policy),
        routes=tuple(_route(r) for r in _array_of_tables(doc, path, "routes", service)),
        store=_store(table("store")), send=_send(table("send")),
        api_keys=_api_keys(_array_of_tables(doc, path, "api_keys", service)),
        signing=_signing(table("signing")))
    _check_across(config, doc.get("server", {}))
    return config


def _error(path: Path, section: str, key: str | None, message: str) -> ConfigError:
    where = f"[{section}]" if key is None else f"[{section}] {key}"
    return ConfigError(f"{path}: {where}: {message}")


E = TypeVar("E", bound=Choice)
T = TypeVar("T")


class _Section:
    """Reads one TOML table, remembering which keys were used so that unknown ones are errors."""

    def __init__(self, path: Path, name: str, table: Any, service: Service = Service.ALL, what: str = "a table"):
        self.path, self.name, self.service = path, name, service
        if not isinstance(table, dict):
            raise self.error(None, f"must be {what}")
        self.table = table
        self.used: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        return _error(self.path, self.name, key, message)

    def get(self, key: str, default: Any, check: Callable[[Any], Any], what: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        try:
            return check(self.table[key])
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise self.error(key, f"must be {what}{detail}") from None

    @overload
    def choice(self, key: str, default: E, kind: type[E]) -> E: ...
    @overload
    def choice(self, key: str, default: None, kind: type[E]) -> E | None: ...

    def choice(self, key: str, default: E | None, kind: type[E]) -> E | None:
        """One of `kind`'s words, as its member (`must be "a" or "b"` otherwise)."""
        members = {m.value: m for m in kind}
        return self.get(key, default, lambda v: members[v] if isinstance(v, str) and v in members else _raise(),
                        " or ".join(f'"{m}"' for m in kind))

    def require(self, key: str, message: str = "is required") -> None:
        self.used.add(key)
        if key not in self.table:
            raise self.error(key, message)

    def sub(self, key: str) -> "_Section":
        self.used.add(key)
        return _Section(self.path, f"{self.name}.{key}", self.table.get(key, {}), self.service)

    def finish(self, *subsections: str) -> None:
        unknown = sorted(set(self.table) - self.used - set(subsections))
        if unknown:
            raise self.error(unknown[0], "unknown key")

    def done(self, value: T) -> T:
        """`value`, read from this table, once no key of it is left unread (finish)."""
        self.finish()
        return value


def _server(sec: _Section) -> Config:
    """[server]: the Config's own keys, every other section at its default (parse_config fills them)."""
    sec.require("authserv_id", "is required (the host name in our Authentication-Results)")
    authserv_id = sec.get("authserv_id", None, _hostname, "a host name")
    _retired_mcp_listen(sec)
    return sec.done(Config(
        path=sec.path, service=sec.service, authserv_id=authserv_id,
        data_dir=sec.get("data_dir", Config.data_dir, _path, "a path"),
        public_url=sec.get("public_url", Config.public_url, _endpoint, "an http:// or https:// URL").rstrip("/"),
        listen=sec.get("listen", Config.listen, _listen, '"IP:PORT"'),
        url_ttl=sec.get("url_ttl", Config.url_ttl, _positive_int, "a whole number of seconds > 0"),
        url_secret=_secret(sec, "url_secret", min_len=16) or "",
        key_dir=sec.get("key_dir", Config.key_dir, _path, "a path"),
        mail_host=sec.get("mail_host", authserv_id, _hostname, "a host name"),
        retention_days=sec.get("retention_days", Config.retention_days, _positive_int, "a whole number of days > 0"),
        metrics_token=_secret(sec, "metrics_token", min_len=16) or "",
        admin_key=_secret(sec, "admin_key", min_len=24) or "",
        postfix_config=sec.get("postfix_config", None, _path, "a path (Postfix's config directory)"),
        proxy_hops=sec.get("proxy_hops", Config.proxy_hops, _non_negative_int, "a whole number >= 0"),
        status_first_retry=sec.get("status_first_retry", Config.status_first_retry, _positive_number,
                                   "a number of seconds > 0"),
        status_retry_hours=sec.get("status_retry_hours", Config.status_retry_hours, _positive_number,
                                   "a number of hours > 0"),
        limits=_limits(sec)))


def _limits(sec: _Section) -> ServerLimits:
    """[server]'s limits on what one client may hold of `agentmx serve`."""
    seconds, count = "a number of seconds > 0", "a whole number > 0"
    return ServerLimits(
        read_timeout=sec.get("read_timeout", ServerLimits.read_timeout, _positive_number, seconds),
        request_timeout=sec.get("request_timeout", ServerLimits.request_timeout, _positive_number, seconds),
        write_timeout=sec.get("write_timeout", ServerLimits.write_timeout, _positive_number, seconds),
        max_requests=sec.get("max_requests", ServerLimits.max_requests, _positive_int, count),
        max_streams=sec.get("max_streams", ServerLimits.max_streams, _positive_int, count),
        max_streams_per_key=sec.get("max_streams_per_key", ServerLimits.max_streams_per_key, _positive_int, count))


def _retired_mcp_listen(server: _Section) -> None:
    """[server] mcp_listen was MCP's own port until issue 15; MCP is now at /mcp on [server] listen.
    An old file still loads (a service must not fail to start over a key that no longer does
    anything); a value other than "" (off) is a warning naming the file, since clients of that
    port must move."""
    value = server.get("mcp_listen", "", lambda v: v if isinstance(v, str) else _raise(), '"IP:PORT" or ""')
    if value:
        log.warning("%s: [server] mcp_listen is no longer used: MCP is now served at /mcp on [server] listen "
                    "(the API's own port); remove the key and point MCP clients there", server.path)


def _agent(sec: _Section) -> AgentConfig:
    """[agent]: the model behind action = "agent" routes (required by them: _check_across)."""
    return sec.done(AgentConfig(
        base_url=sec.get("base_url", "", lambda v: _endpoint(v).rstrip("/"), "an http:// or https:// URL"),
        model=sec.get("model", "", _nonempty_str, "a model name"),
        api_key=_secret(sec, "api_key", min_len=1) or "",
        timeout=sec.get("timeout", AgentConfig.timeout, _positive_number, "a number of seconds > 0"),
        max_rounds=sec.get("max_rounds", AgentConfig.max_rounds, _positive_int, "a whole number > 0"),
        max_attempts=sec.get("max_attempts", AgentConfig.max_attempts, _positive_int, "a whole number > 0"),
        retry_base=sec.get("retry_base", AgentConfig.retry_base, _positive_number, "a number of seconds > 0"),
        lease=sec.get("lease", AgentConfig.lease, _positive_number, "a number of seconds > 0")))


def _worker(sec: _Section) -> WorkerConfig:
    """[worker]: `agentmx worker` and `agentmx lmtp`."""
    return sec.done(WorkerConfig(
        socket=sec.get("socket", WorkerConfig.socket, _path, "a path"),
        lmtp_socket=sec.get("lmtp_socket", WorkerConfig.lmtp_socket, _path, "a path"),
        socket_mode=sec.get("socket_mode", WorkerConfig.socket_mode, _mode, 'an octal mode like "0660"'),
        processes=sec.get("processes", WorkerConfig.processes, _positive_int, "a whole number > 0")))


def _dns(sec: _Section) -> DnsConfig:
    """[dns]: the resolver every check uses."""
    return sec.done(DnsConfig(
        servers=sec.get("servers", (), dns_servers, 'a list of "IP" or "IP:PORT" strings'),
        timeout=sec.get("timeout", DnsConfig.timeout, _positive_number, "a number > 0"),
        lookup_budget=sec.get("lookup_budget", DnsConfig.lookup_budget, _positive_int, "a whole number > 0"),
        cache_size=sec.get("cache_size", DnsConfig.cache_size, _non_negative_int, "a whole number >= 0")))


def _milter(sec: _Section) -> MilterConfig:
    """[milter] and [milter.policy] (the inbound policy of every domain without its own)."""
    policy = sec.sub("policy")
    milter = MilterConfig(
        socket=sec.get("socket", MilterConfig.socket, _path, "a path"),
        socket_mode=sec.get("socket_mode", MilterConfig.socket_mode, _mode, 'an octal mode like "0660"'),
        trusted_networks=sec.get("trusted_networks", MilterConfig.trusted_networks, _networks,
                                 "a list of networks like 192.0.2.0/24"),
        timeout=sec.get("timeout", MilterConfig.timeout, _positive_int, "a whole number > 0"),
        policy=_policy(policy, PolicyConfig()),
        rspamd_url=sec.get("rspamd_url", "", lambda v: v if v == "" else _endpoint(v).rstrip("/"),
                           'an http:// URL, or "" for none'),
        rspamd_timeout=sec.get("rspamd_timeout", MilterConfig.rspamd_timeout, _positive_number, "a number > 0"),
        max_rsa_verifications=sec.get("max_rsa_verifications", MilterConfig.max_rsa_verifications, _positive_int,
                                      "a whole number > 0"),
        arc_trusted_sealers=sec.get("arc_trusted_sealers", (), arc_sealers,
                                    'a list of domains like "lists.example.org"'),
        dmarc=sec.choice("dmarc", MilterConfig.dmarc, DmarcMode),
        processes=sec.get("processes", default_processes(), _milter_processes,
                          f"a whole number from 1 to {MAX_MILTER_PROCESSES}"))
    policy.finish()
    return sec.done(milter)


def _policy(sec: _Section, default: PolicyConfig) -> PolicyConfig:
    """An inbound policy: [milter.policy], or a domain's keys over it."""
    return PolicyConfig(
        reject_dmarc=sec.get("reject_dmarc", default.reject_dmarc, _bool, "true or false"),
        reject_spf_fail=sec.get("reject_spf_fail", default.reject_spf_fail, _bool, "true or false"),
        defer_temperror=sec.get("defer_temperror", default.defer_temperror, _bool, "true or false"),
    )


def _domains(sec: _Section, key_dir: Path, policy: PolicyConfig) -> tuple[DomainConfig, ...]:
    """[domains."example.com"] tables, each over the default inbound policy."""
    return tuple(_domain(_Section(sec.path, f'domains."{name}"', table, sec.service), name, key_dir, policy)
                 for name, table in sec.table.items())


def _domain(sec: _Section, name: str, key_dir: Path, default: PolicyConfig) -> DomainConfig:
    name = name.lower().rstrip(".")
    selectors = sec.get("dkim_selectors", (), _selectors, "a list of selector names")
    if sec.service.checks_keys:
        _keys_present(sec, key_dir / name, selectors)
    return sec.done(DomainConfig(
        name=name, dkim_selectors=selectors, mta_sts=sec.choice("mta_sts", None, MtaStsMode),
        tls_rpt=sec.get("tls_rpt", None, lambda v: v if isinstance(v, str) and _TLS_RPT.match(v) else _raise(),
                        "a mailto: or https: URI"),
        policy=_policy(sec, default)))


_TLS_RPT = re.compile(r"^(mailto:\S+@\S+|https://\S+)$")


def _keys_present(sec: _Section, folder: Path, selectors: tuple[str, ...]) -> None:
    """Each selector's key is in <key_dir>/<domain>. Only a service that signs checks it
    (Service.checks_keys: the milter, and the operator's ALL); one that cannot read the folder says
    so, naming it (the keys are the milter user's alone: docs/operator.md), and never skips."""
    for sel in selectors:
        try:
            present = (folder / f"{sel}.rsa.pem").exists() or (folder / f"{sel}.ed25519").exists()
        except PermissionError:
            raise sec.error("dkim_selectors", f"{folder}: not readable by this user "
                                              "(the keys are for the milter's user: docs/operator.md)") from None
        if not present:
            raise sec.error("dkim_selectors", f"no key for selector {sel!r} in {folder} "
                                              f"(make one: agentmx keygen {folder.name} --selector {sel})")


def _route(sec: _Section) -> Route:
    """One [[routes]] table. action = "agent" makes it a pull route (agentmx runs the agent; the
    event is in the inbox API too) with a prompt; a pull route has no endpoint and needs no secret."""
    action = sec.choice("action", Route.action, RouteAction)
    mode = sec.choice("mode", Route.mode, RouteMode)
    agent = action is RouteAction.AGENT
    if agent:
        mode = RouteMode.PULL
        sec.require("prompt", 'is required with action = "agent"')
    pushes = mode is not RouteMode.PULL
    sec.require("match")
    if pushes:
        sec.require("endpoint", f'is required with mode = "{mode}"')
    elif "endpoint" in sec.table:
        raise sec.error("endpoint", 'is not used with mode = "pull" (use mode = "both" to POST too)')
    return sec.done(Route(
        match=sec.get("match", None, _match, "an address or @domain"),
        endpoint=sec.get("endpoint", None, _endpoint, "a URL") if pushes else None,
        secret=_secret(sec, "secret", min_len=16, whsec=True,
                       required="give exactly one of secret or secret_file" if pushes else None) or "",
        mode=mode, action=action,
        prompt=sec.get("prompt", "", _nonempty_str, "a string") if agent else "",
        forward_to=sec.get("forward_to", (), _addresses, "a list of addresses") if agent else (),
        sends_per_hour=sec.get("sends_per_hour", Route.sends_per_hour, _positive_int, "a whole number > 0")
        if agent else Route.sends_per_hour,
        timeout=sec.get("timeout", Route.timeout, _positive_number, "a number of seconds > 0"),
        attachments=sec.choice("attachments", Route.attachments, AttachmentMode),
        inline_max_bytes=sec.get("inline_max_bytes", Route.inline_max_bytes, _positive_int,
                                 "a whole number of bytes > 0"),
        mailkite_signature=sec.get("mailkite_signature", Route.mailkite_signature, _bool, "true or false"),
        ack=sec.choice("ack", Route.ack, AckMode),
        trust=sec.choice("trust", Route.trust, TrustPolicy),
        block_senders=sec.get("block_senders", (), _block_senders, f"a list of at most {MAX_BLOCK_SENDERS} "
                              'envelope senders ("spammer@example.net") or domains ("@bad.example")')))


def _send(sec: _Section) -> SendConfig:
    """[send]: the send API's submission service, its limits and what it may fetch."""
    for old in ("smtp_host", "smtp_port"):
        if old in sec.table:
            raise sec.error(old, 'is replaced by submit, the send API\'s own submission service (the milter '
                            'signs only what comes through it): remove smtp_host and smtp_port, add '
                            'postfix/master.cf.submit.fragment to master.cf, and set submit = '
                            f'"{DEFAULT_SUBMIT}" (the default) or "host:port"')
    count, size = "a whole number > 0", "a whole number of bytes > 0"
    return sec.done(SendConfig(
        submit=sec.get("submit", DEFAULT_SUBMIT, _submit_target, '"unix:/path/to/socket" or "host:port"'),
        auto_submitted=sec.get("auto_submitted", True, _bool, "true or false"),
        per_correspondent_per_hour=sec.get("per_correspondent_per_hour", SendConfig.per_correspondent_per_hour,
                                           _positive_int, count),
        per_thread_per_hour=sec.get("per_thread_per_hour", SendConfig.per_thread_per_hour, _positive_int, count),
        max_request_bytes=sec.get("max_request_bytes", SendConfig.max_request_bytes, _positive_int, size),
        max_upload_bytes=sec.get("max_upload_bytes", SendConfig.max_upload_bytes, _positive_int, size),
        max_schedule_days=sec.get("max_schedule_days", SendConfig.max_schedule_days,
                                  lambda v: v if _positive_int(v) <= 365 else _raise(),
                                  "a whole number of days, 1 to 365"),
        fetch_allow_http=sec.get("fetch_allow_http", False, _bool, "true or false"),
        fetch_allow_networks=sec.get("fetch_allow_networks", (), _networks, "a list of networks like 192.0.2.0/24"),
        fetch_max_bytes=sec.get("fetch_max_bytes", SendConfig.fetch_max_bytes, _positive_int, size),
        fetch_timeout=sec.get("fetch_timeout", SendConfig.fetch_timeout, _positive_number, "a number of seconds > 0"),
        verp=sec.get("verp", True, _bool, "true or false"),
        bounce_local=sec.get("bounce_local", SendConfig.bounce_local, _bounce_local,
                             "a local part of 1 to 20 letters, digits, '.', '_' or '-'")))


def _bounce_local(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}", v):
        raise ValueError()
    return v.lower()


def _given(table: dict, key: str) -> bool:
    """A secret is given as `key` or as `key_file` (whether or not this service reads it)."""
    return table.get(key) is not None or table.get(f"{key}_file") is not None


def _api_keys(tables: list[_Section]) -> tuple[ApiKey, ...]:
    """[[api_keys]]: each key once (compared only where this service reads them)."""
    keys = tuple(_api_key(sec, i) for i, sec in enumerate(tables))
    if tables and tables[0].service.reads_secrets and len({k.key for k in keys}) != len(keys):
        raise _error(tables[0].path, "[api_keys]", None, "two keys are the same")
    return keys


def _api_key(sec: _Section, i: int) -> ApiKey:
    name = sec.get("name", f"key{i}", _nonempty_str, "a string")
    key = _secret(sec, "key", min_len=24, required="give key or key_file (24 characters or more)")
    allow = sec.get("allow", (), lambda v: tuple(_match(x) for x in v) if isinstance(v, list) and v else _raise(),
                    'a list of addresses ("agent@example.com") or domains ("@example.com")')
    if not allow:
        raise sec.error("allow", "is required: the addresses or @domains this key may send as")
    return sec.done(ApiKey(name=name, key=key or "", allow=allow))


_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


def _signing(sec: _Section) -> SigningConfig:
    """[signing] and its [[signing.sasl]] tables: whose mail the milter signs."""
    local_from = sec.get("local_from", (), _allow_list, 'a list of addresses ("noreply@example.com") '
                         'or domains ("@example.com")')
    api_service = sec.get("api_service", SigningConfig.api_service,
                          lambda v: v if isinstance(v, str) and _SERVICE_NAME.fullmatch(v) else _raise(),
                          "a Postfix service name (milter_macro_daemon_name)")
    items = sec.table.get("sasl", [])
    sec.used.add("sasl")
    if not isinstance(items, list):
        raise sec.error("sasl", "must be an array of tables: [[signing.sasl]]")
    sasl: list[SaslSigner] = []
    for i, table in enumerate(items):
        signer = _sasl_signer(_Section(sec.path, f"signing.sasl[{i}]", table, sec.service))
        if any(x.login == signer.login for x in sasl):
            raise _error(sec.path, f"signing.sasl[{i}]", "login", f"{signer.login!r} is listed twice")
        sasl.append(signer)
    return sec.done(SigningConfig(local_from=local_from, api_service=api_service, sasl=tuple(sasl)))


def _sasl_signer(sec: _Section) -> SaslSigner:
    sec.require("login")
    sec.require("allow")
    login = sec.get("login", None, lambda v: v if isinstance(v, str) and v and v == v.strip()
                    and v.isprintable() else _raise(), "the SASL login, as Postfix logs it (sasl_username)")
    allow = sec.get("allow", None, lambda v: _allow_list(v) or _raise(),
                    'a non-empty list of addresses ("alice@example.com") or domains ("@example.com")')
    return sec.done(SaslSigner(login, allow))


def _store(sec: _Section) -> StoreConfig:
    """[store] and [store.s3]: which backend keeps everything, and where (secrets by file, read
    only by the services that use the store)."""
    backend = sec.choice("backend", StoreBackend.EMBEDDED, StoreBackend)
    database_url = _secret(sec, "database_url", min_len=1)
    s3_sec = sec.sub("s3")
    s3 = _s3(s3_sec)
    sec.finish("s3")
    if backend is StoreBackend.POSTGRES:
        if database_url is None:
            raise sec.error("database_url", 'is required with backend = "postgres": give database_url_file '
                            "(or database_url)")
        if database_url and not database_url.startswith(("postgresql://", "postgres://")):
            raise sec.error("database_url", "must be a postgresql:// URL")
        for key in ("endpoint", "bucket"):
            if not getattr(s3, key):
                raise s3_sec.error(key, 'is required with backend = "postgres" (blobs go to the S3 bucket)')
        for key in ("access_key", "secret_key"):
            if not _given(s3_sec.table, key):
                raise s3_sec.error(key, f'is required with backend = "postgres": give {key}_file (or {key})')
    return StoreConfig(backend=backend, database_url=database_url or "", s3=s3)


def _s3(sec: _Section) -> S3Config:
    return sec.done(S3Config(
        endpoint=sec.get("endpoint", "", lambda v: _endpoint(v).rstrip("/"), "an http:// or https:// URL"),
        bucket=sec.get("bucket", "", lambda v: v if isinstance(v, str) and re.fullmatch(
            r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v) else _raise(), "an S3 bucket name"),
        region=sec.get("region", S3Config.region, _nonempty_str, "a region name"),
        access_key=_secret(sec, "access_key", min_len=1) or "",
        secret_key=_secret(sec, "secret_key", min_len=1) or "",
        prefix=sec.get("prefix", "", lambda v: v if isinstance(v, str) and re.fullmatch(
            r"((?!\.\.?/)[A-Za-z0-9._-]+/)*", v) else _raise(), 'a key prefix ending in "/" (letters, digits, . _ -)')))


def _check_across(config: Config, server: dict) -> None:
    """The rules that span sections, on the loaded values; `server` is the [server] table (to tell
    a url_secret not given from one this service does not read)."""
    path = config.path
    if any(r.action is RouteAction.AGENT for r in config.routes):
        for key in ("base_url", "model"):
            if not getattr(config.agent, key):
                raise _error(path, "agent", key, 'is required when a route has action = "agent"')
    if config.routes and not _given(server, "url_secret"):
        raise _error(path, "server", "url_secret", "is required with routes (it signs the raw-message and "
                     "attachment URLs in events): give url_secret or url_secret_file")
    bounces = config.send.bounce_local
    for r in config.routes:
        if r.match.partition("@")[0] == bounces:
            raise _error(path, "send", "bounce_local", f"{bounces}@ is where delivery reports to what agents send "
                         f"arrive, and route {r.match!r} takes that address: choose another bounce_local or "
                         "another address for the route")
    if config.admin_key and any(k.key == config.admin_key for k in config.api_keys):
        raise _error(path, "server", "admin_key", "the same as an [[api_keys]] key: give the console's "
                     "admin key its own value")


# --- values: each check takes the TOML value and returns it typed, or raises ValueError/TypeError

def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError()
    return v


def _positive_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ValueError()
    return float(v)


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError()
    return v


MAX_MILTER_PROCESSES = 64


def default_processes() -> int:
    """[milter] processes when the file says nothing: the CPUs this process may run on, at least 2
    (a big message then never holds up the others behind one GIL, even on one CPU) and at most 4
    (each process costs its own memory, DNS cache and big-message buffers). docs/decisions.md."""
    return max(2, min(len(os.sched_getaffinity(0)), 4))


def _milter_processes(v: Any) -> int:
    if _positive_int(v) > MAX_MILTER_PROCESSES:
        raise ValueError()
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError
    return v


def _addresses(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(a, str) and "@" in a and not a.startswith("@") for a in v):
        raise ValueError
    return tuple(a.lower() for a in v)


MAX_BLOCK_SENDERS = 1000            # a route's block_senders (config); more belong in the API (/v1/blocks)
MAX_SENDER = 254                    # characters of one blocked sender (an address or @domain)
_DOMAIN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
_SENDER = re.compile(r"^([^\s@<>()\[\],;:\\\"]{1,64})?@" + _DOMAIN + "$")
MAX_ARC_TRUSTED_SEALERS = 100       # [milter] arc_trusted_sealers: lists and forwarders, by hand


def block_sender(v: Any) -> str:
    """A blocked sender as a route's block_senders, POST /v1/blocks and `agentmx blocks add` take it:
    an envelope sender (spammer@example.net) or a whole domain (@bad.example, that domain only, not
    its subdomains); lower case. ValueError with what it must be otherwise."""
    v = v.strip().lower() if isinstance(v, str) else None
    if not v or len(v) > MAX_SENDER or not v.isascii() or not _SENDER.match(v):
        raise ValueError("an address (spammer@example.net) or a domain (@bad.example)")
    return v


def arc_sealers(v: Any) -> tuple[str, ...]:
    """[milter] arc_trusted_sealers (also `agentmx auth --arc-trusted-sealer`): domain names (ASCII, A-labels for IDNs), lower case, without a trailing dot, each once."""
    if not isinstance(v, list) or len(v) > MAX_ARC_TRUSTED_SEALERS:
        raise ValueError(f"not a list of at most {MAX_ARC_TRUSTED_SEALERS}")
    out = []
    for x in v:
        d = x.strip().lower().rstrip(".") if isinstance(x, str) else ""
        if len(d) > 253 or not d.isascii() or not re.fullmatch(_DOMAIN, d):
            raise ValueError(f"{str(x)[:80]!r} is not a domain name")
        out.append(d)
    return tuple(dict.fromkeys(out))


def _block_senders(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > MAX_BLOCK_SENDERS:
        raise ValueError(f"not a list of at most {MAX_BLOCK_SENDERS}")
    out = []
    for x in v:
        try:
            out.append(block_sender(x))
        except ValueError:
            raise ValueError(f"{str(x)[:80]!r} is neither") from None
    return tuple(dict.fromkeys(out))


def _nonempty_str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError()
    return v.strip()


def _path(v: Any) -> Path:
    return Path(_nonempty_str(v))


def _hostname(v: Any) -> str:
    v = _nonempty_str(v)
    if any(c.isspace() or c in ';()"\\' for c in v):
        raise ValueError("no spaces, semicolons, parentheses or quotes")
    return v


def dns_servers(v: Any) -> tuple[tuple[str, int], ...]:
    """[dns] servers: "IP", "IP:PORT" or "[IPv6]:PORT" strings (also `agentmx auth --dns`)."""
    if not isinstance(v, list):
        raise TypeError()
    out = []
    for item in v:
        host, port = _nonempty_str(item), 53
        if host.startswith("["):                       # [::1]:5353
            host, _, rest = host[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif host.count(":") == 1:                     # 127.0.0.1:5353
            host, p = host.split(":")
            port = int(p)
        ipaddress.ip_address(host)
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {item!r}")
        out.append((host, port))
    return tuple(out)


def _networks(v: Any) -> tuple:
    if not isinstance(v, list):
        raise TypeError()
    return tuple(ipaddress.ip_network(_nonempty_str(x), strict=False) for x in v)


def _mode(v: Any) -> int:
    if isinstance(v, str):
        v = int(v, 8)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0o777:
        raise ValueError()
    return v


def _endpoint(v: Any) -> str:
    v = _nonempty_str(v)
    if not (v.startswith("https://") or v.startswith("http://")):
        raise ValueError("an http:// or https:// URL")
    return v


def _match(v: Any) -> str:
    v = _nonempty_str(v).lower()
    local, at, domain = v.rpartition("@")
    if not at or not domain or "." not in domain or "+" in local:
        raise ValueError("an address (agent@example.com) or a domain (@example.com), without a +tag")
    return v


def _array_of_tables(doc: dict, path: Path, name: str, service: Service) -> list[_Section]:
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise ConfigError(f"{path}: [[{name}]]: must be an array of tables")
    return [_Section(path, f"{name}[{i}]", table, service) for i, table in enumerate(items)]


def _raise():
    raise ValueError()


def _selectors(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise TypeError()
    out = []
    for item in v:
        item = _nonempty_str(item).lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", item):
            raise ValueError(f"{item!r} is not a selector")
        out.append(item)
    return tuple(out)


def _listen(v: Any) -> tuple[str, int]:
    """"127.0.0.1:8025" or "[::1]:8025" (an IPv6 address in brackets)."""
    host, _, port = _nonempty_str(v).rpartition(":")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("an IPv6 address goes in brackets: [::1]:8025")
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError("brackets are for IPv6 addresses")
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:8025")
    ipaddress.ip_address(host)
    if not port.isdigit() or not 0 <= int(port) < 65536:          # 0: any free port (tests)
        raise ValueError("a port from 0 to 65535")
    return host, int(port)


def _secret(sec: _Section, key: str, min_len: int, whsec: bool = False, required: str | None = None) -> str | None:
    """The one reader of secrets: `key = "..."` or `key_file = "/path"` (one of them). The value;
    None when neither is given (an error saying `required`, when given); "" when the file is not
    this service's to read (Service.reads_secrets: the milter reads none of the application's)."""
    value = sec.get(key, None, _nonempty_str, "a string")
    path = sec.get(f"{key}_file", None, _nonempty_str, "a file path")
    if value is not None and path is not None:
        raise sec.error(key, f"give {key} or {key}_file, not both")
    if value is None and path is None:
        if required is not None:
            raise sec.error(key, required)
        return None
    where = key if path is None else f"{key}_file"
    if path is not None:
        if not sec.service.reads_secrets:
            return ""
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise sec.error(where, f"{path}: cannot be read ({exc.strerror})") from None
    assert value is not None
    if whsec:
        try:
            key_of(value)
        except ValueError as exc:
            source = f" (in {path})" if path is not None else ""
            raise sec.error(where, f"must be a whsec_ secret{source}: {exc}") from None
    if len(value) < min_len:
        raise sec.error(where, f"must be at least {min_len} characters")
    return value


def _allow_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TypeError()
    return tuple(dict.fromkeys(_match(x) for x in v))


def _submit_target(v: Any) -> SubmitTarget:
    v = _nonempty_str(v)
    if v.startswith("unix:"):
        path = Path(v[5:])
        if not path.is_absolute():
            raise ValueError("an absolute socket path after unix:")
        return SubmitTarget(SubmitVia.UNIX, path=path)
    host, port = _listen(v)
    if port == 0:
        raise ValueError("port 0")
    return SubmitTarget(SubmitVia.TCP, host=host, port=port)


def load_config(path: str | Path = DEFAULT_PATH, service: Service = Service.ALL) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8") from None
    return parse_config(text, path, service)
