"""The long-running services and the pipe program: milter, deliver, worker, lmtp, serve, agent, mcp.

Each handler imports its service inside it: the parser is built on every command, and the
per-message `agentmx deliver` must not pay for the milter's, serve's or the agent's imports
(bench/deliver-cost; docs/decisions.md, "Issue 20: the CLI and the SMTP replies")."""
from __future__ import annotations

import sys
from pathlib import Path

from agentmx.config import Service, load_config
from agentmx.deliver.arguments import add_envelope_arguments     # the pipe's own arguments (argparse only)

from .common import checked_store, config_path


def cmd_milter(args) -> int:
    config = load_config(config_path(args.config), Service.MILTER)
    from agentmx.milter import service
    service.run(config)
    return 0


def cmd_deliver(args) -> int:
    """The Postfix pipe program: the message on stdin, exit 0 or 75 (never anything else)."""
    from agentmx.deliver import pipe
    return pipe.main(args, config_path(args.config))


def cmd_worker(args) -> int:
    """deliver, resident, behind the lean pipe client (deliver/worker.py, deliver/pipeclient.py)."""
    config = load_config(config_path(args.config), Service.APP)
    from agentmx.deliver import worker
    worker.serve(config, Path(args.socket) if args.socket else config.worker.socket,
                 args.processes or config.worker.processes, config.worker.socket_mode)
    return 0


def cmd_lmtp(args) -> int:
    """deliver as an LMTP server for Postfix's lmtp(8) (deliver/lmtp.py)."""
    config = load_config(config_path(args.config), Service.APP)
    from agentmx.deliver import lmtp
    lmtp.serve(config, Path(args.socket) if args.socket else config.worker.lmtp_socket,
               args.processes or config.worker.processes, config.worker.socket_mode)
    return 0


def cmd_mcp(args) -> int:
    """The inbox and send API as MCP tools over stdio (agentmx/mcpserver.py)."""
    try:
        from agentmx import mcpserver
    except ImportError as exc:
        print(f"agentmx mcp: the MCP SDK is not installed ({exc.name}): pip install 'agentmx[mcp]'", file=sys.stderr)
        return 2
    return mcpserver.run(args.url, args.key)


def cmd_agent(args) -> int:
    """Run the agent for action = "agent" routes (agentmx/agentloop.py)."""
    config = load_config(config_path(args.config), Service.APP)
    from agentmx import agentloop
    if args.requeue:
        with checked_store(config) as store:
            ok = store.job_requeue(args.requeue)
        print(f"{args.requeue}: {'queued again' if ok else 'not a parked job'}")
        return 0 if ok else 1
    return agentloop.serve(config, once=args.once)


def cmd_serve(args) -> int:
    config = load_config(config_path(args.config), Service.APP)
    from agentmx.api import server
    server.run(config)
    return 0


def add_milter(sub) -> None:
    sub.add_parser("milter", help="run the authentication milter on its unix socket").set_defaults(func=cmd_milter)


def add_deliver(sub) -> None:
    d = sub.add_parser("deliver", help="the Postfix pipe program: message on stdin, exit 0 or 75")
    add_envelope_arguments(d)
    d.set_defaults(func=cmd_deliver)


def _add_resident(sub, name: str, help: str, socket_key: str, func) -> None:
    p = sub.add_parser(name, help=help)
    p.add_argument("--socket", help=f"listen here instead of [worker] {socket_key}")
    p.add_argument("--processes", type=int, help="processes sharing the socket (default [worker] processes)")
    p.set_defaults(func=func)


def add_worker(sub) -> None:
    _add_resident(sub, "worker", "run deliver resident for the lean pipe client ([worker] in the config)",
                  "socket", cmd_worker)


def add_lmtp(sub) -> None:
    _add_resident(sub, "lmtp", "run deliver as an LMTP server for Postfix ([worker] lmtp_socket)",
                  "lmtp_socket", cmd_lmtp)


def add_mcp(sub) -> None:
    mc = sub.add_parser("mcp", help="serve the inbox and the send API as MCP tools over stdio")
    mc.add_argument("--url", help="agentmx serve's base URL (default $AGENTMX_URL, else http://127.0.0.1:8025)")
    mc.add_argument("--key", help="the API key (default $AGENTMX_API_KEY)")
    mc.set_defaults(func=cmd_mcp)


def add_agent(sub) -> None:
    ag = sub.add_parser("agent", help='run the agent for action = "agent" routes (the model loop)')
    ag.add_argument("--once", action="store_true", help="process the due jobs, then exit")
    ag.add_argument("--requeue", metavar="ID", help="try a parked job again")
    ag.set_defaults(func=cmd_agent)


def add_serve(sub) -> None:
    sub.add_parser("serve", help="serve signed attachment and raw-message URLs over HTTP").set_defaults(func=cmd_serve)


COMMANDS = {"milter": add_milter, "deliver": add_deliver, "worker": add_worker, "lmtp": add_lmtp, "mcp": add_mcp,
            "agent": add_agent, "serve": add_serve}
