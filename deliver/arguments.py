"""deliver's command line as master.cf passes it: every `agentmx` command's parser adds these
(agentmx/cli/services.py), so this module imports argparse only; the front-ends (frontend.py)
read them into an Envelope."""
from __future__ import annotations

import argparse


def add_envelope_arguments(parser: argparse.ArgumentParser) -> None:
    """deliver's arguments, as master.cf passes them (pipe(8)'s macros)."""
    parser.add_argument("--sender", default="", help="${sender}")
    parser.add_argument("--recipient", required=True, help="${recipient}")
    parser.add_argument("--queue-id", help="${queue_id}")
    parser.add_argument("--client-address", help="${client_address}")
    parser.add_argument("--client-helo", help="${client_helo}")
    parser.add_argument("--original-recipient", help="${original_recipient}")
