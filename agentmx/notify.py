"""Wake-ups for waiting readers: "something new is in the inbox" from deliver to serve, without polling.

On one host they travel over unix datagram sockets in <data_dir>/notify/: every `agentmx serve`
process binds one socket there (serve-<pid>.sock: agentmx/store/listener.py), and `ring(data_dir)`,
called by deliver after it has committed an inbox row, sends one tiny datagram to each. Nothing
is queued and nothing waits: a datagram that cannot be sent (no serve running, its buffer full)
is dropped, and serve's own slow check catches whatever a lost datagram did not announce. A stale
socket (its serve died) is removed. This module is on deliver's per-message path: stdlib os and
socket only, no asyncio.

    deliver:  ring(data_dir)                          microseconds; never raises
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path


log = logging.getLogger("agentmx.notify")

FOLDER = "notify"


def folder(data_dir: Path) -> Path:
    return Path(data_dir) / FOLDER


def ring(data_dir: Path) -> int:
    """Tell every serve process on this host that the inbox changed. Returns how many heard."""
    try:
        names = os.listdir(folder(data_dir))
    except OSError:
        return 0
    heard = 0
    sock = None
    try:
        for name in names:
            if not name.endswith(".sock"):
                continue
            path = str(folder(data_dir) / name)
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
            try:
                sock.sendto(b"1", path)
                heard += 1
            except ConnectionRefusedError:          # nobody bound: a serve that died
                remove_stale(path)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOENT, errno.EACCES):
                    log.debug("notify %s: %s", name, exc)
    finally:
        if sock is not None:
            sock.close()
    return heard


def remove_stale(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
