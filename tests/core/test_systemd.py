"""The systemd units we ship pass `systemd-analyze verify` and name only what exists."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT

UNITS = sorted((ROOT / "systemd").glob("agentmx-*.*"))


def test_units_are_there():
    assert {u.name for u in UNITS} >= {"agentmx-milter.service", "agentmx-serve.service",
                                       "agentmx-gc.service", "agentmx-gc.timer"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (scripts/bootstrap installs systemd)"
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_hardening_in_every_service():
    for unit in (u for u in UNITS if u.suffix == ".service"):
        text = unit.read_text()
        for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "CapabilityBoundingSet=\n",
                        "UMask=0027\n"):
            assert setting in text, f"{unit.name} lacks {setting.strip()}"
        assert "ReadWritePaths=" in text and "User=agentmx" in text


def test_only_the_milter_runs_with_the_key_group():
    """The DKIM keys are group agentmx-milter's: only the milter's unit may carry that group."""
    for unit in (u for u in UNITS if u.suffix == ".service"):
        text = unit.read_text()
        has_keys = "User=agentmx-milter" in text or "agentmx-milter" in (
            text.split("SupplementaryGroups=", 1)[1].split("\n", 1)[0] if "SupplementaryGroups=" in text else "")
        assert has_keys == (unit.name == "agentmx-milter.service"), unit.name
