"""The witnessed checkpoint: the latest cosignature of each witness, and the note they make.

A witness (c2sp.org/tlog-cosignature) that verified one of this log's
checkpoints sends it back with its ``cosignature/v1`` line (AddCosignature).
The log keeps, per witness key, the newest checkpoint that witness cosigned,
as a signed note with two lines: the log's own signature and that witness's
cosignature. All of them live in one metadata value (docs/storage.md)::

    {"version": 1, "witnesses": {"<name>+<key ID>": "<signed note>", ...}}

The *witnessed checkpoint* is the newest checkpoint any accepted witness
cosigned, as one note: the log's signature line, then the cosignature line of
every accepted witness whose latest cosignature is for that same checkpoint,
in key order. Witnesses poll on their own schedules, so it may be older than
the latest checkpoint, and on a busy log it may carry fewer cosignatures than
a client's policy asks for (docs/monitoring.md, "The witnessed checkpoint").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sealog.client.checkpoint import Checkpoint
from sealog.client.cosignature import CosignatureVerifier
from sealog.client.note import NoteSignature, parse_note
from sealog.server.storage import StorageCorruptError

__all__ = [
    "StoredCosignature",
    "decode_cosignatures",
    "encode_cosignatures",
    "merge_cosignature",
    "witness_key",
    "witnessed_note",
]

_VERSION = 1


def witness_key(name: str, key_hash: int) -> str:
    """How a witness key is named in storage: ``<name>+<key ID as 8 hex digits>``."""
    return f"{name}+{key_hash:08x}"


@dataclass(frozen=True)
class StoredCosignature:
    """One witness's latest cosignature: the checkpoint text and the two signature lines."""

    text: bytes
    log_line: NoteSignature
    witness_line: NoteSignature

    @property
    def size(self) -> int:
        """The tree size of the cosigned checkpoint."""
        return Checkpoint.parse(self.text).size

    @property
    def timestamp(self) -> int:
        """The cosignature's timestamp (POSIX seconds)."""
        return CosignatureVerifier.timestamp_of(self.witness_line.signature)

    def note(self) -> bytes:
        """The signed note: text, the log's line, the witness's line."""
        return self.text + b"\n" + self.log_line.to_line() + self.witness_line.to_line()


def decode_cosignatures(value: bytes | None) -> dict[str, StoredCosignature]:
    """Parse the stored value; :class:`StorageCorruptError` if it is not what we wrote."""
    if value is None:
        return {}
    try:
        obj = json.loads(value)
        if obj.get("version") != _VERSION:
            raise ValueError(f"version {obj.get('version')!r}, want {_VERSION}")
        out: dict[str, StoredCosignature] = {}
        for key, note in obj["witnesses"].items():
            text, (log_line, witness_line) = parse_note(note.encode("utf-8"))
            out[str(key)] = StoredCosignature(text, log_line, witness_line)
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StorageCorruptError(f"meta[cosignatures] is malformed: {e}") from e


def encode_cosignatures(stored: Mapping[str, StoredCosignature]) -> bytes:
    """The value to store, keys sorted so equal content is equal bytes."""
    witnesses = {key: stored[key].note().decode("utf-8") for key in sorted(stored)}
    return json.dumps({"version": _VERSION, "witnesses": witnesses}).encode("utf-8")


def merge_cosignature(stored: dict[str, StoredCosignature], new: StoredCosignature) -> bool:
    """Keep ``new`` if it is newer than what its witness has (by size, then time).

    A witness never goes back: a cosignature of a smaller tree, or of the same
    tree at an earlier time, is ignored. Returns True if ``new`` was kept.
    """
    key = witness_key(new.witness_line.name, new.witness_line.key_hash)
    old = stored.get(key)
    if old is not None and (old.size, old.timestamp) >= (new.size, new.timestamp):
        return False
    stored[key] = new
    return True


def witnessed_note(
    stored: Mapping[str, StoredCosignature], accepted: Iterable[CosignatureVerifier]
) -> bytes | None:
    """The newest checkpoint cosigned by an accepted witness, with every such cosignature.

    Cosignatures by witnesses no longer accepted are left out. Returns None if
    no accepted witness has cosigned anything.
    """
    keys = {witness_key(w.name, w.key_hash) for w in accepted}
    current = [(key, stored[key]) for key in sorted(stored) if key in keys]
    if not current:
        return None
    newest = max(current, key=lambda item: item[1].size)[1]
    lines = [s.witness_line for _, s in current if s.text == newest.text]
    return newest.text + b"\n" + newest.log_line.to_line() + b"".join(x.to_line() for x in lines)
