"""Evidence of log misbehaviour: a self-contained file anyone can re-check offline.

When a monitor catches a log out, it writes what it saw as a JSON file
(``sealog-evidence/v1``, docs/monitoring.md): the signed checkpoint notes
verbatim, the proof the log served, what the monitor computed, and the kind
of failure. :func:`check_evidence` redoes the computation with nothing but the
file and the log's public key, and says what the file proves, and what it
does not.

Kinds, from strongest to weakest:

``split_view``
    two checkpoints of the same size with different roots, both signed by
    the log. Conclusive: at most one of them can be the log's tree.
``inconsistent``
    two signed checkpoints, and the consistency proof the log served to
    connect them fails. An honest log can always produce that proof, so the
    log either forked or served a bad proof; anyone can challenge it.
``rollback``
    the log's latest checkpoint was smaller than one it had signed before.
    Both are signed; which came first is the monitor's observation.
``root_mismatch``
    a full audit: the leaves the log served, hashed onto the tree the monitor
    had verified, do not lead to the root the log signed. Leaves carry no
    signature, so this confirms the monitor's computation, not what the
    server sent.
``invalid_cosignature``
    a checkpoint signed by the log carrying a cosignature line by a listed
    witness that does not verify, such as one copied from an older
    checkpoint.
``bad_signature``
    a checkpoint the log served whose signature does not verify with its key.
    Proves what was received is not the log's, not that the key holder
    signed anything wrong.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealog.client._encoding import decode_base64, encode_base64
from sealog.client.answers import malformed_leaf, verify_audit_page, verify_audited_tree
from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.cosignature import CosignatureVerifier, verify_cosignatures
from sealog.client.display import escape
from sealog.client.durable import write_durably
from sealog.client.errors import (
    EntriesMismatchError,
    EvidenceFormatError,
    FormatError,
    InconsistentCheckpointsError,
    InvalidSignatureError,
    SealogError,
    VerificationError,
)
from sealog.client.note import NoteVerifier
from sealog.client.verify import verify_consistency

__all__ = [
    "EVIDENCE_FORMAT",
    "KINDS",
    "Evidence",
    "EvidenceVerdict",
    "check_evidence",
    "evidence_of_entries_mismatch",
    "evidence_of_inconsistency",
    "read_evidence",
    "write_evidence",
]

EVIDENCE_FORMAT = "sealog-evidence/v1"
KINDS = (
    "split_view",
    "inconsistent",
    "rollback",
    "root_mismatch",
    "invalid_cosignature",
    "bad_signature",
)


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"evidence: {what} must be a base64 string")
    data = decode_base64(value, canonical=False)
    if data is None:
        raise EvidenceFormatError(f"evidence: {what} is not base64")
    return data


def _note_json(note: bytes) -> dict[str, str]:
    """A note verbatim: as text when it is UTF-8 (signed notes are), else as base64."""
    try:
        return {"text": note.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": encode_base64(note)}


def _note_from_json(value: object, what: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return str(value["text"]).encode("utf-8")
        if "base64" in value:
            return _unb64(value["base64"], f"{what}.base64")
    raise EvidenceFormatError(f"evidence: {what} must be {{'text': ...}} or {{'base64': ...}}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Evidence:
    """What a monitor saw when a check failed (module docstring for the kinds).

    ``checkpoint`` is the offending note, verbatim; ``trusted`` the note it
    contradicts (the monitor's trusted checkpoint, or the other view), or
    empty. ``computed`` holds what the monitor computed, for people.
    """

    kind: str
    origin: str
    log_vkey: str
    checkpoint: bytes
    trusted: bytes = b""
    consistency_proof: tuple[bytes, ...] = ()
    summary: str = ""
    target: str = ""
    observed_at: str = field(default_factory=_now)
    computed: dict[str, str] = field(default_factory=dict)
    witness_vkey: str = ""
    audit_start: int = 0
    audit_frontier: tuple[bytes, ...] = ()
    audit_leaves: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EvidenceFormatError(f"evidence: kind {self.kind!r}, want one of {KINDS}")

    def digest(self) -> str:
        """A short hash of what was observed (not when): equal failures, equal digest."""
        h = hashlib.sha256()
        for part in (
            self.kind.encode(),
            self.checkpoint,
            self.trusted,
            *self.consistency_proof,
            str(self.audit_start).encode(),
            *self.audit_frontier,
            *self.audit_leaves,
            self.witness_vkey.encode(),
        ):
            h.update(len(part).to_bytes(8, "big") + part)
        return h.hexdigest()[:16]

    def to_json(self) -> bytes:
        """The evidence file's bytes (UTF-8 JSON, keys in a fixed order)."""
        obj: dict[str, Any] = {
            "format": EVIDENCE_FORMAT,
            "kind": self.kind,
            "summary": self.summary,
            "observed_at": self.observed_at,
            "log": {"origin": self.origin, "vkey": self.log_vkey, "target": self.target},
            "checkpoint": _note_json(self.checkpoint),
            "trusted_checkpoint": _note_json(self.trusted) if self.trusted else None,
            "consistency_proof": [encode_base64(h) for h in self.consistency_proof],
            "computed": dict(self.computed),
        }
        if self.witness_vkey:
            obj["witness_vkey"] = self.witness_vkey
        if self.kind == "root_mismatch":
            obj["audit"] = {
                "start": self.audit_start,
                "frontier": [encode_base64(h) for h in self.audit_frontier],
                "leaves": [encode_base64(leaf) for leaf in self.audit_leaves],
            }
        return (json.dumps(obj, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Evidence:
        """Parse an evidence file; :class:`EvidenceFormatError` if it is not one."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise EvidenceFormatError(f"evidence: not JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("format") != EVIDENCE_FORMAT:
            raise EvidenceFormatError(f"evidence: not a {EVIDENCE_FORMAT} file")
        log = obj.get("log")
        if not isinstance(log, dict):
            raise EvidenceFormatError("evidence: missing 'log'")
        proof = obj.get("consistency_proof", [])
        if not isinstance(proof, list):
            raise EvidenceFormatError("evidence: consistency_proof must be a list")
        computed = obj.get("computed", {})
        if not isinstance(computed, dict):
            raise EvidenceFormatError("evidence: computed must be an object")
        audit = obj.get("audit") or {}
        if not isinstance(audit, dict):
            raise EvidenceFormatError("evidence: audit must be an object")
        start = audit.get("start", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise EvidenceFormatError("evidence: audit.start must be a non-negative integer")
        return cls(
            kind=str(obj.get("kind")),
            origin=str(log.get("origin", "")),
            log_vkey=str(log.get("vkey", "")),
            target=str(log.get("target", "")),
            checkpoint=_note_from_json(obj.get("checkpoint"), "checkpoint"),
            trusted=_note_from_json(obj.get("trusted_checkpoint"), "trusted_checkpoint"),
            consistency_proof=tuple(
                _unb64(h, f"consistency_proof[{i}]") for i, h in enumerate(proof)
            ),
            summary=str(obj.get("summary", "")),
            observed_at=str(obj.get("observed_at", "")),
            computed={str(k): str(v) for k, v in computed.items()},
            witness_vkey=str(obj.get("witness_vkey", "")),
            audit_start=start,
            audit_frontier=tuple(
                _unb64(h, f"audit.frontier[{i}]") for i, h in enumerate(audit.get("frontier", []))
            ),
            audit_leaves=tuple(
                _unb64(x, f"audit.leaves[{i}]") for i, x in enumerate(audit.get("leaves", []))
            ),
        )


def write_evidence(directory: str | Path, evidence: Evidence) -> tuple[Path, bool]:
    """Write ``evidence`` durably as ``<kind>-<time>-<digest>.json`` in ``directory``.

    Returns the path and whether the file is new. If a file with the same
    digest is already there, nothing is written and that file's path is
    returned: one failure, one file.
    """
    directory = Path(directory)
    digest = evidence.digest()
    if directory.is_dir():
        for existing in sorted(directory.glob(f"{evidence.kind}-*-{digest}.json")):
            return existing, False
    stamp = evidence.observed_at.replace(":", "").replace("-", "")
    path = directory / f"{evidence.kind}-{stamp}-{digest}.json"
    write_durably(path, evidence.to_json())
    return path, True


def read_evidence(path: str | Path) -> Evidence:
    """Read an evidence file."""
    return Evidence.from_json(Path(path).read_bytes())


# --- building evidence from the errors the client raises --------------------------
def evidence_of_inconsistency(
    error: InconsistentCheckpointsError, origin: str, log_vkey: str, target: str = ""
) -> Evidence:
    """Evidence for two signed checkpoints that do not fit together."""
    old, new = error.old, error.new
    if new.size < old.size:
        kind = "rollback"
        summary = (
            f"the log's checkpoint went back from size {old.size} (trusted) to size {new.size}"
        )
    elif new.size == old.size and new.root_hash != old.root_hash:
        kind = "split_view"
        summary = f"two different checkpoints of size {old.size}, both signed by the log"
    else:
        kind = "inconsistent"
        summary = (
            f"checkpoint {new.size} does not extend trusted checkpoint {old.size}: the "
            f"consistency proof fails ({error.reason})"
        )
    return Evidence(
        kind=kind,
        origin=origin,
        log_vkey=log_vkey,
        target=target,
        checkpoint=error.new_note,
        trusted=error.old_note,
        consistency_proof=error.proof,
        summary=summary,
        computed={
            "reason": error.reason,
            "trusted_size": str(old.size),
            "trusted_root": encode_base64(old.root_hash),
            "size": str(new.size),
            "root": encode_base64(new.root_hash),
        },
    )


def evidence_of_entries_mismatch(
    error: EntriesMismatchError,
    origin: str,
    log_vkey: str,
    target: str = "",
    trusted: bytes = b"",
) -> Evidence:
    """Evidence for a full audit whose leaves do not lead to the signed root."""
    end = error.start + len(error.leaves)
    return Evidence(
        kind="root_mismatch",
        origin=origin,
        log_vkey=log_vkey,
        target=target,
        checkpoint=error.note,
        trusted=trusted,
        consistency_proof=error.proof,
        summary=f"leaves [{error.start}, {end}) the log served do not lead to its signed root",
        computed={"reason": error.reason, "calculated_root": encode_base64(error.calculated)},
        audit_start=error.start,
        audit_frontier=error.frontier,
        audit_leaves=error.leaves,
    )


# --- checking evidence --------------------------------------------------------------
@dataclass
class EvidenceVerdict:
    """What :func:`check_evidence` found: ``holds``, and in words what was checked and proven."""

    kind: str
    holds: bool
    findings: list[str] = field(default_factory=list)
    proves: str = ""

    def report(self) -> str:
        """A text for people."""
        head = "EVIDENCE HOLDS" if self.holds else "EVIDENCE DOES NOT HOLD"
        # Findings quote the file (summaries, names, messages): one escaped line each.
        lines = [f"{head} ({escape(self.kind)})", *(f"  - {escape(f)}" for f in self.findings)]
        if self.proves:
            lines.append(escape(self.proves))
        return "\n".join(lines)


def _open(
    note: bytes, verifier: NoteVerifier, origin: str, what: str, verdict: EvidenceVerdict
) -> SignedCheckpoint | None:
    try:
        signed = open_checkpoint(note, verifier, origin=origin)
    except SealogError as e:
        verdict.findings.append(f"{what}: NOT validly signed by {verifier.name}: {e}")
        return None
    cp = signed.checkpoint
    verdict.findings.append(
        f"{what}: signed by {verifier.name}+{verifier.key_hash:08x} (verified): "
        f"size {cp.size}, root {encode_base64(cp.root_hash)}"
    )
    return signed


def check_evidence(
    evidence: Evidence,
    verifier: NoteVerifier,
    *,
    origin: str | None = None,
    witness: CosignatureVerifier | None = None,
) -> EvidenceVerdict:
    """Re-verify ``evidence`` offline with the log's key; never raises for a failed check.

    ``verifier`` is the log's key from a source you trust (the key written in
    the file is only compared with it). ``origin`` defaults to the file's.
    For ``invalid_cosignature``, ``witness`` is the witness key to check with
    (default: the one in the file). The verdict ``holds`` only if the
    failure reproduces; its text says what that proves.
    """
    origin = origin or evidence.origin or verifier.name
    verdict = EvidenceVerdict(evidence.kind, False)
    vkey = getattr(verifier, "vkey", "")
    if evidence.log_vkey and vkey and evidence.log_vkey != vkey:
        verdict.findings.append(
            f"note: the file names log key {evidence.log_vkey}; checking with {vkey} as given"
        )
    checker = _CHECKERS[evidence.kind]
    checker(evidence, verifier, origin, witness, verdict)
    return verdict


def _check_pair(
    e: Evidence, verifier: NoteVerifier, origin: str, verdict: EvidenceVerdict
) -> tuple[SignedCheckpoint, SignedCheckpoint] | None:
    trusted = _open(e.trusted, verifier, origin, "trusted checkpoint", verdict)
    other = _open(e.checkpoint, verifier, origin, "checkpoint", verdict)
    if trusted is None or other is None:
        verdict.proves = "Both checkpoints must be signed by the log for this evidence to hold."
        return None
    return trusted, other


def _check_split_view(
    e: Evidence,
    verifier: NoteVerifier,
    origin: str,
    witness: CosignatureVerifier | None,
    verdict: EvidenceVerdict,
) -> None:
    pair = _check_pair(e, verifier, origin, verdict)
    if pair is None:
        return
    a, b = pair[0].checkpoint, pair[1].checkpoint
    if a.size != b.size or a.root_hash == b.root_hash:
        roots = "equal" if a.root_hash == b.root_hash else "differ"
        verdict.findings.append(f"sizes {a.size} and {b.size}, roots {roots}")
        verdict.proves = "These are not two different checkpoints of the same size."
        return
    verdict.holds = True
    verdict.findings.append(f"same size {a.size}, different roots")
    verdict.proves = (
        f"PROVES: the log signed two different trees of size {a.size}. At most one of them "
        "is the log's real history; it showed different views to different parties (a split "
        "view). This needs no trust in the monitor."
    )


def _check_inconsistent(
    e: Evidence,
    verifier: NoteVerifier,
    origin: str,
    witness: CosignatureVerifier | None,
    verdict: EvidenceVerdict,
) -> None:
    pair = _check_pair(e, verifier, origin, verdict)
    if pair is None:
        return
    old, new = pair[0].checkpoint, pair[1].checkpoint
    if old.size > new.size:
        old, new = new, old
    if old.size == new.size:
        if old.root_hash != new.root_hash:
            verdict.holds = True
            verdict.findings.append(f"same size {old.size}, different roots")
            verdict.proves = (
                f"PROVES: the log signed two different trees of size {old.size} (a split view)."
            )
        else:
            verdict.proves = "The two checkpoints are the same tree: nothing is inconsistent."
        return
    if old.size == 0:
        verdict.proves = "Every tree extends the empty tree: nothing is inconsistent."
        return
    try:
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, e.consistency_proof)
    except SealogError as err:
        verdict.holds = True
        verdict.findings.append(
            f"the consistency proof from size {old.size} to {new.size} "
            f"({len(e.consistency_proof)} hashes) fails: {err}"
        )
        verdict.proves = (
            f"PROVES: the log signed both checkpoints, and the proof it served does not show "
            f"that tree {new.size} extends tree {old.size}. An honest log can always prove "
            f"that: ask it (`sealog consistency OLD NEW`). If it cannot, it rewrote or "
            f"dropped history after size {old.size} was signed (a fork)."
        )
        return
    verdict.findings.append("the consistency proof verifies")
    verdict.proves = "The checkpoints are consistent: this evidence shows no misbehaviour."


def _check_rollback(
    e: Evidence,
    verifier: NoteVerifier,
    origin: str,
    witness: CosignatureVerifier | None,
    verdict: EvidenceVerdict,
) -> None:
    pair = _check_pair(e, verifier, origin, verdict)
    if pair is None:
        return
    trusted, latest = pair[0].checkpoint, pair[1].checkpoint
    if latest.size >= trusted.size:
        verdict.proves = "The later checkpoint is not smaller: no rollback."
        return
    verdict.holds = True
    verdict.findings.append(
        f"the checkpoint served as latest (size {latest.size}) is smaller than the trusted "
        f"one (size {trusted.size})"
    )
    verdict.proves = (
        f"PROVES: the log signed a tree of size {trusted.size}, and the monitor says it later "
        f"served a tree of size {latest.size} as its latest (the order is the monitor's "
        "observation: checkpoints carry no time). Entries were hidden or dropped; if the log "
        f"grows past {trusted.size} again without being consistent with it, that is a fork."
    )


def _check_bad_signature(
    e: Evidence,
    verifier: NoteVerifier,
    origin: str,
    witness: CosignatureVerifier | None,
    verdict: EvidenceVerdict,
) -> None:
    if _open(e.checkpoint, verifier, origin, "checkpoint", verdict) is not None:
        verdict.proves = "The checkpoint is validly signed: this evidence does not hold."
        return
    verdict.holds = True
    verdict.proves = (
        f"CONFIRMS: the note the monitor received from {e.target or 'the log'} does not carry "
        f"a valid signature by {verifier.name}. This proves the answer was not the log's; it "
        "does not prove that the key holder signed anything wrong (anyone can write a bad "
        "signature line)."
    )


def _check_invalid_cosignature(
    e: Evidence,
    verifier: NoteVerifier,
    origin: str,
    witness: CosignatureVerifier | None,
    verdict: EvidenceVerdict,
) -> None:
    if _open(e.checkpoint, verifier, origin, "checkpoint", verdict) is None:
        verdict.proves = "The checkpoint must be signed by the log for this evidence to hold."
        return
    if witness is None:
        try:
            witness = CosignatureVerifier.from_vkey(e.witness_vkey)
        except FormatError as err:
            verdict.proves = f"The file names no usable witness key: {err}"
            return
        verdict.findings.append(f"witness key taken from the file: {witness.vkey}")
    try:
        cosignatures = verify_cosignatures(e.checkpoint, [witness])
    except InvalidSignatureError:
        verdict.holds = True
        verdict.findings.append(
            f"the cosignature line by {witness.name}+{witness.key_hash:08x} does not verify"
        )
        verdict.proves = (
            f"CONFIRMS: the log's checkpoint, as served, carries a cosignature by witness "
            f"{witness.name} that is not that witness's signature of this checkpoint (for "
            "instance one copied from an older checkpoint). The log's own signature is valid, "
            "so the note came from the log or someone who copied its signature line."
        )
        return
    except FormatError as err:
        verdict.proves = f"The checkpoint note is malformed: {err}"
        return
    verdict.findings.append(f"{len(cosignatures)} valid cosignature(s) by {witness.name}")
    verdict.proves = "The witness's cosignature verifies: this evidence does not hold."


def _check_root_mismatch(
    e: Evidence,
    verifier: NoteVerifier,
    origin: str,
    witness: CosignatureVerifier | None,
    verdict: EvidenceVerdict,
) -> None:
    signed = _open(e.checkpoint, verifier, origin, "checkpoint", verdict)
    if signed is None:
        verdict.proves = "The checkpoint must be signed by the log for this evidence to hold."
        return
    cp = signed.checkpoint
    try:
        tree = CompactRange(e.audit_start, e.audit_frontier)
    except SealogError as err:
        verdict.proves = f"The audited frontier in the file is malformed: {err}"
        return
    anchor = "the monitor's own audit of the leaves before it"
    if e.trusted:
        trusted = _open(e.trusted, verifier, origin, "trusted checkpoint", verdict)
        if trusted is not None and trusted.checkpoint.size == tree.size:
            try:
                verify_audited_tree(tree, trusted)
            except EntriesMismatchError:
                verdict.proves = "The frontier does not match the trusted checkpoint's root."
                return
            anchor = f"the trusted checkpoint of size {tree.size}"
    verdict.findings.append(f"frontier of the first {tree.size} leaves: from {anchor}")
    end = tree.size + len(e.audit_leaves)
    try:
        verify_audit_page(tree, signed, tree.size, e.audit_leaves, e.consistency_proof)
    except EntriesMismatchError as err:
        verdict.holds = True
        bad = malformed_leaf(tree.size, e.audit_leaves)
        if bad is not None:
            i, problem = bad
            verdict.findings.append(f"leaf {i} is malformed: {problem}")
            verdict.proves = (
                f"CONFIRMS: the leaf the monitor received at index {i} is not a valid leaf, "
                "so it cannot be the entry the log signed. Leaves are not signed: this shows "
                "what the monitor received, not what the server holds."
            )
            return
        verdict.findings.append(
            f"the leaves [{e.audit_start}, {end}) lead to root {encode_base64(err.calculated)} "
            f"for size {end}, which the proof does not connect to the signed root: {err.reason}"
        )
        verdict.proves = (
            f"CONFIRMS: hashing these leaves onto the audited tree does not give the tree the "
            f"log signed at size {cp.size}. If the log served them (the monitor says so; "
            "leaves carry no signature), its stored entries do not match its signed tree."
        )
        return
    except VerificationError:
        verdict.proves = (
            f"The leaves [{tree.size}, {end}) are not inside the checkpoint's tree of {cp.size}."
        )
        return
    verdict.findings.append("the leaves lead to the signed root")
    verdict.proves = "The audit reproduces fine: this evidence does not hold."


_CHECKERS: dict[str, Any] = {
    "split_view": _check_split_view,
    "inconsistent": _check_inconsistent,
    "rollback": _check_rollback,
    "bad_signature": _check_bad_signature,
    "invalid_cosignature": _check_invalid_cosignature,
    "root_mismatch": _check_root_mismatch,
}
