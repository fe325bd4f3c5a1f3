"""What the command groups share: where the config is, the store for one command, DNS server
arguments. argparse and the config only: imported by the parser on every command (deliver's too)."""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

from agentmx.config import DEFAULT_PATH, dns_servers


def config_path(arg: str | None) -> Path:
    """--config, else $AGENTMX_CONFIG, else $AGENTMX_DIR/agentmx.toml, else /etc/agentmx/agentmx.toml."""
    if arg or os.environ.get("AGENTMX_CONFIG"):
        return Path(arg or os.environ["AGENTMX_CONFIG"])
    if os.environ.get("AGENTMX_DIR"):
        return Path(os.environ["AGENTMX_DIR"]) / "agentmx.toml"
    return DEFAULT_PATH


@contextmanager
def checked_store(config):
    """The configured store, its schema checked, closed after the command."""
    from agentmx.store import open_store      # lazy: the store's modules are not the parser's start-up cost
    store = open_store(config)
    try:
        store.check_schema()
        yield store
    finally:
        store.close()


def parse_dns(text: str) -> tuple[tuple[str, int], ...]:
    """An --dns argument (IP or IP:PORT), or argparse's error."""
    try:
        return dns_servers([text])
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--dns wants IP or IP:PORT ({exc})") from None
