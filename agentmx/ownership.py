"""Owners and modes of the files agentmx makes, changed without ever following a symbolic link.

The data directory belongs to user agentmx: a compromised deliver, serve or agent could plant a
link there (`inbox.sqlite-wal -> /etc/passwd`), and a root process that then chowns or chmods
"its" file (a test, `agentmx status` or `agentmx setup` by hand) would hand the link's target to
agentmx. So every change here works on a file descriptor opened with O_NOFOLLOW (a regular file
or a directory), or on the link itself (lchown, for sockets); a link is refused, never followed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path


class NotOurs(OSError):
    """A path that is a symbolic link, or not the kind of file expected: left alone."""


def set_owner(path: Path, uid: int, gid: int, mode: int | None = None) -> None:
    """chown (and chmod) `path`, a regular file, a directory or a socket, never a link's target.
    Raises NotOurs for a symbolic link or another kind of file."""
    st = os.lstat(path)
    if stat.S_ISSOCK(st.st_mode):
        os.chown(path, uid, gid, follow_symlinks=False)
        if mode is not None:
            os.chmod(path, mode)          # a socket cannot be opened; ours, just made by us
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise NotOurs(f"{path}: not a regular file or directory (a link?): left alone")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0)
    fd = os.open(path, flags)
    try:
        os.fchown(fd, uid, gid)
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def hand_over(path: Path, owner_of: Path) -> None:
    """Give `path` the owner and group of `owner_of` (the data directory), when we are root; else
    nothing. Never through a link."""
    if os.geteuid() != 0:
        return
    try:
        st = Path(owner_of).stat()
        set_owner(path, st.st_uid, st.st_gid)
    except OSError:
        pass


def share_with_group(path: Path, like: Path, mode: int) -> None:
    """Give `path` the group of `like` and `mode`, when we are root (a key `agentmx keygen` makes
    under a key directory that `agentmx setup` gave to the milter's group)."""
    if os.geteuid() != 0:
        return
    try:
        set_owner(path, 0, Path(like).stat().st_gid, mode)
    except OSError:
        pass


def no_other_access(path: Path) -> None:
    """Take the others' bits away from a file of ours (made 0644 by an older version). Path-based
    (an SQLite file must not be opened and closed beside a connection: its locks would go) and
    never as root: as its owner, a chmod through a planted link can only reach one's own files."""
    if os.geteuid() == 0:
        return
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o007 and st.st_uid == os.geteuid():
            os.chmod(path, st.st_mode & 0o770)
    except OSError:
        pass


def writable_like(path: Path, like: Path) -> None:
    """Give a file of ours its owner's write bit back when `like` (the file it belongs to) has
    it: SQLite makes a new -shm with the database file's mode of that moment, so one made while
    the database was read-only (a restore, a chmod -R a-w then u+w racing a delivery) stayed
    read-only after the database was writable again, and every write failed for good ("attempt
    to write a readonly database"). Path-based and never as root, like no_other_access."""
    if os.geteuid() == 0:
        return
    try:
        st, ref = os.lstat(path), os.lstat(like)
        if (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and ref.st_uid == os.geteuid()
                and ref.st_mode & stat.S_IWUSR and not st.st_mode & stat.S_IWUSR):
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    except OSError:
        pass


def refuse_links(*paths: Path) -> None:
    """Raise NotOurs if any of `paths` is a symbolic link (a file we are about to open)."""
    for p in paths:
        try:
            if stat.S_ISLNK(os.lstat(p).st_mode):
                raise NotOurs(f"{p}: a symbolic link where agentmx keeps a file of its own: refused")
        except FileNotFoundError:
            pass


def write_atomically(path: Path, data: bytes, owner_of: Path, mtime: float | None = None) -> None:
    """`path` replaced by `data` at once: a new file beside it (0640, O_EXCL, never through a link),
    fsynced, then renamed over. Run as root, the new file is `owner_of`'s (user and group), so
    that the services (and the milter, through group agentmx) can read what root wrote. (Not
    tempfile: its imports cost deliver ~3 ms of CPU per message.)"""
    tmp = path.parent / f".tmp-{os.urandom(8).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o640)
            if os.geteuid() == 0:
                st = owner_of.stat()
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            if mtime is not None:
                os.utime(f.fileno(), (mtime, mtime))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

