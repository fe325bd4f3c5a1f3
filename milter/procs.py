"""Several milter processes on one socket ([milter] processes): a supervisor that forks and keeps them.

pymilter runs every callback of a process under one GIL, so a big message being canonicalized and
hashed holds up every other SMTP session of that process. With n processes the kernel spreads the
sessions over n interpreters. The parent binds the socket once (libmilter's smfi_opensocket), then
forks n children that each run libmilter's accept loop on it (smfi_main, which starts libmilter's
threads and its signal thread: so the fork comes first, and the parent never starts a thread).

The parent only supervises: a child that ends is started again in its slot (the same stats file),
after a delay that doubles while children die young; SIGTERM, SIGINT or SIGHUP stop every child
(SIGTERM, then SIGKILL after `stop_timeout`), every child is reaped, and the parent returns.

Two libmilter habits need care with several processes on one socket:
- A libmilter process that stops unlinks the socket path it bound (mi_closener). The socket is
  bound at a temporary name and renamed to the configured path, so a child that stops alone (or
  its replacement) never removes the path the others serve on; the parent removes it at the end.
- Every child polls the one listening socket; all wake for a connection and one accept()s it. On
  a blocking socket the others would sleep in accept() holding libmilter's listener lock, deaf to
  SIGTERM until the next connection: the listening socket is made non-blocking (libmilter takes
  EAGAIN as "poll again"; on Linux an accepted socket does not inherit O_NONBLOCK).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("agentmx.milter.procs")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = {signal.SIGCHLD, *STOP_SIGNALS}
FIRST_DELAY = 0.25          # seconds before a child is started again ...
MAX_DELAY = 30.0            # ... doubling per young death, up to this
YOUNG = 10.0                # a child that lived less than this died young
PR_SET_PDEATHSIG = 1


def restart_delay(young_deaths: int) -> float:
    """Seconds to wait before starting a slot again after its `young_deaths`-th death in a row
    of a child that lived less than YOUNG seconds (0: it had lived longer)."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, young_deaths - 1))


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:               # a real-time signal: Python names only SIGRTMIN and SIGRTMAX
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def identity(path: Path) -> tuple[int, int]:
    """The (st_dev, st_ino) of what `path` names now: tells our socket from a newer milter's
    renamed onto the same path (FileNotFoundError when nothing is there)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def bind(sock: Path, open_socket: Callable[[str], None]) -> tuple[Path, tuple[int, int]]:
    """Bind the milter socket at `sock` through libmilter (`open_socket(temporary path)`), renamed
    into place, its listening descriptor non-blocking. Returns the temporary path (libmilter's name
    for it) and the path's (st_dev, st_ino)."""
    tmp = sock.with_name(f".{sock.name}.{os.getpid()}")
    open_socket(str(tmp))
    for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            continue                     # not a socket (the directory listing itself, ...)
        try:
            if s.family == socket.AF_UNIX and s.getsockname() == str(tmp):
                s.setblocking(False)
                break
        finally:
            s.detach()
    else:
        raise RuntimeError(f"libmilter's listening socket on {tmp} was not found")
    os.replace(tmp, sock)
    return tmp, identity(sock)


def unbind(sock: Path, ident: tuple[int, int]) -> None:
    """Remove the socket path if it is still ours (not a newer milter's)."""
    try:
        if identity(sock) == ident:
            sock.unlink()
    except FileNotFoundError:
        pass


def _die_with_parent(parent: int) -> None:
    """A child whose supervisor is gone (killed with SIGKILL) stops too: SIGTERM on its death."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if os.getppid() != parent:           # it died before prctl took
        os.kill(os.getpid(), signal.SIGTERM)


def _fork(slot: int, serve: Callable[[int], None], mask: set) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:                                 # the child: never returns into the supervisor's code
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with_parent(parent)
        serve(slot)
    except BaseException:
        log.exception("milter process %d failed", slot)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def supervise(processes: int, serve: Callable[[int], None], stop_timeout: float = 10.0,
              clock: Callable[[], float] = time.monotonic, wake: Callable[[], None] | None = None) -> None:
    """Run `serve(slot)` in `processes` children (slots 0 .. processes - 1), each started again when
    it ends, until SIGTERM, SIGINT or SIGHUP; then stop them all and return. `wake()`, called while
    they stop, wakes their accept loops (see _stop)."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    children: dict[int, int] = {}                      # pid -> slot
    due = {slot: clock() for slot in range(processes)}  # slots to start -> when
    born: dict[int, float] = {}
    young = dict.fromkeys(range(processes), 0)
    try:
        while True:
            for slot, at in sorted(due.items()):
                if at <= clock():
                    del due[slot]
                    try:
                        pid = _fork(slot, serve, old_mask)
                    except OSError as exc:
                        young[slot] += 1
                        due[slot] = clock() + restart_delay(young[slot])
                        log.error("cannot start milter process %d (%s); trying again in %.2f s", slot,
                                  exc.strerror, due[slot] - clock())
                        continue
                    children[pid], born[slot] = slot, clock()
                    log.info("milter process %d started (pid %d)", slot, pid)
            wait = max(0.0, min(due.values()) - clock()) if due else 60.0
            info = signal.sigtimedwait(WATCHED, wait)
            for pid, status in _reaped():
                slot = children.pop(pid, None)
                if slot is None:
                    continue
                young[slot] = young[slot] + 1 if clock() - born[slot] < YOUNG else 0
                delay = restart_delay(young[slot])
                due[slot] = clock() + delay
                log.warning("milter process %d (pid %d) %s; starting another in %.2f s", slot, pid,
                            describe(status), delay)
            if info is not None and info.si_signo in STOP_SIGNALS:
                log.info("%s: stopping %d milter process(es)", signal.Signals(info.si_signo).name, len(children))
                break
    finally:
        _stop(children, stop_timeout, clock, wake)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _reaped():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _stop(children: dict[int, int], timeout: float, clock, wake: Callable[[], None] | None = None) -> None:
    """SIGTERM to every child, SIGKILL to those still there after `timeout`; all reaped.
    libmilter's accept loop looks at its stop flag only when its poll() returns, which it does
    every 5 seconds (MI_CHK_TIME) or on a connection: `wake()` (a connection to the socket, closed
    at once) is made every 0.1 s, so that a stop takes milliseconds, not up to 5 s per stop."""
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = clock() + timeout
    while children and clock() < deadline:
        if wake is not None:
            try:
                wake()
            except OSError as exc:       # the socket gone already: the poll ends on its own
                log.debug("waking the accept loops: %s", exc.strerror or exc)
        signal.sigtimedwait({signal.SIGCHLD}, max(0.0, min(0.1 if wake else 0.5, deadline - clock())))
        for pid, status in _reaped():
            if children.pop(pid, None) is not None:
                log.info("milter process (pid %d) %s", pid, describe(status))
    for pid in children:
        log.warning("milter process (pid %d) still running after %.0f s: SIGKILL", pid, timeout)
        _signal(pid, signal.SIGKILL)
    for pid in list(children):
        os.waitpid(pid, 0)
        del children[pid]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        log.debug("pid %d already gone", pid)
