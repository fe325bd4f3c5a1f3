"""`agentmx deliver`: the Postfix pipe program. One process per message and recipient; the message
on stdin, the envelope on the command line (arguments.add_envelope_arguments); exit 0 or 75 and
nothing else (pipe(8) bounces on any other status).

The outcome line goes to stderr: pipe(8) puts it into the status text of the delivery, so the
mail log (and postqueue -p for a deferral) says what happened and why.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable

from agentmx.config import Config, Service

from . import frontend

log = logging.getLogger("agentmx.deliver")


def main(args: argparse.Namespace, config_path: Path, stdin: BinaryIO | None = None,
         store_factory: Callable[[Config], Any] = frontend.open_store) -> int:
    """deliver's parsed command line and the configuration file's path -> the exit status."""
    current = frontend.Current(config_path, Service.APP, store_factory=store_factory)
    stdin = stdin if stdin is not None else sys.stdin.buffer
    return frontend.run("deliver", lambda: (frontend.envelope_from_args(args), stdin.read()), current,
                        log).exit_code


def bad_command_line(argv: list[str]) -> int:
    """A deliver command line that argparse refused (it said why just before): keep the message."""
    queue_id = next((a.partition("=")[2] for a in argv if a.startswith("--queue-id=")), None)
    result = frontend.deferred(queue_id, "bad command line in master.cf")
    print(f"agentmx deliver: {result.line}", file=sys.stderr)
    return result.exit_code
