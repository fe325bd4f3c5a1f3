"""deliver/lmtp.py's DATA reader (issue 18: runs up to each ".<CR><LF>", not a line at a time),
checked against aiosmtpd's own line-at-a-time reader on the same bytes over real unix sockets:
the same content (dot-unstuffing, the end line, lines that end in a dot, bare LFs, a dot as the
first byte), the same replies, nothing read past the end (a command pipelined behind the dot is
answered), and a message above the size limit refused after being read to its end."""
from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest
from aiosmtpd.lmtp import LMTP

from agentmx.deliver.lmtp import _Lmtp


class Reference(LMTP):
    """aiosmtpd's own DATA, with our line length limit."""
    line_length_limit = _Lmtp.line_length_limit


class Keep:
    def __init__(self):
        self.contents: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.contents.append(envelope.original_content)
        return "250 2.0.0 kept"


def serve(cls, path: str, limit: int):
    loop = asyncio.new_event_loop()
    handler = Keep()

    def factory():
        return cls(handler, hostname="lmtp.test", data_size_limit=limit, decode_data=False, loop=loop)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_unix_server(factory, sock=sock))
        ready.set()
        loop.run_forever()
        server.close()
    threading.Thread(target=run, daemon=True).start()
    ready.wait(5)
    return handler, loop


def talk(path: str, data: bytes) -> bytes:
    """One session: the whole transaction in one write (pipelined), then everything answered."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    c.settimeout(10)
    c.sendall(b"LHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<agent@agentmx.test>\r\nDATA\r\n" + data
              + b"RSET\r\nQUIT\r\n")
    got = b""
    while not got.endswith(b"221 Bye\r\n"):
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    c.close()
    return got


CASES = [
    b"Subject: plain\r\n\r\nbody\r\n.\r\n",
    b".\r\n",                                                       # an empty message
    b"..dot first\r\nSubject: x\r\n\r\n.\r\n",                      # a dot as the very first byte
    b"Subject: x\r\n\r\nends in a dot.\r\n..\r\n...\r\n..hidden\r\nnot.\r\n.\r\n",
    b"Subject: x\r\n\r\nbare\nLF\n.\nnot the end\r\n.x\r\n.\r\n",  # no CRLF before that dot
    b"Subject: x\r\n\r\n" + (b"A" * 76 + b"\r\n") * 20000 + os.urandom(3000).replace(b"\r\n.\r\n", b"") + b"\r\n.\r\n",
    b"Subject: x\r\n\r\n.\r\n.\r\n",                               # the end, then a stray dot line
]


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_the_same_content_and_replies_as_aiosmtpd(tmp_path, data):
    ours, theirs = str(tmp_path / "ours.sock"), str(tmp_path / "theirs.sock")
    mine, loop1 = serve(_Lmtp, ours, 1 << 24)
    ref, loop2 = serve(Reference, theirs, 1 << 24)
    try:
        assert talk(ours, data) == talk(theirs, data)
        assert mine.contents == ref.contents and len(mine.contents) == 1
    finally:
        loop1.call_soon_threadsafe(loop1.stop)
        loop2.call_soon_threadsafe(loop2.stop)


def test_too_much_data_is_read_to_its_end_and_refused(tmp_path):
    ours = str(tmp_path / "ours.sock")
    mine, loop = serve(_Lmtp, ours, 1000)
    try:
        big = b"Subject: x\r\n\r\n" + (b"x" * 70 + b".\r\n") * 100 + b".\r\n"
        got = talk(ours, big)
        assert b"552 Error: Too much mail data" in got and got.endswith(b"250 OK\r\n221 Bye\r\n")
        assert mine.contents == []
        exact = b"Subject: x\r\n\r\n" + b"y" * (1000 - 16) + b"\r\n"        # 1,000 bytes: taken
        assert b"250 2.0.0 kept" in talk(ours, exact + b".\r\n") and mine.contents == [exact]
        assert b"552" in talk(ours, exact + b"z\r\n.\r\n")
    finally:
        loop.call_soon_threadsafe(loop.stop)


def test_a_line_longer_than_the_reader_takes_is_refused_like_aiosmtpd(tmp_path):
    class Small(_Lmtp):
        line_length_limit = 4096

    class SmallReference(LMTP):
        line_length_limit = 4096
    ours, theirs = str(tmp_path / "ours.sock"), str(tmp_path / "theirs.sock")
    mine, loop1 = serve(Small, ours, 1 << 24)
    ref, loop2 = serve(SmallReference, theirs, 1 << 24)
    try:
        data = b"Subject: x\r\n\r\n" + b"y" * 10000 + b"\r\nshort\r\n.\r\n"
        got = talk(ours, data)
        assert got == talk(theirs, data) and b"500 Line too long" in got
        assert mine.contents == ref.contents == []
    finally:
        loop1.call_soon_threadsafe(loop1.stop)
        loop2.call_soon_threadsafe(loop2.stop)
