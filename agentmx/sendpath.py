"""THE send path: every door sends through send_message(), with a SendRequest and the caller's
identity (a Caller: an API key's, or an agent route's). The doors only translate: their input
into a SendRequest, and SendError into their own answer.

    doors                                        what each still does itself
    POST /v1/send (api/sending.py)               JSON -> parse_request; Idempotency-Key; SendError -> ApiError
    POST /v1/send/batch (api/batch.py)           one request per recipient; the shared part checked once
    scheduledAt (api/scheduling.py)              prepare() now and park; send_message() when due
    MCP over HTTP (api/mcp.py), over stdio       the API's functions in process / over HTTP; the reply
      (mcpserver.py, a client of the API)        tool names the one address (replies.reply_address)
    the agent's reply and forward (agentloop)    the tool's arguments -> SendRequest; 429 of its
                                                 route -> route_rate_limited; SendError -> "error: not sent"
    `agentmx send` (cli/sending.py)              a client of POST /v1/send

In one place and in this order (prepare() is the part up to the suppressions: what a scheduled
send is checked against when it is parked, and again, whole, when it is due):

    send.check_request                 400  what every request must be, however it was made
    check_sender                       403  forbidden_sender: an address the caller may send as
    resolve (the door's, optional)          attachments by URL (api/attachments.py)
    the original (inReplyTo an event)  404  unknown_event
    check_event_scope                  403  forbidden_event: only mail sent to the caller is answered
                                            (before build: building reads the original)
    send.build                         409  loop_risk; threading headers (In-Reply-To, References)
    check_reply_scope                  403  forbidden_recipient / unauthenticated_sender: a caller with a
                                            `reach` (the agent) mails only those addresses and the
                                            authenticated sender of the mail it answers
    suppression.check                  422  suppressed: before any limit counts the message
    take (store.take)                  429  per correspondent, per thread (the loop breaker), the
                                            caller's own (the agent route's sends_per_hour): in the
                                            store, so every process on every host counts together
    return path, submit                502  Postfix; every count taken is given back on refusal
    record                                  SendRecord and its email.sent event (bounces and
                                            deliveries then come back to the send, whoever sent it)
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import replies, send, sendevents, suppression
from .address import split
from .config import ApiKey, Config, Route, allows
from .send import Outgoing, SendError, SendRequest
from .store import Store, StoreError

log = logging.getLogger("agentmx.send")


@dataclass(frozen=True)
class Caller:
    """Who sends: what it may send as, whom it may reach, the limits of its own."""
    name: str                                   # the send record's key: the API key's name, or agent:<route>
    label: str                                  # as refusals name it
    allow: tuple[str, ...]                      # addresses and @domains it may send as (config.allows)
    reach: tuple[str, ...] | None = None        # None: anyone; else only these (and the sender it answers)
    limits: tuple[tuple[str, int], ...] = ()    # its own, counted with every sender's: (store key, per hour)
    prepaid: Callable[[], tuple[str, ...]] = lambda: ()
    # ^ keys of `limits` taken already for this send (the agent's job reserves one before its model
    #   runs), handed over when the path counts the send: given back with the rest on a refusal

    @classmethod
    def api_key(cls, key: ApiKey) -> "Caller":
        return cls(key.name, f"API key {key.name!r}", key.allow)

    @classmethod
    def agent(cls, route: Route, prepaid: Callable[[], tuple[str, ...]] = lambda: ()) -> "Caller":
        """An agent route: it sends as the address it takes mail for, to the addresses its owner
        configured (forward_to) and the authenticated sender of the mail it answers, at most the
        route's sends_per_hour."""
        return cls(route_key(route), f"the agent of {route.match}", (route.match,), route.forward_to,
                   (route_limit(route),), prepaid)

    def may_send_as(self, address: str) -> bool:
        return allows(self.allow, address)


def route_key(route: Route) -> str:
    """The store's counter of an agent route's sends_per_hour, shared by every agent worker; also
    the key its sends are recorded under."""
    return f"agent:{route.match}"


def route_limit(route: Route) -> tuple[str, int]:
    return route_key(route), route.sends_per_hour


@dataclass(frozen=True)
class Outbox:
    """What the path works with, passed in: the store (the limits, the records), the clock and
    the way to Postfix (send.submit; a test gives its own)."""
    config: Config
    store: Store
    clock: Callable[[], float] = time.time
    submit: Callable[[Outgoing, Config], str] = send.submit


@dataclass(frozen=True)
class Prepared:
    req: SendRequest                # its attachments resolved
    original: dict[str, Any] | None           # the stored event it answers
    out: Outgoing                   # built, without its return path yet


@dataclass(frozen=True)
class Sent:
    send_id: str
    queue_id: str
    out: Outgoing                   # as submitted


