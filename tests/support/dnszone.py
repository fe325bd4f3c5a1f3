"""A real DNS server on loopback (UDP and TCP, dnslib) serving zone data the tests set.

Zone format: {name: {TYPE: [value, ...]}} with TYPE one of A, AAAA, MX ([pref, host]), TXT and
SPF (a str, bytes, or a list of strings for a multi-string record), PTR, CNAME, NS; a TYPE whose
value is "TIMEOUT" (or a name whose value is "TIMEOUT") times out, and so does every type not
listed at a name with "TIMEOUT_OTHERS": True. Names not in the zone answer
NXDOMAIN; a known name without the asked type answers NODATA. A CNAME is chased inside the zone.

`timeout_mode` says what a timeout is: "drop" (no answer at all: the client's own timer runs
out) or "servfail" (an immediate SERVFAIL; the same temperror, faster). `silent = True` drops
every query, as a dead server would.
"""
from __future__ import annotations

import collections
import socket

from dnslib import AAAA, CNAME, MX, NS, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSRecord
from dnslib.dns import DNSError
from dnslib.server import DNSHandler, DNSLogger, DNSServer


def _bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    value = str(value)
    try:
        return value.encode("latin-1")     # YAML escapes like "\x80" are single bytes
    except UnicodeEncodeError:
        return value.encode("utf-8")


def txt_strings(value) -> list[bytes]:
    """A TXT value as DNS character-strings: a list stays as given, a long string is split."""
    if isinstance(value, (list, tuple)):
        return [_bytes(v) for v in value]
    data = _bytes(value)
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


class _Handler(DNSHandler):
    udplen = 512            # answers over 512 bytes are truncated over UDP: clients retry on TCP

    def get_reply(self, data):
        reply = self.server.resolver.resolve(DNSRecord.parse(data), self)
        packed = reply.pack()
        if self.protocol == "udp" and len(packed) > self.udplen:
            # dnslib's truncate() drops the question section as well, and dnspython then refuses
            # the answer as not its own instead of asking again over TCP: keep the question.
            truncated = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap), q=reply.q)
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed


class ZoneResolver:
    def __init__(self, zone: dict | None = None):
        self.zone: dict = {}
        self.timeout_mode = "servfail"
        self.silent = False
        self.queries = 0
        # (name, type) of the latest queries, oldest first: what a test checks was looked up
        self.asked: collections.deque = collections.deque(maxlen=1000)
        # TTL of every answer. 0 by default: tests change zones under a running milter, whose
        # cache must not hold old answers. With ttl > 0, negative answers carry an SOA too.
        self.ttl = 0
        self.set_zone(zone or {})

    def set_zone(self, zone: dict) -> None:
        self.zone = {_key(DNSLabel(str(k))): v for k, v in zone.items()}

    def _timeout(self, request):
        if self.timeout_mode == "drop":
            raise DNSError("dropped (simulated timeout)")
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply

    def resolve(self, request, handler):
        self.queries += 1
        self.asked.append((str(request.q.qname).rstrip(".").lower(), QTYPE[request.q.qtype]))
        if self.silent:
            raise DNSError("dropped (silent server)")
        reply = request.reply()
        qtype = QTYPE[request.q.qtype]
        label = request.q.qname
        seen = set()
        while True:
            entry = self.zone.get(_key(label))
            if entry is None:
                if not seen:
                    reply.header.rcode = RCODE.NXDOMAIN
                    self._soa(reply, label)
                return reply
            if entry == "TIMEOUT" or entry.get(qtype) == "TIMEOUT":
                return self._timeout(request)
            if entry.get("TIMEOUT_OTHERS") and qtype not in entry:
                return self._timeout(request)
            if qtype != "CNAME" and "CNAME" in entry and _key(label) not in seen:
                seen.add(_key(label))
                target = str(entry["CNAME"][0] if isinstance(entry["CNAME"], list) else entry["CNAME"])
                reply.add_answer(RR(label, QTYPE.CNAME, rdata=CNAME(target), ttl=self.ttl))
                label = DNSLabel(target)
                continue
            for value in entry.get(qtype, []) or []:
                reply.add_answer(RR(label, getattr(QTYPE, qtype), rdata=_rdata(qtype, value), ttl=self.ttl))
            if not entry.get(qtype):
                self._soa(reply, label)
            return reply

    def _soa(self, reply, label) -> None:
        if self.ttl > 0:
            apex = DNSLabel(label.label[-2:]) if len(label.label) >= 2 else label
            reply.add_auth(RR(apex, QTYPE.SOA, ttl=self.ttl, rdata=SOA("ns." + str(apex), "hostmaster." + str(apex),
                                                                       (1, 3600, 600, 86400, self.ttl))))


def _key(label: DNSLabel) -> tuple:
    return tuple(part.lower() for part in label.label)


def zone_from_records(records, zone: dict | None = None) -> dict:
    """The zone that publishes what `agentmx dns` prints (agentmx.dnsrecords.Record values)."""
    zone = {} if zone is None else zone
    for r in records:
        value = r.value.split(" ", 1) if r.rtype == "MX" else r.value
        values = zone.setdefault(r.name, {}).setdefault(r.rtype, [])
        if value not in values:          # the host's own SPF record is the same for every domain
            values.append(value)
    return zone


def _rdata(qtype: str, value):
    if qtype == "A":
        return A(value)
    if qtype == "AAAA":
        return AAAA(value)
    if qtype == "MX":
        pref, host = value
        return MX(str(host), int(pref))
    if qtype in ("TXT", "SPF"):
        return TXT(txt_strings(value))
    if qtype == "PTR":
        return PTR(str(value))
    if qtype == "CNAME":
        return CNAME(str(value))
    if qtype == "NS":
        return NS(str(value))
    raise ValueError(f"unsupported type {qtype}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DnsServer:
    """Start with .start(); .port is where it listens on 127.0.0.1, UDP and TCP."""

    def __init__(self, zone: dict | None = None, port: int | None = None, address: str = "127.0.0.1"):
        self.resolver = ZoneResolver(zone)
        self.address = address
        self.port = port or free_port()
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.udp = DNSServer(self.resolver, address=address, port=self.port, logger=quiet, handler=_Handler)
        self.tcp = DNSServer(self.resolver, address=address, port=self.port, tcp=True, logger=quiet,
                             handler=_Handler)

    def start(self) -> "DnsServer":
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self) -> None:
        for s in (self.udp, self.tcp):
            s.stop()
            s.server.server_close()

    def set_zone(self, zone: dict) -> None:
        self.resolver.set_zone(zone)

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        return ((self.address, self.port),)


if __name__ == "__main__":       # serve a JSON zone by hand: python dnszone.py zone.json PORT [TTL]
    import json
    import sys
    import time
    srv = DnsServer(json.load(open(sys.argv[1])), port=int(sys.argv[2]))
    srv.resolver.ttl = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    srv.start()
    print(f"serving on 127.0.0.1:{srv.port}", flush=True)
    while True:
        time.sleep(3600)
