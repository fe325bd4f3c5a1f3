"""Send events as their producers keep them (sendevents.make, then Store.put_send_event, beside the
send's record), for the tests of serve's dispatcher, /v1/events, the stream, GET /v1/send/{id},
MCP and `agentmx status` (test_dispatch.py, test_send_events_api.py); a config with a pushing and
a pulling route and `agentmx serve` as a process of its own."""
from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from agentmx import sendevents
from agentmx.api.server import start
from agentmx.config import parse_config
from agentmx.store import open_store
from agentmx.store.model import PostState, SendEvent, SendEventType, SendRecord, SendState

from . import reaper
from .backends import store_config
from .postfix import wait_for
from .receiver import Receiver

AGENTMX = str(Path(sys.executable).with_name("agentmx"))
DOMAIN = "status.agents.test"
SECRET = "whsec_" + base64.b64encode(b"status-secret-status-secret-0123").decode()
KEY = "amx_status_key_for_the_agent_0123"
METRICS = "status-metrics-token-0123456789"


def config_text(data_dir: Path, endpoint: str, port: int = 0, first_retry: float = 0.3, store: str = "",
                extra: str = "", more: str = "") -> str:
    """`extra`: more [server] keys; `more`: more tables (routes, keys)."""
    return f"""
[server]
authserv_id = "mx.{DOMAIN}"
data_dir = "{data_dir}"
listen = "127.0.0.1:{port}"
url_secret = "status-url-secret-0123456789"
metrics_token = "{METRICS}"
status_first_retry = {first_retry}
{extra}
[[routes]]
match = "agent@{DOMAIN}"
endpoint = "{endpoint}"
secret = "{SECRET}"
timeout = 3
[[routes]]
match = "puller@{DOMAIN}"
mode = "pull"
[[api_keys]]
name = "agent"
key = "{KEY}"
allow = ["agent@{DOMAIN}", "puller@{DOMAIN}"]
{more}
{store}"""


@contextmanager
def served_world(request, tmp_path: Path, backend: str, **config):
    """A receiver, a store on `backend` and `agentmx serve` in a thread, all on config_text(**config)."""
    receiver = Receiver()
    path = tmp_path / "agentmx.toml"
    path.write_text(config_text(tmp_path / "data", receiver.url, **config,
                                store=store_config(request, backend, tmp_path / "secrets", owner="root")))
    cfg = parse_config(path.read_text(), path)
    store = open_store(cfg)
    store.migrate()
    running = start(cfg)
    try:
        yield {"cfg": cfg, "store": store, "receiver": receiver, "api": running.url}
    finally:
        running.stop()
        store.close()
        receiver.stop()


def a_send(store, sender: str = f"agent@{DOMAIN}", recipients=("bob@remote.test",)) -> SendRecord:
    rec = SendRecord("snd_" + base64.b32encode(time.time_ns().to_bytes(8, "big")).decode().lower().rstrip("="),
                     "agent", sender, tuple(recipients), f"<{time.time_ns()}@{DOMAIN}>", "4QID", None, None, None,
                     SendState.QUEUED, time.time())
    store.put_send(rec)
    return rec


def kept(store, cfg, rec: SendRecord, type_: SendEventType = SendEventType.SENT, recipient: str = "",
         source: str = "queued", at: float | None = None, **fields) -> SendEvent:
    """A send event as its producers keep it (sendevents.make, then put_send_event)."""
    event = sendevents.make(rec, type_, time.time() if at is None else at, cfg, source, recipient, **fields)
    assert store.put_send_event(event)
    return event


def state_of(store, rec: SendRecord, event_id: str) -> SendEvent:
    return next(e for e in store.send_events(rec.id) if e.id == event_id)


def settled(store, rec, event_id, state: PostState) -> SendEvent:
    return wait_for(lambda: (lambda e: e if e.state is state else None)(state_of(store, rec, event_id)),
                    timeout=20, what=f"{event_id} {state}")


def posts_of(receiver: Receiver, event_id: str) -> list:
    return [r for r in list(receiver.requests) if r.headers.get("webhook-id") == event_id]


class Serve:
    """`agentmx serve` as a process of its own."""

    def __init__(self, cfg: Path, port: int, log: Path):
        self.port, self.log = port, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([AGENTMX, "--config", str(cfg), "serve"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._ready, timeout=30, what=f"agentmx serve on port {port}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"agentmx serve exited: {self.log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        reaper.stop_group(self.proc, grace=15)
