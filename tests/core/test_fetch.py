"""Attachments by URL (agentmx/fetch.py): the SSRF guard.

The decision tables (check_url, address_allowed) are pure; the fetches are real: names resolved by
the loopback DNS server through agentmx's Resolver, a real web server on 127.0.0.1 that counts
the connections it accepts. A refused URL must be refused BEFORE any connection: the server's
count stays 0, and the DNS server's log shows the lookup that decided it."""
from __future__ import annotations

import ipaddress
import ssl
import time

import pytest

from support.webfiles import WebFiles, make_cert, slow

from agentmx.fetch import FetchFailed, FetchPolicy, FetchRefused, address_allowed, check_url, fetch

DEFAULT = FetchPolicy()
LOOPBACK_OK = FetchPolicy(allow_http=True, allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), max_bytes=10_000,
                          timeout=3)


@pytest.mark.unit
@pytest.mark.parametrize("ip", [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",           # loopback, private, CGNAT
    "169.254.169.254", "169.254.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "239.1.2.3",  # metadata, multicast
    "240.0.0.1", "192.0.2.1", "198.18.0.1",                                                    # reserved, doc, bench
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1",                    # v6 specials, multicast
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",                          # IPv4-mapped tricks
    "64:ff9b::a9fe:a9fe", "64:ff9b::808:808", "2002:7f00:1::1", "2001:0:4136:e378::1",        # NAT64, 6to4, Teredo
    "2001:db8::1",
    "::127.0.0.1", "::7f00:1", "::ffff:0:7f00:1", "fec0::1",       # IPv4-compatible, IPv4-translated, site-local
])
def test_non_public_addresses_are_refused(ip):
    assert address_allowed(ip, DEFAULT) != ""


@pytest.mark.unit
@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_unicast_addresses_are_allowed(ip):
    assert address_allowed(ip, DEFAULT) == ""


@pytest.mark.unit
def test_the_operators_networks_are_allowed_and_nothing_else():
    assert address_allowed("127.0.0.1", LOOPBACK_OK) == ""
    assert address_allowed("::ffff:127.0.0.1", LOOPBACK_OK) == ""          # judged as its IPv4
    assert address_allowed("10.0.0.1", LOOPBACK_OK) != ""
    assert address_allowed("169.254.169.254", LOOPBACK_OK) != ""
    assert address_allowed("not an ip", LOOPBACK_OK) != ""


@pytest.mark.unit
@pytest.mark.parametrize("url,policy,ok", [
    ("https://files.example.com/a.pdf", DEFAULT, True),
    ("https://files.example.com:8443/a.pdf?x=1", DEFAULT, True),
    ("https://93.184.216.34/a.pdf", DEFAULT, True),
    ("http://files.example.com/a.pdf", DEFAULT, False),                   # https only by default
    ("http://files.example.com/a.pdf", LOOPBACK_OK, True),
    ("ftp://files.example.com/a.pdf", LOOPBACK_OK, False),
    ("file:///etc/passwd", LOOPBACK_OK, False),
    ("gopher://files.example.com/", LOOPBACK_OK, False),
    ("https://user:pw@files.example.com/a.pdf", DEFAULT, False),
    ("https://files.example.com@127.0.0.1/a.pdf", DEFAULT, False),
    ("https:///a.pdf", DEFAULT, False),
    ("https://fïles.example.com/a.pdf", DEFAULT, False),
    ("https://files_example.com/a.pdf", DEFAULT, False),
    ("https://files.example.com:99999/a.pdf", DEFAULT, False),
    ("https://[::1]/a.pdf", DEFAULT, True),                                # allowed as a URL; the address decides
    ("https://files.example.com/a b.pdf", DEFAULT, False),
    ("https://files.example.com/a.pdf\r\nX-Injected: 1", DEFAULT, False),
])
def test_url_decision_table(url, policy, ok):
    if ok:
        check_url(url, policy)
    else:
        with pytest.raises(FetchRefused):
            check_url(url, policy)


# --- real fetches --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def web():
    files = {"/report.pdf": (200, {"Content-Type": "application/pdf"}, b"%PDF-1.4 the report\n"),
             "/big": (200, {}, b"x" * 20_000),
             "/slow": slow(0.5, 100),
             "/loop": (302, {"Location": "/loop"}, b""),
             "/to-meta": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
             "/to-report": (302, {"Location": "/report.pdf"}, b"")}
    server = WebFiles(files).start()
    yield server
    server.stop()


@pytest.fixture
def resolver(dns_server):
    from agentmx.resolver import Resolver
    return Resolver(dns_server.servers, timeout=1.0)


def lookups_of(dns_server, name: str) -> list:
    return [q for q in dns_server.resolver.asked if q[0] == name]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.9", "::1",
                                     "::ffff:7f00:1", "fe80::1"])
def test_a_name_for_a_non_public_address_is_refused_before_any_connection(web, zone, resolver, address):
    rtype = "AAAA" if ":" in address else "A"
    dns = zone({"files.remote.test": {rtype: [address]}})
    dns.resolver.asked.clear()
    before = web.connections
    with pytest.raises(FetchRefused, match="files.remote.test"):
        fetch(f"https://files.remote.test:{web.port}/report.pdf", resolver, DEFAULT)
    assert web.connections == before                                  # nothing reached the listening socket
    assert ("files.remote.test", rtype) in lookups_of(dns, "files.remote.test")   # decided by our own DNS


