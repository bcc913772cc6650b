"""The bearer-token check, in constant time."""

from __future__ import annotations

import hashlib
import hmac


def token_matches(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>`` check in constant time.

    Both sides are hashed first, so the comparison also takes the same time whatever the length
    of the guess (``hmac.compare_digest`` alone returns early on a length mismatch).
    """
    got = header[7:].strip() if header.startswith("Bearer ") else ""
    try:  # a WSGI header is the raw bytes decoded as latin-1; the token is compared as UTF-8 bytes
        raw = got.encode("latin-1")
    except UnicodeEncodeError:
        raw = got.encode("utf-8", "surrogateescape")
    a = hashlib.sha256(raw).digest()
    b = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(a, b) and bool(got) and bool(token)
