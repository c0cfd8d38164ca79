"""The errors sealog raises.

Every failure a caller may need to act on is a subclass of :class:`SealogError`.
Verification never answers with a bool: a check that fails raises a
:class:`VerificationError` that carries what was expected and what was computed,
so the caller can print it, store it or publish it as evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sealog.client._encoding import encode_base64

if TYPE_CHECKING:
    from sealog.client.checkpoint import Checkpoint

__all__ = [
    "BundleFormatError",
    "CheckpointFormatError",
    "EntriesMismatchError",
    "EvidenceFormatError",
    "FormatError",
    "InconsistentCheckpointsError",
    "InvalidProofError",
    "InvalidSignatureError",
    "KeyFormatError",
    "LeafFormatError",
    "MonitorStateError",
    "NoteFormatError",
    "RootMismatchError",
    "SealogError",
    "UnverifiedNoteError",
    "VerificationError",
    "WitnessPolicyError",
]


class SealogError(Exception):
    """Base class of every error sealog raises on purpose."""

    def diagnostics(self) -> str:
        """A longer text for a person: what went wrong and what to do about it."""
        return str(self)


class FormatError(SealogError, ValueError):
    """Bytes or text that do not follow the format they claim to be in."""


class NoteFormatError(FormatError):
    """A signed note that C2SP signed-note forbids (layout, characters, signature lines)."""


class CheckpointFormatError(FormatError):
    """A checkpoint body that C2SP tlog-checkpoint forbids."""


class KeyFormatError(FormatError):
    """A signer or verifier key string that cannot be parsed."""


class LeafFormatError(FormatError):
    """Leaf bytes that are not a valid sealog leaf."""


class BundleFormatError(FormatError):
    """A proof bundle that is not a valid c2sp.org/tlog-proof@v1 text (docs/monitoring.md)."""


class EvidenceFormatError(FormatError):
    """An evidence file that is not what a sealog monitor writes (docs/monitoring.md)."""


class MonitorStateError(SealogError):
    """A monitor's saved state cannot be used: unreadable, or for another log."""

    def diagnostics(self) -> str:
        return (
            f"{self}. The state file holds the checkpoint this monitor trusts: do not delete "
            "it to make this go away (the next start would trust whatever the log says); "
            "find out what changed it."
        )


class VerificationError(SealogError):
    """Something the caller was asked to trust did not verify."""


class InvalidProofError(VerificationError):
    """A proof whose shape is wrong before any hashing: bad sizes, indices or lengths."""


class RootMismatchError(VerificationError):
    """A proof, recomputed, does not lead to the root it was checked against."""

    def __init__(self, what: str, expected: bytes, calculated: bytes) -> None:
        self.what = what
        self.expected = expected
        self.calculated = calculated
        super().__init__(
            f"{what}: calculated root {encode_base64(calculated)}, "
            f"expected {encode_base64(expected)}"
        )


class InvalidSignatureError(VerificationError):
    """A signature made by a known key did not verify."""

    def __init__(self, name: str, key_hash: int) -> None:
        self.name = name
        self.key_hash = key_hash
        super().__init__(f"invalid signature for key {name}+{key_hash:08x}")


class UnverifiedNoteError(VerificationError):
    """A note carries no signature from any of the verifiers the caller trusts."""

    def __init__(self, note: bytes, detail: str = "note has no verifiable signatures") -> None:
        self.note = note
        super().__init__(detail)

    def diagnostics(self) -> str:
        return (
            f"{self}. Check that the verifier key you pass is the log's key "
            "(or the witness keys your policy names)."
        )


class InconsistentCheckpointsError(VerificationError):
    """Two signed checkpoints of the same log that cannot both be true.

    Carries both signed notes and the consistency proof that failed, so that a
    monitor can publish them: anyone with the log's public key can re-check it.
    """

    def __init__(
        self,
        old: Checkpoint,
        new: Checkpoint,
        proof: Sequence[bytes],
        reason: str,
        old_note: bytes = b"",
        new_note: bytes = b"",
    ) -> None:
        self.old = old
        self.new = new
        self.proof = tuple(proof)
        self.reason = reason
        self.old_note = old_note
        self.new_note = new_note
        super().__init__(
            f"checkpoint {new.size} is not consistent with trusted checkpoint {old.size}: {reason}"
        )


class WitnessPolicyError(VerificationError):
    """A checkpoint without enough valid cosignatures from the witnesses a policy names.

    ``missing`` names the listed witnesses (``name+keyID``) with no valid,
    fresh cosignature on it; ``stale`` those whose cosignature was older than
    the policy allows.
    """

    def __init__(
        self,
        note: bytes,
        threshold: int,
        cosigned: Sequence[str],
        missing: Sequence[str],
        stale: Sequence[str] = (),
    ) -> None:
        self.note = note
        self.threshold = threshold
        self.cosigned = tuple(cosigned)
        self.missing = tuple(missing)
        self.stale = tuple(stale)
        detail = f"missing: {', '.join(self.missing)}"
        if self.stale:
            detail += f" (too old: {', '.join(self.stale)})"
        super().__init__(
            f"checkpoint has {len(self.cosigned)} of the {threshold} witness cosignatures "
            f"the policy requires; {detail}"
        )

    def diagnostics(self) -> str:
        return (
            f"{self}. The log may simply not have collected them yet (witnesses cosign on "
            "their own schedule): retry later, or check that those witnesses are running."
        )


class EntriesMismatchError(VerificationError):
    """Leaves a log served do not hash to the root it signed (a full audit failed).

    Carries what is needed to redo the computation: the signed checkpoint
    note, the compact range the auditor had verified before the page
    (``start`` and ``frontier``), the page's leaves, the consistency proof
    from the end of the page to the checkpoint's size, and the root the
    leaves led to.
    """

    def __init__(
        self,
        note: bytes,
        start: int,
        frontier: Sequence[bytes],
        leaves: Sequence[bytes],
        proof: Sequence[bytes],
        calculated: bytes,
        reason: str,
    ) -> None:
        self.note = note
        self.start = start
        self.frontier = tuple(frontier)
        self.leaves = tuple(leaves)
        self.proof = tuple(proof)
        self.calculated = calculated
        self.reason = reason
        end = start + len(self.leaves)
        super().__init__(f"leaves [{start}, {end}) do not match the signed checkpoint: {reason}")
