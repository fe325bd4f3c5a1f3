"""The README's first command: the demo runs the whole loop on loopback and cleans up after itself."""
from __future__ import annotations

import glob
import subprocess
import sys

from conftest import ROOT


def test_demo_closes_the_loop_and_leaves_nothing_behind():
    before = set(glob.glob("/tmp/agentmx-demo*"))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--once"], capture_output=True,
                         text=True, timeout=240, cwd="/")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "auth           spf=pass dkim=pass dmarc=pass" in text
    assert '"583920"' in text                                  # the code, found for the agent
    assert "Subject:        Re: Please confirm my booking" in text
    assert "dkim=pass" in text.split("Verdicts:")[1] and "dmarc=pass" in text.split("Verdicts:")[1]
    # the HELO name's SPF record (agentmx dns) and the reverse DNS of our client: issue 17
    assert "spf=pass smtp.helo=mx.agents.example" in text.split("Verdicts:")[1]
    assert "iprev=pass policy.iprev=127.0.0.2 (mx.agents.example)" in text.split("Verdicts:")[1]
    assert "arc=none iprev=pass (by mx.agents.example)" in text
    assert "The loop is closed" in text
    assert "Web console:" in text and "/console   sign in with the admin key amxadm_" in text
    assert set(glob.glob("/tmp/agentmx-demo*")) <= before       # every private instance removed
    masters = subprocess.run(["pgrep", "-af", "agentmx-demo"], capture_output=True, text=True).stdout
    assert "master" not in masters
