"""iprev (RFC 8601 section 3): forward-confirmed reverse DNS of the SMTP client.

The client address's PTR names are looked up, then each name's A (IPv4) or AAAA (IPv6) records;
the result is `pass` when one name maps back to the address. Pure: DNS only through the injected
`Lookups` session (its budget and cache shared with SPF, DKIM and DMARC).

Result words per RFC 8601 section 2.7.3:
- pass: a PTR name's forward records include the address;
- fail: PTR names were found but none maps back (its forward lookup gave other addresses, none,
  or NXDOMAIN), or every PTR name is no valid host name;
- permerror: no PTR data is published for the address (NXDOMAIN, or NOERROR without records), or
  the address is no IP address;
- temperror: a lookup failed (timeout, SERVFAIL, the lookup budget): never fail.

Bounded: at most MAX_NAMES PTR names are checked (one A/AAAA query each), and the first lookup
that fails ends the check with temperror, so that a PTR set pointing at a dead server costs at
most two resolver timeouts.
"""
from __future__ import annotations

import ipaddress
import re

import dns.reversename

from agentmx.resolver import DnsTempError, Lookups

from .results import IprevResult

MAX_NAMES = 10
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def is_hostname(name: str) -> bool:
    """A host name (RFC 1123 letters, digits, hyphens): at least two labels, at most 253 characters."""
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address((text or "").strip().strip("[]").removeprefix("IPv6:"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped                   # ::ffff:192.0.2.1 is an IPv4 client
    return ip


def check(lookups: Lookups, client_ip: str) -> IprevResult:
    try:
        ip = _address(client_ip)
    except ValueError:
        return IprevResult("permerror", str(client_ip or ""), reason="the client address is no IP address")
    addr = str(ip)
    try:
        ptr = lookups.lookup(dns.reversename.from_address(addr).to_text(omit_final_dot=True), "PTR")
    except DnsTempError as exc:
        return IprevResult("temperror", addr, reason=f"PTR lookup: {exc}")
    seen = dict.fromkeys(str(n).lower().rstrip(".") for n in ptr.records[:MAX_NAMES * 4])
    names = tuple(n for n in seen if is_hostname(n))[:MAX_NAMES]
    if not ptr.records:
        return IprevResult("permerror", addr, reason=f"no PTR record for {addr}")
    if not names:
        return IprevResult("fail", addr, reason=f"no PTR name of {addr} is a valid host name")
    rdtype = "A" if ip.version == 4 else "AAAA"
    for name in names:
        try:
            answer = lookups.lookup(name, rdtype)
        except DnsTempError as exc:
            return IprevResult("temperror", addr, names, reason=f"{rdtype} lookup: {exc}")
        for record in answer.records:
            try:
                if _address(record) == ip:
                    return IprevResult("pass", addr, names, confirmed=name)
            except ValueError:
                continue
    return IprevResult("fail", addr, names, reason=f"no PTR name maps back to {addr}")
