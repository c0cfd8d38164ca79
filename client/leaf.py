"""The sealog leaf: the exact bytes hashed into the tree (docs/leaf-format.md).

Version 1, all integers big-endian::

    offset  size  field
    0       1     version          0x01
    1       8     accepted_at_ms   uint64: the server's clock when it accepted
                                   the entry, milliseconds since the Unix epoch
    9       2     identity_length  uint16: 0..MAX_IDENTITY_BYTES
    11      n     identity         UTF-8: the authenticated submitter, as the
                                   server established it ("" when the log
                                   runs without authentication)
    11+n    4     payload_length   uint32: 0..MAX_PAYLOAD_BYTES
    15+n    m     payload          the client's bytes, exactly as sent

Nothing may follow the payload. The leaf hash is RFC 6962's
``SHA-256(0x00 || leaf)``. Everything the server vouches for is inside the
leaf, so it is as tamper-evident as the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sealog.client.errors import LeafFormatError
from sealog.client.hashing import leaf_hash

__all__ = [
    "LEAF_FIXED_BYTES",
    "LEAF_VERSION",
    "MAX_IDENTITY_BYTES",
    "MAX_PAYLOAD_BYTES",
    "Leaf",
    "leaf_bytes",
    "leaf_header",
    "leaf_problem",
]

LEAF_VERSION = 1
MAX_IDENTITY_BYTES = 1024
MAX_PAYLOAD_BYTES = (1 << 32) - 1
_HEAD = struct.Struct(">BQH")
"""version, accepted_at_ms, identity_length: offsets 0, 1 and 9."""
_LEN = struct.Struct(">I")
"""payload_length, at offset 11 + identity_length."""
_IDENTITY_LENGTH_AT = 9
_IDENTITY_AT = _HEAD.size
_MIN_SIZE = _HEAD.size + _LEN.size
LEAF_FIXED_BYTES = _MIN_SIZE
"""A leaf's bytes beyond its identity and payload: version, time and the two lengths (15)."""
_MAX_MS = (1 << 64) - 1


def _check_fields(accepted_at_ms: int, identity: str) -> bytes:
    """Check the header's fields; return the identity's UTF-8 bytes.

    Raises :class:`LeafFormatError`, or :class:`UnicodeEncodeError` for an
    identity with lone surrogates (which no UTF-8 can encode).
    """
    if not 0 <= accepted_at_ms <= _MAX_MS:
        raise LeafFormatError(f"accepted_at_ms: {accepted_at_ms}, want 0..2^64-1")
    ident = identity.encode("utf-8")
    if len(ident) > MAX_IDENTITY_BYTES:
        raise LeafFormatError(f"identity: longer than {MAX_IDENTITY_BYTES} bytes")
    return ident


def _pack_header(accepted_at_ms: int, ident: bytes) -> bytes:
    return _HEAD.pack(LEAF_VERSION, accepted_at_ms, len(ident)) + ident


@dataclass(frozen=True, slots=True)
class Leaf:
    """A parsed version-1 leaf. Construct with :meth:`parse` or build with :meth:`to_bytes`."""

    accepted_at_ms: int
    identity: str
    payload: bytes

    def __post_init__(self) -> None:
        _check_fields(self.accepted_at_ms, self.identity)
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise LeafFormatError(f"payload: longer than {MAX_PAYLOAD_BYTES} bytes")

    def to_bytes(self) -> bytes:
        """Encode the leaf: the one deterministic byte string for these values."""
        header = _pack_header(self.accepted_at_ms, self.identity.encode("utf-8"))
        return leaf_bytes(header, self.payload)

    def leaf_hash(self) -> bytes:
        """Return the RFC 6962 leaf hash of :meth:`to_bytes`."""
        return leaf_hash(self.to_bytes())

    @classmethod
    def parse(cls, data: bytes) -> Leaf:
        """Parse leaf bytes strictly; raise :class:`LeafFormatError` saying what is wrong.

        ``Leaf.parse(b).to_bytes() == b`` for every ``b`` this accepts.
        """
        if len(data) < _HEAD.size:
            raise LeafFormatError(
                f"leaf: {len(data)} bytes, shorter than the {_HEAD.size}-byte header"
            )
        version, accepted_at_ms, ident_len = _HEAD.unpack_from(data, 0)
        if version != LEAF_VERSION:
            raise LeafFormatError(f"leaf: version {version}, want {LEAF_VERSION}")
        if ident_len > MAX_IDENTITY_BYTES:
            raise LeafFormatError(
                f"leaf: identity_length {ident_len}, want <= {MAX_IDENTITY_BYTES}"
            )
        pos = _HEAD.size + ident_len
        if len(data) < pos + _LEN.size:
            raise LeafFormatError("leaf: truncated before payload_length")
        try:
            identity = data[_HEAD.size : pos].decode("utf-8")
        except UnicodeDecodeError as e:
            raise LeafFormatError(f"leaf: identity is not UTF-8: {e}") from None
        (payload_len,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if len(data) != pos + payload_len:
            raise LeafFormatError(
                f"leaf: payload_length {payload_len}, but {len(data) - pos} bytes follow"
            )
        return cls(accepted_at_ms, identity, bytes(data[pos:]))


def leaf_header(accepted_at_ms: int, identity: str) -> bytes:
    """The bytes of a leaf before its payload_length: version, time, identity.

    Every leaf with this acceptance time and identity starts with them; add a
    payload with :func:`leaf_bytes`. Raises :class:`LeafFormatError` for a time
    outside ``0..2^64-1`` or an identity longer than :data:`MAX_IDENTITY_BYTES`,
    and :class:`UnicodeEncodeError` for an identity UTF-8 cannot encode.
    """
    return _pack_header(accepted_at_ms, _check_fields(accepted_at_ms, identity))


def leaf_bytes(header: bytes, payload: bytes) -> bytes:
    """The leaf of ``payload`` after ``header`` (from :func:`leaf_header`).

    ``leaf_bytes(leaf_header(t, i), p) == Leaf(t, i, p).to_bytes()``. The
    caller checks ``len(payload) <= MAX_PAYLOAD_BYTES``.
    """
    return header + _LEN.pack(len(payload)) + payload


def leaf_problem(data: bytes) -> str:
    """Why ``data`` is not a valid v1 leaf, or ``""`` if it is one.

    The rules of :meth:`Leaf.parse` (whose message this returns), without
    building the object or copying the payload: for checking many leaves,
    such as every leaf of a full audit.
    """
    n = len(data)
    if n >= _MIN_SIZE and data[0] == LEAF_VERSION:
        identity_end = _IDENTITY_AT + int.from_bytes(data[_IDENTITY_LENGTH_AT:_IDENTITY_AT], "big")
        payload_at = identity_end + _LEN.size
        if (
            identity_end - _IDENTITY_AT <= MAX_IDENTITY_BYTES
            and n >= payload_at
            and n == payload_at + int.from_bytes(data[identity_end:payload_at], "big")
        ):
            if identity_end == _IDENTITY_AT:
                return ""
            try:
                data[_IDENTITY_AT:identity_end].decode("utf-8")
                return ""
            except UnicodeDecodeError:
                pass
    try:
        Leaf.parse(data)
    except LeafFormatError as e:
        return str(e)
    return ""
