"""Credentials never leave the process in a URL: `user:password@` is redacted from text and URLs."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(url without `user:password@`, user, password)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc)), parts.username, parts.password
