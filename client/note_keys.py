"""Signed-note keys: names, key IDs and key strings of Ed25519 keys (C2SP signed-note).

Implements the key side of https://c2sp.org/signed-note, byte for byte as
``golang.org/x/mod/sumdb/note`` writes keys:

* a key name is non-empty UTF-8 without Unicode white space or ``+``
  ("Format");
* the key ID is ``SHA-256(name || 0x0A || type byte || public key)[:4]``
  ("Signatures");
* a verifier key is ``<name>+<key ID as 8 hex digits>+base64(type byte ||
  public key)`` and a signer key ``PRIVATE+KEY+<name>+<key ID>+base64(type
  byte || 32-byte seed)``.

The type byte is the signature type ("Signature types"). sealog uses two,
both Ed25519: ``0x01`` signs the note text (:data:`ED25519_NOTE`, the log's
key, :mod:`sealog.client.note`) and ``0x04`` signs a timestamped
tlog-cosignature/v1 message (:data:`ED25519_COSIGNATURE`, witness keys,
:mod:`sealog.client.cosignature`). So there is one key type,
:class:`Ed25519VerifierKey` with its :class:`Ed25519SignerKey`, parameterised
by a :class:`SignatureType`; each signature type subclasses it and says only
what its signature signs.

This is a module of its own, not part of :mod:`sealog.client.note`, because
keys are one concept and notes another: a note is opened with any
:class:`~sealog.client.note.NoteVerifier`, while parsing, checking and writing
key strings is shared by both signature types, so the cosignature module
builds on this one without reaching into the note module.

Where this module is stricter than the Go package: base64 must be in
canonical form, and key names may not contain ASCII control characters
(a signed note could not carry them).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sealog.client._encoding import decode_base64, encode_base64
from sealog.client.errors import InvalidSignatureError, KeyFormatError

__all__ = [
    "COSIGNATURE_KEY_TYPE",
    "ED25519_COSIGNATURE",
    "ED25519_KEY_TYPE",
    "ED25519_NOTE",
    "ED25519_SIGNATURE_SIZE",
    "PRIVATE_KEY_PREFIX",
    "Ed25519SignerKey",
    "Ed25519VerifierKey",
    "SignatureType",
    "check_key_name",
    "key_hash",
    "key_name_problem",
]

#: Signature type byte of plain Ed25519 note signatures (signed-note, "Signature types").
ED25519_KEY_TYPE = 0x01

#: Signature type byte of Ed25519 cosignature/v1 keys (signed-note, "Signature types").
COSIGNATURE_KEY_TYPE = 0x04

#: The prefix that marks a signer (secret) key string.
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"

#: Size of an Ed25519 signature (RFC 8032, Section 5.1.6).
ED25519_SIGNATURE_SIZE = 64

_ED25519_PUBLIC_KEY_SIZE = 32
_ED25519_SEED_SIZE = 32

# Code points Go's unicode.IsSpace reports as spaces: the Unicode White_Space
# property. Key names must not contain any of them (signed-note, "Format").
_UNICODE_SPACES = frozenset(
    "\t\n\v\f\r \u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_CONTROL = re.compile("[\x00-\x1f]")
_HEX8 = re.compile("[0-9a-fA-F]{8}")


def key_hash(name: str, key_type_and_public_key: bytes) -> int:
    """The key ID of a key: ``SHA-256(name || 0x0A || type byte || public key)[:4]``.

    signed-note, "Signatures": the first four bytes of the hash, read as a
    big-endian uint32. ``key_type_and_public_key`` is the signature type byte
    followed by the public key, as encoded in a verifier key.
    """
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + key_type_and_public_key).digest()
    return int.from_bytes(digest[:4], "big")


def key_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid key name (signed-note, "Format"), or None if it is.

    A key name is non-empty UTF-8 with no Unicode spaces and no ``+``. Control
    characters are refused too (unlike Go), since a signed note cannot carry them.
    """
    if not name:
        return "key name is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"key name {name!r} is not valid UTF-8"
    if "+" in name:
        return f"key name {name!r} contains '+'"
    if any(ch in _UNICODE_SPACES for ch in name):
        return f"key name {name!r} contains white space"
    if _CONTROL.search(name):  # newline and tab are white space, refused above
        return f"key name {name!r} contains a control character"
    return None


def check_key_name(name: str) -> None:
    """Raise KeyFormatError, saying why, if ``name`` is not a valid key name."""
    problem = key_name_problem(name)
    if problem is not None:
        raise KeyFormatError(problem)


