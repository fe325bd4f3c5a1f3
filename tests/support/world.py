"""Two Postfix instances for end-to-end tests of what agents send: ours (ox), which takes mail for
DOMAIN through the agentmx pipe transport and DKIM-signs what leaves, with `agentmx serve`
beside it, submitting on the send API's own service (master.cf.submit.fragment); and a remote
MX (rx) for remote.test, whose own agentmx milter verifies what arrives. rx also takes mail for
elsewhere.test (a stranger's domain: where a misdirected reply would go), so that its log shows
every address our side sent to. DNS for both domains comes from the loopback DNS server. Used by
test_pull.py and test_agent.py."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from agentmx import dkimkeys, dnsrecords
from agentmx.config import load_config
from agentmx.api.server import start

from .backends import migrate
from .dnszone import zone_from_records
from .postfix import MilterProcess, PostfixInstance, agentmx_config, install_deliver, install_submit

AGENTMX = str(Path(sys.executable).with_name("agentmx"))


class World(dict):
    def close(self) -> None:
        self["server"].stop()
        for m in self["milters"]:
            m.stop()
        for pf in (self["ox"], self["rx"]):
            pf.stop()


def build(dns_server, name: str, domain: str, rest: str, store=None) -> World:
    """`rest`: the TOML after [domains] and [send] (routes, api_keys, [agent]). `store`: a function
    of a folder for secrets giving the [store] tables (support/backends.store_config); embedded
    when None. The schema is migrated before anything uses the store."""
    rx = PostfixInstance(f"{name}rx", "mx.remote.test", relay_domains="remote.test, elsewhere.test",
                         main={"transport_maps": "inline:{ remote.test=sink:, elsewhere.test=sink: }"})
    ox = PostfixInstance(f"{name}ox", "mx.agents.test", main={"mynetworks": "127.0.0.0/8"})
    key_dir = ox.base / "keys"
    dkimkeys.write(key_dir, dkimkeys.generate(domain, "s1", "rsa"))
    data = ox.base / "data-agentmx"
    data.mkdir()
    shutil.chown(data, "nobody", "nogroup")

    def milter_for(pf, authserv, extra, milter="", data_dir=None):
        server = "\n".join([f'data_dir = "{data_dir or pf.base / "data"}"', f'key_dir = "{key_dir}"',
                            'url_secret = "world-test-url-secret-01"', 'listen = "127.0.0.1:0"'])
        cfg, sock = agentmx_config(pf, authserv, dns_server.port, rest=extra, milter=milter, server=server)
        return MilterProcess(cfg, sock, pf.base / "milter.log").start(), cfg

    rx_milter, _ = milter_for(rx, "mx.remote.test", "", milter="trusted_networks = []")
    # ox verifies what tests send it from 127.0.0.1 like outside mail: the agent answers only an
    # authenticated From (remote.test's SPF names 127.0.0.1); its own mail comes through the
    # submission service, which the milter knows by its daemon name, not by address.
    if store is not None:
        rest += "\n" + store(ox.base / "secrets")
    ox_milter, ox_cfg = milter_for(ox, "mx.agents.test", f'[domains."{domain}"]\ndkim_selectors = ["s1"]\n'
                                   f"[send]\nsubmit = \"unix:{install_submit(ox)}\"\n{rest}", data_dir=data,
                                   milter="trusted_networks = []")
    if store is not None:
        migrate(ox_cfg)
    install_deliver(ox, ox_cfg, domain, AGENTMX,
                    transport_maps=f"inline:{{ {domain}=agentmx: remote.test=smtp:[127.0.0.1]:{rx.port} "
                                   f"elsewhere.test=smtp:[127.0.0.1]:{rx.port} }}")
    rx.start()
    ox.start()
    config = load_config(ox_cfg)
    zone = {"mx.agents.test": {"A": ["127.0.0.1"]}, "remote.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]}}
    zone_from_records(dnsrecords.records(config, domain), zone)
    dns_server.set_zone(zone)
    server = start(config)
    return World(rx=rx, ox=ox, config=config, cfg=ox_cfg, zone=zone, server=server, milters=(ox_milter, rx_milter),
                 api=server.url)


def sent_to_at_rx(world: World) -> set[str]:
    """Every envelope recipient rx has delivered to so far (from its log)."""
    import re
    return set(re.findall(r"to=<([^>]*)>, relay=sink", world["rx"].log()))


def delivered_at_rx(world: World, marker: bytes, timeout: float = 60) -> bytes:
    """The copy of a message (found by a byte string in it) the remote MX received."""
    from .postfix import wait_for

    def find():
        for p in world["rx"].delivered():
            data = p.read_bytes()
            if marker in data:
                return data
        return None
    return wait_for(find, timeout=timeout, what=f"{marker!r} at the remote MX")
