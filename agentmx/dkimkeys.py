"""DKIM keys on disk: generation, the TXT records that publish them, loading them for signing.

Layout: <key_dir>/<domain>/<selector>.rsa.pem (PKCS#1 PEM) or <selector>.ed25519 (base64 of
the 32-byte seed, the form dkimpy signs with). Files are created 0600, never overwritten.
A selector names one key; `agentmx keygen --algorithm both` makes two: <S>r (RSA) and <S>e
(ed25519), since one DNS name publishes one key.
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHMS = ("rsa", "ed25519")
_SELECTOR = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class KeyError_(ValueError):
    """A key that cannot be made, read or used; the message names the file."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str            # "rsa" or "ed25519"
    private: bytes            # the file's bytes (PKCS#1 PEM, or base64 seed)
    public_b64: str           # the p= value
    signer: object = field(repr=False, compare=False)   # loaded once: cryptography RSA key, nacl SigningKey

    @property
    def dkim_algorithm(self) -> bytes:
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"

    @property
    def txt(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_b64}"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def check_names(domain: str, selector: str) -> tuple[str, str]:
    domain, selector = domain.lower().rstrip("."), selector.lower()
    if not _DOMAIN.match(domain):
        raise KeyError_(f"{domain!r} is not a domain name")
    if not _SELECTOR.match(selector):
        raise KeyError_(f"{selector!r} is not a selector (letters, digits and -, up to 63)")
    return domain, selector


def path_for(key_dir: Path, domain: str, selector: str, algorithm: str) -> Path:
    domain, selector = check_names(domain, selector)
    return Path(key_dir) / domain / (f"{selector}.rsa.pem" if algorithm == "rsa" else f"{selector}.ed25519")


def generate(domain: str, selector: str, algorithm: str, rsa_bits: int = 2048) -> DkimKey:
    domain, selector = check_names(domain, selector)
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return DkimKey(domain, selector, "rsa", private, base64.b64encode(public).decode(), key)
    if algorithm == "ed25519":
        sk = nacl.signing.SigningKey.generate()
        return DkimKey(domain, selector, "ed25519", base64.b64encode(bytes(sk)),
                       base64.b64encode(bytes(sk.verify_key)).decode(), sk)
    raise KeyError_(f"unknown algorithm {algorithm!r} (rsa or ed25519)")


def write(key_dir: Path, key: DkimKey) -> Path:
    """Write a new key file, 0600, refusing to overwrite one (a published key would break)."""
    path = path_for(key_dir, key.domain, key.selector, key.algorithm)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path}: exists; choose another selector (rotation keeps the old key)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key.private)
    return path


def load(path: Path, domain: str) -> DkimKey:
    """A key file as written by write(); the selector and algorithm come from its name."""
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"{path}: cannot be read ({exc.strerror})") from None
    if name.endswith(".rsa.pem"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"{path}: not an unencrypted RSA private key ({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyError_(f"{path}: not an RSA private key")
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return DkimKey(domain, name[:-len(".rsa.pem")], "rsa", data, base64.b64encode(public).decode(), key)
    if name.endswith(".ed25519"):
        try:
            sk = nacl.signing.SigningKey(base64.b64decode(data.strip(), validate=True))
        except Exception as exc:      # binascii.Error, nacl's ValueError
            raise KeyError_(f"{path}: not a base64 ed25519 seed ({exc.__class__.__name__})") from None
        return DkimKey(domain, name[:-len(".ed25519")], "ed25519", data.strip(),
                       base64.b64encode(bytes(sk.verify_key)).decode(), sk)
    raise KeyError_(f"{path}: not a key file name (<selector>.rsa.pem or <selector>.ed25519)")


def keys_of(key_dir: Path, domain: str) -> list[DkimKey]:
    """Every key on disk for a domain (published ones included), by selector."""
    folder = Path(key_dir) / domain.lower().rstrip(".")
    if not folder.is_dir():
        return []
    return [load(p, domain.lower().rstrip(".")) for p in sorted(folder.iterdir())
            if p.name.endswith((".rsa.pem", ".ed25519"))]


def txt_strings(txt: str) -> list[str]:
    """A TXT value as zone-file character-strings of at most 255 octets."""
    return [txt[i:i + 255] for i in range(0, len(txt), 255)]
