"""Hostile messages, built on demand (never stored): what tests/test_hostile.py checks and
bench/hostile-input measures. Each builder returns the raw bytes of one message."""
from __future__ import annotations

import base64
import os

HEAD = b"From: Mallory <m@evil.test>\r\nTo: agent@agentmx.test\r\nSubject: %s\r\nMIME-Version: 1.0\r\n"


def nested(depth: int) -> bytes:
    """multipart/mixed inside multipart/mixed, `depth` deep, one text part at the bottom."""
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    return HEAD % b"deep" + opening + b"Content-Type: text/plain\r\n\r\nhello from the bottom" + closing + b"\r\n"


def many_parts(count: int) -> bytes:
    parts = b"".join(b'--x\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; '
                     b'filename="f%d.bin"\r\n\r\nAAAA\r\n' % i for i in range(count))
    return (HEAD % b"many" + b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
            b"Content-Type: text/plain\r\n\r\nsee attached\r\n" + parts + b"--x--\r\n")


def huge_header(size: int) -> bytes:
    """One Subject of `size` bytes, folded into 998-byte lines as SMTP allows."""
    chunks = [b"x" * 900 for _ in range(size // 900)]
    return (b"From: m@evil.test\r\nTo: agent@agentmx.test\r\nSubject: " + b"\r\n ".join(chunks)
            + b"\r\n\r\nbody\r\n")


def many_headers(count: int) -> bytes:
    return (b"From: m@evil.test\r\nTo: agent@agentmx.test\r\nSubject: headers\r\n"
            + b"".join(b"X-Filler-%d: v\r\n" % i for i in range(count)) + b"\r\nbody\r\n")


def long_line(size: int) -> bytes:
    """A body of one line of `size` bytes (SMTP would refuse it; a pipe reads it anyway)."""
    return HEAD % b"long line" + b"Content-Type: text/plain\r\n\r\n" + b"y" * size + b"\r\n"


def big_attachment(size: int) -> bytes:
    data = os.urandom(size)
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (HEAD % b"big" + b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\n'
            b"Content-Type: text/plain\r\n\r\nhere\r\n--z\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="big.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + b64 + b"--z--\r\n")


def gzip_claim() -> bytes:
    """A part that says Content-Encoding gzip, and a zip: both stay as sent (we decompress nothing)."""
    import gzip
    import io
    import zipfile
    bomb = gzip.compress(b"\0" * 10_000_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * 10_000_000)
    def part(name: bytes, ctype: bytes, data: bytes) -> bytes:
        return (b"--g\r\nContent-Type: " + ctype + b"\r\nContent-Encoding: gzip\r\nContent-Disposition: attachment; "
                b'filename="' + name + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                + base64.encodebytes(data).replace(b"\n", b"\r\n"))
    return (HEAD % b"compressed" + b'Content-Type: multipart/mixed; boundary="g"\r\n\r\n'
            + part(b"zeros.gz", b"application/gzip", bomb) + part(b"zeros.zip", b"application/zip", buf.getvalue())
            + b"--g--\r\n")


def bad_names() -> bytes:
    """Attachment names that must never become paths: traversal, NUL, control characters."""
    names = [b"../../etc/passwd", b"..\\..\\windows\\win.ini", b"/etc/shadow", b"a\\x00b.txt",
             b"=?utf-8?q?..=2F..=2Fetc=2Fpasswd?=", b"evil\x00.exe.pdf", b"line\r\n break.txt"]
    parts = b"".join(b"--n\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"" + n
                     + b"\"\r\n\r\nx\r\n" for n in names)
    return HEAD % b"names" + b'Content-Type: multipart/mixed; boundary="n"\r\n\r\n' + parts + b"--n--\r\n"


CASES = {
    # name: (builder, argument) as test_hostile and bench/hostile-input run them
    "nested-1000": (nested, 1000),
    "nested-20000": (nested, 20000),
    "parts-3000": (many_parts, 3000),
    "parts-100000": (many_parts, 100000),
    "header-1MB": (huge_header, 1_000_000),
    "headers-50000": (many_headers, 50000),
    "line-10MB": (long_line, 10_000_000),
    "attachment-25MB": (big_attachment, 25 * 1024 * 1024),
}
