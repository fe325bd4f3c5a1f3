"""GET /console/stats[?range=24h|7d]: counts over the last 24 hours and 7 days in the viewer's
scope (messages received, deliveries by their current state, DMARC verdicts, sends and what
became of them), and a chart of deliveries and verdicts over time: inline SVG drawn here (no
script, no chart library; the page's CSP allows SVG markup), with a title, an aria-label and the
same numbers as a table.

One grouped store query (Store.activity: hourly buckets over 7 days) makes the whole page: its
answer is at most buckets x states x verdicts rows, however many messages there are."""
from __future__ import annotations

from collections import Counter

from starlette.requests import Request
from starlette.routing import Route

from agentmx.store.model import Activity, DeliveryState, SendEventType

from ..errors import ApiError
from . import session
from .core import Console

HOUR = 3600
HOURS = 7 * 24                                 # the store is asked for 7 days, by the hour
RANGES = {"24h": (24, 1), "7d": (HOURS, 6)}    # range -> (hours shown, hours per bar)
# The chart's series: a delivery state's group, a DMARC result's.
TAKEN = {DeliveryState.DELIVERED.value, DeliveryState.STORED.value, DeliveryState.QUEUED.value}
WAITING = {DeliveryState.RECEIVED.value, DeliveryState.DEFERRED.value}
DELIVERY_SERIES = [("taken", "delivered, stored or queued for the agent", "#1a7f37"),
                   ("waiting", "received or deferred (not taken yet)", "#9a6700"),
                   ("other", "refused, held, spam or dropped", "#b42318")]
DMARC_SERIES = [("pass", "DMARC pass", "#1a7f37"), ("fail", "DMARC fail", "#b42318"),
                ("other", "DMARC none, temperror or permerror", "#8a94a6")]
WIDTH, HEIGHT, PAD = 720, 150, 28


def delivery_group(state: str) -> str:
    return "taken" if state in TAKEN else "waiting" if state in WAITING else "other"


def dmarc_group(result: str) -> str:
    return result if result in ("pass", "fail") else "other"


def totals(act: Activity, first: int) -> dict:
    """Counts of the buckets from `first` on."""
    inbound = [r for r in act.inbound if r[0] >= first]
    states: Counter[str] = Counter()
    dmarc: Counter[str] = Counter()
    sends: Counter[str] = Counter()
    for _, state, result, n in inbound:
        states[state] += n
        dmarc[result] += n
    for b, kind, n in act.sends:
        if b >= first:
            sends[kind] += n
    return {"received": sum(states.values()), "states": states, "dmarc": dmarc, "sends": sends}


def series(act: Activity, first: int, bars: int, per: int) -> dict[str, list[Counter[str]]]:
    """Per bar (of `per` hourly buckets from `first`): delivery groups and DMARC groups."""
    out: dict[str, list[Counter[str]]] = {"deliveries": [Counter() for _ in range(bars)],
                                          "dmarc": [Counter() for _ in range(bars)]}
    for b, state, result, n in act.inbound:
        i = (b - first) // per
        if 0 <= i < bars:
            out["deliveries"][i][delivery_group(state)] += n
            out["dmarc"][i][dmarc_group(result)] += n
    return out


def chart(counts: list[Counter[str]], kinds: list[tuple[str, str, str]], starts: list[int]) -> dict:
    """Stacked bars as SVG rectangles: [{x, y, w, h, fill, label}], and the scale's top."""
    top = max([sum(c.values()) for c in counts] + [1])
    inner_h = HEIGHT - 2 * PAD
    slot = (WIDTH - 2 * PAD) / max(len(counts), 1)
    rects = []
    for i, c in enumerate(counts):
        y: float = HEIGHT - PAD
        for name, label, fill in kinds:
            n = c.get(name, 0)
            if not n:
                continue
            h = inner_h * n / top
            y -= h
            rects.append({"x": round(PAD + i * slot + slot * 0.1, 1), "y": round(y, 1), "w": round(slot * 0.8, 1),
                          "h": round(h, 1), "fill": fill, "label": f"{label}: {n}", "start": starts[i]})
    return {"rects": rects, "top": top, "width": WIDTH, "height": HEIGHT, "pad": PAD,
            "legend": [(label, fill) for _, label, fill in kinds]}


def routes(console: Console) -> list[Route]:
    ctx = console.ctx

    async def show(request: Request, viewer: session.Viewer):
        shown = request.query_params.get("range") or "24h"
        if shown not in RANGES:
            raise ApiError(400, "bad_range", "range is 24h or 7d")
        end = (int(ctx.clock()) // HOUR + 1) * HOUR           # the current hour's bucket is the last
        since = end - HOURS * HOUR
        act = await ctx.run(ctx.store.activity, viewer.key.allow, float(since), float(end), float(HOUR))
        hours, per = RANGES[shown]
        first, bars = HOURS - hours, hours // per
        starts = [since + (first + i * per) * HOUR for i in range(bars)]
        s = series(act, first, bars, per)
        rows = [{"start": starts[i], "deliveries": s["deliveries"][i], "dmarc": s["dmarc"][i]} for i in range(bars)]
        return console.render(request, viewer, "stats.html", title="Stats", range=shown, ranges=list(RANGES),
                              day=totals(act, HOURS - 24), week=totals(act, 0),
                              states=[st.value for st in DeliveryState], send_types=[t.value for t in SendEventType],
                              deliveries=chart(s["deliveries"], DELIVERY_SERIES, starts),
                              dmarc=chart(s["dmarc"], DMARC_SERIES, starts), rows=rows,
                              delivery_series=DELIVERY_SERIES, dmarc_series=DMARC_SERIES, per=per, end=end)

    return [Route("/stats", console.page(show))]
