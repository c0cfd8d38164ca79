"""Witness cosignatures on checkpoints (C2SP tlog-cosignature, Ed25519 cosignature/v1).

Implements the Ed25519 type of https://c2sp.org/tlog-cosignature. A witness
that has checked a checkpoint is consistent with everything it saw before
adds one signature line to the checkpoint's signed note ("Format"):

* the key ID is ``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]``
  (type byte 0x04, so the same Ed25519 key has a different key ID here than
  as a plain 0x01 note key);
* the signature is ``timestamp || Ed25519 signature``: an 8-byte big-endian
  POSIX time in seconds (at most 2**63 - 1), then 64 bytes;
* the signed message ("Ed25519 signed message") is::

      cosignature/v1
      time <timestamp in decimal>
      <the checkpoint note text, extension lines included>

Keys are written as signed-note key strings with type byte 0x04: the verifier
key ``<name>+<hash>+base64(0x04 || public key)`` as tlog-cosignature
describes, and the signer key ``PRIVATE+KEY+<name>+<hash>+base64(0x04 || seed)``
in the form golang.org/x/mod/sumdb/note uses for its own keys (the form
github.com/transparency-dev/formats accepts for cosignature/v1 signers).
Parsing and writing them is :mod:`sealog.client.note_keys`'s, shared with the
log's type-0x01 keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from sealog.client.checkpoint import Checkpoint
from sealog.client.errors import (
    CheckpointFormatError,
    InvalidSignatureError,
    NoteFormatError,
    UnverifiedNoteError,
)
from sealog.client.note import open_note, parse_note, sign_note
from sealog.client.note_keys import (
    COSIGNATURE_KEY_TYPE,
    ED25519_COSIGNATURE,
    ED25519_SIGNATURE_SIZE,
    Ed25519SignerKey,
    Ed25519VerifierKey,
    SignatureType,
)

__all__ = [
    "COSIGNATURE_KEY_TYPE",
    "MAX_TIMESTAMP",
    "Cosignature",
    "CosignatureVerifier",
    "Cosigner",
    "cosign_checkpoint",
    "cosigned_message",
    "verify_cosignatures",
]

#: Largest timestamp a cosignature may carry (tlog-cosignature, "Format").
MAX_TIMESTAMP = 2**63 - 1

_TIMESTAMP_SIZE = 8
_COSIGNATURE_SIZE = _TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ValueError(f"cosignature timestamp must be an int, got {type(timestamp).__name__}")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"cosignature timestamp {timestamp} is outside [0, 2**63 - 1]")


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """The message an Ed25519 cosignature signs (tlog-cosignature, "Ed25519 signed message").

    ``body`` must be a valid checkpoint note text (CheckpointFormatError if
    not); ``timestamp`` a POSIX time in ``[0, 2**63 - 1]`` (ValueError if not).
    """
    _check_timestamp(timestamp)
    Checkpoint.parse(body)
    return b"cosignature/v1\ntime %d\n" % timestamp + body


class CosignatureVerifier(Ed25519VerifierKey):
    """Checks Ed25519 cosignature/v1 signatures by one witness key (type 0x04).

    Implements :class:`sealog.client.note.NoteVerifier`, so it can be passed
    to :func:`sealog.client.note.open_note`. The constructor checks that
    ``key_hash`` is the type-0x04 key ID of ``name`` and ``public_key``.
    :meth:`from_vkey` parses a witness verifier key ``<name>+<hash>+base64(0x04
    || public key)`` and refuses a plain Ed25519 note key (type 0x01), saying
    so: its key ID differs, so it would never match a cosignature line. The
    key handling is :class:`sealog.client.note_keys.Ed25519VerifierKey`'s.
    """

    signature_type: ClassVar[SignatureType] = ED25519_COSIGNATURE

    @staticmethod
    def timestamp_of(signature: bytes) -> int:
        """The timestamp in a cosignature (``signature`` without its 4-byte key ID).

        Does not verify anything. Raises NoteFormatError if ``signature`` is
        not 72 bytes or its timestamp exceeds 2**63 - 1.
        """
        if len(signature) != _COSIGNATURE_SIZE:
            raise NoteFormatError(
                f"cosignature is {len(signature)} bytes, want {_COSIGNATURE_SIZE} "
                "(8-byte timestamp and 64-byte Ed25519 signature)"
            )
        timestamp = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
        if timestamp > MAX_TIMESTAMP:
            raise NoteFormatError(f"cosignature timestamp {timestamp} exceeds 2**63 - 1")
        return timestamp

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check a cosignature of the checkpoint body ``message``; raise InvalidSignatureError.

        ``signature`` is ``timestamp || Ed25519 signature`` (72 bytes). It is
        invalid if malformed, if ``message`` is not a valid checkpoint body, or
        if the Ed25519 signature of the cosigned message does not verify.
        """
        try:
            timestamp = self.timestamp_of(signature)
            signed = cosigned_message(message, timestamp)
        except (NoteFormatError, CheckpointFormatError) as err:
            raise InvalidSignatureError(self.name, self.key_hash) from err
        super().verify(signed, signature[_TIMESTAMP_SIZE:])


