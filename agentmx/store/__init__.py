"""Everything agentmx keeps, behind one interface (base.Store), with two backends:

    embedded   SQLite (WAL) + a blob folder in data_dir: one host, the default and the demo
    postgres   PostgreSQL (psycopg 3, a pool) + an S3-compatible bucket: several MX hosts

    model.py      every record a frozen dataclass, every state an enum
    base.py       the interface, and its one error type (StoreError: StoreUnavailable, SchemaMismatch)
    files.py      the data-directory files of earlier versions (events/, state/, sent/,
                  transcripts/, blobs/): what the embedded backend replaces (issue 14)

`open_store(config)` gives the configured backend.
"""
from __future__ import annotations

from .files import Store, StoreError  # noqa: F401  (the file store, until the backends replace it)
