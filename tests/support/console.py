"""The web console over plain HTTP (requests): sign in, and the CSRF token of a page's forms."""
from __future__ import annotations

import re

import requests


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(base: str, key: str) -> requests.Session:
    """A session signed in with `key` (an API key or the admin key)."""
    s = requests.Session()
    page = s.get(f"{base}/console/signin", timeout=5)
    r = s.post(f"{base}/console/signin", data={"key": key, "csrf": csrf_of(page.text), "next": "/console/inbox"},
               timeout=5, allow_redirects=False)
    assert r.status_code == 303, r.text[:500]
    return s
