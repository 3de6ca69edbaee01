"""Passwords never leave the process: what training records in a manifest, and what the service shows or logs.

``redact_url`` renders a database URL with its password masked and secret query parameters removed;
``redact_text`` masks the same in free text (error messages, log lines); ``RedactSecrets`` is the
logging filter that applies it to every record a handler writes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
_SECRET_KEY = r"[a-z_]*(?:pass(?:word|wd)?|pwd|secret|token|api_?key|credentials?)"
_SECRET_QUERY_KEY = re.compile(rf"{_SECRET_KEY}", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host (up to the last "@" of the word: a password may hold one).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/@'\"]*):[^\s'\"]*@", re.IGNORECASE)
# password=..., sslpassword: '...', api_key=... in query strings, DSNs and messages.
_KEY_VALUE = re.compile(
    rf"(?P<key>\b{_SECRET_KEY})(?P<sep>\s*[=:]\s*)(?:'[^']*'|\"[^\"]*\"|[^\s&;,'\")]+)", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """The URL without its password or secret query parameters, for logs, reports and manifests."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        secret_keys = [key for key in parsed.query if _SECRET_QUERY_KEY.fullmatch(key)]
        rendered = parsed.difference_update_query(secret_keys).render_as_string(hide_password=True)
        return redact_text(rendered)  # an unescaped '@' in a password leaves part of it in the host
    except Exception:  # unparsable: keep only the scheme, a password may sit anywhere in the rest
        return url.split("://", 1)[0] + "://..." if "://" in url else redact_text(url)


def redact_text(text: str) -> str:
    """``text`` with every URL password and ``password=``-style value masked."""
    text = _URL_PASSWORD.sub(lambda match: f"{match['head']}:{MASK}@", text)
    return _KEY_VALUE.sub(lambda match: f"{match['key']}{match['sep']}{MASK}", text)


def redact_data(value: Any) -> Any:
    """A copy of nested dicts and lists with every string passed through :func:`redact_text`."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactSecrets(logging.Filter):
    """Masks passwords in a record's message and traceback before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
