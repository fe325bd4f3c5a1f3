"""What the end-to-end tests share: test keys, signed messages, reading delivered copies."""
from __future__ import annotations

import base64
import email
import email.policy
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import authres
import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentmx.authservid import authserv_id_of


class RsaKey:
    def __init__(self, bits: int = 2048):
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()
        self.algorithm = b"rsa-sha256"


class Ed25519Key:
    def __init__(self):
        sk = nacl.signing.SigningKey.generate()
        self.private = base64.b64encode(bytes(sk))
        self.txt = "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(sk.verify_key)).decode()
        self.algorithm = b"ed25519-sha256"


def message(from_addr: str, to: str, subject: str = "Hello", body: str = "Hi there.\n",
            extra_headers: list[tuple[str, str]] = (), html: str | None = None) -> bytes:
    """`html`: an HTML alternative to the text `body` (multipart/alternative)."""
    msg = EmailMessage()
    for name, value in extra_headers:
        msg[name] = value
    msg["From"] = from_addr
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=from_addr.rpartition("@")[2].rstrip(">"))
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


def sign(raw: bytes, domain: str, selector: str, key) -> bytes:
    sig = dkim.sign(raw, selector.encode(), domain.encode(), key.private, signature_algorithm=key.algorithm,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"message-id", b"date"], linesep=b"\r\n")
    return sig + raw


def send(port: int, mail_from: str, rcpts: list[str], raw: bytes, helo: str = "mail.sender.test",
         timeout: float = 60):
    """Send over SMTP; returns {rcpt: (code, msg)} for refusals (smtplib's), raises on DATA refusal."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout) as s:
        return s.sendmail(mail_from, rcpts, raw)


def our_results(path_or_bytes, authserv_id: str) -> list[authres.AuthenticationResultsHeader]:
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    msg = email.message_from_bytes(raw)
    ours = []
    for value in msg.get_all("Authentication-Results") or []:
        value = " ".join(str(value).split())
        if authserv_id_of(value) == authserv_id:
            ours.append(authres.all_features().parse(f"Authentication-Results: {value}"))
    return ours


def verdicts(header: authres.AuthenticationResultsHeader) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in header.results:
        out.setdefault(r.method, []).append(r)
    return out
