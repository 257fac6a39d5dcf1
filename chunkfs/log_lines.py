"""One log record, one line: what a request carries can never start a line of its own.

Paths, query strings, header values and names arrive from the network and end up in log
messages; a newline among them would let a sender write a line that looks like the server's
(`GET /x%0A<fake line>`). `printable` escapes control characters (C0, DEL, C1, the Unicode line
and paragraph separators) and lone surrogates (undecodable bytes) as `\\xNN`/`\\uNNNN`; the
`OneLinePerRecord` filter on the daemons' log handler applies it to every message, and indents
every line of a traceback under the record that carries it, so the first column of a log is the
daemon's alone.
"""

from __future__ import annotations

import logging
import re

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_FORMATTER = logging.Formatter()


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character and lone surrogate escaped (the rest as it is)."""
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


class OneLinePerRecord(logging.Filter):
    """Escapes each record's message (`printable`) and renders its traceback indented, each of
    its lines escaped but for the line breaks."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = printable(message)
        if escaped is not message:
            record.msg, record.args = escaped, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        for name in ("exc_text", "stack_info"):
            text = getattr(record, name)
            if text:
                setattr(record, name, "\n".join("  " + printable(line) for line in text.splitlines()))
        return True
