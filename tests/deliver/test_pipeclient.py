"""deliver/pipeclient.py's own start-up (issue 18): it runs once per message, so it imports only
C modules (_socket, not socket; its own JSON of a list of strings, not json; os only to fall
back), and what it writes is what json.loads in the worker reads back."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agentmx.deliver.pipeclient import _json_strings

CLIENT = str(Path(sys.prefix) / "share" / "agentmx" / "pipeclient.py")


def test_its_json_reads_back_as_the_arguments():
    args = ["--config", "/etc/agentmx/agentmx.toml", "deliver", "--sender=a\"b\\c@x.test", "--recipient=ü@ä.test",
            "--queue-id=", "tab\there", "nl\nCR\r\x00\x1f\x7f", "astral 😀 𝄞", "lone \udcff surrogate", ""]
    assert json.loads(_json_strings(args)) == args
    assert json.loads(_json_strings([])) == []
    assert _json_strings(["plain", "x"]) == json.dumps(["plain", "x"])


def test_the_client_imports_no_more_than_it_needs(tmp_path):
    """Up to connecting (to nothing here, without --agentmx: deferred), the modules loaded are
    those of a bare `python3 -I -S` and _socket: not json, socket, os or re."""
    probe = ("import sys\n"
             "sys.argv = ['pipeclient.py', '--socket', sys.argv[1], '--config', 'x', 'deliver']\n"
             "source = open(%r, 'rb').read()\n"
             "before = set(sys.modules)\n"
             "try:\n"
             "    exec(compile(source, 'pipeclient.py', 'exec'), {'__name__': '__main__'})\n"
             "except SystemExit as exc:\n"
             "    code = exc.code\n"
             "print(code, sorted(set(sys.modules) - before))\n" % CLIENT)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(tmp_path / "no.sock")],
                         capture_output=True, text=True, timeout=30)
    code, loaded = out.stdout.split(" ", 1)
    assert code == "75" and "unreachable" in out.stderr
    for heavy in ("json", "socket", "os", "re", "enum", "selectors"):
        assert f"'{heavy}'" not in loaded, loaded
