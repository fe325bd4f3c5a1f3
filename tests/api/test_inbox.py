"""agentmx/api/inbox.py's pure parts: the cursor of /v1/events (position), the merge of inbox rows
and send events by time (merge), and the query values (_since, _int, _filters). The routes over real
HTTP are in test_serve_limits.py and test_send_events_api.py."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agentmx.api import inbox
from agentmx.api.errors import ApiError
from agentmx.store.model import DeliveryState, InboxRow, SendEvent, SendEventType

pytestmark = pytest.mark.unit


def row(seq: int, at: float) -> InboxRow:
    return InboxRow(seq, f"msg_{seq:016d}", "agent@agents.test", "agent@agents.test", "bob@remote.test", "Hi",
                    None, at, DeliveryState.DELIVERED, False)


def sent(seq: int, at: float) -> SendEvent:
    return SendEvent(f"evt_{seq}", f"snd_{seq}", SendEventType.DELIVERED, "bob@remote.test", at,
                     "agent@agents.test", "agent@agents.test", seq=seq)


def code(fn, *args) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value.status, info.value.code


# --- position ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [(None, (None, None)), ("", (None, None)), ("12", (12, None)),
                                            ("12.34", (12, 34)), ("0.0", (0, 0)), ("9" * 18, (10**18 - 1, None))])
def test_position_reads_what_an_earlier_answer_gave(value, expected):
    assert inbox.position(value) == expected


@pytest.mark.parametrize("value", ["x", "1.", ".1", "1.2.3", "-1", "1e3", " 1", "9" * 19, "1.٣"])
def test_position_refuses_anything_else_naming_the_parameter(value):
    assert code(inbox.position, value) == (400, "bad_cursor")
    assert code(inbox.position, value, "after") == (400, "bad_after")


# --- merge ---------------------------------------------------------------------------------------


def test_merge_newest_first_interleaves_by_time_and_keeps_each_kinds_order():
    rows, sends = [row(3, 30.0), row(2, 20.0), row(1, 10.0)], [sent(9, 25.0), sent(8, 5.0)]
    assert inbox.merge(rows, sends, newest_first=True) == [rows[0], sends[0], rows[1], rows[2], sends[1]]


def test_merge_oldest_first_interleaves_by_time():
    rows, sends = [row(1, 10.0), row(2, 20.0)], [sent(8, 5.0), sent(9, 15.0), sent(10, 25.0)]
    assert inbox.merge(rows, sends, newest_first=False) == [sends[0], rows[0], sends[1], rows[1], sends[2]]


def test_merge_on_a_tie_takes_the_inbox_row_first():
    r, e = row(1, 10.0), sent(1, 10.0)
    assert inbox.merge([r], [e], newest_first=True) == [r, e]
    assert inbox.merge([r], [e], newest_first=False) == [r, e]


def test_merge_stops_where_a_full_read_runs_out():
    """What follows a full read of one kind is not known yet: the merge ends there, so the other
    kind's later items are not sent before items of the first kind that come before them."""
    rows, sends = [row(1, 10.0), row(2, 20.0)], [sent(1, 15.0), sent(2, 30.0), sent(3, 40.0)]
    assert inbox.merge(rows, sends, False, rows_full=True) == [rows[0], sends[0], rows[1]]
    assert inbox.merge(rows, sends, False, rows_full=False) == [rows[0], sends[0], rows[1], sends[1], sends[2]]
    assert inbox.merge(rows, sends[:1], False, sends_full=True) == [rows[0], sends[0]]
    assert inbox.merge([], sends, False, rows_full=True) == []
    assert inbox.merge([], [], True) == []


# --- the query's values --------------------------------------------------------------------------


def test_since_is_unix_seconds_or_an_rfc_3339_time():
    at = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc).timestamp()
    assert inbox._since(None) is None and inbox._since("") is None
    assert inbox._since("1700000000.5") == 1700000000.5
    assert inbox._since("2026-12-05T09:00:00Z") == at
    assert inbox._since("2026-12-05T10:00:00+01:00") == at
    assert code(inbox._since, "yesterday") == (400, "bad_since")


@pytest.mark.parametrize("value,expected", [(None, 20), ("", 20), ("5", 5), ("0", 1), ("-3", 1), ("1000", 100)])
def test_int_takes_the_default_and_clamps_to_its_bounds(value, expected):
    assert inbox._int(value, 20, 1, 100, "limit") == expected


@pytest.mark.parametrize("value", ["ten", "1.5", "0x10"])
def test_int_refuses_what_is_no_whole_number_naming_the_parameter(value):
    assert code(inbox._int, value, 20, 1, 100, "limit") == (400, "bad_limit")
    assert code(inbox._int, value, 30, 0, 300, "timeout") == (400, "bad_timeout")


def test_filters_take_to_from_and_subject_and_leave_out_empty_ones():
    assert inbox._filters({"to": "agent@agents.test", "from": "bob@remote.test", "subject": "Hi", "limit": "5"}) == \
        {"to": "agent@agents.test", "sender": "bob@remote.test", "subject": "Hi"}
    assert inbox._filters({"to": "", "from": ""}) == {"to": None, "sender": None, "subject": None}
    assert code(inbox._filters, {"to": "agent"}) == (400, "bad_to")
