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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .address import split

log = logging.getLogger("agentmx.config")

DEFAULT_PATH = Path("/etc/agentmx/agentmx.toml")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


class Service(enum.Enum):
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


class DmarcMode(enum.Enum):
    """How the milter verifies DMARC ([milter] dmarc; milter/dmarc_check.py)."""
    RFC9989 = "rfc9989"      # DMARCbis: DNS Tree Walk, psd, np, t; pct ignored (the default)
    RFC7489 = "rfc7489"      # the public suffix list and pct, as before RFC 9989

    def __str__(self) -> str:
        return self.value


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


@dataclass(frozen=True)
class DomainConfig:
    name: str
    policy: PolicyConfig           # the inbound policy for mail to this domain
    dkim_selectors: tuple[str, ...] = ()   # keys that sign mail from this domain (rotation: edit the list)
    mta_sts: str | None = None             # MTA-STS mode to publish: testing or enforce (`agentmx dns`)
    tls_rpt: str | None = None             # TLS-RPT report address (mailto: or https:)


TRUST_POLICIES = ("deliver", "require-dmarc", "flag")
ATTACHMENT_MODES = ("url", "inline")
ROUTE_MODES = ("push", "pull", "both")
ROUTE_ACTIONS = ("post", "agent")   # POST to the endpoint; keep for GET /v1/messages; both


class AckMode(enum.Enum):
    """What an endpoint's 2xx answer must say (MailKite's ackMode; docs/agent-developer.md)."""
    LENIENT = "lenient"      # any 2xx is delivered; the body is not read
    ACK = "ack"              # delivered only for {"status": "ok"} (or x-mailkite-ack: ok); else retried
    CONTROL = "control"      # the body decides: ok, drop, spam, and the block-sender action

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Route:
    match: str                     # "agent@example.com", or "@example.com" for the whole domain
    endpoint: str | None           # None only for mode = "pull"
    secret: str = field(repr=False)
    timeout: float = 10.0
    attachments: str = "url"       # url: signed links; inline: base64 in the event up to inline_max_bytes
    inline_max_bytes: int = 1_000_000
    mailkite_signature: bool = True    # x-mailkite-signature beside the Standard Webhooks headers
    ack: AckMode = AckMode.LENIENT
    trust: str = "deliver"         # deliver, require-dmarc (others kept aside, not sent), flag
    mode: str = "push"             # push (POST), pull (kept for the inbox API only), both
    action: str = "post"           # post (as mode says), agent (agentmx runs the model loop itself)
    prompt: str = ""               # action = "agent": the instructions for this address
    forward_to: tuple[str, ...] = ()   # action = "agent": the only addresses the forward tool may use
    sends_per_hour: int = 30           # action = "agent": replies and forwards in any hour, counted in the job queue
    block_senders: tuple[str, ...] = ()  # envelope senders refused at RCPT for this route: addresses and @domains

    @property
    def pushes(self) -> bool:
        return self.action == "post" and self.mode in ("push", "both")


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


class SubmitVia(enum.Enum):
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


class StoreBackend(enum.Enum):
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

