"""Fetching an attachment by URL for a sender (POST /v1/send, /v1/attachments), safe against SSRF.

A caller names a URL; serve fetches it from inside the operator's network. So, for every URL of
the chain (the first and each redirect):

    check_url(url, policy)                      https only (http only with [send] fetch_allow_http);
                                                no user:password@, an ASCII host name or IP literal
    addresses(host, resolver)                   A and AAAA through agentmx's own resolver ([dns]
                                                servers), never the system's
    address_allowed(ip, policy)                 every address must be public unicast (ipaddress
                                                is_global, and not multicast, not NAT64, 6to4 or
                                                Teredo, an IPv4-mapped address judged as its IPv4),
                                                or inside [send] fetch_allow_networks (the operator's)
    connect to THAT address                     no second resolution (DNS rebinding): the socket
                                                goes to the checked IP; TLS SNI, certificate check
                                                and the Host header use the name

A refusal happens before any connection is made. Redirects: at most MAX_REDIRECTS, each checked
the same way. The whole chain within `timeout` seconds (a watchdog shuts the socket at the
deadline, whatever the fetch is waiting for: the TLS handshake, a status line or headers sent a
byte at a time, the body), the body within `max_bytes`.
Pure decisions (check_url, address_allowed) are separate from the I/O (fetch) for the unit tests.
"""
from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from .resolver import DnsTempError

MAX_REDIRECTS = 3
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 64 * 1024
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
# IPv6 ranges that carry an IPv4 address a gateway may turn into a private one.
# NAT64 (64:ff9b::/96, /48), 6to4 (2002::/16), Teredo (2001::/32), IPv4-compatible (::/96),
# IPv4-translated (SIIT, ::ffff:0:a.b.c.d), and the deprecated site-local fec0::/10.
_EMBEDDING = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32",
                                                     "::/96", "::ffff:0:0:0/96", "fec0::/10"))


class FetchRefused(Exception):
    """The URL or an address it resolves to may not be fetched (nothing was connected to)."""


class FetchFailed(Exception):
    """It could not be fetched: DNS, the connection, TLS, the server's answer, a cap."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_http: bool = False
    allow_networks: tuple = ()          # ipaddress networks the operator allows beyond public unicast
    max_bytes: int = 10_000_000
    timeout: float = 20.0               # seconds for the whole chain: DNS, connects, redirects, body
    max_redirects: int = MAX_REDIRECTS


@dataclass(frozen=True)
class Fetched:
    url: str                            # the last URL of the chain
    data: bytes
    content_type: str                   # as the server said ("" when it said nothing)
    filename: str                       # the last path segment of the URL ("" when none)


# --- the pure decisions -----------------------------------------------------------------------------


def check_url(url: str, policy: FetchPolicy) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL we may try; FetchRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchRefused("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and policy.allow_http):
        raise FetchRefused(f"{scheme or 'no'} scheme: only https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise FetchRefused("a URL with a user name or password is not fetched")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise FetchRefused("the URL has spaces, control characters or non-ASCII characters (give its encoded form)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchRefused("the URL has no host name (or one that is not ASCII: give its xn-- form)")
    if not (_HOST.match(host) or _literal(host) is not None):
        raise FetchRefused("the URL's host is not a host name or an IP address")
    return scheme, host.lower(), port or (443 if scheme == "https" else 80)


def address_allowed(ip: str, policy: FetchPolicy) -> str:
    """'' when `ip` may be connected to, else why not."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped                   # ::ffff:127.0.0.1 is 127.0.0.1
        elif any(addr in net for net in _EMBEDDING):
            return f"{addr} embeds an IPv4 address (NAT64, 6to4, Teredo): not fetched"
    if any(addr.version == net.version and addr in net for net in policy.allow_networks):
        return ""
    if addr.is_multicast:
        return f"{addr} is a multicast address"
    if not addr.is_global:
        kind = ("loopback" if addr.is_loopback else "link-local (cloud metadata)" if addr.is_link_local
                else "private" if addr.is_private else "not public")
        return f"{addr} is a {kind} address"
    return ""


