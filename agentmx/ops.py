"""Operator commands on the store: status, replay, gc, metrics. Each a function of the config and
the store (and a clock), printing nothing itself; the CLI prints what they return."""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .deliver import control, route as routing
from .deliver.core import excerpt
from .milter.stats import LATENCY_BUCKETS_MS, total
from .store import Store
from .store.model import Attempt, DeliveryState, GcReport, SendEvent, SendEventType, SendRecord


QUEUE_TIMEOUT = 10.0            # seconds postqueue -j may take
QUEUE_MAX_BYTES = 8 * 1024 * 1024   # of its output read (the rest is not: the answer says so)


@dataclass(frozen=True)
class QueueRead:
    """What postqueue -j gave: its entries (one JSON object each), or why there are none
    (`error`: Postfix absent, not allowed, no answer); `truncated` when the output was cut."""
    items: list = field(default_factory=list)
    error: str = ""
    truncated: bool = False


def read_queue(config_dir: str | Path | None = None, timeout: float = QUEUE_TIMEOUT,
               max_bytes: int = QUEUE_MAX_BYTES) -> QueueRead:
    """Postfix's queue (postqueue -j [-c config_dir]): at most `max_bytes` of output read, within
    `timeout` seconds (then postqueue is killed). Never raises for Postfix's failures: they are
    the answer's `error`, in words an operator acts on."""
    cmd = ["postqueue", "-j"] + (["-c", str(config_dir)] if config_dir else [])
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        return QueueRead(error="postqueue is not installed here (is Postfix?)")
    except OSError as exc:
        return QueueRead(error=f"postqueue could not be started: {exc.strerror or exc}")
    out, err, truncated, timed_out = bytearray(), bytearray(), False, False
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None and proc.stderr is not None      # both PIPE above
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for sk, _ in sel.select(left):
                chunk = os.read(sk.fd, 65536)
                if not chunk:
                    sel.unregister(sk.fileobj)
                    continue
                buf = sk.data
                room = (max_bytes if buf is out else 4096) - len(buf)
                buf += chunk[:max(room, 0)]
                if buf is out and len(chunk) > room:
                    truncated = True
            if truncated:
                break
        if timed_out or truncated:
            proc.kill()
        code = proc.wait()
    if timed_out:
        return QueueRead(error=f"postqueue did not answer within {timeout:g} seconds")
    lines = bytes(out).splitlines()
    if truncated:
        lines = lines[:-1]                 # the last line may be cut
    items = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            items.append(item)
    if code != 0 and not truncated:
        said = bytes(err).decode("utf-8", "replace").strip().splitlines()
        return QueueRead(items, error=f"postqueue failed (exit {code}): " + (said[-1][:300] if said else "no reason given"))
    return QueueRead(items, truncated=truncated)


def postfix_queue(config_dir: str | Path | None = None) -> list[dict]:
    """Messages waiting in Postfix's queue (postqueue -j), with each recipient's delay reason
    (none when postqueue cannot be run: `agentmx status` says what it found)."""
    return read_queue(config_dir, timeout=30).items


def queued_for(config: Config, queue: list[dict], readable=lambda address: True) -> list[dict]:
    """The queue's entries with only their recipients that a route takes and `readable(address)`
    allows (a console viewer's scope), entries left with none dropped; each
    {queue_id, queue_name, arrival_time, sender, size, recipients: [{address, delay_reason}]}."""
    out = []
    for item in queue:
        rcpts = [r for r in item.get("recipients") or () if isinstance(r, dict) and isinstance(r.get("address"), str)
                 and routing.match(r["address"], config.routes) and readable(r["address"])]
        if rcpts:
            out.append({"queue_id": str(item.get("queue_id", "")), "queue_name": str(item.get("queue_name", "")),
                        "arrival_time": item.get("arrival_time"), "sender": str(item.get("sender", "")),
                        "size": item.get("message_size"),
                        "recipients": [{"address": r["address"], "delay_reason": str(r.get("delay_reason") or "")}
                                       for r in rcpts]})
    return out


def waiting_for_agents(config: Config, queue: list[dict]) -> list[tuple[str, str, str, str]]:
    """(queue id, queue name, recipient, reason) for queued mail to a routed address or domain."""
    return [(item["queue_id"], item["queue_name"], r["address"], r["delay_reason"])
            for item in queued_for(config, queue) for r in item["recipients"]]


def by_recipient(rec: SendRecord, events: list[SendEvent]) -> dict[str, list[SendEvent]]:
    """A send's timeline: each recipient's events, in the order kept. email.sent (one per send,
    naming no recipient) is in every recipient's line; so is any other event whose report names no
    recipient (it concerns the message as a whole); a recipient the reports name that the send did
    not (an alias the remote expanded) gets a line of its own. (GET /v1/send/{id}, `agentmx status`.)"""
    lines: dict[str, list[SendEvent]] = {r.lower(): [] for r in rec.recipients}
    for e in events:
        if e.type is SendEventType.SENT or not e.recipient:
            for line in lines.values():
                line.append(e)
        else:
            lines.setdefault(e.recipient, []).append(e)
    return lines


