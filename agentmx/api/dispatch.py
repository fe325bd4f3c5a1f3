"""serve's dispatcher: what became of what agents sent (send events, agentmx/sendevents.py), POSTed
to the route of the sending address while serve runs.

    Dispatcher(ctx)     in every serve: claims due PENDING send events (Store.claim_send_events,
                        leased longer than any route's timeout: one serve on one host POSTs each,
                        SKIP LOCKED on postgres), POSTs each to its route's endpoint in the thread
                        pool, signed as deliver signs (deliver/control.exchange: the route's secret
                        and signature style, the webhook-id the event's id), and keeps the outcome
                        (Store.send_event_posted). Woken by the store's notifications (a send event
                        kept on this host or another), and every POLL seconds whatever happens.

    outcome(...)        pure: the answer -> (PostState, next_at, why)
        2xx             DELIVERED (whatever the route's ack mode: a status event has nothing to
                        drop, mark or block, so any 2xx takes it)
        406             REFUSED: the agent does not want it; not retried
        anything else   PENDING again: the first retry [server] status_first_retry seconds later,
                        then twice as long each time, at most MAX_INTERVAL apart; a Retry-After
                        (seconds or an HTTP date) is honoured between 1 s and MAX_INTERVAL. An
                        event older than [server] status_retry_hours is given up: FAILED.
    A route gone from the config: FAILED with that reason; a route that no longer pushes: KEPT.

One log line per POST: the event id, the route's match (never its endpoint: operators put tokens
in URLs; never the secret), the HTTP status and what follows. stop() lets every POST in progress
finish (never a cancel in the middle: the store closes after it).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from email.utils import parsedate_to_datetime
from typing import Callable

from agentmx.deliver import control
from agentmx.deliver.core import excerpt
from agentmx.deliver.http import Response, post as http_post
from agentmx.store import StoreError
from agentmx.store.model import PostState, SendEvent

from .scheduling import Loop

log = logging.getLogger("agentmx.serve.dispatch")

POLL = 1.0                  # seconds between looks for due events when no notification came
BATCH = 8                   # POSTs in flight at once (serve's thread pool is 16, shared with requests)
MAX_INTERVAL = 3600.0       # seconds: retries at most this far apart
LEASE_MARGIN = 60.0         # a claim outlives the route's timeout by this much (and a wait for a thread)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), None when it says
    nothing usable. Hostile input: bounded by the caller."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():      # not "²" (latin-1 header bytes): isdigit, yet no float
        return float(value)
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def outcome(event: SendEvent, resp: Response, now: float, first_retry: float,
            give_up: float) -> tuple[PostState, float, str]:
    """The event's POST state after this answer, when it is due again (PENDING), and why."""
    if 200 <= resp.status < 300:
        return PostState.DELIVERED, 0.0, f"HTTP {resp.status}"
    if resp.status == 406:
        return PostState.REFUSED, 0.0, "HTTP 406: the agent refused it, not retried"
    why = resp.error or f"HTTP {resp.status}"
    if now - event.at >= give_up:
        return PostState.FAILED, 0.0, f"{why}; given up after {give_up / 3600:g} h"
    delay = min(first_retry * 2 ** min(event.attempts, 30), MAX_INTERVAL)
    asked = retry_after(resp.retry_after, now)
    if asked is not None:
        delay = min(max(asked, 1.0), MAX_INTERVAL)
    return PostState.PENDING, now + delay, f"{why}; retry in {delay:g}s"


def post_within_lease(url: str, body: bytes, headers: dict, timeout: float) -> Response:
    """deliver/http.post with a deadline for the whole exchange (timeout bounds each read only): a
    POST ends before its lease (lease_for) and an endpoint that drips its answer holds no slot."""
    return http_post(url, body, headers, timeout, deadline=timeout + min(timeout, LEASE_MARGIN / 2))


def lease_for(routes) -> float:
    """How long one claim holds an event: past the longest POST any route may take."""
    return max((r.timeout for r in routes), default=10.0) + LEASE_MARGIN


class Dispatcher(Loop):
    """The loop in every serve that POSTs due send events. `posts`: POSTs by outcome since start
    (delivered, refused, retry, failed, kept; /metrics). stop() waits for every POST in flight."""

    def __init__(self, ctx, post: Callable[[str, bytes, dict, float], Response] | None = None):
        super().__init__(ctx)
        self.post = post or post_within_lease      # unless a test gives another
        self.posts: Counter = Counter()
        self.lease = lease_for(ctx.config.routes)
        self._inflight: set[asyncio.Task] = set()
        self._done = asyncio.Event()      # set when a POST ends: room for another claim

    async def stop(self) -> None:
        await super().stop()
        if self._inflight:                # each ends by itself (its POST has a timeout)
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _run(self) -> None:
        listener = self.ctx.listener
        while not self._stop.is_set():
            generation = listener.generation      # before the claim: news after it wakes us again
            room = BATCH - len(self._inflight)
            claimed: list[SendEvent] = []
            if room > 0:
                try:
                    claimed = await self.ctx.run(self.ctx.store.claim_send_events, self.lease, room)
                except StoreError as exc:
                    log.warning("send events: the store: %s", exc)
                except Exception:
                    log.exception("send events: internal error claiming")
            for event in claimed:
                task = asyncio.get_running_loop().create_task(self._one(event))
                self._inflight.add(task)
                task.add_done_callback(self._finished)
            if len(claimed) == room and room > 0:
                continue                          # more may be due
            await self._sleep(generation)

    def _finished(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._done.set()

    async def _sleep(self, generation: int) -> None:
        """Until a notification, a POST's end (room again), stop(), or POLL seconds."""
        self._done.clear()
        waits = [asyncio.ensure_future(self.ctx.listener.wait(generation, POLL)),
                 asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._done.wait())]
        try:
            await asyncio.wait(waits, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _one(self, event: SendEvent) -> None:
        try:
            result = await self.ctx.run(self.dispatch, event)
            self.posts[result] += 1
        except StoreError as exc:         # its claim runs out and it is POSTed again
            log.warning("%s: outcome not kept: the store: %s", event.id, exc)
        except Exception:
            log.exception("%s: internal error posting it", event.id)

    def dispatch(self, event: SendEvent) -> str:
        """One POST of a claimed event, and its outcome kept (in a thread of the pool). Returns
        what became of it: delivered, refused, retry, failed, kept."""
        config, store = self.ctx.config, self.ctx.store
        route = next((r for r in config.routes if r.match == event.route), None)
        if route is None:
            why = f"its route {event.route or '(none)'} is no longer in the config"
            store.send_event_posted(event.id, PostState.FAILED, why)
            log.warning("%s: %s %s not posted: %s", event.id, event.type, event.send_id, why)
            return "failed"
        if not route.pushes:
            why = f"its route {route.match} no longer pushes: kept for /v1/events"
            store.send_event_posted(event.id, PostState.KEPT, why)
            log.info("%s: %s %s not posted: %s", event.id, event.type, event.send_id, why)
            return "kept"
        resp, _, took_ms = control.exchange(route, event.id, event.body, self.ctx.clock, self.post)
        state, next_at, why = outcome(event, resp, self.ctx.clock(), config.status_first_retry,
                                      config.status_retry_hours * 3600)
        store.send_event_posted(event.id, state, why + (f": {excerpt(resp)}" if resp.body else ""), next_at)
        log.info("%s: %s %s to route %s (attempt %d, %d ms): %s -> %s", event.id, event.type, event.send_id,
                 route.match, event.attempts + 1, took_ms, why, state)
        return "retry" if state is PostState.PENDING else state.value
