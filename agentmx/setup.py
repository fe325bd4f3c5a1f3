"""`agentmx setup`: put agentmx into an existing Postfix, idempotently, with a way back.

    agentmx setup --domain agents.example.com --endpoint https://agent.example.com/hooks/email
    agentmx setup ... --dry-run          # the main.cf / master.cf diff, nothing changed
    agentmx setup --undo                 # main.cf and master.cf restored byte for byte

What it does, in order: keeps the original main.cf and master.cf once (main.cf.agentmx-orig,
master.cf.agentmx-orig beside them; a second run keeps the first backup); writes
<agentmx dir>/agentmx.toml (if there is none) with a route for the domain and fresh secrets in
files of their own; makes DKIM keys (RSA and ed25519) if the domain has none; writes the
recipient map; applies postfix/main.cf.fragment, main.cf.deliver.fragment, master.cf.fragment and
master.cf.submit.fragment (the send API's submission service, chrooted like smtp/inet) with
`postconf` (so a second run changes nothing); prints the DNS records to publish.
"""
from __future__ import annotations

import base64
import difflib
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import dkimkeys, dnsrecords
from .config import load_config
from .deliver.route import postfix_map
from .ownership import NotOurs, set_owner

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BACKUP = ".agentmx-orig"


class SetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    postfix_dir: Path
    agentmx_dir: Path
    domain: str
    endpoint: str
    data_dir: Path
    pipe_user: str
    agentmx_bin: str
    socket: Path


