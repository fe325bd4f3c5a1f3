"""The `unit` and `e2e` marks hold (tests/support/unitguard.py): a unit test cannot start Postfix, a
program or change user; a test that is not e2e cannot start Postfix; tests/e2e/ is e2e."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TESTS
from support.postfix import PostfixInstance
from support.unitguard import UnitBoundary


@pytest.mark.unit
def test_a_unit_test_cannot_start_postfix_a_program_or_change_user(tmp_path):
    with pytest.raises(UnitBoundary, match="set up Postfix"):
        PostfixInstance("unit", "mx.unit.test")
    with pytest.raises(UnitBoundary, match="start Postfix"):
        PostfixInstance.start(object())
    with pytest.raises(UnitBoundary, match="start a process"):
        subprocess.run(["true"])
    with pytest.raises(UnitBoundary, match="needs root"):
        os.setuid(os.getuid())
    with pytest.raises(UnitBoundary, match="needs root"):
        os.chown(tmp_path, 65533, -1)
    os.chown(tmp_path, os.geteuid(), -1)         # its own files stay its own: allowed


def test_a_test_that_is_not_e2e_may_start_a_program_but_not_postfix():
    subprocess.run(["true"], check=True)
    with pytest.raises(UnitBoundary, match="e2e test"):
        PostfixInstance.start(object())


@pytest.mark.parametrize("selection", ["not e2e", "unit"])
def test_no_test_under_tests_e2e_is_left_out_of_e2e_or_is_unit(selection):
    pytest_bin = Path(sys.executable).with_name("pytest")
    args = [str(pytest_bin), "--collect-only", "-q", "-p", "no:cacheprovider", "tests/e2e"]
    everything = subprocess.run(args, cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
    assert everything.returncode == 0 and " collected" in everything.stdout, everything.stdout[-2000:]
    out = subprocess.run(args + ["-m", selection], cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 5, out.stdout[-2000:]          # 5: no test selected
