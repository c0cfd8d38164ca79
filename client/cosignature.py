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
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sealog.client._encoding import encode_base64
from sealog.client.checkpoint import Checkpoint
from sealog.client.errors import (
    CheckpointFormatError,
    InvalidSignatureError,
    KeyFormatError,
    NoteFormatError,
    UnverifiedNoteError,
)
from sealog.client.note import (
    _check_key_hash,
    _check_key_type,
    _check_name,
    _check_uint32,
    _key_hash_for,
    _load_public_key,
    _parse_key,
    key_hash,
    open_note,
    parse_note,
    sign_note,
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

#: Signature type byte of Ed25519 cosignature/v1 keys (signed-note, "Signature types").
COSIGNATURE_KEY_TYPE = 0x04

#: Largest timestamp a cosignature may carry (tlog-cosignature, "Format").
MAX_TIMESTAMP = 2**63 - 1

_TIMESTAMP_SIZE = 8
_ED25519_SIGNATURE_SIZE = 64
_COSIGNATURE_SIZE = _TIMESTAMP_SIZE + _ED25519_SIGNATURE_SIZE
_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"


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


@dataclass(frozen=True)
class CosignatureVerifier:
    """Checks Ed25519 cosignature/v1 signatures by one witness key (type 0x04).

    Implements :class:`sealog.client.note.NoteVerifier`, so it can be passed
    to :func:`sealog.client.note.open_note`. The constructor checks that
    ``key_hash`` is the type-0x04 key ID of ``name`` and ``public_key``.
    """

    name: str
    key_hash: int
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = _load_public_key(
            "cosignature verifier key",
            f"witness {self.name!r}",
            self.name,
            self.key_hash,
            self.public_key,
            COSIGNATURE_KEY_TYPE,
        )
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> CosignatureVerifier:
        """The cosignature verifier for a raw 32-byte Ed25519 public key under ``name``."""
        key_id = _key_hash_for(f"witness {name!r}", name, public_key, COSIGNATURE_KEY_TYPE)
        return cls(name, key_id, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse a witness verifier key ``<name>+<hash>+base64(0x04 || public key)``.

        A plain Ed25519 note key (type 0x01) is refused with a KeyFormatError
        that says so: its key ID differs, so it would never match a
        cosignature line.
        """
        name, written, key_type, material = _parse_key(vkey, private=False)
        _check_key_type("cosignature verifier key", name, key_type, COSIGNATURE_KEY_TYPE)
        if len(material) != 32:
            raise KeyFormatError(
                f"cosignature verifier key {name!r}: Ed25519 public key is "
                f"{len(material)} bytes, want 32"
            )
        return cls(name, written, material)

    @property
    def vkey(self) -> str:
        """The verifier key string: ``<name>+<hash>+base64(0x04 || public key)``."""
        return (
            f"{self.name}+{self.key_hash:08x}+"
            f"{encode_base64(bytes([COSIGNATURE_KEY_TYPE]) + self.public_key)}"
        )

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
        try:
            self._key.verify(signature[_TIMESTAMP_SIZE:], signed)
        except InvalidSignature:
            raise InvalidSignatureError(self.name, self.key_hash) from None


@dataclass(frozen=True, repr=False)
class Cosigner:
    """A witness key that makes Ed25519 cosignature/v1 signatures (type 0x04).

    Implements :class:`sealog.client.note.NoteSigner`: :meth:`sign` stamps
    the current time. Its repr shows only the name and key ID; the seed
    leaves the object only through :attr:`skey`.
    """

    name: str
    key_hash: int
    seed: bytes
    _key: Ed25519PrivateKey = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_uint32(self.key_hash)
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise KeyFormatError(f"Ed25519 seed for witness {self.name!r} must be 32 bytes")
        private_key = Ed25519PrivateKey.from_private_bytes(self.seed)
        public_key = private_key.public_key().public_bytes_raw()
        computed = key_hash(self.name, bytes([COSIGNATURE_KEY_TYPE]) + public_key)
        _check_key_hash("cosigner key", self.name, self.key_hash, computed)
        object.__setattr__(self, "_key", private_key)

    def __repr__(self) -> str:
        return f"Cosigner(name={self.name!r}, key_hash=0x{self.key_hash:08x})"

    @classmethod
    def from_skey(cls, skey: str) -> Cosigner:
        """Parse a witness signer key ``PRIVATE+KEY+<name>+<hash>+base64(0x04 || seed)``.

        The hash must be the type-0x04 key ID of the public key derived from
        the seed. A plain note key (type 0x01) is refused.
        """
        name, written, key_type, material = _parse_key(skey, private=True)
        _check_key_type("cosigner key", name, key_type, COSIGNATURE_KEY_TYPE)
        if len(material) != 32:
            raise KeyFormatError(
                f"cosigner key {name!r}: Ed25519 seed is {len(material)} bytes, want 32"
            )
        return cls(name, written, material)

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        """A new random witness key named ``name``."""
        _check_name(name)
        private_key = Ed25519PrivateKey.generate()
        public_key = private_key.public_key().public_bytes_raw()
        return cls(
            name,
            key_hash(name, bytes([COSIGNATURE_KEY_TYPE]) + public_key),
            private_key.private_bytes_raw(),
        )

    @property
    def skey(self) -> str:
        """The secret signer key string. Anyone holding it can cosign as this witness."""
        return (
            f"{_PRIVATE_KEY_PREFIX}{self.name}+{self.key_hash:08x}+"
            f"{encode_base64(bytes([COSIGNATURE_KEY_TYPE]) + self.seed)}"
        )

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier, to publish as ``verifier().vkey``."""
        return CosignatureVerifier(
            self.name, self.key_hash, self._key.public_key().public_bytes_raw()
        )

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
        return timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + self._key.sign(signed)


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
