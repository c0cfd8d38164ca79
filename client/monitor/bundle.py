"""Offline proof bundles in the C2SP tlog-proof text format (c2sp.org/tlog-proof).

A bundle is everything a third party needs to check, with no network, that
an entry is in the log: the entry, its inclusion proof and the signed
checkpoint (with any witness cosignatures). The format, line by line::

    c2sp.org/tlog-proof@v1
    extra <base64 of the leaf bytes>        sealog's use of the optional extra line
    index <leaf index, ASCII decimal>
    <base64 hash>                           the RFC 6962 audit path, leaf end first
    ...
                                            an empty line
    <the signed checkpoint note, verbatim>

tlog-proof has no field for the entry itself; its ``extra`` line carries
"opaque extra data", for instance what is needed to reconstruct the record
hash. sealog puts the exact leaf bytes there (docs/leaf-format.md). The spec
warns that the extra data is not authenticated; here it does not need to be:
the verifier hashes it (``SHA-256(0x00 || leaf)``) and checks that hash
against the signed root with the inclusion proof, so a changed leaf fails.
A bundle without ``extra`` (from another log) verifies given the leaf hash.

Files conventionally end in ``.tlog-proof``. Parsing is strict: one spelling
per bundle, so any changed byte is either malformed or fails verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealog.client._encoding import decode_base64, encode_base64, parse_decimal
from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.cosignature import Cosignature
from sealog.client.errors import BundleFormatError, FormatError, VerificationError
from sealog.client.hashing import HASH_SIZE, leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.note import NoteVerifier, parse_note
from sealog.client.verify import verify_inclusion
from sealog.client.witness_policy import WitnessPolicy

__all__ = ["MAX_PROOF_HASHES", "TLOG_PROOF_HEADER", "ProofBundle", "VerifiedBundle"]

TLOG_PROOF_HEADER = b"c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 63
"""An inclusion proof in a tree below 2^63 leaves has at most 63 hashes."""

_MAX_INDEX = 2**63 - 1


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose checkpoint signature, witness policy and inclusion proof verified."""

    index: int
    leaf_hash: bytes
    leaf: Leaf | None
    checkpoint: SignedCheckpoint
    cosignatures: tuple[Cosignature, ...]


