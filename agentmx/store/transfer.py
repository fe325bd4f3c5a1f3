"""Moving a store to another backend (`agentmx store migrate --to postgres`, cli/storage.py): copied,
then verified. Through the Store interface only (blob_names, get_blob, put_blob, export_records,
import_records), so it moves any backend to any other, the reverse direction included.

    report = move(source, target, say=print)      copy what the target lacks, then verify
    report = verify(source, target, say=print)    compare only, change nothing

The copy, in this order:
  1. blobs: each of the source's, its bytes checked against its name (a damaged blob is named,
     not spread), put, read back from the target and checked by its sha256;
  2. events, each with its inbox row, delivery, attempts and blob references: the newest one
     first, so that the target's next inbox position is past every source event (mail the target
     takes meanwhile is filed after the old), then all of them in seq order;
  3. sends, agent jobs, transcripts, rate-limit and loop-breaker uses, uploads, blocks;
  4. send events (what became of the sends, with their webhook POST state) like events: the
     newest first, then all in seq order; suppressions.
A target that holds events or send events of its own at the source's first positions (its
services ran before the move) is refused before anything is copied.
Every batch is one transaction of the target, and import_records inserts only the records whose
key the target lacks, never changing one it has: run again after an interruption (even kill -9)
it does what is left, and twice it doubles nothing. Where the target has a record of its own
under the same key (its services ran since), the target's stays.

The verification exports both stores and merges them in key order, table by table: the source's
records, the target's records of the same keys (count, and a sha256 over a canonical form of
each record), and apart the target's own records that the source lacks (mail taken since the
switch: counted, not compared). Blobs: each source blob present in the target with bytes whose
sha256 is its name (read back during the copy, or now). Any record missing or different, any
blob missing or damaged, is a mismatch: report.ok is False and report.problems say which.
"""
from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .base import Store, StoreError
from .model import RecordKind, record_key

BATCH = 500             # records per transaction of the target, blob names per listing
SHOWN = 5               # keys named per table in a mismatch


class Refused(StoreError):
    """The target cannot take the source's records as they are (nothing of them was copied)."""


@dataclass
class TableCheck:
    """One table compared: the source's rows, the target's rows of the same keys."""
    name: str
    source_rows: int = 0
    target_rows: int = 0
    target_only: int = 0                 # the target's own rows (taken since the switch): not compared
    missing: int = 0
    differ: int = 0
    examples: list = field(default_factory=list)     # keys of the first rows missing or different
    _source: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)
    _target: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.differ and self.source_rows == self.target_rows

    @property
    def source_hash(self) -> str:
        return self._source.hexdigest()

    @property
    def target_hash(self) -> str:
        return self._target.hexdigest()

    def problem(self) -> str:
        what = [f"{self.missing} missing in the target"] if self.missing else []
        what += [f"{self.differ} different"] if self.differ else []
        return f"{self.name}: {', '.join(what)} (first: {', '.join(map(_show, self.examples))})"


@dataclass
class Report:
    read: dict = field(default_factory=dict)        # table -> records (blobs: blobs) read from the source
    copied: dict = field(default_factory=dict)      # table -> records the target did not have
    blob_bytes: int = 0                             # bytes of the source's blobs
    seconds: dict = field(default_factory=dict)     # phase -> seconds
    checks: list = field(default_factory=list)      # TableCheck, blobs first
    problems: list = field(default_factory=list)    # what does not match, in words

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks)


def move(source: Store, target: Store, say: Callable[[str], None] = lambda _: None, *, batch: int = BATCH,
         workers: int = 4) -> Report:
    """Copy what the target lacks, then verify; see the module's docstring."""
    report = Report()
    checked: set[bytes] = set()
    for kind in _BY_SEQ:
        _refuse_a_used_target(source, target, kind)
    started = time.monotonic()
    _copy_blobs(source, target, report, checked, say, workers, batch)
    report.seconds["blobs"] = time.monotonic() - started
    for kind in RecordKind:
        started = time.monotonic()
        _copy(source, target, kind, report, say, batch)
        report.seconds[kind.value] = time.monotonic() - started
    return verify(source, target, say, report=report, checked=checked, batch=batch)