def test_a_name_with_one_public_and_one_private_address_is_refused(web, zone, resolver):
    zone({"mixed.remote.test": {"A": ["8.8.8.8", "127.0.0.1"]}})
    before = web.connections
    with pytest.raises(FetchRefused, match="127.0.0.1"):
        fetch(f"https://mixed.remote.test:{web.port}/report.pdf", resolver, DEFAULT)
    assert web.connections == before


def test_an_ip_literal_is_checked_without_dns(web, zone, resolver):
    dns = zone({})
    before, asked = web.connections, len(dns.resolver.asked)
    with pytest.raises(FetchRefused):
        fetch(f"https://127.0.0.1:{web.port}/report.pdf", resolver, DEFAULT)
    with pytest.raises(FetchRefused):
        fetch(f"https://[::ffff:7f00:1]:{web.port}/report.pdf", resolver, DEFAULT)
    assert web.connections == before and len(dns.resolver.asked) == asked


def test_http_is_refused_by_default_before_dns(web, zone, resolver):
    dns = zone({"files.remote.test": {"A": ["8.8.8.8"]}})
    dns.resolver.asked.clear()
    before = web.connections
    with pytest.raises(FetchRefused, match="https"):
        fetch(f"http://files.remote.test:{web.port}/report.pdf", resolver, DEFAULT)
    assert web.connections == before and lookups_of(dns, "files.remote.test") == []


def test_dns_failure_is_a_failure_not_a_fetch(web, zone, resolver):
    zone({"files.remote.test": "TIMEOUT"})
    with pytest.raises(FetchFailed, match="DNS"):
        fetch(f"https://files.remote.test:{web.port}/report.pdf", resolver, DEFAULT)
    zone({})
    with pytest.raises(FetchFailed, match="no address"):
        fetch(f"https://nowhere.remote.test:{web.port}/report.pdf", resolver, DEFAULT)


def test_allowed_by_the_operator_it_fetches_with_the_name_as_host(web, zone, resolver):
    zone({"files.remote.test": {"A": ["127.0.0.1"]}})
    got = fetch(f"http://files.remote.test:{web.port}/report.pdf", resolver, LOOPBACK_OK)
    assert (got.data, got.content_type, got.filename) == (b"%PDF-1.4 the report\n", "application/pdf", "report.pdf")
    assert web.hosts[-1] == f"files.remote.test:{web.port}"
    got = fetch(f"http://files.remote.test:{web.port}/to-report", resolver, LOOPBACK_OK)     # a redirect, checked
    assert got.data.startswith(b"%PDF") and got.url.endswith("/report.pdf")


def test_a_redirect_to_a_forbidden_address_is_refused_before_connecting_there(web, zone, resolver):
    zone({"files.remote.test": {"A": ["127.0.0.1"]}, "inner.remote.test": {"A": ["10.0.0.7"]}})
    with pytest.raises(FetchRefused, match="169.254.169.254"):
        fetch(f"http://files.remote.test:{web.port}/to-meta", resolver, LOOPBACK_OK)
    web.routes["/to-inner"] = (302, {"Location": f"http://inner.remote.test:{web.port}/report.pdf"}, b"")
    with pytest.raises(FetchRefused, match="10.0.0.7"):
        fetch(f"http://files.remote.test:{web.port}/to-inner", resolver, LOOPBACK_OK)


def test_redirects_size_and_time_are_capped(web, zone, resolver):
    zone({"files.remote.test": {"A": ["127.0.0.1"]}})
    with pytest.raises(FetchFailed, match="redirects"):
        fetch(f"http://files.remote.test:{web.port}/loop", resolver, LOOPBACK_OK)
    with pytest.raises(FetchFailed, match="larger than"):
        fetch(f"http://files.remote.test:{web.port}/big", resolver, LOOPBACK_OK)
    started = time.monotonic()
    with pytest.raises(FetchFailed):
        fetch(f"http://files.remote.test:{web.port}/slow", resolver, LOOPBACK_OK)
    assert time.monotonic() - started < LOOPBACK_OK.timeout + 1.5


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(zone, resolver):
    """A server that sends its status line and then its headers one byte at a time, each byte
    within the socket timeout, held a 2-second fetch for as long as it liked (10.8 s measured with
    12 bytes): a watchdog ends the fetch at its deadline, whatever it is waiting for."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def drip():
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.5):
                try:
                    conn.sendall(b"X")
                except OSError:
                    return
    threading.Thread(target=drip, daemon=True).start()
    zone({"drip.remote.test": {"A": ["127.0.0.1"]}})
    policy = FetchPolicy(allow_http=True, allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(FetchFailed, match="not fetched within 2s"):
            fetch(f"http://drip.remote.test:{srv.getsockname()[1]}/f.txt", resolver, policy)
        assert time.monotonic() - started < 3.5
    finally:
        stop.set()
        srv.close()


def test_https_goes_to_the_checked_address_with_sni_and_the_certificate_of_the_name(tmp_path, zone, resolver):
    cert, key = make_cert(tmp_path, ["files.remote.test"])
    server = WebFiles({"/a.txt": (200, {"Content-Type": "text/plain"}, b"over tls")}, tls=(cert, key)).start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        policy = FetchPolicy(allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), timeout=5)
        zone({"files.remote.test": {"A": ["127.0.0.1"]}, "other.remote.test": {"A": ["127.0.0.1"]}})
        assert fetch(f"https://files.remote.test:{server.port}/a.txt", resolver, policy, context).data == b"over tls"
        with pytest.raises(FetchFailed):          # the same address under a name the certificate is not for
            fetch(f"https://other.remote.test:{server.port}/a.txt", resolver, policy, context)
    finally:
        server.stop()
