"""serve's one reader of new inbox rows (agentmx/api/news.py): a row wakes the waiters it may be for
and no others; whenever the reader cannot know every new row (the store failed, a flood), every
waiter is woken to look for itself, so nothing is missed. Over a real Listener, with a store
stand-in that is a list of rows (the store's side is tested in tests/store and test_serve_limits)."""
from __future__ import annotations

import asyncio

import pytest

from agentmx.api import news as news_mod
from agentmx.store.listener import Listener
from agentmx.api.news import InboxNews
from agentmx.store import StoreUnavailable
from agentmx.store.model import DeliveryState, InboxRow

pytestmark = pytest.mark.unit


class Rows:
    def __init__(self):
        self.rows: list[InboxRow] = []
        self.fail = False

    def add(self, address: str) -> None:
        seq = len(self.rows) + 1
        self.rows.append(InboxRow(seq, f"msg_{seq}", address, address, "a@b.test", "s", None, 0.0,
                                  DeliveryState.STORED, False))

    def fetch(self, after: int) -> list[InboxRow]:
        if self.fail:
            raise StoreUnavailable("down")
        return [r for r in self.rows if r.seq > after][:news_mod.PAGE]

    def last_seq(self) -> int:
        if self.fail:
            raise StoreUnavailable("down")
        return len(self.rows)


async def run(fn, *args):
    return fn(*args)


def scenario(body):
    async def main(tmp):
        rows = Rows()
        rows.add("old@x.test")                     # before start: no one is woken for it
        listener = Listener(tmp, check=lambda: 0)
        news = InboxNews(listener, rows.fetch, rows.last_seq, run)
        await news.start()
        try:
            await body(rows, listener, news)
        finally:
            await news.stop()
    return main


async def settle():
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_a_row_wakes_only_the_waiters_it_may_be_for(tmp_path):
    async def body(rows, listener, news):
        with news.watch(("agent@x.test",)) as agent, news.watch(("@x.test",)) as domain, \
                news.watch(("@x.test",), to="other@x.test") as to_other, news.watch(("else@y.test",)) as other:
            for w in (agent, domain, to_other, other):
                w.event.clear()
            rows.add("Agent@X.test".lower())
            listener.bump()
            await settle()
            assert (agent.event.is_set(), domain.event.is_set(), to_other.event.is_set(), other.event.is_set()) \
                == (True, True, False, False)
            reads = news.reads
            for w in (agent, domain):
                w.event.clear()
            listener.bump()                        # a wake-up with nothing new: one read, no one woken
            await settle()
            assert news.reads == reads + 1 and not agent.event.is_set() and not domain.event.is_set()
        assert news._all == set() and news._by_address == {} and news._by_domain == {}
    asyncio.run(scenario(body)(tmp_path))


def test_a_failed_read_or_a_flood_wakes_everyone_and_starts_again(tmp_path, monkeypatch):
    monkeypatch.setattr(news_mod, "RETRY", 0.05)
    monkeypatch.setattr(news_mod, "PAGE", 3)

    async def body(rows, listener, news):
        with news.watch(("agent@x.test",)) as agent, news.watch(("else@y.test",)) as other:
            for w in (agent, other):
                w.event.clear()
            rows.fail = True
            listener.bump()
            await settle()
            assert agent.event.is_set() and other.event.is_set() and news.seq is None   # lost track: all look
            for w in (agent, other):
                w.event.clear()
            rows.fail = False
            rows.add("nobody@z.test")
            await asyncio.sleep(0.2)                  # the retry, without a wake-up: seq again, all look
            assert news.seq == 2 and agent.event.is_set() and other.event.is_set()
            for w in (agent, other):
                w.event.clear()
            for _ in range(4 * 3):                    # more than PAGES reads of PAGE rows, none for them
                rows.add("nobody@z.test")
            listener.bump()
            await settle()
            assert news.seq == len(rows.rows) and agent.event.is_set() and other.event.is_set()
    asyncio.run(scenario(body)(tmp_path))
