"""[milter] processes: several milter processes on one socket under a supervisor (milter/procs.py).

The end-to-end tests run a private Postfix, the real `agentmx milter` with processes = 2 and real
DNS on loopback: mail is verified by both processes, a process killed (SIGKILL) or stopped alone
(SIGTERM) is replaced and mail goes on, SIGTERM to the supervisor stops everything, and the
counters of both processes are summed by /metrics without going backwards across a restart.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from e2e_helpers import RsaKey, message, our_results, send, sign, verdicts
from support.postfix import MilterProcess, PostfixInstance, agentmx_config, wait_for

from agentmx.config import ConfigError, default_processes, parse_config
from agentmx.milter import procs
from agentmx.milter.stats import LATENCY_BUCKETS_MS, MilterStats, path_for, read, total

AUTHSERV = "mx.agentmx.test"
P = Path("/etc/agentmx/agentmx.toml")
MIN = '[server]\nauthserv_id = "mx.example.com"\n'


# --- the key, the delays, the counters: unit ----------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("value", ["0", "65", '"2"', "true", "1.5", "-1"])
def test_processes_out_of_range_names_the_file_and_the_key(value):
    with pytest.raises(ConfigError) as exc:
        parse_config(MIN + f"[milter]\nprocesses = {value}\n", P)
    assert str(exc.value) == f"{P}: [milter] processes: must be a whole number from 1 to 64"


@pytest.mark.unit
def test_processes_default_is_the_cpus_within_2_to_4():
    assert parse_config(MIN + "[milter]\nprocesses = 64\n", P).milter.processes == 64
    assert parse_config(MIN + "[milter]\nprocesses = 1\n", P).milter.processes == 1
    cpus = len(os.sched_getaffinity(0))
    assert parse_config(MIN, P).milter.processes == default_processes() == max(2, min(cpus, 4))


@pytest.mark.unit
def test_a_slot_dying_young_waits_longer_each_time_up_to_a_bound():
    assert procs.restart_delay(0) == procs.restart_delay(1) == procs.FIRST_DELAY
    assert [procs.restart_delay(n) for n in (2, 3, 4)] == [0.5, 1.0, 2.0]
    assert procs.restart_delay(50) == procs.MAX_DELAY


@pytest.mark.unit
def test_a_child_killed_by_any_signal_is_described_not_a_crash_of_the_supervisor():
    """A real-time signal has no name in Python's signal.Signals: describing such a death raised
    ValueError out of the supervisor's loop, which then stopped every process (found by review)."""
    assert procs.describe(signal.SIGKILL) == "was killed by SIGKILL"
    assert procs.describe(35) == "was killed by signal 35"
    assert procs.describe(3 << 8) == "exited with status 3"


@pytest.mark.unit
def test_counters_are_summed_over_the_processes_files(tmp_path):
    a, b = MilterStats(path_for(tmp_path, 0), interval=0), MilterStats(path_for(tmp_path, 1), interval=0)
    a.count("accept", {"spf": "pass"}, 3.0)
    b.count("accept", {"spf": "pass"}, 30.0)
    b.count("reject", {"spf": "fail"}, 7000.0)
    (tmp_path / "milter-7.json").write_text('{"messages": {"accept": "many"}}')   # not counters: left out
    (tmp_path / "milter.json").write_text(json.dumps(read(path_for(tmp_path, 1))))  # the old name: not a process's
    got = total(tmp_path)
    assert got["messages"] == {"accept": 2, "reject": 1}
    assert got["verdicts"] == {"spf=pass": 2, "spf=fail": 1}
    assert got["latency_ms"]["count"] == 3 and got["latency_ms"]["sum"] == 7033.0
    buckets = dict(zip(LATENCY_BUCKETS_MS, got["latency_ms"]["buckets"]))
    assert buckets[5] == 1 and buckets[50] == 2 and buckets[10000] == 3
    assert total(tmp_path / "nothing") is None


@pytest.mark.unit
def test_a_process_started_again_in_its_slot_counts_on_from_its_file(tmp_path):
    """A restarted milter process (after a crash) must not start its slot from 0: the sum that
    /metrics shows would go backwards, which Prometheus reads as a reset of every process."""
    first = MilterStats(path_for(tmp_path, 1), interval=0)
    first.count("accept", {"dkim": "pass"}, 12.0)
    first.count("accept")
    second = MilterStats(path_for(tmp_path, 1), interval=0)
    second.count("tempfail")
    assert read(path_for(tmp_path, 1))["messages"] == {"accept": 2, "tempfail": 1}
    assert read(path_for(tmp_path, 1))["latency_ms"]["count"] == 1
    path_for(tmp_path, 2).write_text("not json")
    assert MilterStats(path_for(tmp_path, 2)).data["messages"] == {}     # unreadable: from 0


# --- the real thing: Postfix + `agentmx milter` with processes = 2 ------------------------------

@pytest.fixture(scope="module")
def rsa():
    return RsaKey()


