"""How front ends write numbers for people: one way for durations, one way for money, URLs
with any password masked, and names in the order people count them.

Jobs report plain numbers (seconds, USD); the CLI's console, the window and messages all
format them here, so "$0.0123" and "01:05" read the same wherever they appear.
"""

from __future__ import annotations

import math
import re
from typing import Any


def duration(seconds: float | None) -> str:
    """`4.2 s`, `42 s`, `01:05`, `1:02:03`; `--:--` when unknown (None, NaN, inf, < 0)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    if seconds < 60:  # "00:00" for a quick job reads as "nothing happened"
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def usd(amount: float | None) -> str:
    """`$0.000012` below a tenth of a cent, `$0.0123` below a dollar, `$1,234.50` above; `–`
    when unknown."""
    if amount is None:
        return "–"
    if 0 < amount < 0.001:
        return f"${amount:.6f}"
    return f"${amount:,.4f}" if amount < 1 else f"${amount:,.2f}"


def _split_userinfo(text: str | None) -> tuple[Any, str, str] | None:
    """(the URL's parts, its `user[:password]`, its host) when it carries credentials."""
    if not text or "@" not in text:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if "@" not in parts.netloc:
        return None
    userinfo, host = parts.netloc.rsplit("@", 1)
    return parts, userinfo, host


def url(text: str | None) -> str:
    """A URL as shown to people: credentials in it become `***` (`http://user:***@host/v1`;
    a lone user part, often a token, as `http://***@host/v1`), wherever it is shown (lists,
    probe results, error hints, the window, model cards). Other text comes back unchanged."""
    split = _split_userinfo(text)
    if split is None:
        return text or ""
    from urllib.parse import urlunsplit

    parts, userinfo, host = split
    user, has_password = userinfo.split(":", 1)[0], ":" in userinfo
    shown = f"{user}:***" if has_password and user else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def url_secrets(text: str | None) -> list[str]:
    """The credentials a URL carries, in every form a message could repeat them: the
    password, `user:password`, and the Basic token an HTTP client makes of them (a server
    that echoes the Authorization header it got would otherwise show it). A password
    (or a pair) shorter than 6 characters is left to the URL masking: hiding it everywhere
    in a message would garble the message."""
    split = _split_userinfo(text)
    if split is None or not split[1]:
        return []
    import base64
    from urllib.parse import unquote

    userinfo = split[1]
    user, _, password = (unquote(p) for p in userinfo.partition(":"))
    pair = f"{user}:{password}"
    out = [base64.b64encode(pair.encode()).decode()]
    if len(pair) >= 6:
        out.append(pair)
    if len(password) >= 6:
        out.append(password)
    if not password and len(user) >= 6:  # a lone user part is often a token
        out.append(user)
    return out


def natural_key(name: str) -> list[str | int]:
    """Sort key for names as people number them: `d2` before `d10`, case ignored."""
    parts = re.split(r"(\d+)", name.casefold())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def by_name(names: list[str]) -> list[str]:
    return sorted(names, key=natural_key)
