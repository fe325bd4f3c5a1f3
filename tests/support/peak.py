"""Run a command and print its own CPU seconds and peak RSS as JSON on stdout.

    python3 -I -S peak.py CMD ARGS...   (stdin and stderr pass through; the command's stdout is dropped)

Measured with wait4() from this small process, not from the test runner: a child forked from a
big process (pytest) reports the parent's resident size as its own peak, since Linux counts the
memory it had before exec()."""
import json
import os
import sys

devnull = os.open(os.devnull, os.O_WRONLY)
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime,
                  "maxrss": usage.ru_maxrss * 1024}))
