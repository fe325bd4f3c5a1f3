"""agentmx end to end on loopback: an outside sender, our Postfix, the milter, deliver, serve and
an agent that answers. Nothing of the host's own Postfix is touched; Ctrl-C stops and cleans.

    sudo scripts/demo            # runs, shows the loop, waits for Ctrl-C
    sudo scripts/demo --once     # the same, then exits (what the test runs)

What runs (all on 127.0.0.1, all private instances under /tmp):
  DNS        a dnslib server with the zones of sender.example (outside) and agents.example (ours)
  Postfix    mx.sender.example: the outside world's MTA (sends to us, receives our reply)
  Postfix    mx.agents.example: ours, with the agentmx milter (verify in, sign out), deliver and
             the send API's submission service
  agentmx    milter x2 (each Postfix has its own verifier), serve (send API, attachment URLs)
  the agent  examples/receiver.py: verifies the webhook, answers authenticated mail via the API
"""
from __future__ import annotations

import argparse
import base64
import email
import email.policy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.dnszone import DnsServer, zone_from_records  # noqa: E402
from support.postfix import (MilterProcess, PostfixInstance, agentmx_config, free_tcp_port,  # noqa: E402
                             install_deliver, install_submit, wait_for)

from agentmx import dkimkeys, dnsrecords  # noqa: E402
from agentmx.config import load_config  # noqa: E402
from agentmx.milter.sign import sign as dkim_sign  # noqa: E402
from agentmx.api.server import start as start_serve  # noqa: E402
from agentmx.store import open_store  # noqa: E402

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
BOLD, DIM, GREEN, END = ("\033[1m", "\033[2m", "\033[32m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{END}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="agentmx end to end on loopback")
    ap.add_argument("--once", action="store_true", help="exit after the loop instead of waiting for Ctrl-C")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("demo: run as root (it starts private Postfix instances)", file=sys.stderr)
        return 1
    cleanup: list = []
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return run(args, cleanup)
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as exc:          # cleaning up: report, go on with the rest
                print(f"cleanup: {exc}", file=sys.stderr)


def run(args, cleanup: list) -> int:
    work = Path(tempfile.mkdtemp(prefix="agentmx-demo-"))
    os.chmod(work, 0o755)
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    say("1. DNS on loopback, keys for both domains")
    dns = DnsServer().start()
    cleanup.append(dns.stop)
    key_dir = work / "keys"
    for domain, sel, alg in (("sender.example", "alice", "rsa"), ("agents.example", "ax1r", "rsa"),
                             ("agents.example", "ax1e", "ed25519")):
        dkimkeys.write(key_dir, dkimkeys.generate(domain, sel, alg))
    print(f"   DNS server 127.0.0.1:{dns.port}; keys in {key_dir}")

    say("2. Two private Postfix instances")
    outside = PostfixInstance("demo-out", "mx.sender.example", relay_domains="sender.example",
                              main={"mynetworks": "127.0.0.0/8",
                                    "transport_maps": "inline:{ sender.example=sink: }"})
    ours = PostfixInstance("demo-mx", "mx.agents.example")
    for pf in (outside, ours):
        cleanup.append(pf.stop)
    # Each MTA's SMTP client leaves from its own loopback address, so that each milter tells mail
    # from "the internet" (verified) from local clients on 127.0.0.1 (trusted: ours, not verified).
    outside.postconf(f"transport_maps = inline:{{ sender.example=sink:, agents.example=smtp:[127.0.0.1]:{ours.port} }}",
                     "smtp_bind_address = 127.0.0.3")
    ours.postconf("mynetworks = 127.0.0.1/32", "smtp_bind_address = 127.0.0.2")
    receiver_port, serve_port = free_tcp_port(), free_tcp_port()
    webhook_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    api_key = "amx_" + base64.b32encode(os.urandom(20)).decode().lower()
    admin_key = "amxadm_" + base64.b32encode(os.urandom(20)).decode().lower()
    data = work / "data"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")

    server = "\n".join([f'data_dir = "{data}"', f'key_dir = "{key_dir}"', f'public_url = "http://127.0.0.1:{serve_port}"',
                        f'listen = "127.0.0.1:{serve_port}"', f'admin_key = "{admin_key}"', f'url_secret = "{base64.b64encode(os.urandom(18)).decode()}"'])
    # Local clients (127.0.0.1) are trusted; the other MTA's client leaves from 127.0.0.2 or .3
    # and is verified like any outside client. The agent's reply goes through the send API's own
    # submission service (master.cf.submit.fragment), which the milter signs for the API key's address.
    trusted = 'trusted_networks = ["127.0.0.1/32"]'
    out_cfg, out_sock = agentmx_config(outside, "mx.sender.example", dns.port, server=server, milter=trusted)
    our_cfg, our_sock = agentmx_config(ours, "mx.agents.example", dns.port, server=server, milter=trusted, rest=f"""
[domains."agents.example"]
dkim_selectors = ["ax1r", "ax1e"]
[[routes]]
match = "agent@agents.example"
endpoint = "http://127.0.0.1:{receiver_port}/"
secret = "{webhook_secret}"
[[api_keys]]
name = "demo-agent"
key = "{api_key}"
allow = ["agent@agents.example"]
[send]
submit = "unix:{install_submit(ours)}"
""")
    install_deliver(ours, our_cfg, "agents.example", AGENTMX,
                    transport_maps=f"inline:{{ agents.example=agentmx:, sender.example=smtp:[127.0.0.1]:{outside.port} }}")
    for pf, cfg, sock in ((outside, out_cfg, out_sock), (ours, our_cfg, our_sock)):
        milter = MilterProcess(cfg, sock, pf.base / "milter.log").start()
        cleanup.append(milter.stop)
        pf.start()
    print(f"   outside world: mx.sender.example on 127.0.0.1:{outside.port} (logs {outside.base / 'log'})")
    print(f"   ours:          mx.agents.example on 127.0.0.1:{ours.port} (logs {ours.base / 'log'})")

    config = load_config(our_cfg)
    # Each host's addresses: where it listens (127.0.0.1) and where its SMTP client leaves from
    # (ours 127.0.0.2, the outside's 127.0.0.3), with the PTR names that map back (iprev).
    zone = {"mx.agents.example": {"A": ["127.0.0.1", "127.0.0.2"]}, "mx.sender.example": {"A": ["127.0.0.1", "127.0.0.3"]},
            "2.0.0.127.in-addr.arpa": {"PTR": ["mx.agents.example"]}, "3.0.0.127.in-addr.arpa": {"PTR": ["mx.sender.example"]},
            "sender.example": {"TXT": ["v=spf1 ip4:127.0.0.3 -all"], "MX": [[10, "mx.sender.example"]]},
            "_dmarc.sender.example": {"TXT": ["v=DMARC1; p=reject"]}}
    for key in dkimkeys.keys_of(key_dir, "sender.example"):
        zone[key.dns_name] = {"TXT": [key.txt]}
    zone_from_records(dnsrecords.records(config, "agents.example"), zone)      # exactly what `agentmx dns` prints
    dns.set_zone(zone)
    print("   published for agents.example (agentmx dns):")
    for line in dnsrecords.zone_lines(dnsrecords.records(config, "agents.example")).splitlines():
        if not line.startswith(";"):
            print(f"   {DIM}{line[:110]}{END}")

    say("3. agentmx serve (send API) and the agent (examples/receiver.py)")
    server = start_serve(config)
    cleanup.append(server.stop)
    agent = subprocess.Popen([sys.executable, str(ROOT / "examples" / "receiver.py"), "--port", str(receiver_port)],
                             env={**os.environ, "AGENTMX_WEBHOOK_SECRET": webhook_secret, "AGENTMX_API_KEY": api_key,
                                  "AGENTMX_URL": f"http://127.0.0.1:{serve_port}"},
                             stdout=subprocess.PIPE, text=True)
    cleanup.append(lambda: (agent.kill(), agent.wait()))
    agent_lines: list[str] = []
    threading.Thread(target=lambda: [agent_lines.append(line.rstrip()) for line in agent.stdout], daemon=True).start()
    wait_for(lambda: any("listening" in line for line in agent_lines), timeout=10, what="the demo agent")
    print(f"   send API http://127.0.0.1:{serve_port}/v1/send; agent endpoint http://127.0.0.1:{receiver_port}/")

    say("4. alice@sender.example writes to agent@agents.example (DKIM-signed by sender.example)")
    msg = EmailMessage()
    msg["From"] = "Alice <alice@sender.example>"
    msg["To"] = "agent@agents.example"
    msg["Subject"] = "Please confirm my booking"
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="sender.example")
    msg.set_content("Hi,\n\ncould you confirm booking 2211? My confirmation code is 583920.\n\nAlice\n")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    (sig,) = dkim_sign(raw, dkimkeys.keys_of(key_dir, "sender.example"))
    signed = b"DKIM-Signature:" + sig.replace("\n", "\r\n").encode() + b"\r\n" + raw
    subprocess.run(["sendmail", "-C", str(outside.etc), "-f", "alice@sender.example", "agent@agents.example"],
                   input=signed, check=True, timeout=30)
    print(f"   sent {msg['Message-ID']} through mx.sender.example")

    say("5. The event the agent received")
    store = open_store(config)                   # what deliver kept: read as serve reads it
    row = wait_for(lambda: next(iter(store.inbox_query(("agent@agents.example",), limit=1)), None),
                   timeout=60, what=f"the event\n{ours.log()[-2000:]}")
    event = json.loads(store.get_event(row.id))
    for field in ("id", "from", "subject", "threadId", "codes", "autoSubmitted"):
        print(f"   {field:14} {json.dumps(event[field], ensure_ascii=False)}")
    auth = event["auth"]
    print(f"   {'auth':14} spf={auth['spf']} dkim={auth['dkim']} dmarc={auth['dmarc']} arc={auth['arc']} iprev={auth['iprev']} "
          f"(by {auth['authservId']})")
    print(f"   {'textReply':14} {json.dumps(event['textReply'])[:100]}")

    say("6. The agent's reply, as the outside world's MX received and judged it")
    try:
        reply_file = wait_for(lambda: next((p for p in outside.delivered() if b"In-Reply-To" in p.read_bytes()), None),
                              timeout=60, what="the reply at mx.sender.example")
    except TimeoutError:
        print("   the agent said:\n" + "\n".join(f"   {line}" for line in agent_lines), flush=True)
        print(ours.log()[-2000:], flush=True)
        raise
    reply = email.message_from_bytes(reply_file.read_bytes())
    for name in ("From", "To", "Subject", "In-Reply-To", "Auto-Submitted"):
        print(f"   {name + ':':16}{reply[name]}")
    ar = " ".join(str(reply["Authentication-Results"]).split())
    print(f"   {'Verdicts:':16}{ar}")
    sigs = reply.get_all("DKIM-Signature") or []
    print(f"   {'Signed:':16}{len(sigs)} DKIM signatures (" +
          ", ".join(s.split("a=")[1].split(";")[0] for s in sigs) + ")")
    for line in agent_lines:
        if line.startswith(("event", "replied")):
            print(f"   {DIM}agent: {line}{END}")
    ok = "dkim=pass" in ar and "dmarc=pass" in ar and reply["In-Reply-To"] == event["messageId"]
    print(f"\n{GREEN if ok else ''}{BOLD}{'The loop is closed: received, verified, delivered, answered, signed, threaded.' if ok else 'Something did not work: see the logs above.'}{END}")
    print(f"\n{BOLD}Web console:{END}    http://127.0.0.1:{serve_port}/console   sign in with the admin key "
          f"{admin_key}\n                (or the agent's API key {api_key}; from another machine: "
          f"ssh -L {serve_port}:127.0.0.1:{serve_port} this-host)", flush=True)
    if args.once:
        return 0 if ok else 1
    print(f"\nEverything keeps running; try:  {AGENTMX} --config {our_cfg} auth {reply_file} --client-ip 127.0.0.1 "
          f"--dns 127.0.0.1:{dns.port}\nCtrl-C stops and cleans up.", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
