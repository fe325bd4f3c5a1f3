"""The built-in agent's jobs (action = "agent" routes) and what it did:

    GET /console/agent[?state=&before=]   newest message first: state, attempts, last error, actions
    GET /console/agent/{event id}         the job, and its transcript (agentmx/agentloop.py's record:
                                          each attempt's model turns and tool calls, or its error)

Scope: the jobs of the routes whose whole match the viewer's key may read (api/deliveries.py's
readable_routes; store.list_jobs: only an agent route's events have jobs). Another route's job is a
404. The transcript is the model's output and the message's text: data, printed escaped, each text
cut at MAX_TEXT characters, at most MAX_TURNS turns per attempt and the newest MAX_RUNS attempts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.routing import Route

from agentmx.store.model import JobState

from ..deliveries import readable_routes
from ..errors import ApiError
from . import session
from .core import Console
from .listing import cursor, page, state, valid_id

PAGE = 50
MAX_TEXT = 4000          # characters of one turn's text, of one tool call's arguments
MAX_TURNS = 200          # turns shown of one attempt
MAX_RUNS = 20            # attempts shown (the newest)
STATES = tuple(s.value for s in JobState)


@dataclass(frozen=True)
class Text:
    text: str
    cut: int             # characters left out (0: all of it)


@dataclass(frozen=True)
class Turn:
    role: str            # system, user, assistant, tool
    text: Text
    calls: tuple[tuple[str, Text], ...]     # an assistant's tool calls: (name, arguments)
    call_id: str         # a tool turn: the call it answers


@dataclass(frozen=True)
class Run:
    at: float | None
    outcome: str         # the run's outcome ("replied", ...), or the state it failed into
    summary: str
    error: str
    actions: tuple[str, ...]
    turns: tuple[Turn, ...]
    more_turns: int      # turns left out


def bounded(value, limit: int = MAX_TEXT) -> Text:
    """Any value of the record as text of at most `limit` characters (and how much was cut)."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return Text(text[:limit], max(0, len(text) - limit))


def _word(value, limit: int = 200) -> str:
    return bounded(value, limit).text


def _turn(m) -> Turn:
    if not isinstance(m, dict):
        return Turn("?", bounded(m), (), "")
    calls = []
    for c in m.get("tool_calls") or ():
        fn = (c.get("function") or {}) if isinstance(c, dict) else {}
        calls.append((_word(fn.get("name") if isinstance(fn, dict) else fn),
                      bounded(fn.get("arguments") if isinstance(fn, dict) else None)))
    return Turn(_word(m.get("role")), bounded(m.get("content")), tuple(calls), _word(m.get("tool_call_id")))


def runs(record: dict | None) -> tuple[list[Run], int]:
    """The transcript's attempts, newest first, as the page shows them; and how many were left out."""
    attempts = (record or {}).get("attempts") if isinstance(record, dict) else None
    attempts = [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []
    out = []
    for a in reversed(attempts[-MAX_RUNS:]):
        messages = a.get("messages") if isinstance(a.get("messages"), list) else []
        at = a.get("at")
        out.append(Run(at if isinstance(at, (int, float)) else None, _word(a.get("outcome") or a.get("state")),
                       bounded(a.get("summary"), 1000).text, bounded(a.get("error"), 1000).text,
                       tuple(_word(x) for x in (a.get("actions") or ())[:50]) if isinstance(a.get("actions"), list) else (),
                       tuple(_turn(m) for m in messages[:MAX_TURNS]), max(0, len(messages) - MAX_TURNS)))
    return out, max(0, len(attempts) - MAX_RUNS)


def routes(console: Console) -> list[Route]:
    ctx = console.ctx

    def route_matches(viewer: session.Viewer) -> tuple[str, ...]:
        """The matches of the routes the viewer may read: only an agent route's events have jobs."""
        return tuple(r.match for r in readable_routes(ctx.config, viewer.key))

    def listing(viewer: session.Viewer, state: JobState | None, before: int | None):
        rows, last = page(ctx.store.list_jobs(route_matches(viewer), state=state, before_seq=before,
                                              limit=PAGE + 1), PAGE)
        return rows, (last.seq if last else None)

    async def index(request: Request, viewer: session.Viewer):
        params = request.query_params
        chosen = state(params.get("state"), JobState)
        rows, next_before = await ctx.run(listing, viewer, chosen, cursor(params.get("before")))
        return console.render(request, viewer, "agent.html", title="Agent", rows=rows,
                              state=chosen.value if chosen else "", states=STATES, next_before=next_before)

    def detail(viewer: session.Viewer, event_id: str):
        job = ctx.store.job(valid_id(event_id, "msg_", "job"))
        delivery = ctx.store.delivery(event_id) if job else None
        if job is None or delivery is None or delivery.route not in route_matches(viewer):
            raise ApiError(404, "unknown_job", "no such agent job (or not one of your routes')")
        return job, delivery, ctx.store.inbox_row(event_id), runs(ctx.store.get_transcript(event_id))

    async def show(request: Request, viewer: session.Viewer):
        job, delivery, row, (shown, left_out) = await ctx.run(detail, viewer, request.path_params["id"])
        return console.render(request, viewer, "job.html", title=f"Agent job {job.id}", job=job, delivery=delivery,
                              row=row, runs=shown, left_out=left_out)

    return [Route("/agent", console.page(index)), Route("/agent/{id:str}", console.page(show))]
