"""What a monitor trusts about one log, kept in one file that is replaced atomically.

``state.json`` (format ``sealog-monitor-state/v1``)::

    {
      "format": "sealog-monitor-state/v1",
      "origin": "example.com/log",
      "log_vkey": "example.com/log+78dc349f+AVJR...",
      "checkpoint": "example.com/log\\n1234\\n<root>\\n\\n— example.com/log ...\\n",
      "audit": {"size": 1200, "frontier": ["<base64 hash>", ...]},
      "updated_at": "2026-01-01T00:00:00Z"
    }

``checkpoint`` is the signed note, byte for byte, of the newest checkpoint
whose signature verified and which was proven consistent with the one trusted
before it. ``audit`` (full audit only) says how many leaves were downloaded,
re-hashed and checked against a trusted checkpoint, and holds the compact
range of those leaves so the audit can resume there. Nothing else is ever
written here: a view that failed a check never reaches this file.

The file is re-verified when it is loaded: the note must carry a valid
signature by the configured key and origin, and the frontier must be no
larger than the checkpoint and, at its size, have its root.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from pathlib import Path

from sealog.client._encoding import encode_base64
from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.durable import write_durably
from sealog.client.errors import MonitorStateError, SealogError
from sealog.client.note import NoteVerifier

__all__ = ["STATE_FORMAT", "MonitorState", "load_state", "save_state"]

STATE_FORMAT = "sealog-monitor-state/v1"


@dataclass(frozen=True)
class MonitorState:
    """A verified checkpoint and, for a full audit, the verified prefix of its leaves."""

    checkpoint: SignedCheckpoint
    audit: CompactRange | None = None

    @property
    def audited(self) -> int | None:
        """How many leaves the full audit verified, or None without a full audit."""
        return None if self.audit is None else self.audit.size


def save_state(path: str | Path, state: MonitorState, log_vkey: str) -> None:
    """Write ``state`` durably, replacing the previous file atomically."""
    cp = state.checkpoint
    obj: dict[str, object] = {
        "format": STATE_FORMAT,
        "origin": cp.checkpoint.origin,
        "log_vkey": log_vkey,
        "checkpoint": cp.note.decode("utf-8"),
    }
    if state.audit is not None:
        obj["audit"] = {
            "size": state.audit.size,
            "frontier": [encode_base64(h) for h in state.audit.hashes],
        }
    obj["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_durably(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def load_state(
    path: str | Path, verifier: NoteVerifier, origin: str, *, full_audit: bool
) -> MonitorState | None:
    """Read and re-verify the state file; None if there is none.

    Raises :class:`MonitorStateError` if the file is unreadable, is for
    another log or key, or its audit does not fit its checkpoint.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(data)
        if obj.get("format") != STATE_FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, want {STATE_FORMAT!r}")
        note = str(obj["checkpoint"]).encode("utf-8")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeError) as e:
        raise MonitorStateError(f"{path}: not a monitor state file: {e}") from e
    try:
        signed = open_checkpoint(note, verifier, origin=origin)
    except SealogError as e:
        raise MonitorStateError(
            f"{path}: the saved checkpoint does not verify with key "
            f"{verifier.name}+{verifier.key_hash:08x} and origin {origin!r}: {e}"
        ) from e
    audit: CompactRange | None = None
    if full_audit:
        raw = obj.get("audit")
        if raw is None:
            audit = CompactRange()  # full audit newly enabled: start from leaf 0
        else:
            try:
                hashes = [base64.b64decode(h, validate=True) for h in raw["frontier"]]
                audit = CompactRange(int(raw["size"]), hashes)
            except (SealogError, ValueError, KeyError, TypeError, binascii.Error) as e:
                raise MonitorStateError(f"{path}: malformed audit frontier: {e}") from e
        cp = signed.checkpoint
        if audit.size > cp.size:
            raise MonitorStateError(
                f"{path}: audited {audit.size} leaves, more than the checkpoint's {cp.size}"
            )
        if audit.size == cp.size and audit.root() != cp.root_hash:
            raise MonitorStateError(
                f"{path}: the audited tree of size {cp.size} does not have the checkpoint's root"
            )
    return MonitorState(signed, audit)