class Cosigner(Ed25519SignerKey):
    """A witness key that makes Ed25519 cosignature/v1 signatures (type 0x04).

    Implements :class:`sealog.client.note.NoteSigner`: :meth:`sign` stamps
    the current time. Its signer key is ``PRIVATE+KEY+<name>+<hash>+base64(0x04
    || seed)``, whose hash must be the type-0x04 key ID of the public key
    derived from the seed; :meth:`from_skey` refuses a plain note key (type
    0x01). Its repr shows only the name and key ID; the seed leaves the object
    only through :attr:`skey`. The key handling is
    :class:`sealog.client.note_keys.Ed25519SignerKey`'s.
    """

    signature_type: ClassVar[SignatureType] = ED25519_COSIGNATURE

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier, to publish as ``verifier().vkey``."""
        return CosignatureVerifier(self.name, self.key_hash, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Cosign the checkpoint body ``message`` at the current time (whole seconds)."""
        return self.sign_at(message, int(time.time()))

    def sign_at(self, message: bytes, timestamp: int) -> bytes:
        """Cosign the checkpoint body ``message`` at ``timestamp`` (POSIX seconds).

        Returns ``timestamp`` (8 bytes, big-endian) followed by the Ed25519
        signature of the cosigned message. Raises CheckpointFormatError if
        ``message`` is not a valid checkpoint body, ValueError for a timestamp
        outside ``[0, 2**63 - 1]``.
        """
        signed = cosigned_message(message, timestamp)
        return timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + super().sign(signed)


@dataclass(frozen=True)
class _CosignerAt:
    """A Cosigner with a fixed timestamp, as a NoteSigner."""

    cosigner: Cosigner
    timestamp: int

    @property
    def name(self) -> str:
        return self.cosigner.name

    @property
    def key_hash(self) -> int:
        return self.cosigner.key_hash

    def sign(self, message: bytes) -> bytes:
        return self.cosigner.sign_at(message, self.timestamp)


def cosign_checkpoint(
    signed_note: bytes, cosigner: Cosigner, timestamp: int | None = None
) -> bytes:
    """Add ``cosigner``'s cosignature line to a signed checkpoint note.

    The existing signature lines are kept as they are (a previous line by the
    same witness key is replaced). This function does not check the log's
    signature nor the checkpoint's consistency: a witness must do both before
    cosigning. ``timestamp`` defaults to the current time.
    """
    text, _ = parse_note(signed_note)
    signer: Cosigner | _CosignerAt = cosigner
    if timestamp is not None:
        _check_timestamp(timestamp)
        signer = _CosignerAt(cosigner, timestamp)
    return sign_note(text, signer, existing=signed_note)


@dataclass(frozen=True)
class Cosignature:
    """A cosignature that verified: which witness key, and when it signed."""

    name: str
    key_hash: int
    timestamp: int


def verify_cosignatures(
    note: bytes, witnesses: Iterable[CosignatureVerifier]
) -> tuple[Cosignature, ...]:
    """The valid cosignatures on a checkpoint note by the given witness keys.

    Lines by other keys (the log's own signature included) are ignored. A
    line by a known witness key that does not verify rejects the whole note
    with InvalidSignatureError (signed-note, "Signatures"); a second line by
    the same witness is skipped. Returns the cosignatures in note order,
    possibly none: how many are enough is the caller's policy. Raises
    NoteFormatError for a malformed note.
    """
    try:
        opened = open_note(note, witnesses)
    except UnverifiedNoteError:
        return ()
    return tuple(
        Cosignature(sig.name, sig.key_hash, CosignatureVerifier.timestamp_of(sig.signature))
        for sig in opened.verified
    )