def _literal(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# --- resolution and the fetch ------------------------------------------------------------------------


def addresses(host: str, resolver) -> list[str]:
    """The addresses of a host: itself for an IP literal, else its A and AAAA records through
    `resolver` (agentmx.resolver.Resolver). FetchFailed when there are none or DNS fails."""
    literal = _literal(host)
    if literal is not None:
        return [str(literal)]
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            found += [str(r) for r in resolver.lookup(host + ".", rdtype).records]
        except DnsTempError as exc:
            raise FetchFailed(f"DNS: {exc}") from None
    if not found:
        raise FetchFailed(f"{host} has no address")
    return found


def pick(host: str, resolver, policy: FetchPolicy) -> str:
    """The address to connect to: every address of the host must be allowed (a name that answers
    one public and one private address is refused, not half-used)."""
    found = addresses(host, resolver)
    for ip in found:
        why = address_allowed(ip, policy)
        if why:
            raise FetchRefused(f"{host}: {why}")
    return found[0]


class _Pinned(http.client.HTTPSConnection):
    """HTTPS to a checked address: the socket to `ip`, SNI and the certificate checked for the name."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self.ip = ip

    def connect(self):
        self.raw = sock = socket.create_connection((self.ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedPlain(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.ip = ip

    def connect(self):
        self.raw = self.sock = socket.create_connection((self.ip, self.port), self.timeout)


class _Watchdog:
    """Shuts the connection's socket when the fetch's time is up. A socket timeout bounds one
    read, not a server that sends its headers (or the TLS handshake) a byte at a time just
    faster than it: measured, a 2 s fetch held for 10.8 s, and longer for a slower drip."""

    def __init__(self, conn, seconds: float):
        self.conn, self.fired = conn, False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = getattr(self.conn, "raw", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:               # not connected yet, or closed already
                pass

    def cancel(self) -> None:
        self.timer.cancel()


def fetch(url: str, resolver, policy: FetchPolicy, context: ssl.SSLContext | None = None,
          clock=time.monotonic) -> Fetched:
    """GET `url` under `policy`; FetchRefused (nothing connected) or FetchFailed."""
    deadline = clock() + policy.timeout
    context = context or ssl.create_default_context()
    for _ in range(policy.max_redirects + 1):
        scheme, host, port = check_url(url, policy)
        ip = pick(host, resolver, policy)
        remaining = deadline - clock()
        if remaining <= 0:
            raise FetchFailed(f"not fetched within {policy.timeout:g}s")
        conn = (_Pinned(host, port, ip, remaining, context) if scheme == "https"
                else _PinnedPlain(host, port, ip, remaining))
        watchdog = _Watchdog(conn, remaining)
        try:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": "agentmx-fetch", "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if resp.status in REDIRECTS:
                location = resp.getheader("location")
                if not location:
                    raise FetchFailed(f"a redirect ({resp.status}) without Location")
                url = urljoin(url, location.strip())
                continue
            if resp.status != 200:
                raise FetchFailed(f"the server answered {resp.status}")
            data = _read(conn, resp, policy, deadline, clock)
            if watchdog.fired:            # the socket was shut under the read: what came is not the file
                raise FetchFailed(f"not fetched within {policy.timeout:g}s")
            name = parts.path.rstrip("/").rpartition("/")[2]
            return Fetched(url, data, resp.getheader("content-type") or "", name)
        except (OSError, http.client.HTTPException) as exc:       # ssl.SSLError is an OSError
            if watchdog.fired:
                raise FetchFailed(f"not fetched within {policy.timeout:g}s") from None
            raise FetchFailed(f"{host}: {exc.__class__.__name__}") from None
        finally:
            watchdog.cancel()
            conn.close()
    raise FetchFailed(f"more than {policy.max_redirects} redirects")


def _read(conn, resp, policy: FetchPolicy, deadline: float, clock) -> bytes:
    length = resp.getheader("content-length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise FetchFailed(f"the file is larger than {policy.max_bytes} bytes")
    chunks, size = [], 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise FetchFailed(f"not fetched within {policy.timeout:g}s")
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchFailed(f"the file is larger than {policy.max_bytes} bytes")
        chunks.append(chunk)
