"""The two text encodings of the C2SP formats: strict base64 and canonical decimal.

Every sealog format that carries bytes or numbers as text (signed-note keys and
signature lines, tlog-checkpoint bodies, tlog-proof bundles, tlog-witness
requests, error messages, evidence files, audit batches) uses the same two
rules, kept here so that they are written once:

* **base64** is standard padded base64 (RFC 4648, Section 4). Decoding the
  signed formats accepts only the canonical form: the exact string that
  encoding the decoded bytes gives back (signed-note, "Format", and
  tlog-checkpoint, "Note text", leave no room for a second spelling of the
  same bytes). Files a user hands back (evidence files, audit batches) are
  decoded with ``canonical=False``: any valid padded base64, whatever its
  unused bits.
* **decimal** is ASCII decimal with no sign, no spaces and no leading zero
  (``0`` itself is allowed), as tlog-checkpoint ("Note text") writes the tree
  size. Parsing is bounded, so that no input can make ``int()`` work on an
  arbitrarily long string.

Standard library only (core layer).
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["decode_base64", "encode_base64", "is_canonical_decimal", "parse_decimal"]

_DECIMAL = re.compile("0|[1-9][0-9]*")  # in a str pattern, [0-9] is ASCII only


def encode_base64(data: bytes) -> str:
    """``data`` as standard padded base64 (RFC 4648, Section 4), the canonical form."""
    return base64.b64encode(data).decode("ascii")


def decode_base64(text: str, *, canonical: bool = True) -> bytes | None:
    """Decode standard padded base64 (RFC 4648, Section 4), in canonical form only.

    Returns None unless ``text`` is exactly what encoding its bytes gives back:
    no missing or extra padding, no characters outside the alphabet (white
    space and newlines included), no non-zero bits in the last character.
    With ``canonical=False`` the last condition is dropped. The empty string
    decodes to ``b""``; callers that need bytes check so.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if canonical and encode_base64(data) != text:
        return None
    return data


def _as_text(text: str | bytes) -> str:
    # latin-1 maps each byte to the code point of the same value, so a byte
    # string matches the ASCII-only pattern exactly when its bytes do.
    return text.decode("latin-1") if isinstance(text, bytes) else text


def is_canonical_decimal(text: str | bytes) -> bool:
    """Whether ``text`` is canonical ASCII decimal, of any length.

    Canonical: ``0``, or a digit ``1``-``9`` followed by ASCII digits; no
    sign, no white space, no other characters (tlog-checkpoint, "Note text").
    """
    return _DECIMAL.fullmatch(_as_text(text)) is not None


def parse_decimal(text: str | bytes, max_value: int) -> int | None:
    """The value of canonical ASCII decimal ``text``, or None.

    None when ``text`` is not canonical (see :func:`is_canonical_decimal`) or
    its value exceeds ``max_value`` (precondition: ``max_value >= 0``). Strings
    longer than ``max_value`` written in decimal are refused before
    conversion, so the cost is bounded by ``max_value``, not by the input.
    """
    decoded = _as_text(text)
    if len(decoded) > len(str(max_value)) or not is_canonical_decimal(decoded):
        return None
    value = int(decoded)
    return value if value <= max_value else None
