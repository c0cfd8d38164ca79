"""Signed notes: text signed by one or more named keys (C2SP signed-note).

Implements https://c2sp.org/signed-note with Ed25519 keys (signature type
0x01), byte for byte compatible with Go's ``golang.org/x/mod/sumdb/note``.

A signed note is the note text, a blank line, and one signature line per
signature (signed-note, "Format")::

    If you think cryptography is the answer to your problem,
    then you don't know what your problem is.

    — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiF...GUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=

The signature line is an em dash (U+2014), a space, the key name, a space, and
``base64(key ID || signature)``, where the key ID is the first four bytes of
``SHA-256(key name || 0x0A || type byte || public key)`` (signed-note,
"Signatures"). Keys travel as text:

* verifier key (public): ``<name>+<key ID as 8 hex digits>+base64(type byte || public key)``
* signer key (secret): ``PRIVATE+KEY+<name>+<key ID>+base64(type byte || 32-byte seed)``

Where this module is stricter than the Go package, the difference is noted in
the docstring concerned: base64 must be in canonical form, key names may not
contain ASCII control characters, and :func:`sign_note` refuses to produce a
note that :func:`open_note` would reject.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sealog.client._encoding import decode_base64, encode_base64
from sealog.client.errors import (
    InvalidSignatureError,
    KeyFormatError,
    NoteFormatError,
    UnverifiedNoteError,
)

__all__ = [
    "ED25519_KEY_TYPE",
    "MAX_NOTE_SIGNATURES",
    "Ed25519Signer",
    "Ed25519Verifier",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "key_hash",
    "open_note",
    "parse_note",
    "sign_note",
]

#: Most signature lines a note may carry. signed-note ("Format") asks verifiers
#: to set a limit of at least 16; 100 is the limit of golang.org/x/mod/sumdb/note.
MAX_NOTE_SIGNATURES = 100

#: Signature type byte of plain Ed25519 note signatures (signed-note, "Signature types").
ED25519_KEY_TYPE = 0x01

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_ED25519_PUBLIC_KEY_SIZE = 32
_ED25519_SEED_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64

# Code points Go's unicode.IsSpace reports as spaces: the Unicode White_Space
# property. Key names must not contain any of them (signed-note, "Format").
_UNICODE_SPACES = frozenset(
    "\t\n\v\f\r \u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_FORBIDDEN_IN_NOTE = re.compile("[\x00-\x09\x0b-\x1f]")
_HEX8 = re.compile("[0-9a-fA-F]{8}")


@runtime_checkable
class NoteVerifier(Protocol):
    """Checks signatures made by one key, identified by its name and key ID."""

    @property
    def name(self) -> str:
        """The key name, as it appears in signature lines."""
        ...

    @property
    def key_hash(self) -> int:
        """The 32-bit key ID, as it appears in the first four bytes of a signature."""
        ...

    def verify(self, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is valid for ``message``; raise InvalidSignatureError if not.

        ``signature`` is the decoded signature without its 4-byte key ID.
        """
        ...


@runtime_checkable
class NoteSigner(Protocol):
    """Signs note texts with one key, identified by its name and key ID."""

    @property
    def name(self) -> str:
        """The key name, as it will appear in signature lines."""
        ...

    @property
    def key_hash(self) -> int:
        """The 32-bit key ID."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the signature of ``message`` (without the 4-byte key ID)."""
        ...


def key_hash(name: str, key_type_and_public_key: bytes) -> int:
    """The key ID of a key: ``SHA-256(name || 0x0A || type byte || public key)[:4]``.

    signed-note, "Signatures": the first four bytes of the hash, read as a
    big-endian uint32. ``key_type_and_public_key`` is the signature type byte
    followed by the public key, as encoded in a verifier key.
    """
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + key_type_and_public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _name_problem(name: str) -> str | None:
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
    if _FORBIDDEN_IN_NOTE.search(name):
        return f"key name {name!r} contains a control character"
    return None


def _check_name(name: str) -> None:
    problem = _name_problem(name)
    if problem is not None:
        raise KeyFormatError(problem)


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
        if not rest.startswith(_PRIVATE_KEY_PREFIX):
            raise KeyFormatError(f"{what} must have the form {form}: missing PRIVATE+KEY+ prefix")
        rest = rest[len(_PRIVATE_KEY_PREFIX) :]
    elif rest.startswith(_PRIVATE_KEY_PREFIX):
        raise KeyFormatError(f"this is a signer (private) key; a {what} has the form {form}")
    parts = rest.split("+", 2)
    if len(parts) != 3:
        raise KeyFormatError(f"{what} must have the form {form}")
    name, hash_hex, key_b64 = parts
    _check_name(name)
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
        hint = ""
        if got == 0x04:
            hint = "; type 0x04 is a cosignature/v1 witness key (see sealog.client.cosignature)"
        elif got == ED25519_KEY_TYPE:
            hint = "; type 0x01 is a plain Ed25519 note key (see sealog.client.note)"
        raise KeyFormatError(f"{what} {name!r} has key type 0x{got:02x}, want 0x{want:02x}{hint}")


