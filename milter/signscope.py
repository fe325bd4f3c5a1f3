"""Whose mail the milter signs: who submitted a message, what they may send as, sign or not and why.

Pure functions; the milter (service.py) gathers the facts and calls them.

    submitter(client, config)                        -> Submitter
    decide(submitter, login, from_values, config, keyed_domains) -> Decision

Who submitted, from what Postfix tells the milter:
  SASL     the client logged in ({auth_authen}); it may send as its [[signing.sasl]] entry allows
  API      the send API's own submission service ({daemon_name} = [signing] api_service): as any
           [[api_keys]] allow and any action = "agent" route's match (serve and the agent worker
           check the key or the route before they submit; this is the second check)
  LOCAL    sendmail(1)/pickup, or an smtpd on a unix-domain socket that is not the API's
  TRUSTED  an SMTP client in [milter] trusted_networks
  both LOCAL and TRUSTED may send as [signing] local_from (default: nothing)
  OUTSIDE  everyone else: verified, never signed

Signed only with exactly one From address, allowed for the submitter, whose domain has keys.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from email.utils import getaddresses

from agentmx.config import Config, RouteAction, allows

from .sign import from_domain


class Submitter(enum.Enum):
    OUTSIDE = "outside"
    SASL = "sasl"
    API = "api"
    LOCAL = "local"
    TRUSTED = "trusted"

    @property
    def ours(self) -> bool:
        """Mail we sent (not verified; signed when allowed), as opposed to mail we receive."""
        return self is not Submitter.OUTSIDE


@dataclass(frozen=True)
class Client:
    """What the milter knows of the SMTP session when MAIL FROM arrives."""
    inet: bool              # an IPv4/IPv6 client with a real port (not sendmail/pickup, not a unix socket)
    ip: str
    daemon_name: str        # {daemon_name}: the master.cf service's milter_macro_daemon_name
    login: str              # {auth_authen}: the SASL login, "" when none


@dataclass(frozen=True)
class Decision:
    sign: bool
    domain: str | None      # the From domain to sign for (when sign)
    reason: str             # for the log: why (not) signed


def submitter(client: Client, config: Config) -> Submitter:
    if client.login:
        return Submitter.SASL
    if client.daemon_name and client.daemon_name == config.signing.api_service:
        return Submitter.API
    if not client.inet:
        return Submitter.LOCAL
    if config.milter.is_trusted(client.ip):
        return Submitter.TRUSTED
    return Submitter.OUTSIDE


def allowed(who: Submitter, login: str, config: Config) -> tuple[str, ...]:
    """The addresses and @domains `who` may have signed."""
    if who is Submitter.SASL:
        return config.signing.sasl_allow(login) or ()
    if who is Submitter.API:
        return tuple(dict.fromkeys([a for k in config.api_keys for a in k.allow] +
                                   [r.match for r in config.routes if r.action is RouteAction.AGENT]))
    if who in (Submitter.LOCAL, Submitter.TRUSTED):
        return config.signing.local_from
    return ()


def describe(who: Submitter, login: str, config: Config) -> str:
    return {Submitter.SASL: f"SASL login {login!r}",
            Submitter.API: f"the send API (service {config.signing.api_service})",
            Submitter.LOCAL: "local submission",
            Submitter.TRUSTED: "a trusted_networks client",
            Submitter.OUTSIDE: "an outside client"}[who]


def single_from(from_values: list[str]) -> str | None:
    """The one address of the one From field, lower case; None for none, several, or unreadable."""
    if len(from_values) != 1:
        return None
    addresses = [addr for _, addr in getaddresses(from_values) if addr]
    if len(addresses) != 1 or addresses[0].count("@") != 1:
        return None
    local, _, domain = addresses[0].partition("@")
    if not local or not domain:
        return None
    return addresses[0].lower().rstrip(".")


def decide(who: Submitter, login: str, from_values: list[str], config: Config,
           keyed_domains) -> Decision:
    """Sign or not, and why; `keyed_domains`: the domains we hold DKIM keys for."""
    if not who.ours:
        return Decision(False, None, "an outside client: verified, never signed")
    address = single_from(from_values)
    domain = from_domain(from_values)
    if address is None or domain is None or address.rpartition("@")[2] != domain:
        return Decision(False, None, f"not exactly one From address ({len(from_values)} From field(s))")
    allow = allowed(who, login, config)
    if who is Submitter.SASL and config.signing.sasl_allow(login) is None:
        return Decision(False, domain, f"{describe(who, login, config)} has no [[signing.sasl]] entry "
                                       f"(From {address})")
    if not allows(allow, address):
        return Decision(False, domain, f"{describe(who, login, config)} may not send as {address} "
                                       f"(allowed: {', '.join(allow) or 'nothing'})")
    if domain not in keyed_domains:
        return Decision(False, domain, f"no DKIM key for {domain}")
    return Decision(True, domain, f"{describe(who, login, config)} may send as {address}")
