"""Servers that tests start are stopped, also when the tests fail or the run is killed.

Session fixtures stop them on the normal path. For the other ones: every server registers here
while it runs; the first SIGTERM/SIGHUP (coreutils `timeout` sends SIGTERM twice, to the child and
then to its group) turns into KeyboardInterrupt, so pytest unwinds its fixtures, and later ones
are ignored so the unwinding is not cut off halfway; an atexit hook stops whatever is still
registered after that.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

log = logging.getLogger("tests.reaper")

_running: dict[int, object] = {}
_installed = False


def register(server) -> None:
    """`server.close()` (stop, remove its files) is called at exit unless unregister()ed first."""
    global _installed
    _running[id(server)] = server
    if not _installed:
        _installed = True
        atexit.register(stop_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _on_signal)


def unregister(server) -> None:
    _running.pop(id(server), None)


def stop_all() -> None:
    for server in list(_running.values()):
        try:
            server.close()
        except Exception as exc:          # one server failing to stop must not keep the others up
            log.warning("stopping %r: %s", server, exc)
        unregister(server)


def stop_group(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """A process started with start_new_session=True, and its children: SIGTERM to the group,
    SIGKILL when it is not gone after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _on_signal(signum, frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}: stopping the test servers")


class Server:
    """What the test servers share: start() registers, stop() takes it down with its data kept,
    close() stops it and removes its folder (`base`) unless AGENTMX_KEEP_TMP is set."""
    base: Path

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def down(self):
        """Stopped inside the block, started again after it whatever happens (fault tests)."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def _forget(self) -> None:
        unregister(self)
        if not os.environ.get("AGENTMX_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)


def session(server: Server):
    """The body of a session fixture: the server started, yielded, closed whatever happens."""
    try:
        server.start()
        yield server
    finally:
        server.close()
