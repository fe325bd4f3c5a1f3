"""Nothing is lost under faults: a batch of signed messages goes over SMTP into a private Postfix
with the agentmx milter and deliver, while one fault at a time hits the pipeline:

  endpoint-down        the endpoint refuses connections for a while
  endpoint-5xx         it answers 500
  endpoint-slow        it answers after the route's timeout
  endpoint-killed      it reads the POST and drops the connection without answering
  milter-killed        the milter is SIGKILLed under load and restarted
  postfix-restart      Postfix is stopped and started
  data-read-only       the data directory cannot be written
  dns-silent           dns-silent           DNS stops answering
  agentmx-missing      the agentmx program is gone (an upgrade replacing it, a broken install)

The sending side behaves as an MTA does: a 4xx or a refused connection is retried later. After
the fault is lifted and Postfix's queue flushed, every message Postfix accepted must have reached
the endpoint with a 2xx, every copy of one message must carry the same webhook-id, and every event
must carry our own verification (so nothing slipped in while the milter was down). The counts are
printed (and reported): sent, accepted, delivered, duplicates, lost.

The world runs on the embedded backend and on postgres (the session's PostgreSQL and S3): on
postgres, the endpoint killed mid-POST and Postfix stopped and started (embedded_only marks the others).

AGENTMX_FAULT_BATCH sets the batch size (100 here; docs/hardening.md has a run of 500 each)."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_helpers import RsaKey
from support.backends import BACKENDS, migrate, store_config
from support.faultrun import BATCH, run_fault, sender_zone, take_many_clients
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, install_deliver
from support.receiver import Receiver

AUTHSERV = "mx.faults.test"
SECRET = "whsec_" + base64.b64encode(b"fault-secret-fault-secret-fault!").decode()
URL_SECRET = "fault-url-secret-0123456789"
AGENTMX = str(Path(sys.executable).with_name("agentmx"))
# On postgres: the endpoint killed mid-POST (its retries find their event and keep its id),
# Postfix stopped under the senders (their copies under new queue ids are one event) and the
# logs' secrets. The other faults are the endpoint's, the milter's, Postfix's, DNS's, the
# program's: embedded only, to keep the suite's time (test_e2e_deliver runs an endpoint down and
# a 500 on both backends). PostgreSQL and S3 themselves going down: tests/e2e/test_store_faults.py.
embedded_only = pytest.mark.parametrize("world", ["embedded"], indirect=True)
POSTGRES_BATCH = min(BATCH, 40)


@pytest.fixture(scope="module")
def key():
    return RsaKey()


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, dns_server, key):
    zone = sender_zone(key)
    dns_server.set_zone(zone)
    receiver = Receiver()
    pf = PostfixInstance("faults", AUTHSERV)
    data = pf.base / "data-agentmx"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")
    server = "\n".join([f'data_dir = "{data}"', 'public_url = "http://127.0.0.1:8025"', f'url_secret = "{URL_SECRET}"'])
    route = "\n".join(["[[routes]]", 'match = "agent@faults.test"', f'endpoint = "{receiver.url}"',
                       f'secret = "{SECRET}"', "timeout = 2"])
    route += "\n" + store_config(request, request.param, pf.base / "secrets")
    cfg_path, sock = agentmx_config(pf, AUTHSERV, dns_server.port, milter="trusted_networks = []", server=server,
                                    rest=route, dns_timeout=0.5)
    migrate(cfg_path)
    # The transport runs agentmx through a link the "agentmx missing" fault can take away.
    link = pf.base / "bin" / "agentmx"
    link.parent.mkdir()
    link.symlink_to(AGENTMX)
    install_deliver(pf, cfg_path, "faults.test", str(link))
    # Retries come from the test's flushes, not from Postfix's timers; smtpd answers many clients.
    take_many_clients(pf)
    milter = MilterProcess(cfg_path, sock, pf.base / "milter.log").start()
    pf.start()
    w = {"pf": pf, "receiver": receiver, "milter": milter, "data": data, "zone": zone, "dns": dns_server,
         "cfg": cfg_path, "link": link, "authserv": AUTHSERV, "backend": request.param}
    yield w
    w["milter"].stop()
    pf.stop()
    receiver.stop()


@embedded_only
def test_endpoint_down(world, key):
    r = world["receiver"]
    before = world["pf"].log().count("Connection refused")
    run_fault(world, key, "endpoint-down", r.stop, r.start)
    assert world["pf"].log().count("Connection refused") > before      # deliver deferred, saying why


@embedded_only
def test_endpoint_5xx(world, key):
    r = world["receiver"]
    run_fault(world, key, "endpoint-5xx", lambda: setattr(r, "default", (500, 0.0)),
              lambda: setattr(r, "default", (200, 0.0)))


@embedded_only
def test_endpoint_slow_past_the_timeout(world, key):
    r = world["receiver"]
    run_fault(world, key, "endpoint-slow", lambda: setattr(r, "default", (200, 3.0)),
              lambda: setattr(r, "default", (200, 0.0)), hold=4.0)


def test_endpoint_killed_in_the_middle_of_a_post(world, key):
    r = world["receiver"]
    batch = BATCH if world["backend"] == "embedded" else POSTGRES_BATCH
    counts = run_fault(world, key, "endpoint-killed", lambda: setattr(r, "default", (0, 0.0)),
                       lambda: setattr(r, "default", (200, 0.0)), batch=batch)
    assert counts["duplicates"] > 0      # the endpoint saw those POSTs; the retries carry the same id


@embedded_only
def test_milter_killed_and_restarted_under_load(world, key):
    m = world["milter"]
    counts = run_fault(world, key, "milter-killed", m.kill, lambda: m.start())
    assert counts["smtp retries"] > 0    # while it was down, Postfix answered 4xx: nothing got in unverified


def test_postfix_stopped_and_started(world, key):
    """On both backends: a copy the client sends again after Postfix went down under it (a new
    queue id) is found in the store and keeps the first copy's id (deliver/dedup.py)."""
    pf = world["pf"]
    batch = BATCH if world["backend"] == "embedded" else POSTGRES_BATCH
    counts = run_fault(world, key, "postfix-restart", lambda: pf.stop(remove=False), pf.start, batch=batch)
    assert counts["smtp retries"] > 0


