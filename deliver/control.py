"""What an endpoint's answer makes of a delivery (the route's ack mode), and its consequences.

    answer = read(resp, route.ack)          # pure: state, why, and the actions asked for
    apply(answer, event, route, store, ...) # drop the stored copy, block the sender

deliver (core.py) and `agentmx replay` (ops.replay) both call these two, so that a replayed
delivery honours a control answer exactly as the first one did.

Modes (config AckMode, MailKite's ackMode): lenient, any 2xx is delivered and the body is not
read; ack, a 2xx is delivered only with {"status": "ok"} (or the header x-mailkite-ack: ok), any
other 2xx is retried like a 5xx; control, the 2xx body decides: {"status": "ok"} delivered,
{"status": "drop"} dropped (the stored copy deleted, the delivery record kept), {"status": "spam"}
marked spam, and `"actions": [{"type": "block-sender"}]` beside any of them blocks the message's
envelope sender for the route's addresses; a 2xx that says none of these is retried, as in ack
mode. In every mode 406 is a refusal (kept, not retried) and anything else but 2xx is retried.

The answer is hostile input: read up to http.MAX_ANSWER bytes, any JSON shape (or none) gives a
state, never an exception, and at most MAX_ACTIONS actions are looked at.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

from agentmx import blocklist
from agentmx.config import AckMode, Route
from agentmx.store import Store, StoreError
from agentmx.store.model import DeliveryState

from agentmx.webhook import sign_headers

from .http import Response, post as http_post

log = logging.getLogger("agentmx.deliver.control")

MAX_ACTIONS = 16
CONTROL = {"ok": DeliveryState.DELIVERED, "drop": DeliveryState.DROPPED, "spam": DeliveryState.SPAM}


@dataclass(frozen=True)
class Answer:
    state: DeliveryState
    why: str
    block_sender: bool = False


def _json(body: bytes) -> dict | None:
    """The answer as a JSON object, or None (not JSON, not an object, too deep: any hostile shape)."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _status(doc: dict | None) -> str | None:
    status = doc.get("status") if doc is not None else None
    return status if isinstance(status, str) else None


def _blocks_sender(doc: dict | None) -> bool:
    actions = doc.get("actions") if doc is not None else None
    if not isinstance(actions, list):
        return False
    return any(isinstance(a, dict) and a.get("type") == "block-sender" for a in actions[:MAX_ACTIONS])


def read(resp: Response, mode: AckMode) -> Answer:
    """The delivery's state after this answer, and why (kept as the delivery's reason)."""
    if resp.status == 406:
        return Answer(DeliveryState.REFUSED, "the agent refused it (406); raw kept")
    if not 200 <= resp.status < 300:
        why = resp.error or f"HTTP {resp.status}"
        if resp.retry_after:
            why += f", Retry-After {resp.retry_after}"
        return Answer(DeliveryState.DEFERRED, why)
    if mode is AckMode.LENIENT:
        return Answer(DeliveryState.DELIVERED, "accepted")
    doc = _json(resp.body)
    status = _status(doc)
    header_ok = (resp.ack or "").strip().lower() == "ok"
    if mode is AckMode.ACK:
        if status == "ok" or header_ok:
            return Answer(DeliveryState.DELIVERED, "accepted (acknowledged)")
        return Answer(DeliveryState.DEFERRED, f'HTTP {resp.status} without {{"status": "ok"}} (ack mode): retried')
    state = CONTROL.get(status) if status is not None else (DeliveryState.DELIVERED if header_ok else None)
    if state is None:
        return Answer(DeliveryState.DEFERRED, f"HTTP {resp.status} without a control answer (control mode: "
                                              f'{{"status": "ok" | "drop" | "spam"}}): retried')
    block = _blocks_sender(doc)
    why = {DeliveryState.DELIVERED: "accepted (acknowledged)",
           DeliveryState.DROPPED: "the agent's answer dropped it; the stored copy deleted, not retried",
           DeliveryState.SPAM: "the agent's answer marked it spam; kept, not retried"}[state]
    return Answer(state, why + ("; block-sender asked" if block else ""), block)


def exchange(route: Route, event_id: str, body: bytes, clock: Callable[[], float],
             post: Callable[[str, bytes, dict, float], Response] | None = None) -> tuple[Response, Answer, int]:
    """One signed POST of an event to the route's endpoint and what its answer says: the
    endpoint's Response, the Answer under the route's ack mode, and the milliseconds it took."""
    headers = sign_headers(route.secret, event_id, body, timestamp=int(clock()), mailkite=route.mailkite_signature)
    started = time.monotonic()
    resp = (post or http_post)(route.endpoint, body, headers, route.timeout)
    return resp, read(resp, route.ack), int((time.monotonic() - started) * 1000)


def sender_of(event: dict) -> str:
    """The sender a block-sender action blocks: the envelope's MAIL FROM, lower case ("" for the
    null sender, which is never blocked: the milter sees MAIL FROM at RCPT, not the From header)."""
    envelope = event.get("envelope") if isinstance(event.get("envelope"), dict) else {}
    sender = envelope.get("mailFrom")
    return sender.strip().lower() if isinstance(sender, str) else ""


def apply(answer: Answer, event: dict, route: Route, store: Store, data_dir, queue_id: str | None = None) -> str:
    """The answer's consequences beyond the delivery's state (which the caller records): drop
    deletes the stored copy; block-sender blocks the envelope sender for the route's addresses and
    publishes the block list for the milter. Returns what was done, for the log ("" for nothing).
    A store that fails here is logged: the agent has answered, the answer stands (gc removes a
    copy a drop could not)."""
    qid = queue_id or "-"
    done = []
    if answer.block_sender:
        sender = sender_of(event)
        spf = (event.get("auth") or {}).get("spf") if isinstance(event.get("auth"), dict) else None
        if not sender:
            done.append("block-sender ignored: the null sender (a bounce) is never blocked")
        elif spf != "pass":
            # A forged MAIL FROM would otherwise shut out the real correspondent it names.
            done.append(f"block-sender ignored: {sender} is not authenticated (SPF {spf or 'none'}, not pass)")
        else:
            try:
                store.add_block(sender, route.match, event["id"])
                publish(store, data_dir)
                done.append(f"blocked {sender} for {route.match}")
            except (StoreError, OSError) as exc:
                log.warning("%s: block of %s for %s not kept: %s", qid, sender, route.match, exc)
    if answer.state is DeliveryState.DROPPED:
        try:
            store.drop_event(event["id"])
            done.append("stored copy deleted")
        except StoreError as exc:
            log.warning("%s: %s dropped, but its stored copy was not deleted (gc will): %s", qid, event["id"], exc)
    if done:
        log.info("%s: %s: %s", qid, event["id"], "; ".join(done))
    return "; ".join(done)


def publish(store: Store, data_dir) -> bool:
    """Write the block list the milter reads (<data_dir>/blocks.json), from the store, when it
    changed. deliver after a block; serve every blocklist.REFRESH seconds on every host."""
    return blocklist.write(blocklist.path_in(data_dir), [(b.sender, b.scope) for b in store.blocks()])