@dataclass(frozen=True)
class SignatureType:
    """One signature type of Ed25519 keys (signed-note, "Signature types").

    ``byte`` is the type byte that starts the encoded key and enters the key
    ID. The other fields are how error messages name keys of this type:
    ``owner`` comes before a key's name (``"witness "`` or nothing);
    ``vkey_noun`` and ``skey_noun`` name a key string being parsed,
    ``verifier_noun`` and ``signer_noun`` a key being constructed; ``hint``
    says what a key of this type is, for a key given where another type is
    wanted.
    """

    byte: int
    owner: str
    vkey_noun: str
    skey_noun: str
    verifier_noun: str
    signer_noun: str
    hint: str


#: Type 0x01: Ed25519 over the note text (signed-note, "Ed25519 signatures").
ED25519_NOTE = SignatureType(
    byte=ED25519_KEY_TYPE,
    owner="",
    vkey_noun="verifier key",
    skey_noun="signer key",
    verifier_noun="Ed25519 verifier key",
    signer_noun="Ed25519 signer key",
    hint="a plain Ed25519 note key (see sealog.client.note)",
)

#: Type 0x04: Ed25519 over a timestamped cosignature/v1 message (tlog-cosignature).
ED25519_COSIGNATURE = SignatureType(
    byte=COSIGNATURE_KEY_TYPE,
    owner="witness ",
    vkey_noun="cosignature verifier key",
    skey_noun="cosigner key",
    verifier_noun="cosignature verifier key",
    signer_noun="cosigner key",
    hint="a cosignature/v1 witness key (see sealog.client.cosignature)",
)

_KNOWN_TYPES = {t.byte: t for t in (ED25519_NOTE, ED25519_COSIGNATURE)}


def _parse_key(key: str, *, private: bool) -> tuple[str, int, int, bytes]:
    """Split a verifier or signer key string into (name, key ID, type byte, key material).

    The key ID is taken as written; the caller checks it against the key. Error
    messages never repeat the key material, which for a signer key is secret.
    """
    what = "signer key" if private else "verifier key"
    form = "PRIVATE+KEY+<name>+<hash>+<base64 key>" if private else "<name>+<hash>+<base64 key>"
    if not isinstance(key, str):
        raise KeyFormatError(f"{what} must be a str, got {type(key).__name__}")
    rest = key
    if private:
        if not rest.startswith(PRIVATE_KEY_PREFIX):
            raise KeyFormatError(f"{what} must have the form {form}: missing PRIVATE+KEY+ prefix")
        rest = rest[len(PRIVATE_KEY_PREFIX) :]
    elif rest.startswith(PRIVATE_KEY_PREFIX):
        raise KeyFormatError(f"this is a signer (private) key; a {what} has the form {form}")
    parts = rest.split("+", 2)
    if len(parts) != 3:
        raise KeyFormatError(f"{what} must have the form {form}")
    name, hash_hex, key_b64 = parts
    check_key_name(name)
    if not _HEX8.fullmatch(hash_hex):
        raise KeyFormatError(f"{what} for {name!r}: key hash {hash_hex!r} is not 8 hex digits")
    material = decode_base64(key_b64)
    if material is None or not material:
        raise KeyFormatError(f"{what} for {name!r}: key is not canonical standard base64")
    return name, int(hash_hex, 16), material[0], material[1:]


def _check_key_hash(what: str, name: str, written: int, computed: int) -> None:
    if written != computed:
        raise KeyFormatError(
            f"{what} {name}+{written:08x}: key hash does not match the key "
            f"(the key hashes to {computed:08x})"
        )


def _check_key_type(what: str, name: str, got: int, want: int) -> None:
    if got != want:
        known = _KNOWN_TYPES.get(got)
        hint = f"; type 0x{got:02x} is {known.hint}" if known is not None else ""
        raise KeyFormatError(f"{what} {name!r} has key type 0x{got:02x}, want 0x{want:02x}{hint}")


