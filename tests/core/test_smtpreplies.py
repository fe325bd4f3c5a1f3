"""The one table of SMTP replies (agentmx/smtpreplies.py): every reply well-formed, the values put
into them made safe, and no other module spelling a reply itself. The source is read with ast (no
import runs), like tests/core/test_layers.py."""
from __future__ import annotations

import ast
import re
import string
import sys
from pathlib import Path

import pytest

from agentmx import smtpreplies
from agentmx.smtpreplies import MAX_LINE, Reply

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("agentmx", "milter", "deliver")

# A reply code starting a string ("451", "250 OK", "250-XFORWARD "), or an enhanced status code
# standing alone in one ("5.7.1", "... 4.3.0 ...").
SPELLED = re.compile(r"^[2-5]\d\d(?:[ -]|$)|(?:^|\s)[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")

# Where such strings are not replies we give, and why.
NOT_REPLIES = {
    "agentmx/smtpreplies.py": "the table itself",
    "agentmx/api": "HTTP: its status numbers in log lines (\"503 for %s\") are HTTP's",
    "deliver/dsn.py": "reads other servers' delivery reports (a DSN Status such as 4.0.0), answers nothing",
}


def placeholders(reply: Reply) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(reply.text) if name]


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(smtpreplies.ALL))
def test_every_reply_is_well_formed(name):
    reply = smtpreplies.ALL[name]
    assert re.fullmatch(r"[2-5][0-9][0-9]", reply.code), reply
    if reply.xcode:      # RFC 3463: class.subject.detail, the class the reply code's first digit
        assert re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", reply.xcode), reply
        assert reply.xcode[0] == reply.code[0], reply
    assert reply.code != "354" or not reply.xcode          # an intermediate reply carries none (RFC 2034)
    assert reply.text and reply.text.isascii() and reply.text.isprintable(), reply
    values = {p: "v" * 1000 for p in placeholders(reply)}      # the longest a value could be, and more
    line = reply.line(**values)
    assert len(line.encode()) <= MAX_LINE and line.isascii() and line.isprintable()
    assert reply.line(more=True, **values)[3] == "-"
    assert reply.args(**values) == (reply.code, reply.xcode, line.split(" ", 2 if reply.xcode else 1)[-1])


@pytest.mark.unit
def test_the_milters_answers_keep_their_words():
    """What mail servers and tests out there see: the same codes and texts as before the table."""
    assert smtpreplies.MILTER_INTERNAL_ERROR.args() == ("451", "4.3.0", "Temporary local problem, try again later")
    assert smtpreplies.SENDER_BLOCKED.line(rcpt="agent@example.com") == \
        "550 5.7.1 Sender blocked: the agent at agent@example.com refuses mail from this sender"
    assert smtpreplies.DMARC_REJECT.line(domain="bank.example") == \
        "550 5.7.1 Message rejected per DMARC policy of bank.example"
    assert smtpreplies.DELIVERED.line(state="delivered", event_id="msg_1") == "250 2.0.0 delivered id=msg_1"
    assert smtpreplies.XFORWARD_KEYWORD.line(more=True, attributes="NAME ADDR") == "250-XFORWARD NAME ADDR"
    assert smtpreplies.START_DATA.line() == "354 End data with <CR><LF>.<CR><LF>"


@pytest.mark.unit
def test_a_value_from_outside_is_made_printable_and_cut():
    """A recipient or a reason with CR LF, NUL, ESC or UTF-8 in it cannot add a line, a control
    character or a byte past the line's 512 octets to an answer."""
    line = smtpreplies.SENDER_BLOCKED.line(rcpt="a\r\n250 OK\x00\x1b[31mé@example.com")
    assert line == "550 5.7.1 Sender blocked: the agent at a??250 OK??[31m?@example.com refuses mail from this sender"
    assert smtpreplies.DEFERRED.line(reason="{braces} stay") == "451 4.3.0 {braces} stay"
    long = smtpreplies.DEFERRED.line(reason="x" * 2000)
    assert long == "451 4.3.0 " + "x" * (MAX_LINE - len("451 4.3.0 ")) and len(long) == MAX_LINE


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def spelled(path: Path) -> list[str]:
    """Each string in `path` (an f-string's parts too, docstrings not) that spells a reply."""
    tree = ast.parse(path.read_text(), str(path))
    skip = docstrings(tree)
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and SPELLED.search(node.value)]


def excused(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == where or rel.startswith(where + "/") for where in NOT_REPLIES)


@pytest.mark.unit
def test_no_module_spells_a_reply_itself():
    found = [hit for top in SOURCES for path in sorted((ROOT / top).rglob("*.py")) if not excused(path)
             for hit in spelled(path)]
    assert not found, "a reply spelled outside agentmx/smtpreplies.py:\n" + "\n".join(found)


@pytest.mark.unit
def test_the_check_sees_a_reply_spelled(tmp_path, monkeypatch):
    """The check itself: a setreply with literals, an f-string reply and a pushed line are caught;
    a docstring that names a reply is not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    fake = tmp_path / "x.py"
    fake.write_text('"""Answers 550 5.7.1 for a block."""\n'
                    'def f(self, rcpt):\n'
                    '    self.setreply("550", "5.7.1", "no")\n'
                    '    self.push(f"451 4.3.0 {rcpt}")\n'
                    '    self.push("250 OK")\n'
                    '    return "status 4.7.24 here", "HTTP 503 is fine mid-string", "1.2.3.4"\n')
    hits = sorted(h.split(": ", 1)[1] for h in spelled(fake))
    assert hits == sorted(["'550'", "'5.7.1'", "'451 4.3.0 '", "'250 OK'", "'status 4.7.24 here'"]), hits