@dataclass(frozen=True)
class ProofBundle:
    """An entry's inclusion proof with its signed checkpoint (c2sp.org/tlog-proof@v1)."""

    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes
    """The signed checkpoint note, verbatim, cosignatures included."""
    extra: bytes | None = None
    """For sealog: the leaf bytes."""

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not 0 <= self.index <= _MAX_INDEX:
            raise BundleFormatError(f"bundle: index {self.index}, want 0 <= index < 2^63")
        proof = tuple(self.inclusion_proof)
        object.__setattr__(self, "inclusion_proof", proof)
        if len(proof) > MAX_PROOF_HASHES:
            raise BundleFormatError(f"bundle: {len(proof)} proof hashes, at most 63")
        for i, h in enumerate(proof):
            if len(h) != HASH_SIZE:
                raise BundleFormatError(f"bundle: proof hash {i} is {len(h)} bytes, want 32")
        if self.extra is not None and not self.extra:
            raise BundleFormatError("bundle: the extra data is empty (omit it instead)")
        try:
            parse_note(self.checkpoint)
        except FormatError as e:
            raise BundleFormatError(f"bundle: the checkpoint is not a signed note: {e}") from e

    @classmethod
    def for_leaf(
        cls, index: int, leaf: bytes, proof: Sequence[bytes], checkpoint_note: bytes
    ) -> ProofBundle:
        """A sealog bundle: the leaf bytes go in the ``extra`` line."""
        return cls(index, tuple(proof), checkpoint_note, leaf)

    def to_bytes(self) -> bytes:
        """The bundle's text (tlog-proof "Format")."""
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append(b"extra " + encode_base64(self.extra).encode("ascii"))
        lines.append(b"index %d" % self.index)
        lines += [encode_base64(h).encode("ascii") for h in self.inclusion_proof]
        return b"\n".join(lines) + b"\n\n" + self.checkpoint

    @classmethod
    def parse(cls, data: bytes) -> ProofBundle:
        """Parse a bundle strictly; :class:`BundleFormatError` says what is wrong.

        ``ProofBundle.parse(b).to_bytes() == b`` for every ``b`` accepted.
        """
        if not isinstance(data, bytes):
            raise BundleFormatError(f"bundle must be bytes, got {type(data).__name__}")
        head, sep, note = data.partition(b"\n\n")
        if not sep:
            raise BundleFormatError("bundle: no empty line before the checkpoint")
        lines = head.split(b"\n")
        if lines[0] != TLOG_PROOF_HEADER:
            raise BundleFormatError(
                f"bundle: first line {lines[0][:40]!r}, want {TLOG_PROOF_HEADER.decode()!r}"
            )
        pos = 1
        extra = None
        if pos < len(lines) and lines[pos].startswith(b"extra "):
            extra = _decode(lines[pos][len(b"extra ") :], "extra data")
            pos += 1
        if pos >= len(lines) or not lines[pos].startswith(b"index "):
            raise BundleFormatError("bundle: missing the 'index N' line")
        digits = lines[pos][len(b"index ") :]
        index = parse_decimal(digits, _MAX_INDEX)
        if index is None:
            raise BundleFormatError(
                f"bundle: index {digits[:24]!r} is not canonical ASCII decimal below 2^63"
            )
        proof = [_decode(line, f"proof line {i + 1}") for i, line in enumerate(lines[pos + 1 :])]
        bundle = cls(index, tuple(proof), note, extra)
        if bundle.to_bytes() != data:  # pragma: no cover - the checks above make it so
            raise BundleFormatError("bundle: not in canonical form")
        return bundle

    def verify(
        self,
        verifier: NoteVerifier,
        *,
        origin: str | None = None,
        policy: WitnessPolicy | None = None,
        expected_leaf_hash: bytes | None = None,
    ) -> VerifiedBundle:
        """Check the bundle offline; return what it proves, or raise.

        The checkpoint must carry the log's valid signature (and origin, by
        default the key's name) and, with ``policy``, enough witness
        cosignatures. The leaf (``extra``) must be a valid sealog leaf, and
        its hash must be included at ``index`` in the checkpoint's tree. A
        bundle without ``extra`` needs ``expected_leaf_hash``; with both, they
        must agree. Raises VerificationError (or a subclass) or
        BundleFormatError.
        """
        signed = open_checkpoint(self.checkpoint, verifier, origin=origin or verifier.name)
        cosignatures = policy.check(self.checkpoint) if policy is not None else ()
        leaf: Leaf | None = None
        if self.extra is not None:
            try:
                leaf = Leaf.parse(self.extra)
            except FormatError as e:
                raise VerificationError(f"bundle: the extra data is not a sealog leaf: {e}") from e
            lh = leaf_hash(self.extra)
            if expected_leaf_hash is not None and expected_leaf_hash != lh:
                raise VerificationError(
                    f"bundle: its leaf hashes to {lh.hex()}, not the expected "
                    f"{expected_leaf_hash.hex()}"
                )
        elif expected_leaf_hash is not None:
            lh = expected_leaf_hash
        else:
            raise BundleFormatError(
                "bundle has no leaf (no extra line): give the leaf hash to check it against"
            )
        cp = signed.checkpoint
        verify_inclusion(self.index, cp.size, lh, self.inclusion_proof, cp.root_hash)
        return VerifiedBundle(self.index, lh, leaf, signed, cosignatures)


def _decode(text: bytes, what: str) -> bytes:
    try:
        decoded = decode_base64(text.decode("ascii"))
    except UnicodeDecodeError:
        decoded = None
    if decoded is None or not decoded:
        raise BundleFormatError(f"bundle: {what} is not canonical standard base64")
    return decoded