@pytest.fixture(scope="module")
def stack(dns_server, rsa):
    dns_server.set_zone({
        "sender.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mail.sender.test": {"A": ["127.0.0.1"], "TXT": ["v=spf1 a -all"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        "rsa._domainkey.sender.test": {"TXT": [rsa.txt]},
    })
    pf = PostfixInstance("procs", AUTHSERV, relay_domains="agentmx.test")
    config, sock = agentmx_config(pf, AUTHSERV, dns_server.port, server=f'data_dir = "{pf.base / "data-agentmx"}"',
                                  milter="trusted_networks = []\nprocesses = 2")
    pf.start()
    yield pf, config, sock
    pf.stop()


@pytest.fixture
def milter(stack):
    pf, config, sock = stack
    for p in pf.delivered():
        p.unlink()
    m = MilterProcess(config, sock, pf.base / f"milter-{time.monotonic_ns()}.log").start()
    wait_for(lambda: len(m.children()) == 2, timeout=20, what="two milter processes")
    yield m
    m.stop()


def _mail(pf, rsa, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        raw = sign(message("Alice <alice@sender.test>", "agent@agentmx.test", subject=f"procs {i}"),
                   "sender.test", "rsa", rsa)
        assert send(pf.port, "alice@sender.test", ["agent@agentmx.test"], raw) == {}
    for path in pf.wait_delivered(start + n):
        v = verdicts(our_results(path, AUTHSERV)[0])
        assert v["dkim"][0].result == "pass" and v["dmarc"][0].result == "pass"


def _verifying_pids(m: MilterProcess) -> set[int]:
    """The pids in the log lines of verified messages (the log format carries %(process)d)."""
    return {int(p) for p in re.findall(r"agentmx\.milter\[(\d+)\]: INFO \w+: spf=pass", m.log())}


@pytest.mark.e2e
def test_mail_is_verified_by_both_processes_and_metrics_sums_their_counters(stack, rsa, milter):
    from agentmx.config import load_config
    from agentmx.ops import metrics
    from agentmx.store import open_store
    pf, config, sock = stack
    children = set(milter.children())
    sent = 0
    while not children <= _verifying_pids(milter) and sent < 60:     # the kernel picks the process
        _mail(pf, rsa, 4, sent)
        sent += 4
    assert _verifying_pids(milter) == children, milter.log()[-3000:]
    milter.stop()                                                   # each process writes its file
    cfg = load_config(config)
    stats = cfg.data_dir / "stats"
    per_process = [read(path_for(stats, slot))["messages"].get("accept", 0) for slot in (0, 1)]
    assert all(per_process) and sum(per_process) >= sent
    store = open_store(cfg)
    try:
        text = metrics(cfg, store)
    finally:
        store.close()
    assert f'agentmx_milter_messages_total{{action="accept"}} {sum(per_process)}' in text


@pytest.mark.e2e
def test_a_killed_process_is_replaced_and_mail_goes_on(stack, rsa, milter):
    pf, config, sock = stack
    victim, other = milter.children()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(milter.children()) == 2 and victim not in milter.children(), timeout=10,
             what=f"a new milter process\n{milter.log()[-2000:]}")
    assert re.search(rf"milter process \d \(pid {victim}\) was killed by SIGKILL; starting another in", milter.log())
    assert other in milter.children()
    _mail(pf, rsa, 6)


@pytest.mark.e2e
def test_a_process_stopped_alone_leaves_the_socket_to_the_others(stack, rsa, milter):
    """One process stopped with SIGTERM is replaced, and the socket stays. (As root libmilter never
    unlinks its socket: the defect this guards against shows as the service's non-root user, in
    test_install.py::test_a_milter_process_stopped_alone_leaves_the_socket_to_the_others.)"""
    pf, config, sock = stack
    _mail(pf, rsa, 2)
    victim = milter.children()[0]
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: len(milter.children()) == 2 and victim not in milter.children(), timeout=20,
             what=f"a new milter process\n{milter.log()[-2000:]}")
    assert sock.exists()
    _mail(pf, rsa, 6, 2)


@pytest.mark.e2e
def test_sigterm_stops_the_supervisor_and_every_process_promptly(stack, rsa, milter):
    """A process idle in accept() on the shared socket must still hear SIGTERM: without the
    non-blocking listening socket it slept in accept() until the next connection, and was killed."""
    pf, config, sock = stack
    _mail(pf, rsa, 6)                 # connections: the processes that lost the accept() race are in it
    pids = milter.session_pids()
    assert len(pids) == 3
    started = time.monotonic()
    os.kill(milter.proc.pid, signal.SIGTERM)
    assert milter.proc.wait(30) == 0
    took = time.monotonic() - started
    assert milter.session_pids() == []                    # no process left, no zombie
    assert not sock.exists()
    log = milter.log()
    assert log.count("exited with status 0") == 2 and "SIGKILL" not in log, log[-2000:]
    # libmilter's listener polls 5 s before it reads its stop flag; the supervisor's knocks on the
    # socket wake it (without them a stop took 5 s in each test's teardown)
    assert took < 2.0, log[-2000:]
    assert "Traceback" not in log and "mi_rd_cmd" not in log, log[-2000:]