def send_status(store: Store, send_id: str) -> tuple[SendRecord, dict[str, list[SendEvent]]]:
    """`agentmx status <send id>`: the send and each recipient's events. LookupError: no such send."""
    rec = store.get_send(send_id)
    if rec is None:
        raise LookupError(f"no send {send_id}")
    return rec, by_recipient(rec, store.send_events(send_id))


def replay(config: Config, store: Store, event_id: str, clock=time.time, post=None) -> tuple[int, str]:
    """POST a stored event again, with its original webhook-id; the answer is read as deliver
    reads it (the route's ack mode: a control answer drops, marks or blocks, 406 refuses it;
    deliver/control.py) and kept as one more attempt. Returns (HTTP status, reason)."""
    body = store.get_event(event_id)
    if body is None:
        known = store.delivery(event_id)
        if known is not None and known.state is DeliveryState.DROPPED:
            raise LookupError(f"{event_id} was dropped by its agent's answer: its stored copy is deleted")
        raise LookupError(f"no stored event {event_id}")
    event = json.loads(body)
    found = routing.match(event["recipient"], config.routes)
    if found is None:
        raise LookupError(f"no route for {event['recipient']} any more")
    route = found.route
    if not route.pushes:
        raise LookupError(f"the route for {event['recipient']} is a pull route: the event waits in "
                          f"GET /v1/messages, nothing to POST")
    resp, answer, took_ms = control.exchange(route, event_id, body, clock, post)
    state, why = answer.state, answer.why
    if state is DeliveryState.DEFERRED:       # nothing retries a replay: the delivery stays what it was
        previous = store.delivery(event_id)
        state = previous.state if previous else DeliveryState.DEFERRED
        why = f"replay failed: {why}"
    else:
        why = f"replayed: {why}"
    store.record_attempt(event_id, Attempt(clock(), state, resp.status, took_ms, excerpt(resp), event_id), why)
    if state is answer.state:
        control.apply(answer, event, route, store, config.data_dir)
    return resp.status, why


def gc(config: Config, store: Store, days: int, clock=time.time, dry_run: bool = False) -> GcReport:
    """Remove, by retention, everything older than `days`: events with their inbox rows,
    deliveries and attempts, sends, agent jobs and transcripts, old rate-limit uses, and every
    blob no remaining event refers to (blobs are shared by content)."""
    return store.gc(clock() - days * 86400, dry_run=dry_run)


def metrics(config: Config, store: Store, status_posts: dict | None = None) -> str:
    """Prometheus text exposition: the store's counters (kept as records are written, so a scrape
    costs a few queries however many events there are) and the milter's stats file; with
    `status_posts` (serve's dispatcher: outcome -> count), the send events this serve POSTed."""
    m = store.metrics()
    lines = ["# HELP agentmx_messages_received Messages stored as events (every delivered, deferred, refused or held one).",
             "# TYPE agentmx_messages_received gauge", f"agentmx_messages_received {m.received}",
             "# HELP agentmx_messages Stored messages by the current state of their delivery.",
             "# TYPE agentmx_messages gauge"]
    lines += [f'agentmx_messages{{state="{state}"}} {m.by_state.get(state, 0)}' for state in DeliveryState]
    lines += ["# HELP agentmx_delivery_attempts_total Delivery attempts (POSTs, and what deliver did instead), "
              "retries included.",
              "# TYPE agentmx_delivery_attempts_total counter", f"agentmx_delivery_attempts_total {m.attempts}",
              "# HELP agentmx_auth_results Authentication results of stored events.",
              "# TYPE agentmx_auth_results gauge"]
    for (check, result), n in sorted(m.verdicts.items()):
        lines.append(f'agentmx_auth_results{{check="{check}",result="{result}"}} {n}')
    lines += ["# HELP agentmx_delivery_latency_seconds From acceptance by Postfix to the agent's 2xx.",
              "# TYPE agentmx_delivery_latency_seconds histogram"]
    lines += [f'agentmx_delivery_latency_seconds_bucket{{le="{bound:g}"}} {n}' for bound, n in m.latency_buckets]
    lines.append(f'agentmx_delivery_latency_seconds_bucket{{le="+Inf"}} {m.latency_count}')
    lines.append(f"agentmx_delivery_latency_seconds_sum {m.latency_sum:g}")
    lines.append(f"agentmx_delivery_latency_seconds_count {m.latency_count}")
    if status_posts is not None:
        lines += ["# HELP agentmx_status_posts_total Send events (email.sent ... email.complained) this serve POSTed "
                  "to routes, by outcome.", "# TYPE agentmx_status_posts_total counter"]
        lines += [f'agentmx_status_posts_total{{outcome="{o}"}} {status_posts.get(o, 0)}'
                  for o in ("delivered", "refused", "retry", "failed", "kept")]
    lines += _milter_metrics(Path(config.data_dir) / "stats")
    return "\n".join(lines) + "\n"


def _milter_metrics(stats_dir: Path) -> list[str]:
    """The counters of every milter process, summed (milter/stats.py)."""
    data = total(stats_dir)
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
