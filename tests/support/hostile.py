"""Hostile messages, built on demand (never stored): what tests/deliver/test_hostile.py checks and
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


# --- DKIM: a key that costs the verifier, not the sender --------------------------------------

def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def rsa_key_record(modulus: int, exponent: int) -> str:
    """A DKIM key record (SubjectPublicKeyInfo) for any modulus and exponent: built by hand, since
    key libraries refuse to make the keys an attacker would publish."""
    def integer(v: int) -> bytes:
        return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))
    rsa_oid = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    spki = _der(0x30, rsa_oid + _der(0x03, b"\x00" + _der(0x30, integer(modulus) + integer(exponent))))
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


def random_rsa_record(bits: int, exponent_bits: int) -> str:
    """A random odd modulus of `bits` bits and a random odd exponent of `exponent_bits` bits
    below it (OpenSSL's loader wants e < n), with no private key at all."""
    n = int.from_bytes(os.urandom(bits // 8), "big") | (3 << (bits - 2)) | 1
    e = int.from_bytes(os.urandom(exponent_bits // 8), "big") | (1 << (exponent_bits - 1)) | 1
    if exponent_bits >= bits:
        e &= ~(1 << (bits - 2))
    return rsa_key_record(n, e)


def dkim_costly_key(domain: str, selector: str, bits: int = 16384, signatures: int = 8,
                    mail_from: str = "") -> tuple[str, bytes]:
    """(key record, message): a `bits`-bit modulus and exponent, and `signatures` DKIM-Signature
    headers naming it, each with a correct body hash and a random b= of the modulus' length, so
    that a verifier without limits does the whole modular exponentiation for each before it fails."""
    import hashlib
    record = random_rsa_record(bits, bits)
    body = b"Nothing to see here.\r\n"
    bh = base64.b64encode(hashlib.sha256(body).digest()).decode()     # relaxed == as sent for this body
    def folded_b() -> str:
        b = base64.b64encode(os.urandom(bits // 8)).decode()
        return "\r\n ".join(b[i:i + 76] for i in range(0, len(b), 76))
    sigs = b"".join(
        (f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector}; h=from:to:subject;"
         f" bh={bh};\r\n b={folded_b()}\r\n").encode()
        for _ in range(signatures))
    sender = mail_from or f"m@{domain}"
    head = (f"From: <{sender}>\r\nTo: agent@agentmx.test\r\nSubject: costly key\r\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <costly@{domain}>\r\n").encode()
    return record, sigs + head + b"\r\n" + body
