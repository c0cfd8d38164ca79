"""Showing strings a client or a log controls to people, one line each, unambiguously.

Payloads, identities, labels and a server's error messages are chosen by
whoever sent them. Printed raw, a payload with a newline, a tab or a terminal
escape sequence forges output lines (an entry "by" any identity), columns, or
clears the screen. Every such string in human-readable output goes through
:func:`escape`; JSON output does not need it (JSON escapes on its own).

The mapping is reversible, so two different values never look alike:

- printable characters (``str.isprintable``; any script) stay as they are,
  except the backslash, which becomes ``\\\\``;
- ``\\n``, ``\\r``, ``\\t`` become those two-character escapes;
- other characters below U+0080 (controls, ESC, DEL) become ``\\xNN``;
- other non-printable characters (C1 controls, bidirectional overrides,
  line and paragraph separators, unassigned code points) become ``\\uNNNN``
  or ``\\UNNNNNNNN``;
- in bytes, each byte that is not part of valid UTF-8 becomes ``\\xNN``
  (``NN`` >= 80, which no character escape produces).
"""

from __future__ import annotations

__all__ = ["escape", "identity"]

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str, from_bytes: bool) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if ch.isprintable():
        return ch
    code = ord(ch)
    if from_bytes and 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(value: str | bytes) -> str:
    """``value`` as one printable line (see the module docstring for the mapping)."""
    from_bytes = isinstance(value, bytes)
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if text.isprintable() and "\\" not in text:
        return text  # the common case, no copy
    return "".join(_escape_char(ch, from_bytes) for ch in text)


def identity(name: str) -> str:
    """A leaf's identity for a table column: ``-`` when empty, else :func:`escape` of it.

    An identity that is itself ``-`` is shown as ``\\x2d``, so it cannot pass for
    an entry with no identity.
    """
    if not name:
        return "-"
    if name == "-":
        return "\\x2d"
    return escape(name)
