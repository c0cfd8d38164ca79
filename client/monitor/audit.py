"""The auditor: is each of these events in the log? Verified answers, one per event.

An event is named by what the auditor has: its leaf index, its RFC 6962 leaf
hash, its exact leaf bytes, its payload, or a mix (a receipt printed by
``sealog append --json`` has them all). Each is looked up and proven against
one verified checkpoint (optionally a witnessed one):

- a leaf or leaf hash, with an index: the entry at that index is fetched
  with its inclusion proof and must be that leaf;
- a leaf or leaf hash alone: the log finds it (GetInclusionProofByHash);
- an index alone: the entry there and its inclusion proof;
- a payload alone: the leaf also holds the server's acceptance time and the
  submitter's identity, so its hash cannot be computed from the payload. The
  auditor reads the entries (each page verified with its range proof) and
  takes the first whose payload matches, then proves it. This costs a pass
  over the log: give an index or the leaf when you have one.

Every answer the log gives is verified by :class:`LogClient`; an answer that
fails verification is reported as ``error``, never as included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from sealog.client._encoding import decode_base64, encode_base64
from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.errors import SealogError, VerificationError
from sealog.client.hashing import HASH_SIZE, leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.log_client import LogClient

__all__ = ["AuditResult", "SoughtEvent", "audit_events", "events_from_jsonl"]

INCLUDED = "included"
NOT_FOUND = "not_found"
MISMATCH = "mismatch"
ERROR = "error"


@dataclass(frozen=True)
class SoughtEvent:
    """One event to look for; at least one of index, leaf hash, leaf or payload."""

    label: str
    index: int | None = None
    leaf_hash: bytes | None = None
    leaf: bytes | None = None
    payload: bytes | None = None

    def __post_init__(self) -> None:
        named = (self.index, self.leaf_hash, self.leaf, self.payload)
        if all(x is None for x in named):
            raise ValueError(f"{self.label}: give an index, a leaf hash, a leaf or a payload")
        if self.index is not None and self.index < 0:
            raise ValueError(f"{self.label}: index {self.index}, want >= 0")
        if self.leaf_hash is not None and len(self.leaf_hash) != HASH_SIZE:
            raise ValueError(f"{self.label}: leaf hash is {len(self.leaf_hash)} bytes, want 32")
        if self.leaf is not None:
            own = leaf_hash(self.leaf)
            if self.leaf_hash is not None and self.leaf_hash != own:
                raise ValueError(f"{self.label}: the leaf and the leaf hash disagree")
            object.__setattr__(self, "leaf_hash", own)


@dataclass(frozen=True)
class AuditResult:
    """The verified answer for one event.

    ``status`` is ``included`` (proven at ``index`` in the tree of
    ``tree_size``), ``not_found``, ``mismatch`` (the entry at the given
    index is another one) or ``error`` (the log's answer failed
    verification, or the call failed).
    """

    event: SoughtEvent
    status: str
    tree_size: int
    index: int | None = None
    leaf_hash: bytes | None = None
    inclusion_proof: tuple[bytes, ...] = ()
    leaf: bytes | None = None
    detail: str = ""

    @property
    def included(self) -> bool:
        """True when the event is proven to be in the log."""
        return self.status == INCLUDED

    def to_json(self) -> dict[str, object]:
        """A JSON object for reports."""
        obj: dict[str, object] = {
            "event": self.event.label,
            "status": self.status,
            "tree_size": self.tree_size,
            "index": self.index,
            "leaf_hash": self.leaf_hash.hex() if self.leaf_hash else None,
            "inclusion_proof": [encode_base64(h) for h in self.inclusion_proof],
            "detail": self.detail,
        }
        if self.leaf is not None:
            parsed = Leaf.parse(self.leaf)
            obj["accepted_at_ms"] = parsed.accepted_at_ms
            obj["identity"] = parsed.identity
        return obj


def _int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: want an integer, got {value!r}")
    return value


def _bytes(obj: dict[str, object], key: str, what: str) -> bytes | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what}.{key}: want a string")
    if key == "leaf_hash":
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError(f"{what}.{key}: not hex") from None
    data = decode_base64(value, canonical=False)
    if data is None:
        raise ValueError(f"{what}.{key}: not base64")
    return data


def events_from_jsonl(lines: Iterable[str], source: str = "batch") -> list[SoughtEvent]:
    """Events from JSON lines, one object per line (blank lines skipped).

    Keys: ``index``, ``leaf_hash`` (hex), ``leaf_b64``, ``payload`` (text),
    ``payload_b64``, ``label``; others are ignored, so receipts from
    ``sealog append --json`` can be fed back as they are.
    """
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        what = f"{source}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{what}: not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{what}: want a JSON object")
        payload = _bytes(obj, "payload_b64", what)
        if payload is None and isinstance(obj.get("payload"), str):
            payload = str(obj["payload"]).encode("utf-8")
        events.append(
            SoughtEvent(
                label=str(obj.get("label", what)),
                index=_int(obj.get("index"), f"{what}.index"),
                leaf_hash=_bytes(obj, "leaf_hash", what),
                leaf=_bytes(obj, "leaf_b64", what),
                payload=payload,
            )
        )
    return events


def audit_events(
    client: LogClient, events: Sequence[SoughtEvent], checkpoint: SignedCheckpoint
) -> list[AuditResult]:
    """Look up and prove each event against ``checkpoint`` (already verified by the caller)."""
    size = checkpoint.checkpoint.size
    scan = [e for e in events if e.index is None and e.leaf_hash is None]
    found = _scan_payloads(client, scan, checkpoint) if scan else {}
    results = []
    for event in events:
        try:
            results.append(_audit_one(client, event, checkpoint, found))
        except VerificationError as e:
            results.append(AuditResult(event, ERROR, size, detail=f"failed verification: {e}"))
        except grpc.RpcError as e:
            status = NOT_FOUND if e.code() == grpc.StatusCode.NOT_FOUND else ERROR
            results.append(AuditResult(event, status, size, detail=f"{e.details()}"))
        except SealogError as e:
            results.append(AuditResult(event, ERROR, size, detail=str(e)))
    return results


def _scan_payloads(
    client: LogClient, events: Sequence[SoughtEvent], checkpoint: SignedCheckpoint
) -> dict[bytes, int]:
    """The first index of each wanted payload, reading every entry (verified)."""
    wanted = {e.payload for e in events if e.payload is not None}
    found: dict[bytes, int] = {}
    for entry in client.entries(0, checkpoint=checkpoint, page_size=1000):
        payload = entry.parse().payload
        if payload in wanted and payload not in found:
            found[payload] = entry.index
            if len(found) == len(wanted):
                break
    return found


def _audit_one(
    client: LogClient,
    event: SoughtEvent,
    checkpoint: SignedCheckpoint,
    found: dict[bytes, int],
) -> AuditResult:
    size = checkpoint.checkpoint.size
    index = event.index
    if index is None and event.leaf_hash is None:
        assert event.payload is not None
        index = found.get(event.payload)
        if index is None:
            return AuditResult(event, NOT_FOUND, size, detail="no entry has this payload")
    if index is None:
        assert event.leaf_hash is not None
        proof = client.inclusion_proof_by_hash(event.leaf_hash, checkpoint)
        entry, proof = client.entry_and_proof(proof.index, checkpoint)
    else:
        if index >= size:
            return AuditResult(
                event, NOT_FOUND, size, index, detail=f"index {index} is beyond tree size {size}"
            )
        entry, proof = client.entry_and_proof(index, checkpoint)
    result = AuditResult(
        event, INCLUDED, size, entry.index, entry.leaf_hash, proof.proof, entry.leaf
    )
    problems = []
    if event.leaf_hash is not None and event.leaf_hash != entry.leaf_hash:
        problems.append("the entry at this index has another leaf hash")
    if event.payload is not None and entry.parse().payload != event.payload:
        problems.append("the entry at this index has another payload")
    if problems:
        return AuditResult(
            event, MISMATCH, size, entry.index, entry.leaf_hash, detail="; ".join(problems)
        )
    return result