def _check_uint32(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise KeyFormatError(f"key hash must be an int in [0, 2**32), got {value!r}")


def _check_public_key(whose: str, public_key: object) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise KeyFormatError(
            f"Ed25519 public key for {whose} must be 32 bytes, got {_describe_length(public_key)}"
        )


def _load_public_key(
    what: str, whose: str, name: str, written_hash: int, public_key: bytes, key_type: int
) -> Ed25519PublicKey:
    """Check a verifier's name, key ID and key; return the key ready to verify with."""
    _check_name(name)
    _check_uint32(written_hash)
    _check_public_key(whose, public_key)
    computed = key_hash(name, bytes([key_type]) + public_key)
    _check_key_hash(what, name, written_hash, computed)
    return Ed25519PublicKey.from_public_bytes(public_key)


def _key_hash_for(whose: str, name: str, public_key: bytes, key_type: int) -> int:
    """The key ID of a raw public key, after checking the name and the key."""
    _check_name(name)
    _check_public_key(whose, public_key)
    return key_hash(name, bytes([key_type]) + public_key)


@dataclass(frozen=True)
class Ed25519Verifier:
    """An Ed25519 note verifier (signed-note, "Ed25519 signatures", type 0x01).

    Construct it from a verifier key with :meth:`from_vkey`, or from a raw
    public key with :meth:`from_public_key`. The constructor checks that
    ``key_hash`` is the key ID of ``name`` and ``public_key``.
    """

    name: str
    key_hash: int
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = _load_public_key(
            "Ed25519 verifier key",
            repr(self.name),
            self.name,
            self.key_hash,
            self.public_key,
            ED25519_KEY_TYPE,
        )
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Ed25519Verifier:
        """The verifier for a raw 32-byte Ed25519 public key under ``name``."""
        key_id = _key_hash_for(repr(name), name, public_key, ED25519_KEY_TYPE)
        return cls(name, key_id, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Ed25519Verifier:
        """Parse a verifier key ``<name>+<hash>+base64(0x01 || public key)``.

        Raises KeyFormatError, naming the part that is wrong, when the string
        is malformed, the type byte is not 0x01, the key is not 32 bytes, or
        the hash is not the key ID of the name and key.
        """
        name, written, key_type, material = _parse_key(vkey, private=False)
        _check_key_type("verifier key", name, key_type, ED25519_KEY_TYPE)
        if len(material) != _ED25519_PUBLIC_KEY_SIZE:
            raise KeyFormatError(
                f"verifier key {name!r}: Ed25519 public key is {len(material)} bytes, want 32"
            )
        return cls(name, written, material)

    @property
    def vkey(self) -> str:
        """The verifier key string: ``<name>+<hash>+base64(0x01 || public key)``."""
        encoded = encode_base64(bytes([ED25519_KEY_TYPE]) + self.public_key)
        return f"{self.name}+{self.key_hash:08x}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature (RFC 8032) of ``message``; raise InvalidSignatureError."""
        if len(signature) != _ED25519_SIGNATURE_SIZE:
            raise InvalidSignatureError(self.name, self.key_hash)
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise InvalidSignatureError(self.name, self.key_hash) from None


@dataclass(frozen=True, repr=False)
class Ed25519Signer:
    """An Ed25519 note signer (signed-note, "Ed25519 signatures", type 0x01).

    Holds the 32-byte private seed. Its repr shows only the name and key ID;
    the seed leaves the object only through :attr:`skey`.
    """

    name: str
    key_hash: int
    seed: bytes
    _key: Ed25519PrivateKey = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_uint32(self.key_hash)
        if not isinstance(self.seed, bytes) or len(self.seed) != _ED25519_SEED_SIZE:
            raise KeyFormatError(f"Ed25519 seed for {self.name!r} must be 32 bytes")
        private_key = Ed25519PrivateKey.from_private_bytes(self.seed)
        public_key = private_key.public_key().public_bytes_raw()
        computed = key_hash(self.name, bytes([ED25519_KEY_TYPE]) + public_key)
        _check_key_hash("Ed25519 signer key", self.name, self.key_hash, computed)
        object.__setattr__(self, "_key", private_key)

    def __repr__(self) -> str:
        return f"Ed25519Signer(name={self.name!r}, key_hash=0x{self.key_hash:08x})"

    @classmethod
    def from_skey(cls, skey: str) -> Ed25519Signer:
        """Parse a signer key ``PRIVATE+KEY+<name>+<hash>+base64(0x01 || seed)``.

        The hash is the key ID of the *public* key, so it is checked after
        deriving the public key from the seed.
        """
        name, written, key_type, material = _parse_key(skey, private=True)
        _check_key_type("signer key", name, key_type, ED25519_KEY_TYPE)
        if len(material) != _ED25519_SEED_SIZE:
            raise KeyFormatError(
                f"signer key {name!r}: Ed25519 seed is {len(material)} bytes, want 32"
            )
        return cls(name, written, material)

    @classmethod
    def generate(cls, name: str) -> Ed25519Signer:
        """A new random Ed25519 key named ``name``."""
        _check_name(name)
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        public_key = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return cls(name, key_hash(name, bytes([ED25519_KEY_TYPE]) + public_key), seed)

    @property
    def skey(self) -> str:
        """The secret signer key string. Anyone holding it can sign as this key."""
        return (
            f"{_PRIVATE_KEY_PREFIX}{self.name}+{self.key_hash:08x}+"
            f"{encode_base64(bytes([ED25519_KEY_TYPE]) + self.seed)}"
        )

    def verifier(self) -> Ed25519Verifier:
        """The matching verifier, to publish as ``verifier().vkey``."""
        return Ed25519Verifier(self.name, self.key_hash, self._key.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032)."""
        return self._key.sign(bytes(message))


def _describe_length(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return type(value).__name__


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note.

    ``signature`` is the base64-decoded signature with the 4-byte key ID
    removed; ``key_hash`` is that key ID.
    """

    name: str
    key_hash: int
    signature: bytes

    def to_line(self) -> bytes:
        """The signature line, ``— <name> base64(key ID || signature)\\n``."""
        raw = self.key_hash.to_bytes(4, "big") + self.signature
        return f"{_SIGNATURE_PREFIX}{self.name} {encode_base64(raw)}\n".encode()


@dataclass(frozen=True)
class Note:
    """An opened note: its text and the signatures found on it.

    ``text`` includes its final newline but not the blank line that follows.
    ``verified`` holds the signatures checked by a known key; ``unverified``
    those by keys the caller did not supply, kept but not checked.
    """

    text: bytes
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def _check_note_characters(data: bytes, what: str) -> str:
    """Decode ``data``: UTF-8, no ASCII control character but newline (signed-note, "Format")."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NoteFormatError(f"{what} is not valid UTF-8 (byte {err.start})") from None
    bad = _FORBIDDEN_IN_NOTE.search(decoded)
    if bad is not None:
        offset = len(decoded[: bad.start()].encode("utf-8"))
        raise NoteFormatError(
            f"{what} contains control character 0x{ord(bad.group()):02x} at byte {offset}"
        )
    return decoded


def _parse_signature_line(line: bytes, number: int) -> NoteSignature:
    text = line.decode("utf-8")  # the whole note was checked to be UTF-8
    if not text.startswith(_SIGNATURE_PREFIX):
        raise NoteFormatError(
            f"signature line {number} does not start with an em dash and a space: {text[:40]!r}"
        )
    name, _, b64 = text[len(_SIGNATURE_PREFIX) :].partition(" ")
    problem = _name_problem(name)
    if problem is not None:
        raise NoteFormatError(f"signature line {number}: {problem}")
    raw = decode_base64(b64)
    if raw is None or not b64:
        raise NoteFormatError(
            f"signature line {number} ({name}): signature is not canonical standard base64"
        )
    if len(raw) < 5:
        raise NoteFormatError(
            f"signature line {number} ({name}): signature is {len(raw)} bytes, "
            "want a 4-byte key ID and at least one byte"
        )
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def parse_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its text and signatures, without verifying any.

    Implements the structure of signed-note, "Format": the note must be valid
    UTF-8 without ASCII control characters other than newline; the text ends
    at the *last* blank line; then come one or more well-formed signature
    lines, each ending in a newline, at most :data:`MAX_NOTE_SIGNATURES` of
    them. Signatures are returned in order, duplicates included.

    Never trust the text of a note returned by this function: use
    :func:`open_note`. Raises NoteFormatError.
    """
    if not isinstance(note, bytes):
        raise NoteFormatError(f"a note must be bytes, got {type(note).__name__}")
    _check_note_characters(note, "note")
    split = note.rfind(b"\n\n")
    if split < 0:
        raise NoteFormatError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteFormatError("note has no signature lines after its last blank line")
    if not block.endswith(b"\n"):
        raise NoteFormatError("note does not end with a newline")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise NoteFormatError(
            f"note has {len(lines)} signature lines, more than {MAX_NOTE_SIGNATURES}"
        )
    return text, [_parse_signature_line(line, i + 1) for i, line in enumerate(lines)]


def _index_verifiers(
    verifiers: Iterable[NoteVerifier],
) -> dict[tuple[str, int], NoteVerifier]:
    index: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_hash)
        known = index.get(slot)
        if known is None:
            index[slot] = verifier
        elif known != verifier:
            raise ValueError(
                f"ambiguous key {slot[0]}+{slot[1]:08x}: two different verifiers share "
                "this name and key ID"
            )
    return index


def open_note(note: bytes, verifiers: Iterable[NoteVerifier]) -> Note:
    """Parse a signed note and verify its signatures by the given keys.

    Implements signed-note, "Signatures", as ``golang.org/x/mod/sumdb/note.Open``:

    * a signature whose (name, key ID) matches no verifier is kept in
      ``Note.unverified`` (identical repeated lines once);
    * a signature by a known key is verified; if it fails, the whole note is
      rejected with InvalidSignatureError;
    * later signatures by a key that already signed are skipped unchecked;
    * if no signature verified, UnverifiedNoteError (carrying the note).

    Raises NoteFormatError for a malformed note, and ValueError if two
    different verifiers share a name and key ID.
    """
    index = _index_verifiers(verifiers)
    text, signatures = parse_note(note)
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in signatures:
        slot = (sig.name, sig.key_hash)
        verifier = index.get(slot)
        if verifier is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if slot in seen:
            continue
        seen.add(slot)
        verifier.verify(text, sig.signature)
        verified.append(sig)
    if not verified:
        detail = "note has no verifiable signatures"
        if unverified:
            keys = ", ".join(f"{s.name}+{s.key_hash:08x}" for s in unverified)
            detail += f" (it is signed only by keys not given: {keys})"
        raise UnverifiedNoteError(note, detail)
    return Note(text, tuple(verified), tuple(unverified))


def sign_note(text: bytes, *signers: NoteSigner, existing: bytes | None = None) -> bytes:
    """Sign ``text`` with each signer and return the signed note.

    The output is ``text``, a blank line, then the signature lines, byte for
    byte as ``golang.org/x/mod/sumdb/note.Sign`` writes them: first the lines
    of ``existing`` (an already signed note with the same text, whose
    signatures are kept as they are, unverified) except those by a key that
    signs again now, then one new line per signer, in the order given.

    ``text`` must end in a newline and be valid note text (UTF-8, no ASCII
    control characters other than newline). At least one signer is needed;
    two signers may not share a name and key ID; the result may not carry
    more than :data:`MAX_NOTE_SIGNATURES` signatures. Raises NoteFormatError.
    """
    if not isinstance(text, bytes):
        raise NoteFormatError(f"note text must be bytes, got {type(text).__name__}")
    if not text.endswith(b"\n"):
        raise NoteFormatError("note text must end with a newline")
    _check_note_characters(text, "note text")
    if not signers:
        raise NoteFormatError("a signed note needs at least one signer")
    slots: set[tuple[str, int]] = set()
    for signer in signers:
        problem = _name_problem(signer.name)
        if problem is not None:
            raise NoteFormatError(f"cannot sign: {problem}")
        slot = (signer.name, signer.key_hash)
        if slot in slots:
            raise NoteFormatError(f"two signers share the key {slot[0]}+{slot[1]:08x}")
        slots.add(slot)

    kept: list[NoteSignature] = []
    if existing is not None:
        existing_text, existing_signatures = parse_note(existing)
        if existing_text != text:
            raise NoteFormatError("the existing note's text differs from the text to sign")
        for sig in existing_signatures:
            if (sig.name, sig.key_hash) not in slots and sig not in kept:
                kept.append(sig)
    if len(kept) + len(signers) > MAX_NOTE_SIGNATURES:
        raise NoteFormatError(
            f"the note would carry {len(kept) + len(signers)} signatures, "
            f"more than {MAX_NOTE_SIGNATURES}"
        )

    new = [NoteSignature(s.name, s.key_hash, s.sign(text)) for s in signers]
    for sig in new:
        if not sig.signature:
            raise NoteFormatError(f"signer {sig.name} returned an empty signature")
    lines: Sequence[NoteSignature] = [*kept, *new]
    return text + b"\n" + b"".join(sig.to_line() for sig in lines)
