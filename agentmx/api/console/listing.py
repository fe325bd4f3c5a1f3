"""What the console's lists share: the `before` cursor of a page, the page itself (newest first,
one more row read to know whether an older page follows), a `state` filter, an id from the path."""
from __future__ import annotations

import enum
from typing import Sequence, TypeVar

from ..errors import ApiError

Row = TypeVar("Row")
E = TypeVar("E", bound=enum.Enum)


def cursor(value: str | None) -> int | None:
    """A listing's `before` (a row's seq an earlier page gave), checked."""
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise ApiError(400, "bad_before", "before is a value an earlier page gave")
    return int(value)


def page(rows: Sequence[Row], size: int) -> tuple[list[Row], Row | None]:
    """The first `size` of `rows` (read with limit size + 1), and the last of them when an older
    page follows (its seq, or its key, is the next page's `before`), else None."""
    shown = list(rows[:size])
    return shown, (shown[-1] if len(rows) > size and shown else None)


def state(value: str | None, kind: type[E]) -> E | None:
    """A `state` filter: one of `kind`'s words, or none; else 400."""
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ApiError(400, "bad_state", "state is one of " + ", ".join(s.value for s in kind)) from None


def valid_id(value: str, prefix: str, what: str) -> str:
    """An id from the path, as ids of this kind look; else 404 (`what`: message, delivery, send, job)."""
    if not value.startswith(prefix) or len(value) > 80:
        raise ApiError(404, f"unknown_{what}", f"no such {what}")
    return value