def _postconf(*args: str) -> str:
    out = subprocess.run(["postconf", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SetupError(f"postconf {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _fragment_lines(name: str) -> list[str]:
    path = PACKAGE_ROOT / "postfix" / name            # a checkout
    if not path.exists():                             # an install: <prefix>/share/agentmx/postfix
        path = Path(sys.prefix) / "share" / "agentmx" / "postfix" / name
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#") and ("=" in line)]


def _chrooted(plan: Plan) -> bool:
    return _postconf("-c", str(plan.postfix_dir), "-Fh", "smtp/inet/chroot").strip() == "y"


def _queue_dir(plan: Plan) -> Path:
    return Path(_postconf("-c", str(plan.postfix_dir), "-h", "queue_directory").strip())


def main_cf_settings(plan: Plan) -> list[str]:
    chrooted = _chrooted(plan)
    queue_dir = _queue_dir(plan)
    if chrooted:
        try:
            milter = "unix:/" + str(plan.socket.relative_to(queue_dir))
        except ValueError:
            raise SetupError(f"smtpd runs chrooted in {queue_dir}: the milter socket must be inside it "
                             f"(not {plan.socket})") from None
    else:
        milter = f"unix:{plan.socket}"
    recipients = plan.agentmx_dir / "recipients"
    out = []
    for line in _fragment_lines("main.cf.fragment") + _fragment_lines("main.cf.deliver.fragment"):
        name, _, value = (p.strip() for p in line.partition("="))
        value = {"smtpd_milters": milter, "relay_domains": plan.domain,
                 "transport_maps": f"inline:{{ {plan.domain}=agentmx: }}",
                 "relay_recipient_maps": f"texthash:{recipients}"}.get(name, value)
        out.append(f"{name} = {value}")
    return out


def master_cf_entry(plan: Plan) -> str:
    (entry,) = _fragment_lines("master.cf.fragment")
    return (entry.replace("user=agentmx", f"user={plan.pipe_user}")
            .replace("/opt/agentmx/venv/bin/agentmx", plan.agentmx_bin)
            .replace("/etc/agentmx/agentmx.toml", str(plan.agentmx_dir / "agentmx.toml")))


def submit_cf_entry(plan: Plan) -> str:
    """The send API's submission service, chrooted like smtp/inet (smtpd_milters names the milter
    socket as smtpd sees it)."""
    (entry,) = _fragment_lines("master.cf.submit.fragment")
    return entry.replace(" unix n - n - - smtpd ", f" unix n - {'y' if _chrooted(plan) else 'n'} - - smtpd ")


def _apply_postfix(plan: Plan, postfix_dir: Path) -> None:
    _postconf("-c", str(postfix_dir), "-e", *main_cf_settings(plan))
    _postconf("-c", str(postfix_dir), "-M", master_cf_entry(plan), submit_cf_entry(plan))


def diff(plan: Plan) -> str:
    """What setup would change in main.cf and master.cf, as a unified diff."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("main.cf", "master.cf"):
            shutil.copy2(plan.postfix_dir / name, Path(tmp) / name)
        _apply_postfix(plan, Path(tmp))
        out = []
        for name in ("main.cf", "master.cf"):
            before = (plan.postfix_dir / name).read_text().splitlines(keepends=True)
            after = (Path(tmp) / name).read_text().splitlines(keepends=True)
            out.extend(difflib.unified_diff(before, after, f"{plan.postfix_dir / name}", f"{plan.postfix_dir / name} (agentmx)"))
        return "".join(out)


def _secret_file(path: Path, value: str) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def write_config(plan: Plan) -> Path:
    cfg = plan.agentmx_dir / "agentmx.toml"
    if cfg.exists():
        return cfg
    plan.agentmx_dir.mkdir(parents=True, exist_ok=True)
    _secret_file(plan.agentmx_dir / "webhook.secret", "whsec_" + base64.b64encode(os.urandom(32)).decode())
    _secret_file(plan.agentmx_dir / "url.secret", base64.b64encode(os.urandom(32)).decode())
    _secret_file(plan.agentmx_dir / "api.key", "amx_" + base64.b32encode(os.urandom(20)).decode().lower())
    _secret_file(plan.agentmx_dir / "admin.key", "amxadm_" + base64.b32encode(os.urandom(20)).decode().lower())
    host = _postconf("-c", str(plan.postfix_dir), "-h", "myhostname").strip()
    cfg.write_text(f"""# Written by `agentmx setup` on {time.strftime('%Y-%m-%d')}; every key: config/agentmx.toml in the docs.
[server]
authserv_id = "{host}"
data_dir = "{plan.data_dir}"
key_dir = "{plan.agentmx_dir / 'keys'}"
url_secret_file = "{plan.agentmx_dir / 'url.secret'}"
# Signs in to the web console (<public_url>/console) with every key's view.
admin_key_file = "{plan.agentmx_dir / 'admin.key'}"
# Postfix's config directory: the console's queue page and `agentmx status` run postqueue -c with it.
postfix_config = "{plan.postfix_dir}"

[milter]
socket = "{plan.socket}"

[send]
submit = "unix:{_queue_dir(plan) / 'public' / 'agentmx-submit'}"

[domains."{plan.domain}"]
dkim_selectors = ["ax1r", "ax1e"]

[[routes]]
match = "@{plan.domain}"
endpoint = "{plan.endpoint}"
secret_file = "{plan.agentmx_dir / 'webhook.secret'}"

# The agent's key for `agentmx serve` (send, the inbox API, MCP): give it to the agent's developer.
[[api_keys]]
name = "agent"
key_file = "{plan.agentmx_dir / 'api.key'}"
allow = ["@{plan.domain}"]
""")
    return cfg


def ensure_keys(plan: Plan) -> None:
    key_dir = plan.agentmx_dir / "keys"
    for selector, alg in (("ax1r", "rsa"), ("ax1e", "ed25519")):
        if not dkimkeys.path_for(key_dir, plan.domain, selector, alg).exists():
            dkimkeys.write(key_dir, dkimkeys.generate(plan.domain, selector, alg))


def ensure_user(name: str, home: Path, groups: tuple[str, ...] = ()):
    """A user's passwd entry; our own system users (agentmx, agentmx-milter) are made if missing,
    each with a group of its own name and no login."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if name not in (APP_USER, MILTER_USER):
            raise SetupError(f"user {name!r} does not exist") from None
    subprocess.run(["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home",
                    "--shell", "/usr/sbin/nologin", *(["--groups", ",".join(groups)] if groups else []), name],
                   check=True)
    return pwd.getpwnam(name)


APP_USER = "agentmx"             # deliver (pipe, worker, LMTP), serve, the agent, gc
MILTER_USER = "agentmx-milter"   # the milter: the only one that can read the DKIM private keys


@dataclass(frozen=True)
class Owned:
    path: Path
    uid: int
    gid: int
    mode: int


def layout(plan: Plan, app, milter) -> list[Owned]:
    """Who owns what, and its mode (docs/operator.md, "Who may read what"): the config for both
    users (group agentmx; the milter's unit adds that group), the application's secrets for user
    agentmx alone, the DKIM keys for the milter's group alone, the data directory for agentmx
    (the milter writes its counters into stats/)."""
    etc, keys = plan.agentmx_dir, plan.agentmx_dir / "keys"
    out = [Owned(etc, 0, app.pw_gid, 0o750),
           Owned(etc / "agentmx.toml", 0, app.pw_gid, 0o640),
           Owned(etc / "recipients", 0, app.pw_gid, 0o640),
           Owned(plan.data_dir, app.pw_uid, app.pw_gid, 0o750),
           # setgid: the milter's counters (made with its primary group, postfix) get group agentmx
           Owned(plan.data_dir / "stats", milter.pw_uid, app.pw_gid, 0o2750),
           Owned(keys, 0, milter.pw_gid, 0o750),
           Owned(plan.socket.parent, milter.pw_uid, _gid("postfix"), 0o750)]
    out += [Owned(etc / name, app.pw_uid, app.pw_gid, 0o400)
            for name in ("webhook.secret", "url.secret", "api.key", "admin.key") if (etc / name).exists()]
    for d in sorted(p for p in keys.iterdir() if p.is_dir()):
        out.append(Owned(d, 0, milter.pw_gid, 0o750))
        out += [Owned(f, 0, milter.pw_gid, 0o640) for f in sorted(d.iterdir()) if f.is_file()]
    return out


def _gid(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SetupError(f"group {group!r} does not exist (is Postfix installed?)") from None


def apply(plan: Plan) -> str:
    """Run setup; returns the DNS records to publish (zone-file lines)."""
    for name in ("main.cf", "master.cf"):
        backup = plan.postfix_dir / (name + BACKUP)
        if not backup.exists():
            shutil.copy2(plan.postfix_dir / name, backup)
    app = ensure_user(plan.pipe_user, plan.data_dir)
    milter = ensure_user(MILTER_USER, Path("/nonexistent"))
    (plan.data_dir / "stats").mkdir(parents=True, exist_ok=True)
    plan.socket.parent.mkdir(parents=True, exist_ok=True)
    ensure_keys(plan)
    cfg_path = write_config(plan)
    config = load_config(cfg_path)
    (plan.agentmx_dir / "recipients").write_text(postfix_map(config))
    for item in layout(plan, app, milter):
        try:
            set_owner(item.path, item.uid, item.gid, item.mode)     # never through a link
        except NotOurs as exc:
            raise SetupError(f"{exc}; remove it and run setup again") from None
    _apply_postfix(plan, plan.postfix_dir)
    return dnsrecords.zone_lines(dnsrecords.records(config, plan.domain))


def undo(postfix_dir: Path) -> list[Path]:
    """Restore main.cf and master.cf from the backups setup kept, byte for byte."""
    restored = []
    for name in ("main.cf", "master.cf"):
        backup = postfix_dir / (name + BACKUP)
        if backup.exists():
            shutil.copy2(backup, postfix_dir / name)
            backup.unlink()
            restored.append(postfix_dir / name)
    if not restored:
        raise SetupError(f"no agentmx backup in {postfix_dir}: nothing to undo")
    return restored
