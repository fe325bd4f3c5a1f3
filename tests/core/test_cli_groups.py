"""The `agentmx` command's groups (agentmx/cli/): every group's commands are registered, in the
order `agentmx --help` has always listed them, and building the parser (which every command,
the per-message `agentmx deliver` included, does) imports nothing but the groups and the config."""
from __future__ import annotations

import subprocess
import sys

import pytest

from agentmx import cli


@pytest.mark.unit
def test_every_groups_command_is_in_the_help_order_once():
    named = [name for group in cli.GROUPS for name in group.COMMANDS]
    assert len(named) == len(set(named)), "a command in two groups"
    assert sorted(named) == sorted(cli.ORDER)
    assert len(cli.ORDER) == len(set(cli.ORDER))


@pytest.mark.unit
def test_the_parser_has_every_command_in_order():
    sub = cli.build_parser()._subparsers._group_actions[0]
    assert list(sub.choices) == list(cli.ORDER)
    assert [a.dest for a in sub._choices_actions] == list(cli.ORDER)      # `agentmx --help` lists them so


def test_building_the_parser_imports_no_service():
    """The groups import argparse and the config at their top, nothing heavier: a handler imports
    what it runs. Checked in a fresh interpreter, after parsing a deliver command line."""
    code = ("import sys; from agentmx.cli import build_parser; "
            "build_parser().parse_args(['deliver', '--recipient=a@b.example']); "
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('agentmx'))))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd="/").stdout.split())
    heavy = {"agentmx.milter", "agentmx.store", "agentmx.api", "agentmx.deliver.core", "agentmx.deliver.pipe",
             "agentmx.deliver.frontend",
             "agentmx.ops", "agentmx.setup", "agentmx.client", "agentmx.dkimkeys", "agentmx.dnsrecords",
             "agentmx.resolver", "agentmx.agentloop", "agentmx.blocklist", "agentmx.suppression"}
    assert not {m for m in loaded if m in heavy or m.rpartition(".")[0] in heavy}, loaded
    assert "agentmx.cli.services" in loaded
