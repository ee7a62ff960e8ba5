"""Client-supplied text as it may appear in a log line: escaped and cut short.

A URL or path from a first message can hold a newline, an ANSI escape or a megabyte of text;
written raw, it could forge log lines or drown the log. Everything a client chose goes through
:func:`shown` before it is logged or echoed in an error detail.
"""

from __future__ import annotations

MAX_SHOWN = 200


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """*text* with every non-printable character escaped (``\\n``, ``\\x1b``, ``\\ud800``), at most
    *limit* characters of it, followed by ``...`` when cut."""
    cut = len(text) > limit
    out = []
    for ch in text[:limit]:
        if ch.isprintable():
            out.append(ch)
        else:
            escaped = ch.encode("unicode_escape", errors="backslashreplace").decode("ascii")
            out.append(escaped)
    return "".join(out) + ("..." if cut else "")
