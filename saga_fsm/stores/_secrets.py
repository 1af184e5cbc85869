"""Passwords out of store URLs and the messages that quote them."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# libpq keyword DSNs (``host=db password=s3cret``) and URL query parameters
# (``?password=s3cret``): the value, quoted or not, up to the next separator.
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (a store URL or a libpq keyword DSN, well-formed or not) with every password
    replaced by ``***``: the only form in which a store URL is ever shown."""
    redacted = _KEYWORD_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = redacted.partition("://")
    if not sep:
        return redacted
    try:
        parts = urlsplit(redacted)
        if parts.password is None:
            return redacted
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))
    except ValueError:
        # Malformed (``u:pw@[bad/x``): everything up to the last ``@`` may be credentials.
        userinfo, at, host = rest.rpartition("@")
        if not at or ":" not in userinfo:
            return redacted
        return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


def scrub(text: str, url: str) -> str:
    """``text`` (a message that may quote ``url`` or part of it) without its password."""
    for secret in _passwords(url):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def _passwords(url: str) -> list[str]:
    found = [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(url) if m.group(2)]
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    if ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    return [secret for secret in found if secret and secret != "***"]