@embedded_only
def test_data_directory_read_only(world, key):
    data = world["data"]

    def lock():
        subprocess.run(["chmod", "-R", "a-w", str(data)], check=True)

    def unlock():
        subprocess.run(["chmod", "-R", "u+w", str(data)], check=True)
    before = world["pf"].log().count("data directory")
    run_fault(world, key, "data-read-only", lock, unlock)
    assert world["pf"].log().count("data directory") > before     # deliver deferred, saying why


@embedded_only
def test_dns_stops_answering(world, key):
    resolver = world["dns"].resolver
    counts = run_fault(world, key, "dns-silent", lambda: setattr(resolver, "silent", True),
                       lambda: setattr(resolver, "silent", False))
    unverifiable = [e for e in counts["events"] if "temperror" in (e["auth"]["spf"], e["auth"]["dkim"])]
    assert unverifiable                  # accepted with temperror while DNS was silent, never fail
    assert all(e["auth"]["dmarc"] != "fail" for e in unverifiable)


@embedded_only
def test_agentmx_missing_during_an_upgrade(world, key):
    """pipe(8) bounces on an exit status outside sysexits; Python exits 2 when the program is
    gone. The shell wrapper in master.cf.fragment makes that 75: deferred, never bounced."""
    link = world["link"]
    before = world["pf"].log().count("agentmx: not found")

    def remove():
        link.unlink()

    def restore():
        link.symlink_to(AGENTMX)
    run_fault(world, key, "agentmx-missing", remove, restore)
    log = world["pf"].log()
    assert log.count("agentmx: not found") > before and "status=bounced" not in log    # sh said 127: deferred


def test_no_secret_in_any_log(world):
    logs = world["pf"].log() + world["milter"].log()
    assert "faults.test" in logs
    secrets = [SECRET, SECRET.removeprefix("whsec_"), URL_SECRET]
    if world["backend"] == "postgres":          # the database password and the S3 keys, from their files
        folder = world["pf"].base / "secrets"
        url = (folder / "database.url").read_text().strip()
        secrets += [url.split("://", 1)[1].split("@")[0].split(":", 1)[1],
                    (folder / "s3.access").read_text().strip(), (folder / "s3.secret").read_text().strip()]
    for secret in secrets:
        assert secret not in logs