def verify(source: Store, target: Store, say: Callable[[str], None] = lambda _: None, *, report: Report | None = None,
           checked: set[bytes] | None = None, batch: int = BATCH) -> Report:
    """Compare the two stores, table by table (the module's docstring); blobs in `checked` were
    read back from the target by this run's copy already."""
    report = report or Report()
    started = time.monotonic()
    say("verifying: blobs")
    report.checks.append(_check_blobs(source, target, checked or set(), batch))
    for kind in RecordKind:
        say(f"verifying: {kind.value}")
        report.checks.append(_merge(kind.value, _records(source, kind, batch), _records(target, kind, batch),
                                    record_key, _canonical))
    report.problems += [c.problem() for c in report.checks if not c.ok and (c.missing or c.differ)]
    report.problems += [f"{c.name}: {c.source_rows} rows in the source, {c.target_rows} in the target"
                        for c in report.checks if not c.ok and not (c.missing or c.differ)]
    report.seconds["verify"] = time.monotonic() - started
    return report


# --- the copy ----------------------------------------------------------------------------------------------

def _copy_blobs(source: Store, target: Store, report: Report, checked: set[bytes], say, workers: int,
                batch: int) -> None:
    def one(name: tuple[str, int]) -> tuple[int, str | None]:
        sha = name[0]
        data = source.get_blob(sha)
        if data is None:
            return 0, f"blob {sha}: gone from the source while it was copied (is `agentmx gc` running?)"
        if hashlib.sha256(data).hexdigest() != sha:
            return len(data), f"blob {sha}: damaged in the source (its bytes do not hash to its name): not copied"
        target.put_blob(data)
        back = target.get_blob(sha)
        if back is None or hashlib.sha256(back).hexdigest() != sha:
            return len(data), f"blob {sha}: read back from the target, {'missing' if back is None else 'damaged'}"
        checked.add(bytes.fromhex(sha))       # 32 bytes a blob, not a 64-character string
        return len(data), None

    count = size = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for page in _pages(lambda after: source.blob_names(after, batch), lambda name: name[0], ""):
            for length, problem in pool.map(one, page):
                size += length
                if problem:
                    report.problems.append(problem)
            count += len(page)
            say(f"blobs: {count} copied and checked, {size / 1e6:.1f} MB")
    report.read["blobs"] = count
    report.blob_bytes = size


# Kinds keyed by the store's order of arrival (seq): the target numbers its own records after them.
_BY_SEQ = (RecordKind.EVENTS, RecordKind.SEND_EVENTS)


def _copy(source: Store, target: Store, kind: RecordKind, report: Report, say, batch: int) -> None:
    read = copied = 0
    if kind in _BY_SEQ:
        newest = source.last_seq() if kind is RecordKind.EVENTS else _last_seq(source, kind)
        if newest:              # first: the target's next position is past every source record's
            copied += target.import_records(kind, source.export_records(kind, after=newest - 1, limit=1))
    for page in _records_pages(source, kind, batch):
        copied += target.import_records(kind, page)
        read += len(page)
        say(f"{kind.value}: {read} read, {copied} copied")
    report.read[kind.value] = read
    report.copied[kind.value] = copied