def _check_uint32(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise KeyFormatError(f"key hash must be an int in [0, 2**32), got {value!r}")


def _describe_length(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return type(value).__name__


def _check_public_key(whose: str, public_key: object) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != _ED25519_PUBLIC_KEY_SIZE:
        raise KeyFormatError(
            f"Ed25519 public key for {whose} must be 32 bytes, got {_describe_length(public_key)}"
        )


@dataclass(frozen=True)
class Ed25519VerifierKey:
    """An Ed25519 public key under a key name, of the signature type ``signature_type``.

    A subclass sets ``signature_type``; this class itself has none and cannot
    be instantiated. Construct one from a verifier key with :meth:`from_vkey`,
    or from a raw public key with :meth:`from_public_key`. The constructor
    checks the name, and that ``key_hash`` is the key ID of ``name`` and
    ``public_key`` under the type byte (KeyFormatError if not).

    :meth:`verify` checks a plain Ed25519 signature of the message, which is
    what type 0x01 signs; a type whose signature covers something else
    overrides it.
    """

    signature_type: ClassVar[SignatureType]

    name: str
    key_hash: int
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = self.signature_type
        check_key_name(self.name)
        _check_uint32(self.key_hash)
        _check_public_key(f"{kind.owner}{self.name!r}", self.public_key)
        computed = key_hash(self.name, bytes([kind.byte]) + self.public_key)
        _check_key_hash(kind.verifier_noun, self.name, self.key_hash, computed)
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public_key))

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Self:
        """The verifier for a raw 32-byte Ed25519 public key under ``name``."""
        kind = cls.signature_type
        check_key_name(name)
        _check_public_key(f"{kind.owner}{name!r}", public_key)
        return cls(name, key_hash(name, bytes([kind.byte]) + public_key), public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse a verifier key ``<name>+<hash>+base64(type byte || public key)``.

        Raises KeyFormatError, naming the part that is wrong, when the string
        is malformed, the type byte is not this type's (a key of the other
        type is refused with a hint: its key ID differs, so it would never
        match a signature line), the key is not 32 bytes, or the hash is not
        the key ID of the name and key.
        """
        kind = cls.signature_type
        name, written, key_type, material = _parse_key(vkey, private=False)
        _check_key_type(kind.vkey_noun, name, key_type, kind.byte)
        if len(material) != _ED25519_PUBLIC_KEY_SIZE:
            raise KeyFormatError(
                f"{kind.vkey_noun} {name!r}: Ed25519 public key is {len(material)} bytes, want 32"
            )
        return cls(name, written, material)

    @property
    def vkey(self) -> str:
        """The verifier key string: ``<name>+<hash>+base64(type byte || public key)``."""
        encoded = encode_base64(bytes([self.signature_type.byte]) + self.public_key)
        return f"{self.name}+{self.key_hash:08x}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature (RFC 8032) of ``message``; raise InvalidSignatureError."""
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise InvalidSignatureError(self.name, self.key_hash)
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise InvalidSignatureError(self.name, self.key_hash) from None


@dataclass(frozen=True, repr=False)
class Ed25519SignerKey:
    """An Ed25519 private key under a key name, of the signature type ``signature_type``.

    A subclass sets ``signature_type``. Holds the 32-byte private seed; the
    constructor checks the name, and that ``key_hash`` is the key ID of the
    *public* key derived from the seed. Its repr shows only the name and key
    ID; the seed leaves the object only through :attr:`skey`.

    :meth:`sign` makes a plain Ed25519 signature of the message, which is
    what type 0x01 signs; a type whose signature covers something else
    overrides it.
    """

    signature_type: ClassVar[SignatureType]

    name: str
    key_hash: int
    seed: bytes
    _key: Ed25519PrivateKey = field(init=False, compare=False)

    def __post_init__(self) -> None:
        kind = self.signature_type
        check_key_name(self.name)
        _check_uint32(self.key_hash)
        if not isinstance(self.seed, bytes) or len(self.seed) != _ED25519_SEED_SIZE:
            raise KeyFormatError(f"Ed25519 seed for {kind.owner}{self.name!r} must be 32 bytes")
        private_key = Ed25519PrivateKey.from_private_bytes(self.seed)
        public_key = private_key.public_key().public_bytes_raw()
        computed = key_hash(self.name, bytes([kind.byte]) + public_key)
        _check_key_hash(kind.signer_noun, self.name, self.key_hash, computed)
        object.__setattr__(self, "_key", private_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, key_hash=0x{self.key_hash:08x})"

    @classmethod
    def from_skey(cls, skey: str) -> Self:
        """Parse a signer key ``PRIVATE+KEY+<name>+<hash>+base64(type byte || seed)``.

        The hash is the key ID of the *public* key, so it is checked after
        deriving the public key from the seed. A key of another signature
        type is refused with a hint. Raises KeyFormatError.
        """
        kind = cls.signature_type
        name, written, key_type, material = _parse_key(skey, private=True)
        _check_key_type(kind.skey_noun, name, key_type, kind.byte)
        if len(material) != _ED25519_SEED_SIZE:
            raise KeyFormatError(
                f"{kind.skey_noun} {name!r}: Ed25519 seed is {len(material)} bytes, want 32"
            )
        return cls(name, written, material)

    @classmethod
    def generate(cls, name: str) -> Self:
        """A new random key named ``name``."""
        check_key_name(name)
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        public_key = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return cls(name, key_hash(name, bytes([cls.signature_type.byte]) + public_key), seed)

    @property
    def skey(self) -> str:
        """The secret signer key string. Anyone holding it can sign as this key."""
        encoded = encode_base64(bytes([self.signature_type.byte]) + self.seed)
        return f"{PRIVATE_KEY_PREFIX}{self.name}+{self.key_hash:08x}+{encoded}"

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key, derived from the seed."""
        return self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        return self._key.sign(bytes(message))
