"""Checkpoints: a log's signed tree head (C2SP tlog-checkpoint).

Implements https://c2sp.org/tlog-checkpoint. A checkpoint is a signed note
(c2sp.org/signed-note) whose text is, line by line ("Note text")::

    <origin>                  the log's identity, e.g. example.com/log42
    <tree size>               ASCII decimal, no leading zeros
    <root hash>               base64 of the 32-byte RFC 6962 root
    [<extension line> ...]    optional, opaque, non-empty

This module parses that text strictly, so that every accepted body is the
exact serialisation of the :class:`Checkpoint` it yields
(``Checkpoint.parse(body).to_bytes() == body``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sealog.client._encoding import (
    decode_base64,
    encode_base64,
    is_canonical_decimal,
    parse_decimal,
)
from sealog.client.errors import CheckpointFormatError, VerificationError
from sealog.client.note import NoteSignature, NoteSigner, NoteVerifier, open_note, sign_note

__all__ = [
    "ROOT_HASH_SIZE",
    "Checkpoint",
    "SignedCheckpoint",
    "open_checkpoint",
    "sign_checkpoint",
]

#: Size of an RFC 6962 SHA-256 root hash.
ROOT_HASH_SIZE = 32

_MAX_TREE_SIZE = 2**64 - 1
_CONTROL = re.compile("[\x00-\x1f]")


def _check_line(what: str, line: str) -> None:
    """A checkpoint line: non-empty, one line, and valid note text (signed-note, "Format")."""
    if not isinstance(line, str):
        raise CheckpointFormatError(f"checkpoint: {what} must be a str, got {type(line).__name__}")
    if not line:
        raise CheckpointFormatError(f"checkpoint: empty {what}")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointFormatError(f"checkpoint: {what} {line!r} is not valid UTF-8") from None
    if "\n" in line:
        raise CheckpointFormatError(f"checkpoint: {what} {line!r} contains a newline")
    if _CONTROL.search(line):
        raise CheckpointFormatError(f"checkpoint: {what} {line!r} contains a control character")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size and root hash (tlog-checkpoint, "Note text").

    The constructor validates every field and raises CheckpointFormatError:
    the origin and each extension line are non-empty single lines without
    control characters; ``0 <= size < 2**64``; ``root_hash`` is 32 bytes.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line("origin line", self.origin)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointFormatError(
                f"checkpoint: tree size must be an int, got {type(self.size).__name__}"
            )
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise CheckpointFormatError(f"checkpoint: tree size {self.size} out of range")
        if not isinstance(self.root_hash, bytes):
            raise CheckpointFormatError(
                f"checkpoint: root hash must be bytes, got {type(self.root_hash).__name__}"
            )
        if len(self.root_hash) != ROOT_HASH_SIZE:
            raise CheckpointFormatError(
                f"checkpoint: root hash is {len(self.root_hash)} bytes, want {ROOT_HASH_SIZE}"
            )
        extensions: Sequence[str] = self.extensions
        if isinstance(extensions, str) or not isinstance(extensions, Sequence):
            raise CheckpointFormatError("checkpoint: extensions must be a sequence of lines")
        for line in extensions:
            _check_line("extension line", line)
        object.__setattr__(self, "extensions", tuple(extensions))

    def to_bytes(self) -> bytes:
        """The note text of this checkpoint, ending in a newline."""
        lines = [
            self.origin,
            str(self.size),
            encode_base64(self.root_hash),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Parse a checkpoint note text (the text only, not the signed note).

        Strict, per tlog-checkpoint "Note text": UTF-8 ending in a newline, at
        least three lines, a non-empty origin, the tree size in canonical
        ASCII decimal (``0`` or no leading zero, no sign) below 2**64, the root
        hash as canonical padded standard base64 of exactly 32 bytes, and
        non-empty extension lines. Raises CheckpointFormatError.
        """
        if not isinstance(body, bytes):
            raise CheckpointFormatError(
                f"checkpoint: body must be bytes, got {type(body).__name__}"
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CheckpointFormatError(
                f"checkpoint: body is not valid UTF-8 (byte {err.start})"
            ) from None
        if not text.endswith("\n"):
            raise CheckpointFormatError("checkpoint: note text must end with newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointFormatError(f"checkpoint: need at least 3 lines, got {len(lines)}")
        origin, size_line, root_line, *extensions = lines
        if not origin:
            raise CheckpointFormatError("checkpoint: empty origin line")
        size = parse_decimal(size_line, _MAX_TREE_SIZE)
        if size is None:
            if not is_canonical_decimal(size_line):
                raise CheckpointFormatError(
                    f"checkpoint: tree size {size_line!r} is not canonical ASCII decimal"
                )
            raise CheckpointFormatError(f"checkpoint: tree size {size_line!r} out of range")
        root_hash = decode_base64(root_line)
        if root_hash is None:
            raise CheckpointFormatError(
                f"checkpoint: root hash line {root_line!r} is not canonical standard base64"
            )
        if len(root_hash) != ROOT_HASH_SIZE:
            raise CheckpointFormatError(
                f"checkpoint: root hash is {len(root_hash)} bytes, want {ROOT_HASH_SIZE}"
            )
        for number, line in enumerate(extensions, start=4):
            if not line:
                raise CheckpointFormatError(f"checkpoint: line {number} (extension) is empty")
        return cls(origin, size, root_hash, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, *signers: NoteSigner) -> bytes:
    """The signed note of ``cp`` (tlog-checkpoint, "Signatures"), one line per signer."""
    return sign_note(cp.to_bytes(), *signers)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified.

    ``note`` is the exact signed note it came from (keep it: it is the
    evidence anyone can re-check); ``verified`` the log signatures that
    verified.
    """

    checkpoint: Checkpoint
    note: bytes
    verified: tuple[NoteSignature, ...]


def open_checkpoint(
    note: bytes, log_verifier: NoteVerifier, *, origin: str | None = None
) -> SignedCheckpoint:
    """Verify a signed checkpoint against the log's key and parse it.

    The note must carry a valid signature by ``log_verifier``
    (UnverifiedNoteError if it has none, InvalidSignatureError if it is
    bad); other signatures, such as witness cosignatures, are ignored here
    (see :func:`sealog.client.cosignature.verify_cosignatures`). The text is
    parsed only after the signature verified. If ``origin`` is given, the
    checkpoint's origin must equal it (VerificationError naming both).
    """
    opened = open_note(note, [log_verifier])
    checkpoint = Checkpoint.parse(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(
            f"checkpoint origin {checkpoint.origin!r} is not the expected origin {origin!r}"
        )
    return SignedCheckpoint(checkpoint, note, opened.verified)
