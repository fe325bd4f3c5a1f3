"""Operator commands on the data directory: status, replay, gc. Each a function of the config
(and a clock), printing nothing itself; the CLI prints what they return."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .store import Store


@dataclass(frozen=True)
class Delivery:
    id: str
    state: str
    attempts: int
    status: int | None
    reason: str
    recipient: str
    queue_id: str | None
    updated: str


def recent(config: Config, limit: int = 20) -> list[Delivery]:
    """The last deliveries deliver recorded, newest first."""
    folder = Path(config.data_dir) / "state"
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("msg_*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
    out = []
    for path in files:
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out.append(Delivery(path.stem, s.get("state", "?"), int(s.get("attempts", 0)), s.get("status"),
                            s.get("reason", ""), s.get("recipient", ""), s.get("queueId"), s.get("updatedAt", "")))
    return out


def postfix_queue(config_dir: str | None = None) -> list[dict]:
    """Messages waiting in Postfix's queue (postqueue -j), with each recipient's delay reason."""
    cmd = ["postqueue", "-j"] + (["-c", config_dir] if config_dir else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    items = []
    for line in out.stdout.splitlines():
        try:
            items.append(json.loads(line))
        except ValueError:
            continue
    return items


def waiting_for_agents(config: Config, queue: list[dict]) -> list[tuple[str, str, str, str]]:
    """(queue id, queue name, recipient, reason) for queued mail to a routed address or domain."""
    from agentmx.deliver.route import match
    out = []
    for item in queue:
        for rcpt in item.get("recipients", []):
            if match(rcpt.get("address", ""), config.routes):
                out.append((item.get("queue_id", ""), item.get("queue_name", ""), rcpt.get("address", ""),
                            rcpt.get("delay_reason", "")))
    return out


def replay(config: Config, event_id: str, clock=time.time, post=None) -> tuple[int, str]:
    """POST a stored event again, with its original webhook-id. Returns (HTTP status, reason)."""
    from agentmx.deliver import route as routing
    from agentmx.deliver.http import post as http_post
    from agentmx.webhook import sign_headers
    store = Store(config.data_dir)
    body = store.get_event(event_id)
    if body is None:
        raise LookupError(f"no stored event {event_id}")
    event = json.loads(body)
    found = routing.match(event["recipient"], config.routes)
    if found is None:
        raise LookupError(f"no route for {event['recipient']} any more")
    route = found.route
    if not route.pushes:
        raise LookupError(f"the route for {event['recipient']} is a pull route: the event waits in "
                          f"GET /v1/messages, nothing to POST")
    headers = sign_headers(route.secret, event_id, body, timestamp=int(clock()), mailkite=route.mailkite_signature)
    resp = (post or http_post)(route.endpoint, body, headers, route.timeout)
    state = store.get_state(event_id)
    ok = 200 <= resp.status < 300 or resp.status == 406
    new_state = "refused" if resp.status == 406 else "delivered" if ok else state.get("state", "deferred")
    store.put_state(event_id, {**state, "state": new_state,
                               "replays": int(state.get("replays", 0)) + 1, "status": resp.status,
                               "reason": "replayed" if ok else (resp.error or f"HTTP {resp.status}")})
    return resp.status, resp.error or ("accepted" if ok else f"HTTP {resp.status}")


@dataclass(frozen=True)
class GcReport:
    events: int
    blobs: int
    bytes: int


def gc(config: Config, days: int, clock=time.time, dry_run: bool = False) -> GcReport:
    """Remove events, their state and sent records older than `days`, and every blob older than
    that which no remaining event refers to (blobs are shared by content)."""
    root = Path(config.data_dir)
    cutoff = clock() - days * 86400
    removed_events = 0
    for kind in ("events", "state", "sent"):
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in folder.glob("*.json"):
            if path.stat().st_mtime < cutoff:
                removed_events += kind == "events"
                if not dry_run:
                    path.unlink(missing_ok=True)
    referenced: set[str] = set()
    if (root / "events").is_dir():
        for path in (root / "events").glob("*.json"):
            if dry_run and path.stat().st_mtime < cutoff:
                continue
            try:
                event = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            referenced.add((event.get("raw") or {}).get("sha256", ""))
            referenced.update(a.get("sha256", "") for a in event.get("attachments") or [])
    blobs = size = 0
    for path in (root / "blobs").glob("*/*") if (root / "blobs").is_dir() else []:
        st = path.stat()
        if st.st_mtime < cutoff and path.name not in referenced:
            blobs += 1
            size += st.st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    return GcReport(removed_events, blobs, size)


LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400)


def metrics(config: Config) -> str:
    """Prometheus text exposition from the data directory: deliveries by state, auth verdicts of
    delivered events, and the time from acceptance by Postfix to the agent's 2xx."""
    from datetime import datetime
    root = Path(config.data_dir)
    states: dict[str, int] = {}
    verdicts: dict[tuple[str, str], int] = {}
    latencies: list[float] = []
    attempts = 0
    for path in (root / "state").glob("msg_*.json") if (root / "state").is_dir() else []:
        try:
            st = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        states[st.get("state", "unknown")] = states.get(st.get("state", "unknown"), 0) + 1
        attempts += int(st.get("attempts", 0))
        try:
            event = json.loads((root / "events" / path.name).read_text())
        except (OSError, ValueError):
            continue
        for check in ("spf", "dkim", "dmarc", "arc"):
            key = (check, event.get("auth", {}).get(check, "none"))
            verdicts[key] = verdicts.get(key, 0) + 1
        if st.get("state") == "delivered":
            try:
                created = datetime.strptime(event["createdAt"], "%Y-%m-%dT%H:%M:%SZ")
                done = datetime.strptime(st["updatedAt"], "%Y-%m-%dT%H:%M:%SZ")
                latencies.append(max(0.0, (done - created).total_seconds()))
            except (KeyError, ValueError):
                pass
    received = sum(1 for _ in (root / "events").glob("msg_*.json")) if (root / "events").is_dir() else 0
    lines = ["# HELP agentmx_messages_received Messages stored as events (every delivered, deferred, refused or held one).",
             "# TYPE agentmx_messages_received gauge", f"agentmx_messages_received {received}",
             "# HELP agentmx_messages Messages deliver has handled, by their current state.",
             "# TYPE agentmx_messages gauge"]
    for state in ("delivered", "deferred", "refused", "held"):
        lines.append(f'agentmx_messages{{state="{state}"}} {states.get(state, 0)}')
    lines += ["# HELP agentmx_delivery_attempts_total POST attempts, retries included.",
              "# TYPE agentmx_delivery_attempts_total counter", f"agentmx_delivery_attempts_total {attempts}",
              "# HELP agentmx_auth_results Authentication results of stored events.",
              "# TYPE agentmx_auth_results gauge"]
    for (check, result), n in sorted(verdicts.items()):
        lines.append(f'agentmx_auth_results{{check="{check}",result="{result}"}} {n}')
    lines += ["# HELP agentmx_delivery_latency_seconds From acceptance by Postfix to the agent's 2xx.",
              "# TYPE agentmx_delivery_latency_seconds histogram"]
    for bound in LATENCY_BUCKETS:
        lines.append(f'agentmx_delivery_latency_seconds_bucket{{le="{bound:g}"}} {sum(1 for x in latencies if x <= bound)}')
    lines.append(f'agentmx_delivery_latency_seconds_bucket{{le="+Inf"}} {len(latencies)}')
    lines.append(f"agentmx_delivery_latency_seconds_sum {sum(latencies):g}")
    lines.append(f"agentmx_delivery_latency_seconds_count {len(latencies)}")
    lines += _milter_metrics(root / "stats" / "milter.json")
    return "\n".join(lines) + "\n"


