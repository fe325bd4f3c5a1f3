"""Files a root process makes in the data directory (a test, `agentmx status` by hand, serve run
as root) are handed to the data directory's owner at once: deliver and serve, as user agentmx,
must keep using them."""
from __future__ import annotations

import os
from pathlib import Path


def hand_over(path: Path, owner_of: Path) -> None:
    """chown `path` to the owner and group of `owner_of`, when we are root; else nothing."""
    if os.geteuid() != 0:
        return
    try:
        st = Path(owner_of).stat()
        os.chown(path, st.st_uid, st.st_gid)
    except OSError:
        pass


def share_with_group(path: Path, like: Path, mode: int) -> None:
    """Give `path` the group of `like` and `mode`, when we are root (a key `agentmx keygen` makes
    under a key directory that `agentmx setup` gave to the milter's group)."""
    if os.geteuid() != 0:
        return
    try:
        os.chown(path, 0, Path(like).stat().st_gid)
        os.chmod(path, mode)
    except OSError:
        pass