def check_sender(caller: Caller, req: SendRequest) -> None:
    """403 forbidden_sender unless the caller may send as the From address (a plus address of an
    allowed one is allowed: agent+tag@ is agent@'s)."""
    if not caller.may_send_as(req.sender.address):
        raise SendError(403, "forbidden_sender", f"{caller.label} may not send as {req.sender.address} "
                                                 f"(allowed: {', '.join(caller.allow)})")


def original_of(store: Store, req: SendRequest) -> dict[str, Any] | None:
    """The stored event the request answers (inReplyTo msg_...), or None; 404 unknown_event."""
    if not (req.in_reply_to and req.in_reply_to.startswith("msg_")):
        return None
    raw = store.get_event(req.in_reply_to)
    if raw is None:
        raise SendError(404, "unknown_event", f"no stored event {req.in_reply_to}")
    event: dict[str, Any] = json.loads(raw)
    return event


def check_event_scope(caller: Caller, original: dict[str, Any] | None) -> None:
    """A caller answers only mail sent to an address it may send as (403 forbidden_event): checked
    before the reply is built, so that building it tells nothing of another address's mail (its
    Reply-To count, its From, whether it was automated)."""
    if original is not None and not caller.may_send_as(split(original.get("recipient", ""))[0]):
        raise SendError(403, "forbidden_event", "this key may not answer mail sent to another address")


def check_reply_scope(caller: Caller, original: dict[str, Any] | None, out: Outgoing) -> None:
    """A caller with a `reach` (an agent acting on mail, no person deciding) sends only to those
    addresses and to the authenticated sender of the mail it answers (replies.reply_address:
    403 unauthenticated_sender, else 403 forbidden_recipient). check_event_scope comes before it."""
    if caller.reach is None:
        return
    outside = [r for r in out.recipients if r.lower() not in caller.reach]
    if outside and original is not None:
        answer = replies.reply_address(original).address.lower()
        outside = [r for r in outside if r.lower() != answer]
    if outside:
        where = ", ".join(caller.reach) or "no other address"
        raise SendError(403, "forbidden_recipient", f"{caller.label} may not send to {outside[0]}: only to "
                                                    f"{where}, or answer the authenticated sender")


def prepare(box: Outbox, caller: Caller, req: SendRequest,
            resolve: Callable[[SendRequest], SendRequest] | None = None) -> Prepared:
    """Every check that does not count or send, in order (the module's table, up to the
    suppressions). `resolve`: the door's loading of attachments by URL, after the sender is known
    to be the caller's."""
    send.check_request(req)
    check_sender(caller, req)
    if resolve is not None:
        req = resolve(req)
    original = original_of(box.store, req)
    check_event_scope(caller, original)
    out = send.build(req, original, box.config, box.clock())
    check_reply_scope(caller, original, out)
    suppression.check(box.store, req.sender.address, out.recipients)
    return Prepared(req, original, out)


def take(box: Outbox, caller: Caller, prep: Prepared) -> list[str]:
    """Count the message under every limit (all or none, in the store); the keys it holds, taken
    now or prepaid by the caller, for give_back. 429 RateLimited when one is full."""
    out = prep.out
    thread = out.thread_id if prep.original is not None or out.in_reply_to else None
    prepaid = list(caller.prepaid())
    own = tuple(limit for limit in caller.limits if limit[0] not in prepaid)
    try:
        return send.take_limits(box.store, box.config, out.correspondents, thread, own) + prepaid
    except BaseException:
        if prepaid:
            box.store.give_back(prepaid)
        raise


def send_message(box: Outbox, caller: Caller, req: SendRequest, *, send_id: str | None = None,
                 resolve: Callable[[SendRequest], SendRequest] | None = None) -> Sent:
    """THE send path: the request checked, built, counted, handed to Postfix and recorded, or a
    SendError saying why not (nothing counted then). `send_id`: a scheduled send's own (its record
    is updated, not added)."""
    prep = prepare(box, caller, req, resolve)
    taken = take(box, caller, prep)
    try:
        send_id = send_id or send.new_send_id()
        out = send.with_return_path(prep.out, send_id, box.config)
        queue_id = box.submit(out, box.config)
    except BaseException:
        box.store.give_back(taken)                # refused: it does not count
        raise
    req, original = prep.req, prep.original
    try:
        sendevents.record_send(box.store, box.config, send_id, caller.name, req.sender.address, out, queue_id,
                               original.get("id") if original else None, box.clock(), req.scheduled_at)
    except StoreError as exc:                     # it is in Postfix's queue: the answer says so all the same
        log.warning("%s: sent as %s but not recorded: %s", send_id, queue_id, exc)
    log.info("%s: queued as %s from=%s to=%s key=%s", send_id, queue_id, req.sender.address,
             ",".join(out.recipients), caller.name)
    return Sent(send_id, queue_id, out)