def _milter_metrics(path: Path) -> list[str]:
    from agentmx.milter.stats import LATENCY_BUCKETS_MS, read
    data = read(path)
    if not data:
        return []
    lines = ["# HELP agentmx_milter_messages_total Messages the milter answered, by what it did.",
             "# TYPE agentmx_milter_messages_total counter"]
    lines += [f'agentmx_milter_messages_total{{action="{a}"}} {n}' for a, n in sorted(data["messages"].items())]
    lines += ["# HELP agentmx_milter_verdicts_total Verification results, by check and RFC 8601 word.",
              "# TYPE agentmx_milter_verdicts_total counter"]
    for key, n in sorted(data["verdicts"].items()):
        check, _, result = key.partition("=")
        lines.append(f'agentmx_milter_verdicts_total{{check="{check}",result="{result}"}} {n}')
    lat = data["latency_ms"]
    lines += ["# HELP agentmx_milter_latency_seconds Time to verify one message (DNS included).",
              "# TYPE agentmx_milter_latency_seconds histogram"]
    lines += [f'agentmx_milter_latency_seconds_bucket{{le="{b / 1000:g}"}} {n}'
              for b, n in zip(LATENCY_BUCKETS_MS, lat["buckets"])]
    lines += [f'agentmx_milter_latency_seconds_bucket{{le="+Inf"}} {lat["count"]}',
              f'agentmx_milter_latency_seconds_sum {lat["sum"] / 1000:g}',
              f'agentmx_milter_latency_seconds_count {lat["count"]}']
    return lines
