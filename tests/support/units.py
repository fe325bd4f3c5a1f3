"""Run a service exactly as its systemd unit file says, without systemd: the user, the group, the
supplementary groups (what systemd's initgroups() gives the user, plus SupplementaryGroups=), the
UMask, ExecStartPre= (a "+" line as root) and ExecStart=, through setpriv(1), with no capabilities
and no new privileges. Paths of a real install are mapped onto a test's own directories.

    unit = Unit.read(ROOT / "systemd" / "agentmx-milter.service")
    unit.run_pre(paths)                     # ExecStartPre=, each must succeed
    proc = unit.start(paths, log_path)      # ExecStart=, a subprocess as the unit's user
    unit.run_as(["cat", key], paths)        # any command under the unit's identity
"""
from __future__ import annotations

import grp
import os
import pwd
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Unit:
    name: str
    user: str
    group: str | None
    supplementary: tuple[str, ...]
    umask: int
    exec_start_pre: tuple[tuple[bool, tuple[str, ...]], ...]     # (as root, argv)
    exec_start: tuple[str, ...]
    runtime_directories: tuple[str, ...] = field(default=())

    @classmethod
    def read(cls, path: Path) -> "Unit":
        values: dict[str, list[str]] = {}
        section = ""
        for raw in Path(path).read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section != "Service" or "=" not in line:
                continue
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())

        def one(key: str, default: str | None = None) -> str | None:
            return values.get(key, [default])[-1]
        pre = []
        for line in values.get("ExecStartPre", []):
            as_root = line.startswith("+")
            pre.append((as_root, tuple(shlex.split(line.lstrip("+-@!")))))
        return cls(name=Path(path).name, user=one("User"), group=one("Group"),
                   supplementary=tuple(g for v in values.get("SupplementaryGroups", []) for g in v.split()),
                   umask=int(one("UMask", "0022"), 8), exec_start_pre=tuple(pre),
                   exec_start=tuple(shlex.split(one("ExecStart"))),
                   runtime_directories=tuple(d for v in values.get("RuntimeDirectory", []) for d in v.split()))

    # --- identity ------------------------------------------------------------------------------

    def gid(self) -> int:
        return grp.getgrnam(self.group).gr_gid if self.group else pwd.getpwnam(self.user).pw_gid

    def groups(self) -> list[int]:
        """As systemd: initgroups(User, Group) (the groups that list the user, and Group), then
        SupplementaryGroups."""
        gids = [self.gid()]
        gids += [g.gr_gid for g in grp.getgrall() if self.user in g.gr_mem]
        gids += [grp.getgrnam(g).gr_gid for g in self.supplementary]
        return list(dict.fromkeys(gids))

    def _wrap(self, argv: list[str]) -> list[str]:
        setpriv = ["setpriv", f"--reuid={pwd.getpwnam(self.user).pw_uid}", f"--regid={self.gid()}",
                   "--groups=" + ",".join(str(g) for g in self.groups()), "--inh-caps=-all",
                   "--bounding-set=-all", "--no-new-privs"]
        return ["sh", "-c", f'umask {self.umask:04o} && exec "$0" "$@"', *setpriv, *argv]

    # --- running -------------------------------------------------------------------------------

    @staticmethod
    def _mapped(argv, paths: dict[str, str]) -> list[str]:
        out = []
        for arg in argv:
            for real, test in sorted(paths.items(), key=lambda kv: -len(kv[0])):
                arg = arg.replace(real, test)
            out.append(arg)
        return out

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
                "HOME": "/nonexistent", "USER": self.user}

    def run_pre(self, paths: dict[str, str]) -> None:
        for as_root, argv in self.exec_start_pre:
            argv = self._mapped(argv, paths)
            cmd = argv if as_root else self._wrap(argv)
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=self.env())
            if out.returncode != 0:
                raise RuntimeError(f"{self.name}: ExecStartPre {' '.join(argv)} failed ({out.returncode}): "
                                   f"{out.stdout}{out.stderr}")

    def start(self, paths: dict[str, str], log_path: Path, extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
        log = open(log_path, "ab")
        try:
            return subprocess.Popen(self._wrap(self._mapped(self.exec_start, paths) + list(extra_args)),
                                    stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        finally:
            log.close()

    def run_as(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self._wrap(argv), capture_output=True, text=True, timeout=timeout, env=self.env())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait(5)