def _last_seq(store: Store, kind: RecordKind) -> int:
    """The highest seq of a kind keyed by seq (0: none), by export_records(after=x, limit=1)
    alone: doubling, then halving (a few dozen one-row reads, none of the records read twice)."""
    def beyond(x: int) -> bool:
        return bool(store.export_records(kind, after=x, limit=1))
    if not beyond(0):
        return 0
    low, high = 0, 1                # beyond(low) holds; find the least high where it does not
    while beyond(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if beyond(middle):
            low = middle
        else:
            high = middle
    return high


def _refuse_a_used_target(source: Store, target: Store, kind: RecordKind = RecordKind.EVENTS) -> None:
    """Refused before anything is copied: a target whose first event (or send event) is not the
    source's (it took mail, or sent, on its own before the move, numbered from 1 like the source's)."""
    first = target.export_records(kind, None, 1)
    if not first:
        return
    ours = source.export_records(kind, first[0].seq - 1, 1)
    if ours and (ours[0].seq, ours[0].id) == (first[0].seq, first[0].id):
        return
    if kind is RecordKind.EVENTS:
        raise Refused(f"the target holds {first[0].id} at inbox position {first[0].seq}, which is not the source's "
                      "event there: it took mail of its own before the move. Nothing of the inbox was copied; "
                      "move into an empty database")
    raise Refused(f"the target holds send event {first[0].id} at position {first[0].seq}, which is not the source's "
                  "there: its services sent mail before the move. Nothing was copied; move into an empty database")


# --- the verification --------------------------------------------------------------------------------------

def _check_blobs(source: Store, target: Store, checked: set[bytes], batch: int) -> TableCheck:
    """Each source blob in the target, its bytes hashing to its name."""
    def content(name: tuple[str, int]) -> bytes:
        sha, size = name
        if bytes.fromhex(sha) not in checked:
            data = target.get_blob(sha)
            if data is None:
                return b"missing " + sha.encode()
            if hashlib.sha256(data).hexdigest() != sha:
                return b"damaged " + sha.encode()
        return f"{sha} {size}".encode()

    def names(store: Store) -> Iterator[tuple[str, int]]:
        for page in _pages(lambda after: store.blob_names(after, batch), lambda name: name[0], ""):
            yield from page
    return _merge("blobs", names(source), names(target), lambda name: name[0],
                  lambda name: f"{name[0]} {name[1]}".encode(), target_canonical=content)


def _merge(name: str, source: Iterator, target: Iterator, key, canonical, target_canonical=None) -> TableCheck:
    """Both streams in key order: the source's rows against the target's of the same keys."""
    target_canonical = target_canonical or canonical
    check = TableCheck(name)
    theirs = next(target, None)
    for ours in source:
        k = key(ours)
        while theirs is not None and key(theirs) < k:
            check.target_only += 1
            theirs = next(target, None)
        mine = canonical(ours)
        check.source_rows += 1
        check._source.update(mine + b"\n")
        if theirs is not None and key(theirs) == k:
            got = target_canonical(theirs)
            check.target_rows += 1
            check._target.update(got + b"\n")
            if got != mine:
                check.differ += 1
                if len(check.examples) < SHOWN:
                    check.examples.append(k)
            theirs = next(target, None)
        else:
            check.missing += 1
            if len(check.examples) < SHOWN:
                check.examples.append(k)
    while theirs is not None:
        check.target_only += 1
        theirs = next(target, None)
    return check


def _canonical(record) -> bytes:
    """One line of JSON per record, the same for the same values whichever backend gave them.
    Text as PostgreSQL holds it (no NUL, no lone surrogate: its backend replaces them, U+FFFD)."""
    return json.dumps(_plain(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value


# --- paging ---------------------------------------------------------------------------------------------------

def _pages(fetch, key, first) -> Iterator[list]:
    after = first
    while True:
        page = fetch(after)
        if not page:
            return
        yield page
        after = key(page[-1])


def _records_pages(store: Store, kind: RecordKind, batch: int) -> Iterator[list]:
    return _pages(lambda after: store.export_records(kind, after, batch), record_key, None)


def _records(store: Store, kind: RecordKind, batch: int) -> Iterator:
    for page in _records_pages(store, kind, batch):
        yield from page


def _show(key) -> str:
    if isinstance(key, tuple):
        return " at ".join(map(str, key))
    return f"seq {key}" if isinstance(key, int) else str(key)