class _Section:
    """Reads one TOML table, remembering which keys were used so that unknown ones are errors."""

    def __init__(self, path: Path, name: str, table: Any, service: Service = Service.ALL):
        self.path, self.name, self.service = path, name, service
        if not isinstance(table, dict):
            raise self.error(None, "must be a table")
        self.table = table
        self.used: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        where = f"[{self.name}]" if key is None else f"[{self.name}] {key}"
        return ConfigError(f"{self.path}: {where}: {message}")

    def get(self, key: str, default: Any, check: Callable[[Any], Any], what: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        try:
            return check(self.table[key])
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise self.error(key, f"must be {what}{detail}") from None

    def sub(self, key: str) -> "_Section":
        self.used.add(key)
        return _Section(self.path, f"{self.name}.{key}", self.table.get(key, {}), self.service)

    def finish(self, *subsections: str) -> None:
        unknown = sorted(set(self.table) - self.used - set(subsections))
        if unknown:
            raise self.error(unknown[0], "unknown key")


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


def _sealers(v: Any) -> tuple[str, ...]:
    """Domain names (ASCII, A-labels for IDNs), lower case, without a trailing dot, each once."""
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


def _hostname(v: Any) -> str:
    v = _nonempty_str(v)
    if any(c.isspace() or c in ';()"\\' for c in v):
        raise ValueError("no spaces, semicolons, parentheses or quotes")
    return v


def _dns_servers(v: Any) -> tuple[tuple[str, int], ...]:
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


def _one_of(allowed: tuple[str, ...]):
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError()
        return v
    return check


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


def _secret(sec: _Section, key: str, min_len: int, whsec: bool = False) -> str | None:
    """`key = "..."` or `key_file = "/path"` (one of them): the value; None when neither is
    given; "" when the file is not this service's to read (Service.reads_secrets)."""
    value = sec.get(key, None, _nonempty_str, "a string")
    path = sec.get(f"{key}_file", None, _nonempty_str, "a file path")
    if value is not None and path is not None:
        raise sec.error(key, f"give {key} or {key}_file, not both")
    where = key if path is None else f"{key}_file"
    if path is not None:
        if not sec.service.reads_secrets:
            return ""
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise sec.error(f"{key}_file", f"{path}: cannot be read ({exc.strerror})") from None
    if value is None:
        return None
    if whsec:
        from agentmx.webhook import key_of
        try:
            key_of(value)
        except ValueError as exc:
            source = f" (in {path})" if path is not None else ""
            raise sec.error(where, f"must be a whsec_ secret{source}: {exc}") from None
    if len(value) < min_len:
        raise sec.error(where, f"must be at least {min_len} characters")
    return value


def _policy(sec: _Section, default: PolicyConfig) -> PolicyConfig:
    return PolicyConfig(
        reject_dmarc=sec.get("reject_dmarc", default.reject_dmarc, _bool, "true or false"),
        reject_spf_fail=sec.get("reject_spf_fail", default.reject_spf_fail, _bool, "true or false"),
        defer_temperror=sec.get("defer_temperror", default.defer_temperror, _bool, "true or false"),
    )


def _route_secret(r: _Section, required: bool) -> str:
    secret = _secret(r, "secret", min_len=16, whsec=True)
    if secret is None and required:
        raise r.error("secret", "give exactly one of secret or secret_file")
    return secret or ""


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


_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


def _signing(sec: _Section) -> SigningConfig:
    local_from = sec.get("local_from", (), _allow_list, 'a list of addresses ("noreply@example.com") '
                         'or domains ("@example.com")')
    api_service = sec.get("api_service", SigningConfig.api_service,
                          lambda v: v if isinstance(v, str) and _SERVICE_NAME.fullmatch(v) else _raise(),
                          "a Postfix service name (milter_macro_daemon_name)")
    items = sec.table.get("sasl", [])
    sec.used.add("sasl")
    if not isinstance(items, list):
        raise sec.error("sasl", "must be an array of tables: [[signing.sasl]]")
    sasl = []
    for i, table in enumerate(items):
        s = _Section(sec.path, f"signing.sasl[{i}]", table, sec.service)
        s.used.update({"login", "allow"})
        for key in ("login", "allow"):
            if key not in s.table:
                raise s.error(key, "is required")
        login = s.get("login", None, lambda v: v if isinstance(v, str) and v and v == v.strip()
                      and v.isprintable() else _raise(), "the SASL login, as Postfix logs it (sasl_username)")
        if any(x.login == login for x in sasl):
            raise s.error("login", f"{login!r} is listed twice")
        allow = s.get("allow", None, lambda v: _allow_list(v) or _raise(),
                      'a non-empty list of addresses ("alice@example.com") or domains ("@example.com")')
        sasl.append(SaslSigner(login, allow))
        s.finish()
    sec.finish()
    return SigningConfig(local_from=local_from, api_service=api_service, sasl=tuple(sasl))


def _store(sec: _Section) -> StoreConfig:
    """[store] and [store.s3]: which backend keeps everything, and where (secrets by file, read
    only by the services that use the store)."""
    backend = sec.get("backend", StoreBackend.EMBEDDED, lambda v: StoreBackend(v),
                      " or ".join(f'"{b.value}"' for b in StoreBackend))
    database_url = _secret(sec, "database_url", min_len=1)
    s3_sec = sec.sub("s3")
    s3 = S3Config(
        endpoint=s3_sec.get("endpoint", "", lambda v: _endpoint(v).rstrip("/"), "an http:// or https:// URL"),
        bucket=s3_sec.get("bucket", "", lambda v: v if isinstance(v, str) and re.fullmatch(
            r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v) else _raise(), "an S3 bucket name"),
        region=s3_sec.get("region", S3Config.region, _nonempty_str, "a region name"),
        access_key=_secret(s3_sec, "access_key", min_len=1) or "",
        secret_key=_secret(s3_sec, "secret_key", min_len=1) or "",
        prefix=s3_sec.get("prefix", "", lambda v: v if isinstance(v, str) and re.fullmatch(
            r"((?!\.\.?/)[A-Za-z0-9._-]+/)*", v) else _raise(), 'a key prefix ending in "/" (letters, digits, . _ -)'),
    )
    s3_sec.finish()
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
            if s3_sec.table.get(key) is None and s3_sec.table.get(f"{key}_file") is None:
                raise s3_sec.error(key, f'is required with backend = "postgres": give {key}_file (or {key})')
    return StoreConfig(backend=backend, database_url=database_url or "", s3=s3)


def parse_config(text: str, path: Path, service: Service = Service.ALL) -> Config:
    """Validate the TOML text of a configuration file; `path` is only used in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    top = _Section(path, "top level", doc, service)
    top.finish("server", "dns", "milter", "domains", "routes", "send", "api_keys", "worker", "agent", "signing",
               "store")

    server = _Section(path, "server", doc.get("server", {}), service)
    server.used.add("authserv_id")
    if "authserv_id" not in server.table:
        raise server.error("authserv_id", "is required (the host name in our Authentication-Results)")
    authserv_id = server.get("authserv_id", None, _hostname, "a host name")
    data_dir = server.get("data_dir", Config.data_dir, lambda v: Path(_nonempty_str(v)), "a path")
    public_url = server.get("public_url", Config.public_url, _endpoint, "an http:// or https:// URL").rstrip("/")
    listen = server.get("listen", Config.listen, _listen, '"IP:PORT"')
    _retired_mcp_listen(server)
    url_ttl = server.get("url_ttl", Config.url_ttl, _positive_int, "a whole number of seconds > 0")
    url_secret = _secret(server, "url_secret", min_len=16)
    key_dir = server.get("key_dir", Config.key_dir, lambda v: Path(_nonempty_str(v)), "a path")
    mail_host = server.get("mail_host", authserv_id, _hostname, "a host name")
    retention_days = server.get("retention_days", Config.retention_days, _positive_int, "a whole number of days > 0")
    metrics_token = _secret(server, "metrics_token", min_len=16) or ""
    admin_key = _secret(server, "admin_key", min_len=24) or ""
    status_first_retry = server.get("status_first_retry", Config.status_first_retry, _positive_number,
                                    "a number of seconds > 0")
    status_retry_hours = server.get("status_retry_hours", Config.status_retry_hours, _positive_number,
                                    "a number of hours > 0")
    limits = ServerLimits(
        read_timeout=server.get("read_timeout", ServerLimits.read_timeout, _positive_number, "a number of seconds > 0"),
        request_timeout=server.get("request_timeout", ServerLimits.request_timeout, _positive_number,
                                   "a number of seconds > 0"),
        write_timeout=server.get("write_timeout", ServerLimits.write_timeout, _positive_number,
                                 "a number of seconds > 0"),
        max_requests=server.get("max_requests", ServerLimits.max_requests, _positive_int, "a whole number > 0"),
        max_streams=server.get("max_streams", ServerLimits.max_streams, _positive_int, "a whole number > 0"),
        max_streams_per_key=server.get("max_streams_per_key", ServerLimits.max_streams_per_key, _positive_int,
                                       "a whole number > 0"),
    )
    server.finish()

    ag = _Section(path, "agent", doc.get("agent", {}), service)
    agent = AgentConfig(
        base_url=ag.get("base_url", "", lambda v: _endpoint(v).rstrip("/"), "an http:// or https:// URL"),
        model=ag.get("model", "", _nonempty_str, "a model name"),
        api_key=_secret(ag, "api_key", min_len=1) or "",
        timeout=ag.get("timeout", AgentConfig.timeout, _positive_number, "a number of seconds > 0"),
        max_rounds=ag.get("max_rounds", AgentConfig.max_rounds, _positive_int, "a whole number > 0"),
        max_attempts=ag.get("max_attempts", AgentConfig.max_attempts, _positive_int, "a whole number > 0"),
        retry_base=ag.get("retry_base", AgentConfig.retry_base, _positive_number, "a number of seconds > 0"),
        lease=ag.get("lease", AgentConfig.lease, _positive_number, "a number of seconds > 0"),
    )
    ag.finish()

    w = _Section(path, "worker", doc.get("worker", {}), service)
    worker = WorkerConfig(
        socket=w.get("socket", WorkerConfig.socket, lambda v: Path(_nonempty_str(v)), "a path"),
        lmtp_socket=w.get("lmtp_socket", WorkerConfig.lmtp_socket, lambda v: Path(_nonempty_str(v)), "a path"),
        socket_mode=w.get("socket_mode", WorkerConfig.socket_mode, _mode, 'an octal mode like "0660"'),
        processes=w.get("processes", WorkerConfig.processes, _positive_int, "a whole number > 0"),
    )
    w.finish()

    dns_sec = _Section(path, "dns", doc.get("dns", {}), service)
    dns = DnsConfig(
        servers=dns_sec.get("servers", (), _dns_servers, 'a list of "IP" or "IP:PORT" strings'),
        timeout=dns_sec.get("timeout", DnsConfig.timeout, _positive_number, "a number > 0"),
        lookup_budget=dns_sec.get("lookup_budget", DnsConfig.lookup_budget, _positive_int,
                                  "a whole number > 0"),
        cache_size=dns_sec.get("cache_size", DnsConfig.cache_size, _non_negative_int, "a whole number >= 0"),
    )
    dns_sec.finish()

    m = _Section(path, "milter", doc.get("milter", {}), service)
    policy_sec = m.sub("policy")
    milter = MilterConfig(
        socket=m.get("socket", MilterConfig.socket, lambda v: Path(_nonempty_str(v)), "a path"),
        socket_mode=m.get("socket_mode", MilterConfig.socket_mode, _mode, 'an octal mode like "0660"'),
        trusted_networks=m.get("trusted_networks", MilterConfig.trusted_networks, _networks,
                               "a list of networks like 192.0.2.0/24"),
        timeout=m.get("timeout", MilterConfig.timeout, _positive_int, "a whole number > 0"),
        policy=_policy(policy_sec, PolicyConfig()),
        rspamd_url=m.get("rspamd_url", "", lambda v: v if v == "" else _endpoint(v).rstrip("/"),
                         'an http:// URL, or "" for none'),
        rspamd_timeout=m.get("rspamd_timeout", MilterConfig.rspamd_timeout, _positive_number, "a number > 0"),
        max_rsa_verifications=m.get("max_rsa_verifications", MilterConfig.max_rsa_verifications, _positive_int,
                                    "a whole number > 0"),
        arc_trusted_sealers=m.get("arc_trusted_sealers", (), _sealers, 'a list of domains like "lists.example.org"'),
        dmarc=m.get("dmarc", MilterConfig.dmarc, DmarcMode, " or ".join(f'"{d}"' for d in DmarcMode)),
        processes=m.get("processes", default_processes(), _milter_processes, f"a whole number from 1 to {MAX_MILTER_PROCESSES}"),
    )
    policy_sec.finish()
    m.finish()

    domains = []
    dom_table = doc.get("domains", {})
    if not isinstance(dom_table, dict):
        raise ConfigError(f"{path}: [domains]: must be a table of domain names")
    for name, table in dom_table.items():
        d = _Section(path, f'domains."{name}"', table, service)
        selectors = d.get("dkim_selectors", (), _selectors, "a list of selector names")
        domain = name.lower().rstrip(".")
        for sel in selectors if service.checks_keys else ():   # the keys are the milter's alone
            base = key_dir / domain / sel
            try:
                present = Path(f"{base}.rsa.pem").exists() or Path(f"{base}.ed25519").exists()
            except PermissionError:
                raise d.error("dkim_selectors", f"{key_dir / domain}: not readable by this user "
                                                "(the keys are for the milter's user: docs/operator.md)") from None
            if not present:
                raise d.error("dkim_selectors", f"no key for selector {sel!r} in {key_dir / domain} "
                                                f"(make one: agentmx keygen {domain} --selector {sel})")
        mta_sts = d.get("mta_sts", None, _one_of(("testing", "enforce")), "testing or enforce")
        tls_rpt = d.get("tls_rpt", None, lambda v: v if isinstance(v, str) and re.match(r"^(mailto:\S+@\S+|https://\S+)$", v)
                        else _raise(), "a mailto: or https: URI")
        domains.append(DomainConfig(name=domain, policy=_policy(d, milter.policy), dkim_selectors=selectors,
                                    mta_sts=mta_sts, tls_rpt=tls_rpt))
        d.finish()

    routes = []
    for r in _array_of_tables(doc, path, "routes", service):
        action = r.get("action", Route.action, _one_of(ROUTE_ACTIONS), " or ".join(ROUTE_ACTIONS))
        mode = r.get("mode", Route.mode, _one_of(ROUTE_MODES), " or ".join(ROUTE_MODES))
        if action == "agent":
            mode = "pull"           # agentmx runs the agent; the event is in the inbox API too
            if "prompt" not in r.table:
                raise r.error("prompt", 'is required with action = "agent"')
        r.used.update({"match", "endpoint"})
        for key in ("match",) + (("endpoint",) if mode != "pull" else ()):
            if key not in r.table:
                raise r.error(key, "is required" + (f" with mode = \"{mode}\"" if key == "endpoint" else ""))
        if mode == "pull" and "endpoint" in r.table:
            raise r.error("endpoint", 'is not used with mode = "pull" (use mode = "both" to POST too)')
        routes.append(Route(
            match=r.get("match", None, _match, "an address or @domain"),
            endpoint=r.get("endpoint", None, _endpoint, "a URL") if mode != "pull" else None,
            secret=_route_secret(r, required=mode != "pull"),
            mode=mode, action=action,
            prompt=r.get("prompt", "", _nonempty_str, "a string") if action == "agent" else "",
            forward_to=r.get("forward_to", (), _addresses, "a list of addresses") if action == "agent" else (),
            sends_per_hour=r.get("sends_per_hour", Route.sends_per_hour, _positive_int, "a whole number > 0")
            if action == "agent" else Route.sends_per_hour,
            timeout=r.get("timeout", Route.timeout, _positive_number, "a number of seconds > 0"),
            attachments=r.get("attachments", Route.attachments, _one_of(ATTACHMENT_MODES),
                              " or ".join(ATTACHMENT_MODES)),
            inline_max_bytes=r.get("inline_max_bytes", Route.inline_max_bytes, _positive_int,
                                   "a whole number of bytes > 0"),
            mailkite_signature=r.get("mailkite_signature", Route.mailkite_signature, _bool, "true or false"),
            ack=r.get("ack", Route.ack, AckMode, " or ".join(f'"{m}"' for m in AckMode)),
            trust=r.get("trust", Route.trust, _one_of(TRUST_POLICIES), ", ".join(TRUST_POLICIES)),
            block_senders=r.get("block_senders", (), _block_senders, f"a list of at most {MAX_BLOCK_SENDERS} "
                                'envelope senders ("spammer@example.net") or domains ("@bad.example")'),
        ))
        r.finish()
    if any(r.action == "agent" for r in routes):
        for key in ("base_url", "model"):
            if not getattr(agent, key):
                raise ag.error(key, 'is required when a route has action = "agent"')
    if routes and url_secret is None:
        raise server.error("url_secret", "is required with routes (it signs the raw-message and "
                           "attachment URLs in events): give url_secret or url_secret_file")

    store = _store(_Section(path, "store", doc.get("store", {}), service))

    sd = _Section(path, "send", doc.get("send", {}), service)
    for old in ("smtp_host", "smtp_port"):
        if old in sd.table:
            raise sd.error(old, 'is replaced by submit, the send API\'s own submission service (the milter '
                           'signs only what comes through it): remove smtp_host and smtp_port, add '
                           'postfix/master.cf.submit.fragment to master.cf, and set submit = '
                           f'"{DEFAULT_SUBMIT}" (the default) or "host:port"')
    send = SendConfig(
        submit=sd.get("submit", DEFAULT_SUBMIT, _submit_target, '"unix:/path/to/socket" or "host:port"'),
        auto_submitted=sd.get("auto_submitted", True, _bool, "true or false"),
        per_correspondent_per_hour=sd.get("per_correspondent_per_hour", SendConfig.per_correspondent_per_hour,
                                          _positive_int, "a whole number > 0"),
        per_thread_per_hour=sd.get("per_thread_per_hour", SendConfig.per_thread_per_hour, _positive_int,
                                   "a whole number > 0"),
        max_request_bytes=sd.get("max_request_bytes", SendConfig.max_request_bytes, _positive_int,
                                 "a whole number of bytes > 0"),
        max_upload_bytes=sd.get("max_upload_bytes", SendConfig.max_upload_bytes, _positive_int,
                                "a whole number of bytes > 0"),
        max_schedule_days=sd.get("max_schedule_days", SendConfig.max_schedule_days,
                                 lambda v: v if _positive_int(v) <= 365 else _raise(), "a whole number of days, 1 to 365"),
        fetch_allow_http=sd.get("fetch_allow_http", False, _bool, "true or false"),
        fetch_allow_networks=sd.get("fetch_allow_networks", (), _networks, "a list of networks like 192.0.2.0/24"),
        fetch_max_bytes=sd.get("fetch_max_bytes", SendConfig.fetch_max_bytes, _positive_int,
                               "a whole number of bytes > 0"),
        fetch_timeout=sd.get("fetch_timeout", SendConfig.fetch_timeout, _positive_number, "a number of seconds > 0"),
        verp=sd.get("verp", True, _bool, "true or false"),
        bounce_local=sd.get("bounce_local", SendConfig.bounce_local,
                            lambda v: v.lower() if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}", v)
                            and "+" not in v else _raise(), "a local part of 1 to 20 letters, digits, '.', '_' or '-'"),
    )
    sd.finish()
    for r in routes:
        if r.match.partition("@")[0] == send.bounce_local:
            raise sd.error("bounce_local", f"{send.bounce_local}@ is where delivery reports to what agents send "
                           f"arrive, and route {r.match!r} takes that address: choose another bounce_local or "
                           "another address for the route")

    api_keys = []
    for i, k in enumerate(_array_of_tables(doc, path, "api_keys", service)):
        name = k.get("name", f"key{i}", _nonempty_str, "a string")
        key = _secret(k, "key", min_len=24)
        if key is None:
            raise k.error("key", "give key or key_file (24 characters or more)")
        allow = k.get("allow", (), lambda v: tuple(_match(x) for x in v) if isinstance(v, list) and v else _raise(),
                      'a list of addresses ("agent@example.com") or domains ("@example.com")')
        if not allow:
            raise k.error("allow", "is required: the addresses or @domains this key may send as")
        api_keys.append(ApiKey(name=name, key=key, allow=allow))
        k.finish()
    if service.reads_secrets and len({k.key for k in api_keys}) != len(api_keys):
        raise ConfigError(f"{path}: [[api_keys]]: two keys are the same")
    if admin_key and any(k.key == admin_key for k in api_keys):
        raise ConfigError(f"{path}: [server] admin_key: the same as an [[api_keys]] key: give the console's "
                          "admin key its own value")

    signing = _signing(_Section(path, "signing", doc.get("signing", {}), service))

    return Config(path=path, authserv_id=authserv_id, data_dir=data_dir, public_url=public_url,
                  listen=listen, limits=limits, metrics_token=metrics_token, admin_key=admin_key,
                  url_secret=url_secret or "", url_ttl=url_ttl, key_dir=key_dir, service=service,
                  mail_host=mail_host, retention_days=retention_days, status_first_retry=status_first_retry,
                  status_retry_hours=status_retry_hours, dns=dns, milter=milter,
                  domains=tuple(domains), routes=tuple(routes), send=send, api_keys=tuple(api_keys),
                  worker=worker, agent=agent, signing=signing, store=store)


def _retired_mcp_listen(server: _Section) -> None:
    """[server] mcp_listen was MCP's own port until issue 15; MCP is now at /mcp on [server] listen.
    An old file still loads (a service must not fail to start over a key that no longer does
    anything); a value other than "" (off) is a warning naming the file, since clients of that
    port must move."""
    value = server.get("mcp_listen", "", lambda v: v if isinstance(v, str) else _raise(), '"IP:PORT" or ""')
    if value:
        log.warning("%s: [server] mcp_listen is no longer used: MCP is now served at /mcp on [server] listen "
                    "(the API's own port); remove the key and point MCP clients there", server.path)


def load_config(path: str | Path = DEFAULT_PATH, service: Service = Service.ALL) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8") from None
    return parse_config(text, path, service)
