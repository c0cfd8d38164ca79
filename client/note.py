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

Key names, key IDs and key strings are :mod:`sealog.client.note_keys`'s;
:class:`Ed25519Signer` and :class:`Ed25519Verifier` are its keys of type 0x01.

Where this module is stricter than the Go package, the difference is noted in
the docstring concerned: base64 must be in canonical form, key names may not
contain ASCII control characters, and :func:`sign_note` refuses to produce a
note that :func:`open_note` would reject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from sealog.client._encoding import decode_base64, encode_base64
from sealog.client.errors import NoteFormatError, UnverifiedNoteError
from sealog.client.note_keys import (
    ED25519_KEY_TYPE,
    ED25519_NOTE,
    Ed25519SignerKey,
    Ed25519VerifierKey,
    SignatureType,
    key_hash,
    key_name_problem,
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

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_FORBIDDEN_IN_NOTE = re.compile("[\x00-\x09\x0b-\x1f]")


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


class Ed25519Verifier(Ed25519VerifierKey):
    """An Ed25519 note verifier (signed-note, "Ed25519 signatures", type 0x01).

    Construct it from a verifier key ``<name>+<hash>+base64(0x01 || public
    key)`` with :meth:`from_vkey`, or from a raw public key with
    :meth:`from_public_key`. The constructor checks that ``key_hash`` is the
    key ID of ``name`` and ``public_key``. :meth:`verify` checks an Ed25519
    signature (RFC 8032) of the note text. The key handling is
    :class:`sealog.client.note_keys.Ed25519VerifierKey`'s.
    """

    signature_type: ClassVar[SignatureType] = ED25519_NOTE


class Ed25519Signer(Ed25519SignerKey):
    """An Ed25519 note signer (signed-note, "Ed25519 signatures", type 0x01).

    Holds the 32-byte private seed; its signer key is ``PRIVATE+KEY+<name>+
    <hash>+base64(0x01 || seed)``. Its repr shows only the name and key ID;
    the seed leaves the object only through :attr:`skey`. The key handling is
    :class:`sealog.client.note_keys.Ed25519SignerKey`'s.
    """

    signature_type: ClassVar[SignatureType] = ED25519_NOTE

    def verifier(self) -> Ed25519Verifier:
        """The matching verifier, to publish as ``verifier().vkey``."""
        return Ed25519Verifier(self.name, self.key_hash, self.public_key)


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
    problem = key_name_problem(name)
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
        problem = key_name_problem(signer.name)
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
