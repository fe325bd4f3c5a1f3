"""The data directory: content-addressed blobs and per-event records. Writes are atomic.

    <data_dir>/blobs/<sha[:2]>/<sha>     raw messages and attachments, by sha256 of their bytes
    <data_dir>/events/<id>.json          the event as last sent (or kept aside)
    <data_dir>/state/<id>.json           {"state": delivered|refused|held|deferred, "attempts", ...}
    <data_dir>/sent/<snd_id>.json        what the send API submitted (ids, recipients, queue id)
    <data_dir>/transcripts/<id>.json     what the agent (action = "agent" routes) was shown and did

Nothing in a path comes from a message: only hex digests and our own event ids.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

_EVENT_ID = re.compile(r"^(msg|snd)_[a-z0-9]{16,64}$")


class StoreError(OSError):
    """The data directory cannot be written: the delivery is deferred (exit 75)."""


class Store:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir)

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o640)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            raise StoreError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc

    def blob_path(self, sha: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError("not a sha256 hex digest")
        return self.root / "blobs" / sha[:2] / sha

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            self._write(path, data)
        return sha

    def _event_path(self, kind: str, event_id: str) -> Path:
        if not _EVENT_ID.match(event_id):
            raise ValueError(f"bad event id {event_id!r}")
        return self.root / kind / f"{event_id}.json"

    def put_event(self, event_id: str, body: bytes) -> None:
        self._write(self._event_path("events", event_id), body)

    def get_event(self, event_id: str) -> bytes | None:
        try:
            return self._event_path("events", event_id).read_bytes()
        except (OSError, ValueError):
            return None

    def put_transcript(self, event_id: str, record: dict) -> None:
        self._write(self._event_path("transcripts", event_id), json.dumps(record, ensure_ascii=False, indent=1).encode())

    def get_transcript(self, event_id: str) -> dict | None:
        try:
            return json.loads(self._event_path("transcripts", event_id).read_text())
        except (OSError, ValueError):
            return None

    def put_sent(self, send_id: str, record: dict) -> None:
        self._write(self._event_path("sent", send_id), json.dumps(record, sort_keys=True).encode())

    def get_state(self, event_id: str) -> dict:
        try:
            return json.loads(self._event_path("state", event_id).read_text())
        except (OSError, ValueError):
            return {}

    def put_state(self, event_id: str, state: dict) -> None:
        self._write(self._event_path("state", event_id), json.dumps(state, sort_keys=True).encode())
